"""The ``triton`` backend's linear ops (same signatures and math as :mod:`q8lib.reference`).

* ``quantize_activation`` / ``rms_norm_quantize`` / ``gelu_quantize`` / ``add_quantize``: one Triton
  pass per row (gated residual add, norm + AdaLN modulation or GELU, Hadamard rotation, amax, 8-bit
  store), ``_rowquant.py``.
* ``matmul``: the 8-bit GEMM with the scale/bias/GELU epilogue. On Hopper (sm_90+) fp8 goes to
  cuBLAS' row-wise scaled GEMM (``torch._scaled_mm`` with fast accumulation; fastest measured,
  see benchmarks/NOTES_linear.md); int8, and fp8 elsewhere (Ada, sm_89: by design, untested
  here), go to the Triton GEMM in ``_gemm.py``. ``Q8LIB_GEMM=triton|scaled_mm|int_mm`` (or
  :func:`set_gemm_impl`) overrides the choice (benchmarks).

Every kernel is a ``torch.library`` op (namespace ``q8lib``). The row ops are registered by
:func:`~q8lib.kernels._library.dual_op`: on CUDA a ``triton_op`` whose launcher torch.compile traces,
so inductor launches the kernel from its own code instead of calling back into Python for every
launch; elsewhere an opaque custom op with a fake implementation. The Triton GEMM is registered the same way. Inputs the
kernels cannot take (row length not a power of two, too long, odd dtypes, non-CUDA tensors
outside the Triton interpreter) fall back to the reference math with a one-time warning.
Unlike the reference, the kernels do not check inputs for NaN/inf (that needs a host sync).
"""
from __future__ import annotations

import functools
import json
import os
from typing import Optional

import torch
import torch.nn.functional as F

from .. import reference as ref
from ..quant import FP8, INT8, QMAX, qdtype_from_name
from ._library import dual_op, launchable, tracing
from ._rowquant import FP8_OUT, FLOAT_OUT, INT8_OUT, plan

__all__ = ["quantize_activation", "rms_norm", "rms_norm_quantize", "gelu_quantize", "add_quantize", "matmul",
           "launch_row_quant", "launch_gemm", "gemm_impl", "set_gemm_impl"]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _warn(op, reason):
    from . import warn_fallback

    warn_fallback(op, reason)


# Read once: torch.compile traces the op wrappers, and module globals trace as constants.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
GEMM_IMPL = os.environ.get("Q8LIB_GEMM", "auto")  # see gemm_impl; set_gemm_impl() changes it


def _interpret() -> bool:
    return _INTERPRET


def set_gemm_impl(name: str) -> str:
    """Force the GEMM route (``"auto"``, ``"triton"``, ``"triton_tma"``, ``"scaled_mm"``, ``"int_mm"``); returns
    the previous one. ``"triton_tma"``: the Triton GEMM, as Hopper's persistent TMA kernel on sm_90+ (opt-in:
    faster kernels, but ~130 us of host time a call without a CUDA graph; benchmarks/NOTES_linear.md)."""
    global GEMM_IMPL
    if name not in ("auto", "triton", "triton_tma", "scaled_mm", "int_mm"):
        raise ValueError(f"GEMM implementation must be auto, triton, triton_tma, scaled_mm or int_mm, got {name!r}")
    prev, GEMM_IMPL = GEMM_IMPL, name
    return prev


def _runs_here(t: torch.Tensor) -> bool:
    """Triton can run on ``t``'s device: CUDA, or the CPU through Triton's interpreter."""
    return t.is_cuda or (t.device.type == "cpu" and _interpret())


@functools.lru_cache(maxsize=8)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


_CAPABILITY: dict = {}  # a dict, not lru_cache: traceable by torch.compile


def _capability(index: int) -> int:
    if index not in _CAPABILITY:
        major, minor = torch.cuda.get_device_capability(index)
        _CAPABILITY[index] = major * 10 + minor
    return _CAPABILITY[index]


# ------------------------------------------------------------------------------------------------
# Row kernel: launcher, custom op, fake
def _rot_code(rotate: bool, hadamard_block: int | None) -> int:
    """custom-op encoding of the rotation: -1 none (also ``hadamard_block=1``: ``H_1 = [1]``), 0 full row,
    b > 1 block-diagonal."""
    return -1 if not rotate or hadamard_block == 1 else (0 if hadamard_block is None else int(hadamard_block))


def _bcast3(t: torch.Tensor | None, x: torch.Tensor):
    """``(t3, batch stride, seq stride)``: ``t`` broadcast to ``x`` and viewed like :func:`_as3` (no copy
    for the usual ``[B, 1, K]`` / ``[K]`` modulations)."""
    if t is None:
        return None, 0, 0
    if t.shape[-1] != x.shape[-1]:
        raise ValueError(f"modulation of shape {tuple(t.shape)} does not match rows of {x.shape[-1]}")
    t3 = _as3(t.expand(x.shape))
    return t3, t3.stride(0), t3.stride(1)


def _as3(x: torch.Tensor) -> torch.Tensor:
    """``x [..., S, K]`` -> ``[Bf, S, K]`` (``[M, K]`` -> ``[1, M, K]``) with a contiguous last dim."""
    x3 = x.reshape(1, -1, x.shape[-1]) if x.dim() <= 2 else x.reshape(-1, x.shape[-2], x.shape[-1])
    return x3 if x3.stride(-1) == 1 else x3.contiguous()


_ROW_FIT: dict = {}  # kernel variant -> the launch (as in _ROW_DEFAULT_TUNE, plus "tile") that fitted
# The default launch (v1 in benchmarks/NOTES_linear.md): persistent grid of 4 programs per SM, warps by tile size.
_ROW_DEFAULT_TUNE = {"stages": 3, "warps": None, "progs_per_sm": 4, "batched": False}
# Launch settings measured per GPU architecture and row-op kind: ``benchmarks/sweep_rows.py --table``
# times every launch form on the device and writes the fastest per kind here. Kinds missing from the
# table (other GPUs, other row lengths) use the default above.
_TUNE_FILE = os.path.join(os.path.dirname(__file__), "row_tune.json")


@functools.lru_cache(maxsize=1)
def _tune_table() -> dict:
    try:
        with open(_TUNE_FILE) as f:
            return json.load(f)
    except FileNotFoundError:  # a trimmed install: every kind keeps the default launch
        return {}


def row_kind(K: int, norm: bool, gelu: bool, residual: bool, rot: int) -> str:
    """The tuning-table key of a row op: ``"2048/add_norm/full"``, ``"8192/gelu/full"``, ..."""
    kind = "norm" if norm else "gelu" if gelu else "plain"
    if residual:
        kind = "add_norm" if norm else "add"
    return f"{K}/{kind}/{'none' if rot < 0 else 'full' if rot == 0 else f'b{rot}'}"


def _programs(device: torch.device, n_tiles: int, per_sm: int) -> int:
    """Programs of a tile grid: ``per_sm`` persistent programs per SM (each loops over tiles), or one
    program per tile for ``per_sm == 0``; a few in Triton's CPU interpreter (still exercising the loop)."""
    if device.type != "cuda":
        return min(n_tiles, 4)
    return n_tiles if per_sm == 0 else min(n_tiles, per_sm * _sm_count(device.index or 0))


def _table_tune(device: torch.device, key: str):
    """The measured launch form for ``key`` on this GPU's architecture, or ``None``."""
    if device.type != "cuda":
        return None
    return table_entry(_capability(device.index or 0), key)


def table_entry(capability: int, key: str):
    """The measured launch form for ``key`` on GPUs of compute capability ``capability`` (90: sm_90), or ``None``."""
    return _tune_table().get(f"sm_{capability}", {}).get(key)


def row_attempts(K: int, tile: int, measured: dict | None) -> list:
    """The launch forms :func:`launch_row_quant` tries in order for rows of ``K`` (``tile``: the default
    plan's elements a tile): the ``measured`` one (row_tune.json) if any, then the default plan with 3
    stages, 1 stage, then halved tiles. torch.compile launches only the first."""
    attempts = [dict(_ROW_DEFAULT_TUNE, tile=measured["rows"] * K, **measured)] if measured else []
    return attempts + [dict(_ROW_DEFAULT_TUNE, tile=te, stages=st)
                       for te, st in [(tile, 3), (tile, 1)] + [(tile >> i, 1) for i in range(1, 8) if (tile >> i) >= K]]


def row_meta(K: int, hadamard_block: int | None, rotate: bool, t: dict, *, norm: bool, gelu: bool, has_weight: bool,
             has_scale: bool, has_shift: bool, residual: bool, gate: bool, out_dtype: torch.dtype,
             cuda: bool = True) -> dict:
    """The row kernel's constexprs, ``num_warps`` and ``num_stages`` for the launch form ``t`` (one of
    :func:`row_attempts`): what :func:`launch_row_quant` passes (``q8lib.kernels.targets`` compiles it too)."""
    rows_per, A, B, left = plan(K, hadamard_block, rotate, t["tile"])
    elems = rows_per * K
    return {
        "K": K, "ROWS": rows_per, "A": A, "LOGA": A.bit_length() - 1, "B": B, "LOGB": B.bit_length() - 1,
        "NORM": norm, "HAS_W": has_weight, "HAS_SCALE": has_scale, "HAS_SHIFT": has_shift,
        "GELU": gelu, "ROTATE": rotate, "LEFT": left, "DOT_BF16": cuda,
        "QMODE": {INT8: INT8_OUT, FP8: FP8_OUT}.get(out_dtype, FLOAT_OUT), "QMAX": QMAX.get(out_dtype, 1.0),
        "SOFT_FP8": not cuda, "RESID": residual, "HAS_GATE": gate, "BATCHED": bool(t["batched"]),
        "num_warps": t["warps"] or (4 if elems <= 2048 else (8 if elems <= 16384 else 16)), "num_stages": t["stages"],
    }


def launch_row_quant(x, weight, scale, shift, eps, norm, gelu, rot, out, out_scale=None,
                     residual=None, gate=None, h_out=None, tune=None):
    """Run the row kernel on ``x [..., K]`` into preallocated ``out [M, K]`` (+ ``out_scale [M]`` fp32).

    ``out.dtype`` picks the mode: int8 / float8_e4m3fn quantize, a float dtype writes the transformed
    rows. ``rot`` as :func:`_rot_code`. With ``residual`` (shape of ``x``) the rows are first
    ``x + residual * gate`` (``gate`` broadcast like ``scale``, optional), written to ``h_out [M, K]``.
    Tests call this directly to poison the outputs beforehand. ``tune`` (benchmarks, tests) fixes the
    launch instead of the default plan: a dict of ``rows``, ``stages``, ``warps``, ``progs_per_sm``
    (0: one program per tile, no persistent loop) and ``batched`` (H_A as one batched product).
    """
    import triton
    from triton.runtime.errors import OutOfResources

    from ._rowquant import _row_quant_kernel

    # torch.compile traces this launcher with fake tensors (the ops below are triton_ops): the kernel is
    # then recorded through wrap_triton, and launched later from inductor's code, so nothing can fail here
    # and the launch form is decided now (the one that fitted in eager runs, else the first attempt).
    traced = tracing(x)
    kernel = launchable(_row_quant_kernel, x)
    K = x.shape[-1]
    hb, rotate = (None if rot <= 0 else rot), rot >= 0
    p = plan(K, hb, rotate)
    if isinstance(p, str):
        raise ValueError(p)
    x3 = _as3(x)
    M, S = x3.shape[0] * x3.shape[1], x3.shape[1]
    if M == 0:
        return out, out_scale
    sc, sscb, scs = _bcast3(scale, x)
    sh, sshb, shs = _bcast3(shift, x)
    rs, rsb, rss = _bcast3(residual, x)
    g, gb, gs = _bcast3(gate, x)
    dummy = x3
    # The launch: the form measured fastest for this GPU and op kind (row_tune.json) if there is one,
    # then the default plan; on "out of resource" (shared memory depends on the tile, the pipelining
    # depth and the input dtype) the next attempt: fewer stages, then half the tile. The launch that
    # fitted is remembered per kernel variant, so the table lookup, failed compiles and exceptions are
    # paid once, not on every call (that host time showed up in the H100 timings).
    tile = p[0] * K
    key = (K, tile, hb, rotate, norm, gelu, weight is not None, scale is not None, shift is not None,
           residual is not None, gate is not None, x.dtype, out.dtype, x.device.type)
    if tune is not None:
        attempts = [dict(_ROW_DEFAULT_TUNE, tile=tune["rows"] * K if "rows" in tune else tile, **tune)]
    elif key in _ROW_FIT:
        attempts = [_ROW_FIT[key]]
    else:
        attempts = row_attempts(K, tile, _table_tune(x.device, row_kind(K, norm, gelu, residual is not None, rot)))
    if traced:
        attempts = attempts[:1]
    for n, t in enumerate(attempts):
        meta = row_meta(K, hb, rotate, t, norm=norm, gelu=gelu, has_weight=weight is not None,
                        has_scale=scale is not None, has_shift=shift is not None, residual=residual is not None,
                        gate=gate is not None, out_dtype=out.dtype, cuda=x.is_cuda)
        progs = _programs(x.device, triton.cdiv(M, meta["ROWS"]), t["progs_per_sm"])
        try:
            kernel[(progs,)](
                x3, x3.stride(0), x3.stride(1),
                weight if weight is not None else dummy,
                sc if sc is not None else dummy, sscb, scs,
                sh if sh is not None else dummy, sshb, shs,
                out, out_scale if out_scale is not None else out,
                M, S, float(eps),
                rs if rs is not None else dummy, rsb, rss, g if g is not None else dummy, gb, gs,
                h_out if h_out is not None else dummy, **meta,
            )
            if tune is None and not traced:
                _ROW_FIT[key] = t
            return out, out_scale
        except OutOfResources:
            if n == len(attempts) - 1:
                raise
    return out, out_scale


def _qdtype_of(qmode: int):
    return {INT8_OUT: INT8, FP8_OUT: FP8}.get(qmode)


def _row_quant_impl(x: torch.Tensor, weight: Optional[torch.Tensor], scale: Optional[torch.Tensor],
                  shift: Optional[torch.Tensor], eps: float, norm: bool, gelu: bool, rot: int,
                  qmode: int) -> tuple[torch.Tensor, torch.Tensor]:
    qdtype = _qdtype_of(qmode)
    K = x.shape[-1]
    M = x.numel() // max(K, 1)
    out = torch.empty(M, K, device=x.device, dtype=qdtype or x.dtype)
    out_scale = torch.empty(M if qdtype is not None else 0, device=x.device, dtype=torch.float32)
    try:
        launch_row_quant(x, weight, scale, shift, eps, norm, gelu, rot, out, out_scale if qdtype is not None else None)
    except Exception as e:  # noqa: BLE001 - only resource errors get here; never return unwritten output
        from triton.runtime.errors import OutOfResources

        if not isinstance(e, OutOfResources):
            raise
        _warn("row_quant", f"kernel does not fit this GPU for rows of {K}: {e}")
        return _row_ref(x, weight, scale, shift, eps, norm, gelu, rot, qdtype)
    return out.view(x.shape), out_scale.view(x.shape[:-1] if qdtype is not None else (0,))


def _row_quant_fake(x, weight, scale, shift, eps, norm, gelu, rot, qmode):
    qdtype = _qdtype_of(qmode)
    out = x.new_empty(x.shape, dtype=qdtype or x.dtype)
    out_scale = x.new_empty(x.shape[:-1] if qdtype is not None else (0,), dtype=torch.float32)
    return out, out_scale


row_quant_op = dual_op("row_quant", _row_quant_impl, _row_quant_fake)


def _row_ref(x, weight, scale, shift, eps, norm, gelu, rot, qdtype):
    """The row op in reference math (same outputs as the kernel)."""
    y = ref.rms_norm_ref(x, weight, eps, scale, shift) if norm else x
    if gelu:
        y = F.gelu(y.float(), approximate="tanh").to(x.dtype)
    if qdtype is None:
        return y, x.new_empty((0,), dtype=torch.float32)
    return ref.quantize_activation_ref(y, qdtype, None if rot <= 0 else rot, rotate=rot >= 0)


def _add_row_quant_impl(x: torch.Tensor, residual: torch.Tensor, gate: Optional[torch.Tensor],
                      weight: Optional[torch.Tensor], scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                      eps: float, norm: bool, rot: int, qmode: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    qdtype = _qdtype_of(qmode)
    K = x.shape[-1]
    M = x.numel() // max(K, 1)
    h = torch.empty(M, K, device=x.device, dtype=x.dtype)
    out = torch.empty(M, K, device=x.device, dtype=qdtype)
    out_scale = torch.empty(M, device=x.device, dtype=torch.float32)
    try:
        launch_row_quant(x, weight, scale, shift, eps, norm, False, rot, out, out_scale, residual, gate, h)
    except Exception as e:  # noqa: BLE001 - resource errors only; never return unwritten output
        from triton.runtime.errors import OutOfResources

        if not isinstance(e, OutOfResources):
            raise
        _warn("add_row_quant", f"kernel does not fit this GPU for rows of {K}: {e}")
        h2 = _add_ref(x, residual, gate)
        return (h2,) + _row_ref(h2, weight, scale, shift, eps, norm, False, rot, qdtype)
    return h.view(x.shape), out.view(x.shape), out_scale.view(x.shape[:-1])


def _add_row_quant_fake(x, residual, gate, weight, scale, shift, eps, norm, rot, qmode):
    return (x.new_empty(x.shape), x.new_empty(x.shape, dtype=_qdtype_of(qmode)),
            x.new_empty(x.shape[:-1], dtype=torch.float32))


add_row_quant_op = dual_op("add_row_quant", _add_row_quant_impl, _add_row_quant_fake)


def _add_ref(x, residual, gate):
    r = residual.float() * gate.float() if gate is not None else residual.float()
    return (x.float() + r).to(x.dtype)


def _row_reason(x: torch.Tensor, hadamard_block, rotate=True) -> str | None:
    if not _runs_here(x):
        return f"tensor on {x.device} (Triton needs CUDA or TRITON_INTERPRET=1)"
    if x.dtype not in _FLOAT_DTYPES:
        return f"input dtype {x.dtype}"
    p = plan(x.shape[-1], hadamard_block, rotate)
    return p if isinstance(p, str) else None


def _row(op, x, weight, scale, shift, eps, norm, gelu, qdtype, hadamard_block, rotate=True):
    q = qdtype_from_name(qdtype) if qdtype is not None else None
    qmode = {INT8: INT8_OUT, FP8: FP8_OUT}.get(q, FLOAT_OUT)
    return row_quant_op(x, weight, scale, shift, float(eps), norm, gelu, _rot_code(rotate, hadamard_block), qmode)


# ------------------------------------------------------------------------------------------------
# Public row ops (backend API)
def quantize_activation(x, qdtype, hadamard_block=None):
    """``x [..., K]`` -> Hadamard-rotated, per-token quantized ``(q [..., K], scale [...] fp32)``."""
    reason = _row_reason(x, hadamard_block)
    if reason:
        _warn("quantize_activation", reason)
        return ref.quantize_activation_ref(x, qdtype, hadamard_block)
    return _row("quantize_activation", x, None, None, None, 1e-6, False, False, qdtype, hadamard_block)


def rms_norm(x, weight=None, eps=1e-6, scale=None, shift=None):
    """``x / rms(x) [* weight] [* (1 + scale) + shift]`` -> ``x.dtype`` (``scale``/``shift`` broadcast to x)."""
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if torch.compiler.is_compiling():
        # plain torch ops: inductor fuses the norm with its neighbours (RoPE, casts), an opaque kernel can't
        return ref.rms_norm_ref(x, weight, eps, scale, shift)
    reason = _row_reason(x, None, rotate=False)
    if reason:
        _warn("rms_norm", reason)
        return ref.rms_norm_ref(x, weight, eps, scale, shift)
    return _row("rms_norm", x, weight, scale, shift, eps, True, False, None, None, rotate=False)[0]


def rms_norm_quantize(x, weight, eps, scale, shift, qdtype, hadamard_block=None):
    """Fused RMSNorm + AdaLN modulation + rotation + quantization of ``x [..., K]`` -> ``(q, scale)``.

    Differs from the two-step reference only in skipping the rounding of the normed rows to
    ``x.dtype`` before rotation (the kernel keeps them in float32).
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    reason = _row_reason(x, hadamard_block)
    if reason:
        _warn("rms_norm_quantize", reason)
        return ref.quantize_activation_ref(ref.rms_norm_ref(x, weight, eps, scale, shift), qdtype, hadamard_block)
    return _row("rms_norm_quantize", x, weight, scale, shift, eps, True, False, qdtype, hadamard_block)


def gelu_quantize(x, qdtype, hadamard_block=None):
    """tanh-GELU + rotation + quantization of ``x [..., K]`` (the FFN hidden) -> ``(q, scale)``."""
    reason = _row_reason(x, hadamard_block)
    if reason:
        _warn("gelu_quantize", reason)
        return ref.quantize_activation_ref(F.gelu(x.float(), approximate="tanh").to(x.dtype), qdtype, hadamard_block)
    return _row("gelu_quantize", x, None, None, None, 1e-6, False, True, qdtype, hadamard_block)


def add_quantize(x, residual, gate, qdtype, hadamard_block=None, norm=False, weight=None, eps=1e-6,
                 scale=None, shift=None):
    """Gated residual add fused with the next quantizer: ``h = x + residual * gate`` (``gate`` optional,
    broadcast like the AdaLN modulation), then ``h`` (``norm=False``) or ``RMSNorm(h)·(1+scale)+shift``
    (``norm=True``) rotated and quantized. Returns ``(h [..., K] in x.dtype, q [..., K], scale [...])``.

    One pass instead of two: ``h`` is written once and never read back for the quantizer.
    """
    reason = _row_reason(x, hadamard_block) or (None if residual.shape == x.shape else "residual shape differs")
    if reason:
        _warn("add_quantize", reason)
        h = _add_ref(x, residual, gate)
        if norm:
            return (h,) + tuple(rms_norm_quantize(h, weight, eps, scale, shift, qdtype, hadamard_block))
        return (h,) + tuple(quantize_activation(h, qdtype, hadamard_block))
    q = qdtype_from_name(qdtype)
    return add_row_quant_op(x, residual, gate, weight, scale, shift, float(eps), norm, _rot_code(True, hadamard_block),
                            INT8_OUT if q == INT8 else FP8_OUT)


# ------------------------------------------------------------------------------------------------
# GEMM
def gemm_impl(qdtype: torch.dtype, device: torch.device) -> str:
    """Which GEMM runs ``qdtype`` on ``device``: ``"scaled_mm"`` (cuBLAS fp8 row-wise, sm_90+),
    ``"triton"`` or ``"int_mm"`` (cuBLAS int8 + separate epilogue); ``Q8LIB_GEMM`` (read at import)
    or :func:`set_gemm_impl` overrides."""
    forced = GEMM_IMPL
    if device.type != "cuda":
        return "triton"
    if forced == "scaled_mm" and qdtype == FP8:
        return "scaled_mm"
    if forced == "int_mm" and qdtype == INT8:
        return "int_mm"
    if forced == "auto" and qdtype == FP8 and _capability(device.index or 0) >= 90:
        return "scaled_mm"
    return "triton"


def _tma_fits(x_q: torch.Tensor, w_q: torch.Tensor) -> bool:
    """Whether the persistent TMA GEMM runs: chosen (``set_gemm_impl("triton_tma")``), a Hopper-or-newer
    GPU (the copy engine; Ada keeps the pointer kernel), row-major 8-bit operands with 16-byte aligned
    rows and bases, and a Triton that has host tensor descriptors."""
    if GEMM_IMPL != "triton_tma" or not (x_q.is_cuda and _capability(x_q.device.index or 0) >= 90):
        return False
    if x_q.stride(-1) != 1 or w_q.stride(-1) != 1 or x_q.stride(0) % 16 or w_q.stride(0) % 16:
        return False
    # base alignment from the storage offset (torch allocations are 256-byte aligned): fake tensors under
    # torch.compile have no data pointer
    if (x_q.storage_offset() * x_q.element_size()) % 16 or (w_q.storage_offset() * w_q.element_size()) % 16:
        return False
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return False
    return True


def launch_gemm(x_q, x_scale, w_q, w_scale, bias, gelu, out, tiles=None):
    """Triton GEMM of ``x_q [M, K]`` by ``w_q [N, K]`` into preallocated ``out [M, N]``.

    With ``set_gemm_impl("triton_tma")`` on sm_90+ the persistent TMA kernel (fixed tiles,
    ``_gemm.TMA_CONFIG``); otherwise the pointer kernel: ``tiles=(BM, BN, BK)`` fixes its tiles (interpreter/tests), ``None`` autotunes (GPU).
    """
    import triton

    from ._gemm import _q8_gemm_autotuned, _q8_gemm_kernel

    M, K = x_q.shape
    N = w_q.shape[0]
    if M == 0 or N == 0:
        return out
    common = dict(HAS_BIAS=bias is not None, GELU=gelu, IS_INT=x_q.dtype == INT8)
    if tiles is None and _tma_fits(x_q, w_q):
        from triton.tools.tensor_descriptor import TensorDescriptor

        from ._gemm import TMA_CONFIG, _q8_gemm_tma_kernel

        bm, bn, bk, warps, stages = TMA_CONFIG
        progs = min(triton.cdiv(M, bm) * triton.cdiv(N, bn), _sm_count(x_q.device.index or 0))
        launchable(_q8_gemm_tma_kernel, x_q)[(progs,)](
            TensorDescriptor.from_tensor(x_q, [bm, bk]), TensorDescriptor.from_tensor(w_q, [bn, bk]),
            x_scale, w_scale, bias if bias is not None else w_scale, out, M, N, K, out.stride(0),
            BM=bm, BN=bn, BK=bk, GROUP_M=8, NUM_PROGS=progs, num_warps=warps, num_stages=stages, **common)
        return out
    args = (x_q, x_scale, w_q, w_scale, bias if bias is not None else w_scale, out, M, N, K,
            x_q.stride(0), w_q.stride(0), out.stride(0))
    if tiles is None and x_q.is_cuda:
        grid = lambda meta: (triton.cdiv(M, meta["BM"]) * triton.cdiv(N, meta["BN"]),)  # noqa: E731
        launchable(_q8_gemm_autotuned, x_q)[grid](*args, **common)
    else:
        bm, bn, bk = tiles or (32, 32, 32)
        grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
        launchable(_q8_gemm_kernel, x_q)[grid](*args, BM=bm, BN=bn, BK=bk, GROUP_M=8, EVEN_K=K % bk == 0, **common)
    return out


def _gemm_impl(x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
               bias: Optional[torch.Tensor], gelu: bool, out_dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(x_q.shape[0], w_q.shape[0], device=x_q.device, dtype=out_dtype)
    return launch_gemm(x_q, x_scale, w_q, w_scale, bias, gelu, out)


def _gemm_fake(x_q, x_scale, w_q, w_scale, bias, gelu, out_dtype):
    return x_q.new_empty(x_q.shape[0], w_q.shape[0], dtype=out_dtype)


gemm_op = dual_op("q8_gemm", _gemm_impl, _gemm_fake)


def _gemm_reason(x_q, w_q, w_scale, bias, out_dtype) -> str | None:
    if not (_runs_here(x_q) and _runs_here(w_q)):
        return f"tensors on {x_q.device}/{w_q.device} (Triton needs CUDA or TRITON_INTERPRET=1)"
    if x_q.dtype not in (INT8, FP8):
        return f"8-bit dtype {x_q.dtype}"
    if out_dtype not in _FLOAT_DTYPES:
        return f"output dtype {out_dtype}"
    if x_q.shape[-1] % 16:
        return f"inner dim {x_q.shape[-1]} not a multiple of 16"
    if w_q.stride(-1) != 1 or w_scale.dtype != torch.float32:
        return "weight not K-contiguous or weight scales not float32"
    return None


def matmul(x_q, x_scale, w_q, w_scale, bias=None, activation=None, out_dtype=torch.bfloat16):
    """``act((x_q @ w_qᵀ) * x_scale[..., None] * w_scale + bias)`` -> ``out_dtype``.

    ``x_q [..., K]``, ``x_scale [...]``, ``w_q [N, K]``, ``w_scale [N]`` fp32, ``bias [N]`` -> ``[..., N]``.
    """
    if activation not in ref.ACTIVATIONS:
        raise ValueError(f"activation must be one of {ref.ACTIVATIONS}, got {activation!r}")
    if x_q.dtype != w_q.dtype:
        raise TypeError(f"activation dtype {x_q.dtype} and weight dtype {w_q.dtype} differ")
    if x_q.shape[-1] != w_q.shape[-1]:
        raise ValueError(f"inner dims differ: activations {tuple(x_q.shape)}, weight {tuple(w_q.shape)}")
    reason = _gemm_reason(x_q, w_q, w_scale, bias, out_dtype)
    if reason:
        _warn("matmul", reason)
        return ref.q8_matmul_ref(x_q, x_scale, w_q, w_scale, bias, activation, out_dtype)
    lead, K, N = x_q.shape[:-1], x_q.shape[-1], w_q.shape[0]
    x2 = x_q.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    xs = x_scale.reshape(-1).float()
    gelu = activation == "gelu_tanh"
    impl = gemm_impl(x_q.dtype, x_q.device)
    if impl == "scaled_mm" and N % 16 == 0 and out_dtype in (torch.bfloat16, torch.float16):
        # cuBLAS row-wise fp8: fp32 scales [M, 1] x [1, N]; its bias must be in the output dtype
        y = torch._scaled_mm(x2, w_q.t(), scale_a=xs.view(-1, 1), scale_b=w_scale.view(1, -1),
                             bias=None if bias is None else bias.to(out_dtype), out_dtype=out_dtype,
                             use_fast_accum=True)
        if gelu:
            y = F.gelu(y.float(), approximate="tanh").to(out_dtype)
    elif impl == "int_mm" and x2.shape[0] > 16 and K % 8 == 0 and N % 8 == 0:
        acc = torch._int_mm(x2, w_q.t())
        y = acc.float() * xs[:, None] * w_scale
        if bias is not None:
            y = y + bias.float()
        y = (F.gelu(y, approximate="tanh") if gelu else y).to(out_dtype)
    else:
        y = gemm_op(x2, xs, w_q, w_scale, bias, gelu, out_dtype)
    return y.reshape(*lead, N)
