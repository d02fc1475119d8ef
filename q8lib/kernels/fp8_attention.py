"""FP8 attention kernel (Triton) + launcher + ``q8lib::fp8_attention_fwd`` op + fake + reference twin.

Online-softmax attention over key blocks with FP8 dots for ``q kᵀ`` and ``P V`` on the producers' outputs
(:mod:`.attn_producers`); output ``[B, Sq, H, D]`` in the output tensor's dtype. Reference twin:
:func:`attention_fwd_ref` (the math of :func:`q8lib.reference.fp8_attention_ref` after its producers).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._jit import batch_head, exp2, key_length, softmax_start, to_e4m3
from ._library import dual_op, interpreting, launchable
from .attn_producers import SEQ_PAD

__all__ = ["FWD_CONFIG", "fwd_config", "fwd_config_for", "launch_fwd", "attention_fwd", "attention_fwd_ref"]

LOG2_P_SCALE = tl.constexpr(8.807354922057604)  # log2(448): exp2 produces P * 448 directly (the e4m3 range)


@triton.jit
def _softmax_block(t, qs, m_i, l_i, acc, keep, MASKED: tl.constexpr, FAST_EXP: tl.constexpr):
    """One online-softmax step on ``t = (q8 . k8) * ks`` ``[BM, BN]``: returns ``(P * 448, m, l, acc)``.

    ``s = qs * t`` is the logit in log2 units (qs holds softmax scale * log2(e)); exp2 of
    ``s - m + log2(448)`` yields P already scaled to the e4m3 range, in one FFMA + one EX2.
    """
    if MASKED:
        t = tl.where(keep[None, :], t, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(t, 1) * qs)  # qs >= 0, so max(qs * t) = qs * max(t)
    alpha = exp2(m_i - m_new, FAST_EXP)
    p = exp2(t * qs[:, None] - (m_new - LOG2_P_SCALE)[:, None], FAST_EXP)
    if MASKED:
        p = tl.where(keep[None, :], p, 0.0)  # qs == 0 (all-zero query) would give 0 * -inf = NaN
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    return p, m_new, l_i, acc


@triton.jit
def _store_out(O, acc, l_i, vs, b, h, offs_m, d, sob, sos, soh, SQ):
    out = acc * (vs[None, :] / l_i[:, None])
    optr = O + b.to(tl.int64) * sob + offs_m.to(tl.int64)[:, None] * sos + h * soh + d[None, :]
    tl.store(optr, out.to(O.dtype.element_ty), mask=(offs_m < SQ)[:, None])


@triton.jit
def _attn_fwd_kernel(
    Q, QS, K, KS, VT, VS,  # [B,H,Sqp,D] e4m3, [B,H,Sqp] f32, [B,H,Skp,D], [B,H,Skp], [B,H,D,Skp], [B,H,D]
    LENS,  # [B] int32 key lengths (HAS_LENS)
    O, sob, sos, soh,  # [B, Sq, H, D], stride over D is 1
    H, SQ, SQ_PAD, SK, SK_PAD,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_LENS: tl.constexpr, FAST_EXP: tl.constexpr, GRID_ROUND: tl.constexpr, WARP_SPEC: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """Each program owns BLOCK_M query rows (``SPLIT``: two sub-tiles of BLOCK_M rows, A and B,
    sharing every K/V load; their dots and softmaxes are independent, so the scheduler can run one
    sub-tile's softmax while the tensor cores work on the other's product)."""
    bh, b, h = batch_head(H)
    ROWS: tl.constexpr = BLOCK_M * (2 if SPLIT else 1)
    offs_a = tl.program_id(0) * ROWS + tl.arange(0, BLOCK_M)
    offs_b = offs_a + BLOCK_M
    offs_n = tl.arange(0, BLOCK_N)
    d = tl.arange(0, D)
    bh64 = bh.to(tl.int64)
    qa = tl.load(Q + (bh64 * SQ_PAD + offs_a[:, None]) * D + d[None, :])
    qsa = tl.load(QS + bh64 * SQ_PAD + offs_a)  # softmax scale * log2(e) folded in by the producer
    # m: running row max of s = qs * ks * (q8 . k8) in log2 units; l: running sum of P * 448
    m_a, l_a, acc_a = softmax_start(BLOCK_M, D)
    if SPLIT:
        qb = tl.load(Q + (bh64 * SQ_PAD + offs_b[:, None]) * D + d[None, :])
        qsb = tl.load(QS + bh64 * SQ_PAD + offs_b)
        m_b, l_b, acc_b = softmax_start(BLOCK_M, D)
    length = key_length(LENS, b, SK, HAS_LENS)
    k_ptrs = K + (bh64 * SK_PAD + offs_n[:, None]) * D + d[None, :]
    ks_ptrs = KS + bh64 * SK_PAD + offs_n
    vt_ptrs = VT + (bh64 * D + d[:, None]) * SK_PAD + offs_n[None, :]
    keep = offs_n < BLOCK_N  # all true; the masked tail below replaces it

    n_full = (length // BLOCK_N) * BLOCK_N
    for start in tl.range(0, n_full, BLOCK_N, warp_specialize=WARP_SPEC):
        k = tl.trans(tl.load(k_ptrs + start * D))
        ks = tl.load(ks_ptrs + start)
        ta = tl.dot(qa, k) * ks[None, :]
        if SPLIT:
            tb = tl.dot(qb, k) * ks[None, :]
        vt = tl.trans(tl.load(vt_ptrs + start))
        p, m_a, l_a, acc_a = _softmax_block(ta, qsa, m_a, l_a, acc_a, keep, False, FAST_EXP)
        acc_a = tl.dot(to_e4m3(p, GRID_ROUND), vt, acc_a)
        if SPLIT:
            p, m_b, l_b, acc_b = _softmax_block(tb, qsb, m_b, l_b, acc_b, keep, False, FAST_EXP)
            acc_b = tl.dot(to_e4m3(p, GRID_ROUND), vt, acc_b)
    if n_full < length:  # the last, partial key block: mask keys >= length
        keep = (n_full + offs_n) < length
        k = tl.trans(tl.load(k_ptrs + n_full * D))
        ks = tl.load(ks_ptrs + n_full)
        vt = tl.trans(tl.load(vt_ptrs + n_full))
        ta = tl.dot(qa, k) * ks[None, :]
        p, m_a, l_a, acc_a = _softmax_block(ta, qsa, m_a, l_a, acc_a, keep, True, FAST_EXP)
        acc_a = tl.dot(to_e4m3(p, GRID_ROUND), vt, acc_a)
        if SPLIT:
            tb = tl.dot(qb, k) * ks[None, :]
            p, m_b, l_b, acc_b = _softmax_block(tb, qsb, m_b, l_b, acc_b, keep, True, FAST_EXP)
            acc_b = tl.dot(to_e4m3(p, GRID_ROUND), vt, acc_b)
    vs = tl.load(VS + bh64 * D + d)
    _store_out(O, acc_a, l_a, vs, b, h, offs_a, d, sob, sos, soh, SQ)
    if SPLIT:
        _store_out(O, acc_b, l_b, vs, b, h, offs_b, d, sob, sos, soh, SQ)


# ------------------------------------------------------------------------------------------------
# Tile configuration, launcher, op, fake


# Tile configuration of the attention kernel:
# (BLOCK_M, BLOCK_N, num_warps, num_stages, fast_exp (inline ex2.approx.ftz), warp_specialize,
#  split: two BLOCK_M query sub-tiles a program).
# Picked on an H100 by benchmarks/bench_attention.py --sweep (see benchmarks/NOTES_attention.md).
FWD_CONFIG = {64: (64, 64, 4, 3, False, False, False), 128: (64, 128, 4, 3, False, False, False)}
FWD_CONFIG_CPU = (32, 32, 4, 1, False, False, False)  # interpreter: small tiles, no inline PTX


FWD_CONFIG_ADA = (64, 64, 4, 2, False, False, False)  # sm_89: ~100 KB shared memory a SM; untested


def fwd_config(d: int, device: torch.device):
    if device.type == "cpu":
        return FWD_CONFIG_CPU
    major, minor = torch.cuda.get_device_capability(device)
    return fwd_config_for(d, major * 10 + minor)


def fwd_config_for(d: int, capability: int):
    """The attention kernel's tile config for head dim ``d`` on GPUs of compute capability ``capability`` (89: sm_89)."""
    if capability < 90:
        return FWD_CONFIG_ADA
    return FWD_CONFIG.get(d, (64, 64, 4, 3, False, False, False))


# --------------------------------------------------------------------------------------------
# attention kernel
# --------------------------------------------------------------------------------------------
def launch_fwd(q8, qs, k8, ks, vt8, vs, key_lengths, sk, out, config=None):
    """Fill ``out [B, Sq, H, D]`` (last stride 1) with FP8 attention of the quantized operands."""
    B, H, sq_pad, D = q8.shape
    sq = out.shape[1]
    sk_pad = k8.shape[2]
    bm, bn, warps, stages, fast_exp, warp_spec, split = config or fwd_config(D, q8.device)
    rows = bm * (2 if split else 1)
    if SEQ_PAD % rows or SEQ_PAD % bn:
        raise ValueError(f"attention tile config {config} needs tiles dividing the sequence padding {SEQ_PAD}")
    grid = (triton.cdiv(sq, rows), B * H)
    lens = key_lengths if key_lengths is not None else qs  # dummy pointer when unused
    return launchable(_attn_fwd_kernel, q8)[grid](
        q8, qs, k8, ks, vt8, vs, lens,
        out, out.stride(0), out.stride(1), out.stride(2),
        H, sq, sq_pad, sk, sk_pad,
        D=D, BLOCK_M=bm, BLOCK_N=bn, HAS_LENS=key_lengths is not None, FAST_EXP=fast_exp, GRID_ROUND=interpreting(q8), WARP_SPEC=warp_spec, SPLIT=split,
        num_warps=warps, num_stages=stages,
    )


def _attention_fwd_impl(q8: torch.Tensor, qs: torch.Tensor, k8: torch.Tensor, ks: torch.Tensor, vt8: torch.Tensor,
                  vs: torch.Tensor, key_lengths: torch.Tensor | None, sq: int, sk: int,
                  out_dtype: torch.dtype) -> torch.Tensor:
    """FP8 attention of producer outputs -> ``[B, Sq, H, D]`` in ``out_dtype``.

    ``q8 [B, H, Sqp, D]``, ``qs [B, H, Sqp]`` (softmax scale * log2(e) folded in), ``k8 [B, H, Skp, D]``,
    ``ks [B, H, Skp]``, ``vt8 [B, H, D, Skp]``, ``vs [B, H, D]``, ``key_lengths [B]`` int32 or None.
    """
    B, H, _, D = q8.shape
    out = torch.empty(B, sq, H, D, device=q8.device, dtype=out_dtype)
    lens = None if key_lengths is None else key_lengths.to(torch.int32).contiguous()
    launch_fwd(q8, qs, k8, ks, vt8, vs, lens, sk, out)
    return out


def _attention_fwd_fake(q8, qs, k8, ks, vt8, vs, key_lengths, sq, sk, out_dtype):
    B, H, _, D = q8.shape
    return q8.new_empty(B, sq, H, D, dtype=out_dtype)


attention_fwd = dual_op("fp8_attention_fwd", _attention_fwd_impl, _attention_fwd_fake)


def attention_fwd_ref(q8, qs, k8, ks, vt8, vs, key_lengths, sq, sk, out_dtype):
    """Twin of :func:`attention_fwd` (one key block, float32): ``s = q·k`` in the log2 domain (the softmax scale
    times log2(e) is in ``qs``), ``P = exp2(s - max)``, ``P * 448`` rounded to e4m3 for ``P @ V``, the row sum
    from the unrounded ``P``, per-channel ``vs`` at the end. Keys at ``>= sk`` or ``>= key_lengths[b]`` are masked.
    Returns ``[B, sq, H, D]`` in ``out_dtype``."""
    qd = q8.float()[:, :, :sq] * qs[:, :, :sq, None]
    kd = k8.float()[:, :, :sk] * ks[:, :, :sk, None]
    vd = vt8.float()[..., :sk].transpose(-1, -2)
    s = qd @ kd.transpose(-1, -2)
    if key_lengths is not None:
        keep = torch.arange(sk, device=s.device)[None, :] < key_lengths.clamp(1, sk)[:, None].to(s.device)
        s = s.masked_fill(~keep[:, None, None, :], float("-inf"))
    p = torch.exp2(s - s.amax(-1, keepdim=True))
    p8 = (p * 448.0).to(torch.float8_e4m3fn).float()
    out = (p8 @ vd) * vs[:, :, None, :] / (448.0 * p.sum(-1, keepdim=True))
    return out.transpose(1, 2).to(out_dtype)
