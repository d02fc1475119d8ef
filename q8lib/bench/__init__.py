"""The bench layer: the transformer benchmark (``python -m q8lib.bench``), its profile split, per-op
micro-benchmarks, and the one reader of the results JSON (:mod:`q8lib.bench.results`).

Timing itself is :func:`q8lib.timing.time_ms` (re-exported here for the scripts under ``benchmarks/``).
"""
from ..timing import time_ms
from .profile import KERNEL_FAMILIES, classify, kernel_family, profile_split
from .transformer import (DEFAULT_VARIANTS, VARIANTS, bench_inputs, build_transformer, compile_blocks, linear_flops,
                          main, prepare_variant)

__all__ = ["main", "VARIANTS", "DEFAULT_VARIANTS", "bench_inputs", "build_transformer", "compile_blocks",
           "prepare_variant", "linear_flops", "time_ms", "KERNEL_FAMILIES", "classify", "kernel_family",
           "profile_split"]
