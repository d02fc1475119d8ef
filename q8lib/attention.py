"""The Q8 attention processors for diffusers 0.42's ``LTXAttention`` and LTX-2's ``LTX2Attention``.

They compute q/k/v through the (Q8) projections, apply ``norm_q``/``norm_k`` and RoPE as
diffusers does, then run attention through the backend in one of :data:`~q8lib.backends.ATTENTION_MODES`:
FP8 with Hadamard-rotated q/k by default, INT8 q·k with 16-bit P·V (LTX-Video 0.9.x), or plain SDPA. The text mask that diffusers passes to cross-attention as an additive
bias (``0`` keep, ``-10000`` drop, shape ``[B, 1, Tk]``) is turned into right-padded key lengths.
:class:`Q8LTX2AttnProcessor` adds what LTX-2 needs (:mod:`q8lib.ltx2`).

:func:`set_q8_attention` installs them on every attention module (the processor that fits each
module's class) and remembers the originals; :func:`restore_attention` undoes it. Nothing in diffusers is patched.
"""
from __future__ import annotations

import torch
from torch import nn

from .backends import BackendUnavailableError, attention_mode, resolve_backend
from .errors import SettingsError
from .fused_ops import once_per_mask
from .ltx2 import key_mask, ltx2_attention_core
from .modules import Q8Linear
from .offload import is_offloaded, onloaded
from .quant import host_sync_allowed
from .reference import apply_rotary_emb, attention_inputs

__all__ = ["Q8AttnProcessor", "Q8LTX2AttnProcessor", "q8_attention_core", "ltx2_core", "coded_attention",
           "ltx2_coded_attention", "head_gates", "apply_gates",
           "mask_to_key_lengths", "check_fp8_attention", "set_q8_attention", "restore_attention", "apply_rotary_emb",
           "project_qkv"]


def mask_to_key_lengths(mask: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Additive-bias (``0``/negative) or boolean (``True`` = keep) key mask -> int32 lengths ``[B]``.

    Accepts ``[B, Tk]``, ``[B, 1, Tk]`` or ``[B, 1, 1, Tk]``. The mask must keep a prefix of the
    keys (right padding, as T5 tokenization gives); outside torch.compile and CUDA-graph capture
    that is checked and a ``ValueError`` is raised otherwise. Lengths of 0 are clamped to 1 by the attention ops.
    """
    m = mask.reshape(batch_size, -1, mask.shape[-1])[:, 0]
    keep = m if m.dtype == torch.bool else m > -1.0
    lengths = keep.sum(-1, dtype=torch.int32)
    if host_sync_allowed(keep):  # the check syncs with the GPU
        prefix = torch.arange(keep.shape[-1], device=keep.device)[None] < lengths[:, None]
        if not bool((prefix == keep).all()):
            raise SettingsError(
                "q8lib attention supports right-padded key masks only (a kept prefix per sample); "
                "this mask keeps non-contiguous keys."
            )
    return lengths


def q8_attention_core(attn, query, key, value, image_rotary_emb=None, key_lengths=None, mode="fp8", backend="auto",
                      key_rotary_emb=None):
    """Everything between the projections and ``to_out``: ``norm_q``/``norm_k``, RoPE, attention.

    ``query [B, Sq, H*D]``, ``key``/``value [B, Sk, H*D]`` are the raw projection outputs;
    ``key_lengths [B]`` int32 right-padding lengths or ``None``; ``mode``: ``"fp8"``, ``"int8"``, ``"sdpa"`` or
    ``"fp8_tensor"`` (``True``/``False`` as the earlier ``fp8`` flag); ``key_rotary_emb``: the keys' own RoPE
    tables where they differ from the queries' ``image_rotary_emb`` (LTX-2's a2v/v2a). Returns ``[B, Sq, H*D]`` in ``value.dtype``.
    Runs the backend's ``attention_core`` (the triton backend fuses norm + RoPE, + rotation and
    quantization for FP8 or smoothing, balancing and quantization for INT8, into its producers); under
    diffusers' context parallelism the backend's ``attention`` runs inside q8lib's ring/all-to-all exchange instead.
    """
    mode = attention_mode(mode)
    be = resolve_backend(backend, query.device)
    # Set by diffusers' enable_parallelism(ContextParallelConfig(...)) on processors that declare it.
    parallel = getattr(getattr(attn, "processor", None), "_parallel_config", None)
    if parallel is None:
        # the keys' tables only when there are any: a backend written before key_rotary_emb keeps working
        extra = {} if key_rotary_emb is None else {"key_rotary_emb": key_rotary_emb}
        return be.attention_core(attn, query, key, value, image_rotary_emb, key_lengths, mode, **extra).to(value.dtype)
    from .parallel import context_parallel_attention

    q, k, v = attention_inputs(attn, query, key, value, image_rotary_emb, key_rotary_emb)
    out = context_parallel_attention(q, k, v, key_lengths, parallel,
                                     lambda q, k, v, lengths: be.attention(q, k, v, lengths, None, mode))
    return out.transpose(1, 2).flatten(2, 3).to(value.dtype)


def _shared_format(lins) -> tuple | None:
    """``(qdtype, hadamard_block, backend)`` when the projections are all bare ``Q8Linear`` of one format (so one
    quantization of their input serves all); ``None`` otherwise (LoRA layers, high-precision or mixed linears)."""
    if not all(type(m) is Q8Linear for m in lins):
        return None
    formats = {(m.qdtype, m.hadamard_block, m.backend, m.in_features) for m in lins}
    return next(iter(formats))[:3] if len(formats) == 1 else None


def project_qkv(attn, hidden_states, context, need_qk: bool = True):
    """``(to_q(hidden_states), to_k(context), to_v(context))``; ``q`` and ``k`` are ``None`` unless ``need_qk``.

    With Q8 projections of one format the context is rotated and quantized once for ``to_k`` and ``to_v``, and
    in self-attention (``context is hidden_states``) those codes serve ``to_q`` too: one row pass instead of one
    per projection. Outputs are in their input's dtype, as each ``Q8Linear`` called on its own gives."""
    kv = _shared_format((attn.to_k, attn.to_v))
    if kv is None:
        value, key, c_q = attn.to_v(context), (attn.to_k(context) if need_qk else None), None
    else:
        c_q, c_s = resolve_backend(kv[2], context.device).quantize_activation(context, kv[0], kv[1])
        value = attn.to_v(c_q, c_s, context.dtype)
        key = attn.to_k(c_q, c_s, context.dtype) if need_qk else None
    if not need_qk:
        return None, None, value
    if c_q is not None and hidden_states is context and _shared_format((attn.to_q, attn.to_k)) is not None:
        return attn.to_q(c_q, c_s, hidden_states.dtype), key, value
    return attn.to_q(hidden_states), key, value


class Q8AttnProcessor:
    """Attention processor for ``LTXAttention`` with FP8 (``mode="fp8"``), INT8 (``"int8"``) or SDPA attention.

    Works with Q8 or ordinary ``nn.Linear`` projections. ``backend`` names the q8lib backend for
    the attention op (``"auto"``: the fastest for the device). ``fp8=True/False``: the earlier spelling of
    ``mode="fp8"/"sdpa"`` (it wins when given).
    """

    _parallel_config = None  # diffusers' context parallelism sets this (see q8lib.parallel)

    def __init__(self, mode: str | bool = "fp8", backend: str = "auto", *, fp8: bool | None = None):
        self.mode = attention_mode(mode if fp8 is None else fp8)
        self.backend = backend

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        norms = [m for m in (getattr(attn, "norm_q", None), getattr(attn, "norm_k", None)) if m is not None]
        if any(is_offloaded(m) for m in norms):  # sequential CPU offload: the triton core reads their weights
            with onloaded(norms):
                return self._attend(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        return self._attend(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

    def _attend(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query, key, value = project_qkv(attn, hidden_states, context)
        key_lengths = None if attention_mask is None else mask_to_key_lengths(attention_mask, hidden_states.shape[0])
        coded = coded_attention(attn, attn.to_out[0], query, key, value, image_rotary_emb, key_lengths, self.mode,
                                self.backend)
        if coded is not None:  # fp8_tensor: to_out reads the e4m3 output
            return attn.to_out[1](attn.to_out[0](*coded, value.dtype))
        out = q8_attention_core(attn, query, key, value, image_rotary_emb, key_lengths, self.mode, self.backend)
        return attn.to_out[1](attn.to_out[0](out))


_NO_INT8_LTX2 = "INT8 attention is built for LTX-Video 0.9.x's attention only; for LTX-2 use attention='fp8' or 'sdpa'"


class Q8LTX2AttnProcessor(Q8AttnProcessor):
    """Attention processor for LTX-2's ``LTX2Attention`` (the work of diffusers' ``LTX2AudioVideoAttnProcessor``
    and ``LTX2PerturbedAttnProcessor``), FP8 or SDPA (INT8 is refused), with Q8 or ordinary projections.

    diffusers' steps: gate logits from the query input (``to_gate_logits``, gated attention), q/k/v,
    ``norm_q``/``norm_k`` (RMSNorm across heads), RoPE on q with ``query_rotary_emb`` and on k with
    ``key_rotary_emb`` (a2v/v2a cross-attention; default: the query's), attention, ``2 * sigmoid(gate logits)``
    per head, ``to_out``. Spatio-temporal guidance as diffusers' perturbed processor: ``all_perturbed`` skips
    attention (the values pass), ``perturbation_mask [B, 1, 1]`` interpolates between values and attention.
    Attention with key lengths or no mask runs :func:`q8_attention_core` (norm + RoPE, interleaved or split, the
    keys' own tables in a2v/v2a, fused into the producers on a GPU); masks that are not right-padded key masks run
    :func:`q8lib.ltx2.ltx2_attention_core`, SDPA under the mask in the model dtype (:func:`q8lib.ltx2.key_mask`).
    Context parallelism is refused.
    """

    def __init__(self, mode: str | bool = "fp8", backend: str = "auto", *, fp8: bool | None = None):
        super().__init__(mode, backend, fp8=fp8)
        if self.mode == "int8":
            raise SettingsError(_NO_INT8_LTX2)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, query_rotary_emb=None,
                 key_rotary_emb=None, perturbation_mask=None, all_perturbed=None):
        if self._parallel_config is not None:
            raise SettingsError("context parallelism is not supported with q8lib's LTX-2 attention; quantize with "
                                "attention='keep' (diffusers' attention, 8-bit linears) to use it")
        args = (attn, hidden_states, encoder_hidden_states, attention_mask, query_rotary_emb, key_rotary_emb,
                perturbation_mask, all_perturbed)
        norms = [m for m in (getattr(attn, "norm_q", None), getattr(attn, "norm_k", None)) if m is not None]
        if any(is_offloaded(m) for m in norms):  # sequential CPU offload: the triton core reads their weights
            with onloaded(norms):
                return self._attend_ltx2(*args)
        return self._attend_ltx2(*args)

    def _attend_ltx2(self, attn, hidden_states, encoder_hidden_states, attention_mask, query_rotary_emb,
                     key_rotary_emb, perturbation_mask, all_perturbed):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        gate_logits = None if attn.to_gate_logits is None else attn.to_gate_logits(hidden_states)
        if all_perturbed is None:  # as diffusers: a host sync, only when STG passes a mask without the flag
            all_perturbed = perturbation_mask is not None and bool((perturbation_mask == 0).all())
        query, key, value = project_qkv(attn, hidden_states, context, need_qk=not all_perturbed)
        if all_perturbed:
            out = value
        else:
            coded = None if perturbation_mask is not None else ltx2_coded_attention(
                attn, attn.to_out[0], query, key, value, query_rotary_emb, key_rotary_emb, attention_mask, self.mode,
                self.backend, gate_logits)
            if coded is not None:  # fp8_tensor: to_out reads the e4m3 output
                return attn.to_out[1](attn.to_out[0](*coded, value.dtype))
            out = ltx2_core(attn, query, key, value, query_rotary_emb, key_rotary_emb, attention_mask, self.mode,
                            self.backend)
            if perturbation_mask is not None:
                out = torch.lerp(value, out, perturbation_mask)
        return attn.to_out[1](attn.to_out[0](apply_gates(attn, out, gate_logits)))


def ltx2_core(attn, query, key, value, query_rotary_emb, key_rotary_emb, attention_mask, mode, backend):
    """Between an ``LTX2Attention``'s projections (``[B, S, H*D]``) and its gates: the mask read as key lengths
    (checked once per mask tensor in eager mode: the check syncs with the GPU, and diffusers hands the same mask to
    every block), then :func:`q8_attention_core` (norm + RoPE, interleaved or split, the keys' own tables in
    a2v/v2a, in the producers on a GPU); a mask that is not key lengths runs
    :func:`q8lib.ltx2.ltx2_attention_core` (SDPA under the mask). ``[B, Sq, H*D]`` out."""
    lengths, bias = once_per_mask(attention_mask, query.shape[0], key_mask, "_q8lib_key_mask") or (None, None)
    if bias is None:
        return q8_attention_core(attn, query, key, value, query_rotary_emb, lengths, mode, backend, key_rotary_emb)
    return ltx2_attention_core(attn, query, key, value, query_rotary_emb, key_rotary_emb, lengths, bias,
                               mode == "fp8", backend)


def coded_attention(attn, out_lin, query, key, value, query_rotary_emb=None, key_lengths=None, mode="fp8",
                    backend="auto", key_rotary_emb=None, gate_logits=None):
    """``attention="fp8_tensor"`` straight into ``to_out``'s 8-bit input: ``(x_q, x_scale)`` for ``out_lin`` (the
    module's ``to_out[0]``, a ``Q8Linear``) from the attention's e4m3 output (:meth:`Backend.attention_codes`),
    with no decoding pass. An e4m3 ``to_out`` that does not rotate takes the codes as they are (one scale for every
    row); otherwise its quantizer reads the codes, gates included (per-token quantization and the rotation are
    linear, so the codes' descale multiplies the scales afterwards). ``None`` when this does not apply (another
    mode, ``to_out`` not a bare ``Q8Linear``, context parallelism, a backend or input without the path): the caller
    runs the float path, the same math with the output decoded first."""
    if mode != "fp8_tensor" or type(out_lin) is not Q8Linear:
        return None
    if getattr(getattr(attn, "processor", None), "_parallel_config", None) is not None:
        return None
    be = resolve_backend(backend, query.device)
    coded = be.attention_codes(attn, query, key, value, query_rotary_emb, key_lengths, key_rotary_emb)
    if coded is None:
        return None
    codes, descale = coded
    if gate_logits is None and out_lin.qdtype == torch.float8_e4m3fn and out_lin.hadamard_block == 1:
        return codes, descale.expand(codes.shape[:-1]).contiguous()
    if gate_logits is None:
        x_q, x_s = be.quantize_activation(codes, out_lin.qdtype, out_lin.hadamard_block)
    else:
        x_q, x_s = be.gated_quantize(codes, head_gates(gate_logits), out_lin.qdtype, out_lin.hadamard_block)
    return x_q, x_s * descale


def ltx2_coded_attention(attn, out_lin, query, key, value, query_rotary_emb, key_rotary_emb, attention_mask, mode,
                         backend, gate_logits=None):
    """:func:`coded_attention` for an ``LTX2Attention`` with its mask as diffusers passes it (``None`` also for a
    mask that is not key lengths: :func:`ltx2_core` runs those)."""
    if mode != "fp8_tensor":
        return None
    lengths, bias = once_per_mask(attention_mask, query.shape[0], key_mask, "_q8lib_key_mask") or (None, None)
    if bias is not None:
        return None
    return coded_attention(attn, out_lin, query, key, value, query_rotary_emb, lengths, mode, backend, key_rotary_emb,
                           gate_logits)


def head_gates(gate_logits: torch.Tensor) -> torch.Tensor:
    """Gated attention's (LTX-2.3) per-head gates ``2 * sigmoid(gate_logits [B, S, H])``, as diffusers computes
    them (zero logits give gates of 1)."""
    return 2.0 * torch.sigmoid(gate_logits)


def apply_gates(attn, out, gate_logits):
    """Gated attention (LTX-2.3): ``out [B, S, H*D]`` times :func:`head_gates` per head; ``out`` as it is without
    gate logits. (The fused block applies the gates inside ``to_out``'s quantizer instead:
    ``Backend.gated_quantize``.)"""
    if gate_logits is None:
        return out
    return (out.unflatten(2, (attn.heads, -1)) * head_gates(gate_logits).unsqueeze(-1)).flatten(2, 3)


def _attention_modules(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "set_processor") and hasattr(m, "processor")]


def check_attention_mode(model: nn.Module, mode: str) -> None:
    """Raise :class:`~q8lib.errors.SettingsError` unless every attention module of ``model`` can run ``mode``
    (FP8: head sizes a power of two; INT8: not LTX-2's attention). Works on meta-device models, so callers
    run it before any weight changes."""
    if mode == "fp8":
        check_fp8_attention(model)
    if mode == "int8" and any(_processor_class(m) is Q8LTX2AttnProcessor for _, m in _attention_modules(model)):
        raise SettingsError(_NO_INT8_LTX2)


def check_attention_backend(model: nn.Module, mode: str, backend: str = "auto") -> None:
    """Raise :class:`~q8lib.errors.SettingsError` if the backend that will run ``model``'s attention on the device
    of its weights cannot run ``mode`` there (e.g. ``"fp8_tensor"`` on a GPU without ``nvidia-cudnn-frontend``)."""
    param = next(model.parameters(), None)
    if mode != "fp8_tensor" or param is None or param.device.type == "meta":
        return  # (fp8_tensor is the one mode with a package of its own)
    try:
        be = resolve_backend(backend, param.device)
    except BackendUnavailableError:  # e.g. backend="triton" named for a model still on the CPU: checked when it runs
        return
    reason = be.attention_unavailable_reason(mode)
    if reason is not None:
        raise SettingsError(reason)


def check_fp8_attention(model: nn.Module) -> None:
    """Raise :class:`~q8lib.errors.SettingsError` unless FP8 attention can rotate every head of ``model``.

    FP8 attention rotates q and k with a Hadamard matrix of the head size, which must be a power
    of two. Works on meta-device models, so it runs before any weight is touched.
    """
    for name, m in _attention_modules(model):
        heads = getattr(m, "heads", None)
        width = getattr(getattr(m, "to_q", None), "out_features", None)
        if not heads or not width:
            continue
        head_dim = width // heads
        if head_dim < 1 or head_dim & (head_dim - 1):
            raise SettingsError(
                f"FP8 attention rotates q/k over the head size, which must be a power of two, but {name} has "
                f"{heads} heads of {head_dim}; use attention='sdpa' (--attention sdpa: 8-bit linears, "
                "bf16 attention) or 'keep'")


def set_q8_attention(model: nn.Module, mode: str | bool = "fp8", backend: str = "auto", *,
                     fp8: bool | None = None) -> dict:
    """Install :class:`Q8AttnProcessor` (:class:`Q8LTX2AttnProcessor` on LTX-2's modules) on every attention
    module of ``model`` (``mode``: one of :data:`~q8lib.backends.ATTENTION_MODES`; ``fp8=True/False`` as earlier).

    Returns the original processors (also kept on the model) so :func:`restore_attention` can undo it.
    Raises :class:`~q8lib.errors.SettingsError` (before changing anything) if ``mode="fp8"`` and a head size
    cannot be rotated (:func:`check_fp8_attention`).
    """
    mode = attention_mode(mode if fp8 is None else fp8)
    mods = _attention_modules(model)
    if not mods:
        raise SettingsError(f"{type(model).__name__} has no attention modules with processors")
    if mode == "fp8":
        check_fp8_attention(model)
    check_attention_backend(model, mode, backend)
    processors = {cls: cls(mode, backend=backend) for cls in {_processor_class(m) for _, m in mods}}
    originals = getattr(model, "_q8_original_processors", None) or {n: m.processor for n, m in mods}
    model._q8_original_processors = originals
    for _, m in mods:
        m.set_processor(processors[_processor_class(m)])
    return originals


def _processor_class(module: nn.Module) -> type:
    """The Q8 processor for an attention module: :class:`Q8LTX2AttnProcessor` for LTX-2's ``LTX2Attention``
    (its processors take separate query/key RoPE), :class:`Q8AttnProcessor` otherwise."""
    return Q8LTX2AttnProcessor if type(module).__name__ == "LTX2Attention" else Q8AttnProcessor


def restore_attention(model: nn.Module) -> None:
    """Put back the processors that :func:`set_q8_attention` replaced."""
    originals = getattr(model, "_q8_original_processors", None)
    if not originals:
        raise SettingsError("restore_attention: no Q8 attention processors were installed on this model")
    for name, m in _attention_modules(model):
        m.set_processor(originals[name])
    del model._q8_original_processors
