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
  the per-tensor quantization of k and v (torch ops: inductor fuses them), the e4m3 output and its descale, which
  ``to_out`` takes as they are (:func:`q8lib.attention.coded_attention`). In the model q comes as e4m3 from its
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

from .. import reference as ref
from ..errors import BackendUnavailableError
from ._library import capability, dual_op, opaque_op
from .attn_producers import launch_norm_rope, norm_rope_f32

__all__ = ["fp8_tensor_attention", "fp8_tensor_codes", "cudnn_fp8_sdpa",
           "cudnn_unavailable_reason", "norm_rope_e4m3", "norm_rope_e4m3_ref"]

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


def fp8_tensor_codes(q8, descale_q, k, v, key_lengths=None, sm_scale=None, k_smooth: bool = True):
    """The engine on the model's rows with q already in e4m3: ``q8 [B, Sq, H, D]`` codes with ``descale_q []``,
    float ``k``/``v [B, Sk, H, D]`` -> ``(codes [B, Sq, H, D] e4m3, descale [])`` of the output. K smoothing and the
    per-tensor quantization of k and v run on the rows as they lie (passes that inductor fuses); cuDNN reads
    ``[B, H, S, D]`` views. Raises :class:`~q8lib.errors.BackendUnavailableError` without ``nvidia-cudnn-frontend``
    or where cuDNN builds no plan."""
    reason = cudnn_unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(reason)
    sm_scale = 1.0 / math.sqrt(q8.shape[-1]) if sm_scale is None else float(sm_scale)
    q8, k, v = (t if t.is_contiguous() else t.contiguous() for t in (q8, k, v))
    kf = k.float()
    if k_smooth:
        kf = kf - kf.mean(dim=1, keepdim=True)
    (k8, dk), (v8, dv) = ref.quantize_per_tensor(kf), ref.quantize_per_tensor(v)
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
