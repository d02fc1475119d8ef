"""The benchmark's variants (:data:`VARIANTS`): what each one builds and runs, which cannot run here and why
(:func:`skip_reason`), and how a variant's model is built (:func:`prepare_variant`) and compiled
(:func:`compile_blocks`)."""
from __future__ import annotations

import contextlib
import gc
import importlib.util

import torch
from torch import nn

from .. import reference as ref
from ..backends import resolve_backend
from ..config import Q8Config, Q8Runtime
from ..convert import activate_q8, check_q8_config, quantize_block_
from ..errors import Q8Error
from .build import build_transformer

__all__ = ["VARIANTS", "DEFAULT_VARIANTS", "LTX2_DEFAULT_VARIANTS", "compile_blocks", "skip_reason", "prepare_variant",
           "variant_context"]

VARIANTS = {
    # name: (kind, options, compile)
    "bf16": ("bf16", {}, False),
    "bf16_compile": ("bf16", {}, True),
    "torchao_fp8_compile": ("torchao", {}, True),
    "q8lib": ("q8lib", {"attention": "sdpa"}, False),
    "q8lib_compile": ("q8lib", {"attention": "sdpa"}, True),
    "q8lib_fp8": ("q8lib", {"weight_dtype": "fp8_e4m3", "attention": "sdpa"}, False),
    "q8lib_fp8_compile": ("q8lib", {"weight_dtype": "fp8_e4m3", "attention": "sdpa"}, True),
    "q8lib_int8": ("q8lib", {"weight_dtype": "int8", "attention": "sdpa"}, False),
    "q8lib_int8_compile": ("q8lib", {"weight_dtype": "int8", "attention": "sdpa"}, True),
    # no Hadamard rotation (hadamard_block=1): issue #13 asks whether the e4m3 path should rotate at all
    "q8lib_norot": ("q8lib", {"hadamard_block": 1, "attention": "sdpa"}, False),
    "q8lib_norot_compile": ("q8lib", {"hadamard_block": 1, "attention": "sdpa"}, True),
    # int8 with a block-diagonal rotation (issue #13: the full-width Hadamard is most of int8's row-kernel cost;
    # the row kernel rotates blocks of <= 128 in one product)
    "q8lib_int8_hb128_compile": ("q8lib", {"weight_dtype": "int8", "hadamard_block": 128, "attention": "sdpa"}, True),
    "q8lib_fp8attn": ("q8lib", {"attention": "fp8"}, False),
    "q8lib_fp8attn_compile": ("q8lib", {"attention": "fp8"}, True),
    # cuDNN's FP8 attention engine, one scale per tensor after K smoothing (issue #14: fastest at head dim 128)
    "q8lib_fp8tensorattn": ("q8lib", {"attention": "fp8_tensor"}, False),
    "q8lib_fp8tensorattn_compile": ("q8lib", {"attention": "fp8_tensor"}, True),
    # the same with FP8 only where there are >= 2048 keys too (video self-attention; LTX-2's 1024-token text
    # cross-attention in SDPA): the same-run A/B for q8lib.reference.fp8_tensor_applies's thresholds
    "q8lib_fp8tensorselfattn": ("q8lib", {"attention": "fp8_tensor", "fp8_tensor_min_keys": 2048}, False),
    "q8lib_fp8tensorselfattn_compile": ("q8lib", {"attention": "fp8_tensor", "fp8_tensor_min_keys": 2048}, True),
    "q8lib_int8attn": ("q8lib", {"attention": "int8"}, False),
    "q8lib_int8attn_compile": ("q8lib", {"attention": "int8"}, True),
}
# "<variant>_graph": the same, with the whole forward captured in one CUDA graph (q8lib.cudagraph),
# which removes the host cost of launching ~500 kernels per forward. torch.compile's own
# mode="reduce-overhead" does not work with regional compilation: the 28 blocks share one compiled
# region, and each replay overwrites the output the next block reads.
VARIANTS.update({f"{k}_graph": v for k, v in list(VARIANTS.items())})
DEFAULT_VARIANTS = ("bf16,bf16_compile,bf16_compile_graph,torchao_fp8_compile,q8lib,q8lib_compile,q8lib_compile_graph,"
                    "q8lib_fp8attn_compile_graph,q8lib_int8_compile")
# LTX-2: no INT8 attention (refused for LTX-2); torchao last (its compile is the slowest: the first to go when
# --budget-s runs out)
LTX2_DEFAULT_VARIANTS = ("bf16,bf16_compile,bf16_compile_graph,q8lib,q8lib_compile,q8lib_compile_graph,"
                         "q8lib_fp8attn_compile,q8lib_fp8attn_compile_graph,torchao_fp8_compile")


def compile_blocks(model, mode=True) -> None:
    """Regional ``torch.compile`` (fullgraph) of the repeated transformer block, with ``mode`` if one is given."""
    kw = {"fullgraph": True} if mode is True else {"fullgraph": True, "mode": mode}
    try:
        model.compile_repeated_blocks(**kw)
    except (AttributeError, ValueError):  # older diffusers: compile each block
        for b in model.transformer_blocks:
            b.compile(**kw)


# options the benchmark applies itself (module settings read at call time), not q8lib's config or runtime
_THRESHOLDS = {"fp8_tensor_min_keys": "FP8_TENSOR_MIN_KEYS", "fp8_tensor_min_queries": "FP8_TENSOR_MIN_QUERIES"}


def _q8_settings(opts: dict) -> tuple[Q8Config, Q8Runtime]:
    fmt = {k: v for k, v in opts.items() if k in ("weight_dtype", "hadamard_block")}  # the weight format
    return Q8Config(**fmt), Q8Runtime(**{k: v for k, v in opts.items() if k not in fmt and k not in _THRESHOLDS})


@contextlib.contextmanager
def variant_context(name: str):
    """While variant ``name`` is built, compiled, captured and timed: its :mod:`q8lib.reference` thresholds (e.g.
    ``fp8_tensor_min_keys``) in place of the defaults, restored after."""
    opts = VARIANTS[name][1]
    saved = {attr: getattr(ref, attr) for key, attr in _THRESHOLDS.items() if key in opts}
    try:
        for key, attr in _THRESHOLDS.items():
            if key in opts:
                setattr(ref, attr, int(opts[key]))
        yield
    finally:
        for attr, value in saved.items():
            setattr(ref, attr, value)


def skip_reason(name: str, cfg: dict, device) -> str | None:
    """Why variant ``name`` cannot run on ``device`` for the transformer ``cfg``, found without building anything
    (q8lib's settings are checked on a meta-device skeleton); ``None`` when it can."""
    kind, opts, _ = VARIANTS[name]
    if name.endswith("_graph") and torch.device(device).type != "cuda":
        return "CUDA graphs need a GPU"
    if kind == "torchao" and importlib.util.find_spec("torchao") is None:
        return "torchao is not installed"
    if kind == "q8lib":
        try:
            check_q8_config(cfg, *_q8_settings(opts))
        except Q8Error as e:
            return f"{type(e).__name__}: {e}"
        attention = opts.get("attention", "fp8")
        reason = resolve_backend("auto", torch.device(device)).attention_unavailable_reason(attention)
        if reason is not None:
            return reason
    return None


def prepare_variant(name: str, cfg: dict, device):
    """The model of benchmark variant ``name`` (see :data:`VARIANTS`), not yet compiled: ``(model, compile)``.

    Built in bf16 (:func:`~q8lib.bench.build.build_transformer`); the 8-bit variants (q8lib, torchao) quantize
    each block as soon as it is filled, so no bf16 copy of the whole model exists."""
    kind, opts, comp = VARIANTS[name]
    if kind == "torchao":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow
        from torchao.quantization import quantize_ as ao_quantize

        ao = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())

        def each(model, i):  # the block linears, as quantize_(model, filter_fn=linears in transformer_blocks)
            ao_quantize(model.transformer_blocks[i], ao, filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
    elif kind == "q8lib":
        config, runtime = _q8_settings(opts)

        def each(model, i):
            quantize_block_(model, i, config, runtime.backend)
    else:
        each = None
    model = build_transformer(cfg, device, torch.bfloat16, each_block=each)
    if kind == "q8lib":
        activate_q8(model, config, runtime)
    gc.collect()
    torch.cuda.empty_cache()
    return model, comp
