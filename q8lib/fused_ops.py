"""The pieces every fused forward shares (:mod:`q8lib.fused` for LTX-Video 0.9.x blocks and FFNs,
:mod:`q8lib.fused_ltx2` for LTX-2 blocks): a Q8 linear from already quantized rows, the FFN from quantized
rows, the LoRA check that sends a block back to diffusers' forward, and per-mask caches of key lengths.

Every op goes through the backend the caller resolved (:mod:`q8lib.backends`), so the reference backend runs the
same fused forwards on any device and tests compare them with diffusers' forwards.
"""
from __future__ import annotations

from torch import nn

from .modules import Q8GELU, Q8Linear
from .quant import host_sync_allowed

__all__ = ["q8_of", "linear", "ffn", "runs_adapter", "ffn_eligible", "ffn_slots", "once_per_mask"]


def q8_of(lin) -> Q8Linear:
    """The ``Q8Linear`` itself, also under a LoRA layer (peft's ``base_layer``)."""
    return lin if type(lin) is Q8Linear else getattr(lin, "base_layer", lin)


def _bias(lin: Q8Linear, dtype):
    """The bias in the output dtype when a cast copy is held (saves a cast per call), else fp32."""
    b = getattr(lin, "bias_out", None)
    return b if b is not None and b.dtype == dtype else lin.bias


def linear(be, lin, x_q, x_s, out_dtype, activation=None):
    """``lin`` (a ``Q8Linear``, or a LoRA layer around one whose adapter is off) on quantized rows
    ``x_q [..., K]`` with scales ``x_s [...]`` -> ``[..., N]`` in ``out_dtype``."""
    lin = q8_of(lin)
    return be.matmul(x_q, x_s, lin.weight, lin.scales, _bias(lin, out_dtype), activation, out_dtype)


def ffn(be, ff, x_q, x_s, out_dtype):
    """diffusers' ``FeedForward`` (up-projection + tanh-GELU + down-projection) from quantized rows ``x_q``."""
    up, down = ff.net[0].proj, q8_of(ff.net[2])
    qd, hb = down.qdtype, down.hadamard_block
    if be.gemm_fuses_gelu(qd, x_q.device):  # GELU in the up-projection's epilogue
        h = linear(be, up, x_q, x_s, out_dtype, "gelu_tanh")
        h_q, h_s = be.quantize_activation(h, qd, hb)
    else:  # a GEMM without that epilogue (cuBLAS): GELU in the down-projection's quantizer instead
        h_q, h_s = be.gelu_quantize(linear(be, up, x_q, x_s, out_dtype), qd, hb)
    return linear(be, down, h_q, h_s, out_dtype)


def runs_adapter(slots) -> bool:
    """Whether a LoRA layer in one of ``slots`` (``(parent._modules, name)`` pairs, where peft puts a LoRA layer
    in or takes it out) adds to its output: it needs the float input, which a fused path does not form."""
    return any(type(d[k]) is not Q8Linear and d[k].runs_adapter() for d, k in slots)


def ffn_slots(ff) -> list:
    """``(parent._modules, name)`` of a ``FeedForward``'s two linears (see :func:`runs_adapter`)."""
    net = ff.net
    return [(net[0]._modules, "proj"), (net._modules, "2")]


def ffn_eligible(ff) -> bool:
    """Whether ``ff`` is diffusers' ``FeedForward`` as q8lib converts it: ``[Q8GELU, Dropout, Q8Linear, Dropout?]``
    (LoRA layers around the linears allowed) with both linears in one 8-bit format."""
    net = getattr(ff, "net", None)
    if type(ff).__name__ != "FeedForward" or not isinstance(net, nn.ModuleList) or len(net) not in (3, 4):
        return False
    if not isinstance(net[0], Q8GELU) or not all(isinstance(m, nn.Dropout) for m in list(net)[1::2]):
        return False
    up, down = q8_of(net[0].proj), q8_of(net[2])
    return isinstance(up, Q8Linear) and isinstance(down, Q8Linear) and (
        (up.qdtype, up.hadamard_block, up.backend) == (down.qdtype, down.hadamard_block, down.backend))


def once_per_mask(mask, batch, fn, attr: str):
    """``fn(mask, batch)`` once per mask tensor in eager mode, cached on the tensor as ``attr``: the mask checks
    (:func:`q8lib.attention.mask_to_key_lengths`, :func:`q8lib.ltx2.key_mask`) sync with the GPU, and diffusers
    passes the same mask object to every block of a forward. ``None`` for no mask."""
    if mask is None:
        return None
    if not host_sync_allowed(mask):
        # in a graph: no sync (the check is skipped there), and no cached tensor a replay would not refresh
        return fn(mask, batch)
    version = -1 if mask.is_inference() else mask._version  # inference tensors keep no version counter
    cached = getattr(mask, attr, None)
    if cached is None or cached[0] != version or cached[1] != batch:
        cached = (version, batch, fn(mask, batch))
        setattr(mask, attr, cached)
    return cached[2]
