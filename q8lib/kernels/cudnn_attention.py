"""``attention="fp8_tensor"`` on the GPU: cuDNN's FP8 SDPA engine behind q8lib's producers (Hopper).

The math is :func:`q8lib.reference.fp8_tensor_attention_ref`: K smoothing, e4m3 q/k/v with one scale per tensor,
``P`` stored as e4m3 of ``P * 448``, an e4m3 output with v's scale. Why: at LTX-2's and the 13B's head dim 128
cuDNN's FP8 engine measured 1.25 ms at [2, 32, 6144, 128] on the H200 (989 TFLOP/s) against 1.83 ms for cuDNN's
bf16 SDPA and 2.15 ms for q8lib's own FP8 op (``benchmarks/results/attention_cudnn_fp8_h200.json``). Its scales
are coarser than q8lib's per-token ones: see ``benchmarks/NOTES_attention.md`` for the measured accuracy.

* ``q8lib::cudnn_fp8_sdpa``: the engine on e4m3 ``[B, H, S, D]`` tensors of any strides with a unit last stride
  (an opaque custom op with a fake: torch.compile keeps it as one node; it replays in CUDA graphs). One execution
  plan per shape, strides and mask kind, built on the first call, which therefore must not be inside a CUDA-graph
  capture (q8lib's capture warms up first). The output is e4m3 ``[B, H, Sq, D]`` (a view of ``[B, Sq, H, D]`` rows,
  what ``to_out`` reads); Hopper's engine writes FP8 outputs only.
* :func:`fp8_tensor_codes`: the engine on the model's ``[B, S, H, D]`` rows with q already e4m3: K smoothing and
  the per-tensor quantization of k and v (:func:`kv_per_tensor`, two Triton passes, op ``q8lib::attn_kv_per_tensor``),
  the e4m3 output and its descale, which ``to_out`` takes as they are (:func:`q8lib.attention.coded_attention`).
  In the model q comes as e4m3 from its
  norm + RoPE producer with a static scale (``q8lib::attn_norm_rope_e4m3``, :func:`norm_rope_e4m3`; the norm's
  bound, :func:`q8lib.reference.norm_bound_scale`), so q costs no pass of its own.
* :func:`fp8_tensor_attention` (``[B, H, S, D]``): the plain op on float tensors (q's scale from its amax), output
  decoded.

Needs ``nvidia-cudnn-frontend`` (PyPI). Which GPUs cuDNN builds plans for is cuDNN's decision: Hopper (sm_90) is
measured; on Ada (sm_89) no FP8 SDPA engine is expected and the first call raises
:class:`~q8lib.errors.BackendUnavailableError` saying so (untested: no Ada GPU here).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import reference as ref
from ..errors import BackendUnavailableError
from ..quant import FP8, QMAX
from ._jit import to_e4m3
from ._library import capability, dual_op, interpreting, launchable, opaque_op, runs_here, sm_count
from .attn_producers import launch_norm_rope, norm_rope_f32

__all__ = ["fp8_tensor_attention", "fp8_tensor_codes", "cudnn_fp8_sdpa", "cudnn_unavailable_reason",
           "kv_per_tensor", "kv_per_tensor_ref", "norm_rope_e4m3", "norm_rope_e4m3_ref"]

E4M3_MAX = 448.0
_PLANS: dict = {}
_HANDLES: dict = {}


def cudnn_unavailable_reason() -> str | None:
    """``None`` when cuDNN's Python frontend can be imported, else what to install."""
    try:
        import cudnn  # noqa: F401  (nvidia-cudnn-frontend)
    except ImportError:
        return ("attention='fp8_tensor' runs cuDNN's FP8 attention engine, which needs the 'nvidia-cudnn-frontend' "
                "package (pip install 'q8lib[cudnn]' or nvidia-cudnn-frontend); attention='fp8' needs nothing more")
    return None


def _bshd_strides(B, H, S, D):
    """Strides of a ``[B, H, S, D]`` view of ``[B, S, H, D]`` rows."""
    return (S * H * D, D, H * D, 1)


class _Plan:
    """One cuDNN FP8 SDPA graph for e4m3 q/k/v of given shapes and strides, with or without key lengths."""

    def __init__(self, q8, k8, v8, with_lengths: bool, sm_scale: float):
        import cudnn

        dev = q8.device
        if dev not in _HANDLES:
            with torch.cuda.device(dev):
                _HANDLES[dev] = cudnn.create_handle()
        self.handle = handle = _HANDLES[dev]
        e4m3, f32, i32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT, cudnn.data_type.INT32
        g = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=f32, compute_data_type=f32, handle=handle)

        def tensor(name, t):
            return g.tensor(name=name, dim=list(t.shape), stride=list(t.stride()), data_type=e4m3)

        def scalar(name, dtype=f32, batch=1):
            return g.tensor(name=name, dim=[batch, 1, 1, 1], stride=[1, 1, 1, 1], data_type=dtype)

        self.q, self.k, self.v = tensor("q", q8), tensor("k", k8), tensor("v", v8)
        self.scalars = {n: scalar(n) for n in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s",
                                                "scale_o")}
        kw = dict(q=self.q, k=self.k, v=self.v, attn_scale=sm_scale, use_causal_mask=False, **self.scalars)
        self.seq_q = self.seq_kv = None
        if with_lengths:
            B = q8.shape[0]
            self.seq_q, self.seq_kv = scalar("seq_len_q", i32, B), scalar("seq_len_kv", i32, B)
            kw.update(use_padding_mask=True, seq_len_q=self.seq_q, seq_len_kv=self.seq_kv)
        try:
            try:  # frontend >= 1.11 names it generate_stats, earlier ones is_inference
                o, _, amax_s, amax_o = g.sdpa_fp8(generate_stats=False, **kw)
            except TypeError:
                o, _, amax_s, amax_o = g.sdpa_fp8(is_inference=True, **kw)
            B, H, Sq, D = q8.shape
            o.set_output(True).set_dim([B, H, Sq, D]).set_stride(list(_bshd_strides(B, H, Sq, D)))
            o.set_data_type(e4m3)
            for t in (amax_s, amax_o):  # outputs the engine writes; nothing reads them
                t.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(f32)
            g.validate()
            g.build_operation_graph()
            g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
            g.check_support()
            g.build_plans()
        except Exception as e:  # noqa: BLE001 - cuDNN's errors differ by version; say what was asked
            cap = capability(dev.index or 0)
            raise BackendUnavailableError(
                f"cuDNN builds no FP8 attention plan for q {tuple(q8.shape)}, k {tuple(k8.shape)} on sm_{cap} "
                f"({type(e).__name__}: {str(e)[:300]}); use attention='fp8' (q8lib's kernel) or 'sdpa'") from e
        self.graph, self.o, self.amax_s, self.amax_o = g, o, amax_s, amax_o
        self.workspace = torch.empty(g.get_workspace_size(), device=dev, dtype=torch.uint8)
        self.p_scale = torch.full((1, 1, 1, 1), E4M3_MAX, device=dev)
        self.p_descale = torch.full((1, 1, 1, 1), 1.0 / E4M3_MAX, device=dev)
        self.amax = torch.zeros(2, 1, 1, 1, 1, device=dev)


def _plan(q8, k8, v8, with_lengths: bool, sm_scale: float) -> _Plan:
    key = (q8.device, q8.shape, q8.stride(), k8.shape, k8.stride(), v8.shape, v8.stride(), with_lengths, sm_scale)
    if key not in _PLANS:
        _PLANS[key] = _Plan(q8, k8, v8, with_lengths, sm_scale)
    return _PLANS[key]


def _sdpa_fp8(q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, descale_q: torch.Tensor,
              descale_k: torch.Tensor, descale_v: torch.Tensor, key_lengths: torch.Tensor | None,
              sm_scale: float) -> torch.Tensor:
    """e4m3 ``q [B, H, Sq, D]``, ``k``/``v [B, H, Sk, D]``, descales ``[]`` float32, ``key_lengths [B]`` or None
    -> e4m3 ``[B, H, Sq, D]`` codes whose scale is ``descale_v``."""
    import cudnn

    plan = _plan(q8, k8, v8, key_lengths is not None, sm_scale)
    B, H, Sq, D = q8.shape
    out = torch.empty(B, Sq, H, D, device=q8.device, dtype=torch.float8_e4m3fn).transpose(1, 2)
    one = (1, 1, 1, 1)
    dv = descale_v.float().reshape(one)
    pack = {plan.q: q8, plan.k: k8, plan.v: v8, plan.o: out, plan.amax_s: plan.amax[0], plan.amax_o: plan.amax[1]}
    values = {"descale_q": descale_q.float().reshape(one), "descale_k": descale_k.float().reshape(one),
              "descale_v": dv, "descale_s": plan.p_descale, "scale_s": plan.p_scale, "scale_o": 1.0 / dv}
    pack.update({plan.scalars[n]: t.contiguous() for n, t in values.items()})
    if key_lengths is not None:
        Sk = k8.shape[2]
        pack[plan.seq_q] = torch.full((B, 1, 1, 1), Sq, device=q8.device, dtype=torch.int32)
        pack[plan.seq_kv] = key_lengths.clamp(1, Sk).to(torch.int32).reshape(B, 1, 1, 1).contiguous()
    cudnn.set_stream(handle=plan.handle, stream=torch.cuda.current_stream(q8.device).cuda_stream)
    plan.graph.execute(pack, plan.workspace, handle=plan.handle)
    return out


def _sdpa_fp8_fake(q8, k8, v8, descale_q, descale_k, descale_v, key_lengths, sm_scale):
    return q8.new_empty_strided(q8.shape, _bshd_strides(*q8.shape), dtype=torch.float8_e4m3fn)


cudnn_fp8_sdpa = opaque_op("cudnn_fp8_sdpa", _sdpa_fp8, _sdpa_fp8_fake)


# K smoothing and per-tensor e4m3 of k and v in two passes over the rows (torch ops took five reads of k and v and
# ran at ~1/3 of the bandwidth in the LTX-2 forward, ~10 ms per forward for the video self-attention alone).
# Pass 1 reads k and v once for per-channel partial statistics over chunks of tokens: k's sum, max and min, v's
# max |v|. Since |k - mean| over tokens peaks at max - mean or mean - min of its channel, k's amax after smoothing
# follows from them without a second read. A few torch ops reduce the [B, chunks, C] partials to the scales; pass 2
# writes the codes. With key lengths only the valid keys count (padded rows get zero codes; cuDNN masks them).
@triton.jit
def _valid_rows(LENS, b, S, HAS_LENS: tl.constexpr):
    """Keys of sample ``b`` below its length (clamped to ``[1, S]``), or ``S``."""
    if HAS_LENS:
        return tl.minimum(tl.maximum(tl.load(LENS + b), 1), S)
    return S


@triton.jit
def _kv_stats_kernel(K, V, LENS, KSUM, KMAX, KMIN, VMAX, S, C, rows_per_chunk,
                     HAS_LENS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """Rows ``[B, S, C]`` (contiguous, k and v alike; ``LENS [B]`` int32 valid keys with ``HAS_LENS``) -> per
    (sample, chunk of tokens, channel) float32 partials ``[B, chunks, C]`` over the valid rows: k's sum, max and
    min, v's max |v| (empty chunks: 0, -inf, inf, 0)."""
    b = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    s0 = chunk * rows_per_chunk
    s1 = tl.minimum(s0 + rows_per_chunk, _valid_rows(LENS, b, S, HAS_LENS))
    ksum = tl.zeros([BLOCK_C], tl.float32)
    kmax = tl.full([BLOCK_C], float("-inf"), tl.float32)
    kmin = tl.full([BLOCK_C], float("inf"), tl.float32)
    vmax = tl.zeros([BLOCK_C], tl.float32)
    for start in range(s0, s1, BLOCK_S):
        rows = start + tl.arange(0, BLOCK_S)
        m = (rows < s1)[:, None] & col_ok[None, :]
        off = (b * S + rows[:, None]) * C + cols[None, :]
        k = tl.load(K + off, mask=m, other=0.0).to(tl.float32)
        v = tl.load(V + off, mask=m, other=0.0).to(tl.float32)
        ksum += tl.sum(k, axis=0)
        kmax = tl.maximum(kmax, tl.max(tl.where(m, k, float("-inf")), axis=0))
        kmin = tl.minimum(kmin, tl.min(tl.where(m, k, float("inf")), axis=0))
        vmax = tl.maximum(vmax, tl.max(tl.abs(v), axis=0))
    o = (b * tl.num_programs(1) + chunk) * C + cols
    tl.store(KSUM + o, ksum, mask=col_ok)
    tl.store(KMAX + o, kmax, mask=col_ok)
    tl.store(KMIN + o, kmin, mask=col_ok)
    tl.store(VMAX + o, vmax, mask=col_ok)


@triton.jit
def _kv_codes_kernel(K, V, LENS, MEAN, KINV, VINV, K8, V8, S, C, HAS_LENS: tl.constexpr, SMOOTH: tl.constexpr,
                     GRID_ROUND: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """e4m3 codes of ``(k - mean[b]) * KINV`` (``SMOOTH``; else ``k * KINV``) and ``v * VINV``, saturated; zero
    codes for rows past the valid keys."""
    b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    m = (rows < S)[:, None] & col_ok[None, :]
    valid = (rows < _valid_rows(LENS, b, S, HAS_LENS))[:, None] & col_ok[None, :]
    off = (b * S + rows[:, None]) * C + cols[None, :]
    k = tl.load(K + off, mask=valid, other=0.0).to(tl.float32)
    if SMOOTH:
        k = tl.where(valid, k - tl.load(MEAN + b * C + cols, mask=col_ok, other=0.0)[None, :], 0.0)
    kc = tl.minimum(tl.maximum(k * tl.load(KINV), -448.0), 448.0)
    tl.store(K8 + off, to_e4m3(kc, GRID_ROUND), mask=m)
    v = tl.load(V + off, mask=valid, other=0.0).to(tl.float32)
    vc = tl.minimum(tl.maximum(v * tl.load(VINV), -448.0), 448.0)
    tl.store(V8 + off, to_e4m3(vc, GRID_ROUND), mask=m)


#: (rows a step, channels a tile) of the statistics pass and of the codes pass; chunks of tokens per sample so that
#: the statistics pass has about this many programs per SM.
KV_STATS_TILE, KV_CODES_TILE, KV_STATS_PER_SM = (32, 128), (64, 128), 4


def kv_launch_shape(B: int, S: int, C: int, device: torch.device) -> tuple[int, int]:
    """``(chunks, rows_per_chunk)`` of :func:`kv_per_tensor`'s statistics pass for rows ``[B, S, C]``."""
    bs, bc = KV_STATS_TILE if device.type == "cuda" else (16, 32)
    col_tiles = triton.cdiv(C, bc)
    want = 4 if device.type != "cuda" else KV_STATS_PER_SM * sm_count(device.index or 0)
    chunks = max(1, min(triton.cdiv(want, B * col_tiles), triton.cdiv(S, bs)))
    rows = triton.cdiv(triton.cdiv(S, chunks), bs) * bs
    return triton.cdiv(S, rows), rows


def _kv_per_tensor_impl(k: torch.Tensor, v: torch.Tensor, key_lengths: torch.Tensor | None, smooth: bool
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``k``, ``v [B, S, H, D]`` (contiguous), ``key_lengths [B]`` int32 or ``None`` -> ``(k8, descale_k, v8,
    descale_v)``: e4m3 codes of ``k - mean over the valid keys`` (``smooth``, per sample and channel; exact under
    softmax) and of ``v``, one scale per tensor that puts its largest valid entry on 448, zero codes past each
    sample's length (:func:`kv_per_tensor_ref`)."""
    B, S, H, D = k.shape
    C = H * D
    k8 = torch.empty(k.shape, device=k.device, dtype=torch.float8_e4m3fn)
    v8 = torch.empty(v.shape, device=v.device, dtype=torch.float8_e4m3fn)
    if k.numel() == 0:
        zero = torch.zeros((), device=k.device)
        return k8, zero, v8, zero.clone()
    chunks, rows = kv_launch_shape(B, S, C, k.device)
    cuda = k.device.type == "cuda"
    (bs, bc), (cs, cc) = (KV_STATS_TILE, KV_CODES_TILE) if cuda else ((16, 32), (16, 32))
    lens = k if key_lengths is None else key_lengths.to(device=k.device, dtype=torch.int32)  # (k: unread pointer)
    has_lens = key_lengths is not None
    ksum, kmax, kmin, vmax = (torch.empty(B, chunks, C, device=k.device) for _ in range(4))
    launchable(_kv_stats_kernel, k)[(B, chunks, triton.cdiv(C, bc))](
        k, v, lens, ksum, kmax, kmin, vmax, S, C, rows, HAS_LENS=has_lens, BLOCK_S=bs, BLOCK_C=bc, num_warps=4)
    count = lens.clamp(1, S).float()[:, None] if has_lens else float(S)
    mean = ksum.sum(1) / count if smooth else torch.zeros(B, C, device=k.device)
    kamax = torch.maximum(kmax.amax(1) - mean, mean - kmin.amin(1)).amax()
    vamax = vmax.amax()
    kinv, vinv = (torch.where(a > 0, QMAX[FP8] / a, torch.zeros_like(a)) for a in (kamax, vamax))
    launchable(_kv_codes_kernel, k)[(B, triton.cdiv(S, cs), triton.cdiv(C, cc))](
        k, v, lens, mean, kinv, vinv, k8, v8, S, C, HAS_LENS=has_lens, SMOOTH=smooth, GRID_ROUND=interpreting(k),
        BLOCK_S=cs, BLOCK_C=cc, num_warps=8 if cuda else 4)
    return k8, kamax * (1.0 / QMAX[FP8]), v8, vamax * (1.0 / QMAX[FP8])


def _kv_per_tensor_fake(k, v, key_lengths, smooth):
    e = torch.float8_e4m3fn
    return k.new_empty(k.shape, dtype=e), k.new_empty((), dtype=torch.float32), v.new_empty(v.shape, dtype=e), \
        v.new_empty((), dtype=torch.float32)


kv_per_tensor = dual_op("attn_kv_per_tensor", _kv_per_tensor_impl, _kv_per_tensor_fake)


def kv_per_tensor_ref(k, v, key_lengths=None, smooth: bool = True):
    """Twin of :func:`kv_per_tensor`: :func:`q8lib.reference.fp8_tensor_kv_ref` (what the emulation does to k and
    v) on ``[B, S, H, D]`` rows."""
    k8, dk, v8, dv = ref.fp8_tensor_kv_ref(k.transpose(1, 2), v.transpose(1, 2), key_lengths, smooth)
    return k8.transpose(1, 2), dk, v8.transpose(1, 2), dv


def fp8_tensor_codes(q8, descale_q, k, v, key_lengths=None, sm_scale=None, k_smooth: bool = True):
    """The engine on the model's rows with q already in e4m3: ``q8 [B, Sq, H, D]`` codes with ``descale_q []``,
    float ``k``/``v [B, Sk, H, D]`` -> ``(codes [B, Sq, H, D] e4m3, descale [])`` of the output. K smoothing and the
    per-tensor quantization of k and v run on the rows as they lie (:func:`kv_per_tensor`); cuDNN reads
    ``[B, H, S, D]`` views. Raises :class:`~q8lib.errors.BackendUnavailableError` without ``nvidia-cudnn-frontend``
    or where cuDNN builds no plan."""
    B, Sq, H, D = q8.shape
    if k.shape != v.shape or k.dim() != 4 or (k.shape[0], k.shape[2], k.shape[3]) != (B, H, D):
        raise ValueError(f"fp8_tensor attention needs q [B, Sq, H, D] and k, v [B, Sk, H, D] of one shape; got q "
                         f"{tuple(q8.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if key_lengths is not None and tuple(key_lengths.shape) != (B,):
        raise ValueError(f"key_lengths must be [B] = [{B}], got {tuple(key_lengths.shape)}")
    reason = cudnn_unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(reason)
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else float(sm_scale)
    q8, k, v = (t if t.is_contiguous() else t.contiguous() for t in (q8, k, v))
    k8, dk, v8, dv = (kv_per_tensor if runs_here(k) else kv_per_tensor_ref)(k, v, key_lengths, bool(k_smooth))
    o8 = cudnn_fp8_sdpa(q8.transpose(1, 2), k8.transpose(1, 2), v8.transpose(1, 2), descale_q, dk, dv, key_lengths,
                        sm_scale)
    return o8.transpose(1, 2), dv


def _norm_rope_e4m3_impl(x: torch.Tensor, weight: torch.Tensor | None, eps: float, cos: torch.Tensor | None,
                         sin: torch.Tensor | None, qscale: torch.Tensor) -> torch.Tensor:
    """The SDPA path's norm + RoPE producer (:func:`q8lib.kernels.attn_producers.norm_rope`) writing e4m3 codes of
    the rows times ``qscale`` (``[]`` float32, saturated): ``attention="fp8_tensor"``'s q with its static scale
    (:func:`q8lib.reference.norm_bound_scale`), no pass of its own. ``[B, S, H, D]`` in, same shape e4m3 out."""
    out = torch.empty(x.shape, device=x.device, dtype=torch.float8_e4m3fn)
    if x.numel():
        launch_norm_rope(x, weight, eps, cos, sin, out, qscale=qscale)
    return out


def _norm_rope_e4m3_fake(x, weight, eps, cos, sin, qscale):
    return x.new_empty(x.shape, dtype=torch.float8_e4m3fn)


norm_rope_e4m3 = dual_op("attn_norm_rope_e4m3", _norm_rope_e4m3_impl, _norm_rope_e4m3_fake)


def norm_rope_e4m3_ref(x, weight, eps, cos, sin, qscale):
    """Twin of :func:`norm_rope_e4m3`: norm + RoPE in float32, then :func:`q8lib.reference.quantize_static`."""
    return ref.quantize_static(norm_rope_f32(x, weight, eps, cos, sin), qscale)[0]


def fp8_tensor_attention(q, k, v, key_lengths=None, sm_scale=None, k_smooth: bool = True):
    """The plain op: ``q, k, v [B, H, S, D]`` (float; LTX's are views of ``[B, S, H, D]`` rows) -> ``[B, H, Sq, D]``
    in ``v.dtype``: :func:`q8lib.reference.fp8_tensor_attention_ref` on cuDNN's engine (:func:`fp8_tensor_codes`,
    q's scale from its amax), the output decoded."""
    q8, dq = ref.quantize_per_tensor(q.transpose(1, 2))
    codes, descale = fp8_tensor_codes(q8, dq, k.transpose(1, 2), v.transpose(1, 2), key_lengths, sm_scale, k_smooth)
    return (codes.float() * descale).to(v.dtype).transpose(1, 2)
