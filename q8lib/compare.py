"""Comparing a Q8 model with its high-precision original, layer by layer (SQNR).

* :func:`sqnr_db` - signal-to-quantization-noise ratio of one tensor against a reference.
* :func:`layer_sqnr` - SQNR of every converted module (Q8Linear, Q8GELU, Q8RMSNorm) of a Q8 model,
  either on the reference model's own inputs to that layer (``isolated=True``: the error this layer
  adds) or inside the running Q8 model (``isolated=False``: the error accumulated up to it).

Video-level metrics (PSNR/SSIM) and relative error live in :mod:`q8lib.metrics`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .errors import SettingsError
from .fused import module_forwards
from .modules import Q8GELU, Q8Linear, Q8RMSNorm

__all__ = ["sqnr_db", "converted_layers", "layer_outputs", "layer_sqnr"]


def sqnr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    """``10 log10(sum(ref²) / sum((ref - x)²))`` in dB (``inf`` when identical)."""
    ref, x = ref.double(), x.double()
    noise = (ref - x).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def converted_layers(q8_model: nn.Module) -> list[str]:
    """Dotted names of the Q8 modules in ``q8_model`` (a GELU's inner ``proj`` is covered by its Q8GELU)."""
    mods = dict(q8_model.named_modules())
    out = []
    for name, m in mods.items():
        if isinstance(m, (Q8GELU, Q8RMSNorm)):
            out.append(name)
        elif isinstance(m, Q8Linear):
            parent = mods.get(name.rpartition(".")[0])
            if not isinstance(parent, Q8GELU):
                out.append(name)
    return out


def _capture(model: nn.Module, names, run):
    """Run ``run(model)`` and record ``(args, kwargs, output)`` of each named module's first call."""
    seen, hooks = {}, []
    mods = dict(model.named_modules())
    for name in names:
        def hook(mod, args, kwargs, out, name=name):
            seen.setdefault(name, (args, kwargs, out))
        hooks.append(mods[name].register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            run(model)
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.no_grad()
def layer_outputs(ref_model: nn.Module, q8_model: nn.Module, run, isolated: bool = True) -> dict:
    """``{name: (reference output, Q8 output)}`` for every converted module of ``q8_model``.

    ``run(model)`` performs one forward pass (same inputs for both models). With ``isolated=True``
    each Q8 module is fed exactly the input its high-precision twin saw, so the difference is the
    error that layer alone adds; with ``isolated=False`` both models run end to end and the
    difference includes everything accumulated upstream (fused blocks run diffusers' forward meanwhile,
    :func:`q8lib.fused.module_forwards`, so that every converted module is seen).
    """
    names = converted_layers(q8_model)
    if not names:
        raise SettingsError("q8_model has no Q8 modules; quantize it first (q8lib.quantize_)")
    ref = _capture(ref_model, names, run)
    q8_mods = dict(q8_model.named_modules())
    if isolated:
        q8_out = {n: q8_mods[n](*args, **kwargs) for n, (args, kwargs, _) in ref.items()}
    else:
        with module_forwards(q8_model):
            q8_out = {n: out for n, (_, _, out) in _capture(q8_model, names, run).items()}
    return {n: (ref[n][2], q8_out[n]) for n in names if n in ref and n in q8_out}


def layer_sqnr(ref_model: nn.Module, q8_model: nn.Module, run, isolated: bool = True) -> dict[str, float]:
    """SQNR (dB) of each converted module's output against the same module of ``ref_model``, in module
    order; see :func:`layer_outputs` for ``run`` and ``isolated``."""
    return {n: sqnr_db(r, q) for n, (r, q) in layer_outputs(ref_model, q8_model, run, isolated).items()}
