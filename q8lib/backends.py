"""Backend registry: who computes the Q8 ops, and the one interface every caller goes through.

A backend implements the ops of :class:`Backend` on some devices. The Q8 modules
(:mod:`q8lib.modules`), the fused block forward (:mod:`q8lib.fused`) and the attention processor
(:mod:`q8lib.attention`) call a resolved backend's methods and nothing else: no probing for
optional methods, no imports of kernel modules. ``reference`` (pure PyTorch, every device) always
exists and defines the math; faster ones (``triton``, ``q8_kernels``) register themselves when
their module is imported and report why they are unavailable otherwise. ``"auto"`` picks the
fastest one that supports the tensor's device.

Shapes: ``M`` tokens (leading dims flattened), ``K`` input / ``N`` output features, ``B, H, S, D``
batch, heads, sequence, head dim. 8-bit codes are int8 or float8_e4m3fn with float32 scales.
"""
from __future__ import annotations

import torch

from . import reference as ref
from .errors import BackendUnavailableError, SettingsError

__all__ = ["Backend", "BackendUnavailableError", "register_backend", "get_backend", "resolve_backend", "list_backends",
           "ATTENTION_MODES", "attention_mode"]

#: What the attention ops compute (``mode``): FP8 with Hadamard-rotated q/k (:func:`~q8lib.reference.fp8_attention_ref`),
#: INT8 q·k with 16-bit P·V (:func:`~q8lib.reference.int8_attention_ref`), plain SDPA, or FP8 with one scale per
#: tensor and K smoothing (:func:`~q8lib.reference.fp8_tensor_attention_ref`: cuDNN's FP8 engine on Hopper).
ATTENTION_MODES = ("fp8", "int8", "sdpa", "fp8_tensor")


def attention_mode(mode) -> str:
    """One of :data:`ATTENTION_MODES`; ``True``/``False`` (the earlier ``fp8`` flag) mean ``"fp8"``/``"sdpa"``."""
    if mode is True or mode is False:
        return "fp8" if mode else "sdpa"
    if mode not in ATTENTION_MODES:
        raise SettingsError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")
    return mode


class Backend:
    """The op interface, with the reference math as its implementation. Subclasses override what
    they compute faster; an op they do not override still runs, through the ops they do."""

    name = "reference"
    priority = 0  # "auto" tries higher priorities first
    #: whether :mod:`q8lib.fused` should give LTX blocks its fused forward on this backend (it is
    #: correct everywhere; it pays where the fused ops below are single kernels)
    fused_blocks = False

    def unavailable_reason(self) -> str | None:
        """``None`` if usable in this process, else a sentence naming what is missing."""
        return None

    def supports_device(self, device: torch.device) -> bool:
        return True

    # --- linear ops ------------------------------------------------------------------------------
    def quantize_activation(self, x, qdtype, hadamard_block=None):
        """``x [..., K]`` -> rotated, per-token quantized ``(q [..., K], scale [...] fp32)``."""
        return ref.quantize_activation_ref(x, qdtype, hadamard_block)

    def gated_quantize(self, x, head_gate, qdtype, hadamard_block=None):
        """``x [..., K]`` times per-head gates ``head_gate [..., H]`` (each over ``K / H`` consecutive channels),
        rotated and quantized per token -> ``(q, scale)`` (gated attention's output ahead of ``to_out``)."""
        return self.quantize_activation(ref.head_gates_ref(x, head_gate), qdtype, hadamard_block)

    def matmul(self, x_q, x_scale, w_q, w_scale, bias=None, activation=None, out_dtype=torch.bfloat16):
        """8-bit GEMM with the scale/bias/activation epilogue: ``[..., K] x [N, K] -> [..., N]``."""
        return ref.q8_matmul_ref(x_q, x_scale, w_q, w_scale, bias, activation, out_dtype)

    def gemm_fuses_gelu(self, qdtype: torch.dtype, device: torch.device) -> bool:
        """Whether ``matmul(..., activation="gelu_tanh")`` applies the GELU inside the GEMM for this
        dtype and device. If not, the fused block applies it in the next quantizer
        (:meth:`gelu_quantize`) rather than in a pass of its own."""
        return True

    def gelu_quantize(self, x, qdtype, hadamard_block=None):
        """tanh-GELU + rotation + quantization of ``x [..., K]`` (the FFN hidden) -> ``(q, scale)``."""
        return ref.gelu_quantize_ref(x, qdtype, hadamard_block)

    def rms_norm(self, x, weight=None, eps=1e-6, scale=None, shift=None):
        """RMSNorm with optional affine weight and AdaLN modulation ``* (1 + scale) + shift``."""
        return ref.rms_norm_ref(x, weight, eps, scale, shift)

    def rms_norm_quantize(self, x, weight, eps, scale, shift, qdtype, hadamard_block=None):
        """Fused RMSNorm + modulation + rotation + quantization -> ``(q, scale)``."""
        return self.quantize_activation(self.rms_norm(x, weight, eps, scale, shift), qdtype, hadamard_block)

    def add_quantize(self, x, residual, gate, qdtype, hadamard_block=None, norm=False, weight=None, eps=1e-6,
                     scale=None, shift=None):
        """Gated residual add + the next quantizer: ``h = x + residual * gate`` (``gate`` optional), then
        ``h`` (``norm=False``) or ``RMSNorm(h) * (1 + scale) + shift`` rotated and quantized.
        Returns ``(h [..., K] in x.dtype, q [..., K], scale [...])``."""
        h = x + residual * gate if gate is not None else x + residual
        if norm:
            return (h, *self.rms_norm_quantize(h, weight, eps, scale, shift, qdtype, hadamard_block))
        return (h, *self.quantize_activation(h, qdtype, hadamard_block))

    # --- attention ops ---------------------------------------------------------------------------
    def attention_unavailable_reason(self, mode: str) -> str | None:
        """Why this backend cannot run attention ``mode`` (``None``: it can; the reference runs every mode)."""
        return None

    def attention(self, q, k, v, key_lengths=None, sm_scale=None, mode="fp8"):
        """``[B, H, S, D]`` attention; ``mode`` (:func:`attention_mode`): ``"fp8"`` (Hadamard-rotated q/k, e4m3),
        ``"int8"`` (smoothed, balanced int8 q/k, 16-bit P·V), ``"sdpa"`` or ``"fp8_tensor"`` (per-tensor e4m3 after
        K smoothing where there are enough queries and keys, :func:`~q8lib.reference.fp8_tensor_applies`; SDPA
        otherwise; q's scale from its amax here, from its norm's bound in :meth:`attention_core`)."""
        mode = attention_mode(mode)
        if mode == "fp8":
            return ref.fp8_attention_ref(q, k, v, key_lengths, sm_scale)
        if mode == "int8":
            return ref.int8_attention_ref(q, k, v, key_lengths, sm_scale)
        if mode == "fp8_tensor" and ref.fp8_tensor_applies(q.shape[-2], k.shape[-2]):
            return ref.fp8_tensor_attention_ref(q, k, v, key_lengths, sm_scale)
        return ref.sdpa_attention(q, k, v, key_lengths, sm_scale)

    def attention_core(self, attn, query, key, value, image_rotary_emb=None, key_lengths=None, mode="fp8",
                       key_rotary_emb=None):
        """Everything between an ``LTXAttention``'s (or ``LTX2Attention``'s) projections and its ``to_out``:
        ``norm_q``/``norm_k``, RoPE (``(cos, sin) [B, S, H*D]`` or LTX-2's split ``[B|1, H, S, D/2]``; the keys'
        own tables ``key_rotary_emb`` where they differ), :meth:`attention` in ``mode``. ``query [B, Sq, H*D]``,
        ``key``/``value [B, Sk, H*D]``, ``key_lengths [B]`` int32 or ``None`` -> ``[B, Sq, H*D]``."""
        if attention_mode(mode) == "fp8_tensor":  # the module's path: q's static scale (attention_codes)
            coded = self.attention_codes(attn, query, key, value, image_rotary_emb, key_lengths, key_rotary_emb)
            if coded is not None:
                return (coded[0].float() * coded[1]).to(value.dtype)
        q, k, v = ref.attention_inputs(attn, query, key, value, image_rotary_emb, key_rotary_emb)
        return self.attention(q, k, v, key_lengths, None, mode).transpose(1, 2).flatten(2, 3)

    def attention_codes(self, attn, query, key, value, image_rotary_emb=None, key_lengths=None, key_rotary_emb=None):
        """``attention="fp8_tensor"`` as :meth:`attention_core` computes it, stopped at the e4m3 output: ``(codes
        [B, Sq, H*D] float8_e4m3fn, descale [] float32)`` with ``codes * descale`` the attention output, which
        ``to_out`` can take without a decoding pass; ``None`` where this backend has no such path (the caller runs
        :meth:`attention_core`)."""
        if not ref.fp8_tensor_applies(query.shape[1], key.shape[1]):
            return None
        q, k, v = ref.attention_inputs(attn, query, key, value, image_rotary_emb, key_rotary_emb)
        codes, descale = ref.fp8_tensor_attention_ref(q, k, v, key_lengths, codes=True,
                                                      q_scale=ref.fp8_tensor_q_scale(attn))
        return codes.transpose(1, 2).flatten(2, 3), descale

    def __repr__(self) -> str:
        return f"<q8lib backend {self.name!r}>"


_REGISTRY: dict[str, Backend] = {}
_RESOLVED: dict[tuple[str, torch.device], Backend] = {}
_OPTIONAL = {"triton": "q8lib.kernels", "q8_kernels": "q8lib.q8_kernels_backend"}


def register_backend(backend: Backend) -> Backend:
    _REGISTRY[backend.name] = backend
    _RESOLVED.clear()
    return backend


def _import_optional() -> None:
    import importlib

    for name, module in _OPTIONAL.items():
        if name not in _REGISTRY:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as e:  # the backend module itself is not written/installed
                if e.name != module:
                    raise


def list_backends() -> dict[str, str | None]:
    """Name -> ``None`` if available, else the reason it is not."""
    _import_optional()
    return {name: b.unavailable_reason() for name, b in sorted(_REGISTRY.items())}


def get_backend(name: str) -> Backend:
    """Return the named backend or raise :class:`BackendUnavailableError` saying what is missing."""
    _import_optional()
    if name not in _REGISTRY:
        raise BackendUnavailableError(f"Unknown q8lib backend {name!r}; known: {sorted(_REGISTRY)}.")
    backend = _REGISTRY[name]
    reason = backend.unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"q8lib backend {name!r} is unavailable: {reason}")
    return backend


def resolve_backend(name: str, device: torch.device | str) -> Backend:
    """``"auto"`` -> the highest-priority available backend supporting ``device``; else :func:`get_backend`.

    Cached per (name, device): modules call this on every forward.
    """
    key = (name, torch.device(device))
    if key not in _RESOLVED:
        _RESOLVED[key] = _resolve(name, key[1])
    return _RESOLVED[key]


def _resolve(name: str, device: torch.device) -> Backend:
    if name != "auto":
        backend = get_backend(name)
        if not backend.supports_device(torch.device(device)):
            raise BackendUnavailableError(f"q8lib backend {name!r} does not run on device {device}.")
        return backend
    _import_optional()
    for backend in sorted(_REGISTRY.values(), key=lambda b: -b.priority):
        if backend.unavailable_reason() is None and backend.supports_device(device):
            return backend
    return _REGISTRY["reference"]


register_backend(Backend())
