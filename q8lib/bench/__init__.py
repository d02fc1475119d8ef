"""The bench layer: the transformer benchmark (``python -m q8lib.bench``: :mod:`~q8lib.bench.transformer`, with
what it builds in :mod:`~q8lib.bench.build`, its variants in :mod:`~q8lib.bench.variants` and how they run in
:mod:`~q8lib.bench.run`), its profile split, per-op micro-benchmarks, and the one reader of the results JSON
(:mod:`q8lib.bench.results`).

Timing itself is :func:`q8lib.timing.time_ms` (re-exported here for the scripts under ``benchmarks/``).
"""
from ..timing import time_ms
from .build import BENCH_MODELS, audio_latent_frames, bench_inputs, build_transformer, latent_grid, linear_flops
from .profile import KERNEL_FAMILIES, classify, kernel_family, profile_split
from .transformer import main
from .variants import DEFAULT_VARIANTS, LTX2_DEFAULT_VARIANTS, VARIANTS, compile_blocks, prepare_variant, skip_reason

__all__ = ["main", "VARIANTS", "DEFAULT_VARIANTS", "LTX2_DEFAULT_VARIANTS", "BENCH_MODELS", "bench_inputs",
           "build_transformer", "compile_blocks", "prepare_variant", "skip_reason", "linear_flops", "latent_grid",
           "audio_latent_frames", "time_ms", "KERNEL_FAMILIES", "classify", "kernel_family", "profile_split"]
