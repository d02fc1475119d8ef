"""Accuracy study of 8-bit attention quantization schemes (issue #14, item 1).

Pure PyTorch on the CPU; float64 truth. Every candidate scheme is emulated exactly where it matters:

* e4m3 rounding by ``torch.float8_e4m3fn`` casts (round to nearest even, saturated at +-448), int8 by
  ``torch.round`` (half to even) with saturation at +-127; scales ``amax * (1 / qmax)`` in float32, as q8lib's
  producers compute them (:func:`q8lib.quant.quantize_rowwise` for per-token granularity).
* products of 8-bit codes are summed exactly (float64 holds every int8/e4m3 dot product of these sizes
  exactly), then optionally through a model of Hopper's FP8 tensor-core accumulator (see :func:`fp22`):
  FP8 ``wgmma`` keeps ~13 mantissa bits when it adds a K=32 slice of products to its accumulator
  (SageAttention2 calls it FP22; DeepSeek-V3 measured "around 14 bits"). Triton 3.x on sm_90 compiles an
  FP8 ``tl.dot`` with ``max_num_imprecise_acc = 2**30`` by default, i.e. never promotes: today's kernel
  (``acc = tl.dot(p8, v8, acc)``) accumulates P@V over *all* keys in that precision. "Two-level"
  accumulation sums each key block's P@V in a zeroed wgmma accumulator and adds it to an fp32 one.
  INT8 ``wgmma`` accumulates exactly in int32. fp32 arithmetic elsewhere is modelled as exact.
* the online softmax runs block by block over keys (``block_n`` keys a block), as a flash kernel does:
  running max ``m``, ``P = exp(s - m)`` quantized per block against the running max, row sum ``l`` from
  the unquantized P (q8lib's choice), accumulator rescaled by ``exp(m_old - m_new)``.
* the output is rounded to bf16 (what the kernels write), also for the bf16 baselines.

Inputs: (a) Gaussian q/k/v; (b) outlier channels (:func:`outlier_inputs`, two variants, distributions
in their docstrings); (c) q/k/v of the trained tiny LTX-Video (``q8lib/assets/tiny-ltx-shapes``) after
``norm_q``/``norm_k`` and RoPE, captured during a denoising forward. Errors are measured on a subset of
query rows (whole 128-row blocks spread over the sequence) against all keys: rows are independent.

End to end: the tiny model generates with each scheme in every attention layer (study-local processor,
no library change) and is compared with the fp32 model: PSNR of the decoded clips, relative error of the
final latents, judge agreement; also with the linears-only Q8 model (int8, reference backend).

Run: ``PYTHONPATH=. python benchmarks/attention_accuracy.py [--quick]`` (writes
``benchmarks/results/accuracy/attention_accuracy_cpu.json`` unless ``--out`` says otherwise).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from q8lib.hadamard import hadamard_transform

F64 = torch.float64
E4M3 = torch.float8_e4m3fn
QMAX = {"e4m3": 448.0, "int8": 127.0}
P_SCALE = 448.0  # P is stored as e4m3(P * 448), as q8lib's kernel does


# ------------------------------------------------------------------------------------------------
# number formats
def round_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Nearest-even e4m3 value of ``x`` (float32 first, as a kernel holds it), saturated at +-448; float64 out."""
    return x.float().clamp(-448.0, 448.0).to(E4M3).to(F64)


def round_int8(x: torch.Tensor) -> torch.Tensor:
    """Round half to even and saturate at +-127; float64 out."""
    return torch.round(x).clamp(-127.0, 127.0).to(F64)


def round_bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(F64)


def round_fp16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(F64)


def fp22(x: torch.Tensor, bits: int = 13) -> torch.Tensor:
    """Model of the FP8 wgmma accumulator: ``x`` truncated (toward zero) to ``bits`` explicit mantissa bits.

    A model, not a bit-exact description: the hardware aligns the products to the largest exponent
    and drops low bits; truncating each partial sum is the pessimistic reading of "keeps ~14 bits".
    """
    m, e = torch.frexp(x)  # x = m * 2**e, 0.5 <= |m| < 1
    scale = float(2 ** (bits + 1))
    return torch.ldexp(torch.trunc(m * scale) / scale, e)


def quantize_groups(x: torch.Tensor, fmt: str, rows: int = 1):
    """Symmetric quantization of ``x [..., S, D]`` with one scale per ``rows`` consecutive tokens (all D).

    ``rows=1``: per token (q8lib today); 16: a warp's rows of a 64-row wgmma tile; 64/128: a tile.
    Returns ``(codes, scale)`` float64 with ``x ~ codes * scale``; ``scale [..., S, 1]`` (repeated within a
    group). ``fmt``: ``"e4m3"``, ``"int8"``, ``"bf16"`` (codes = bf16 values, scale 1) or ``"exact"``.
    """
    if fmt == "exact":
        return x.to(F64), torch.ones_like(x[..., :1], dtype=F64)
    if fmt == "bf16":
        return round_bf16(x), torch.ones_like(x[..., :1], dtype=F64)
    if rows == "tensor":  # one scale for the whole tensor (all batches, heads, tokens): cuDNN's FP8 SDPA descales
        amax = x.float().abs().amax()
        qmax = QMAX[fmt]
        y = (x.float() * torch.where(amax > 0, qmax / amax, torch.zeros_like(amax))).clamp(-qmax, qmax)
        codes = round_e4m3(y) if fmt == "e4m3" else round_int8(y)
        return codes, (amax * (1.0 / qmax)).to(F64).expand(*x.shape[:-1], 1)
    S = x.shape[-2]
    pad = -S % rows  # a partial last group is padded with zero rows (as the producers pad to 128)
    xf = F.pad(x.float(), (0, 0, 0, pad)) if pad else x.float()
    xg = xf.unflatten(-2, (-1, rows))
    amax = xg.abs().amax(dim=(-2, -1), keepdim=True)
    qmax = QMAX[fmt]
    scale = amax * (1.0 / qmax)  # float32, as the producers compute it
    inv = torch.where(amax > 0, qmax / amax, torch.zeros_like(amax))
    y = (xg * inv).clamp(-qmax, qmax)
    codes = round_e4m3(y) if fmt == "e4m3" else round_int8(y)
    scale = scale.to(F64).expand(*xg.shape[:-1], 1)
    return codes.flatten(-3, -2)[..., :S, :], scale.flatten(-3, -2)[..., :S, :]


def quantize_channels(v: torch.Tensor, fmt: str, per: str = "channel"):
    """``v [..., Sk, D]`` with one scale per channel (over all keys) or per tensor (per head).

    Returns ``(codes [..., Sk, D], scale [..., 1, D])`` float64; ``fmt`` e4m3/int8/bf16/fp16/exact.
    """
    if fmt in ("exact", "bf16", "fp16"):
        r = {"exact": lambda t: t.to(F64), "bf16": round_bf16, "fp16": round_fp16}[fmt]
        return r(v), torch.ones_like(v[..., :1, :], dtype=F64)
    vf = v.float()
    amax = vf.abs().amax(dim=-2, keepdim=True)
    if per == "tensor":
        amax = amax.amax(dim=-1, keepdim=True).expand_as(amax)
    elif per == "global":  # one scale for the whole tensor (cuDNN's FP8 SDPA)
        amax = vf.abs().amax().expand_as(amax)
    qmax = QMAX[fmt]
    inv = torch.where(amax > 0, qmax / amax, torch.zeros_like(amax))
    y = (vf * inv).clamp(-qmax, qmax)
    codes = round_e4m3(y) if fmt == "e4m3" else round_int8(y)
    return codes, (amax * (1.0 / qmax)).to(F64)


def chunked_dot(a: torch.Tensor, b: torch.Tensor, acc: torch.Tensor | None, k_chunk: int = 32,
                limited: bool = False) -> torch.Tensor:
    """``acc + a @ b`` over the inner dim in slices of ``k_chunk`` (one wgmma K step: 32 for 8-bit inputs).

    ``limited``: after adding each slice the accumulator is rounded by :func:`fp22` (FP8 wgmma);
    otherwise exact (int8 wgmma accumulates in int32; fp32 accumulation modelled as exact).
    """
    if not limited:
        out = a @ b
        return out if acc is None else acc + out
    out = torch.zeros(*a.shape[:-1], b.shape[-1], dtype=F64) if acc is None else acc
    for c in range(0, a.shape[-1], k_chunk):
        out = fp22(out + a[..., c:c + k_chunk] @ b[..., c:c + k_chunk, :])
    return out


# ------------------------------------------------------------------------------------------------
# the scheme engine
@dataclass(frozen=True)
class Scheme:
    """One attention quantization scheme (see :func:`simulate`)."""

    rotate: bool = True  # Hadamard rotation of q and k along the head dim (q kᵀ unchanged)
    k_smooth: bool = False  # subtract the mean key over tokens (exact under softmax)
    q_smooth: bool = False  # subtract the mean query of each q tile; its q̄·k term added back in fp32
    qk_balance: bool = False  # per-channel q/λ, k·λ with λ_c = sqrt(amax_c(q) / amax_c(k)) over tokens (exact)
    qk_fmt: str = "e4m3"  # e4m3 | int8 | bf16 | exact
    q_rows: int | str = 1  # tokens sharing one q scale (1 = per token; "tensor": one scale for the whole tensor)
    k_rows: int | str = 1  # tokens sharing one k scale
    p_fmt: str = "e4m3"  # e4m3 (P * 448) | fp16 | bf16 | exact
    v_fmt: str = "e4m3"  # e4m3 | fp16 | bf16 | exact | e4m3x2 (v = hi + lo, two e4m3 terms, two PV MMAs)
    v_scale: str = "channel"  # channel | tensor (per head) | global (whole tensor)
    v_smooth: bool = False  # subtract the mean value over tokens per channel, added back after normalizing
    acc: str = "fp32"  # PV accumulation: fp32 | fp22 (FP8 wgmma precision; promote_every applies)
    promote_every: int | None = None  # key blocks between promotions to fp32 (None: never, today's Triton)
    qk_acc: str = "exact"  # QK accumulation: exact | fp22 (e4m3 wgmma over the head dim)
    block_n: int = 64  # keys a block of the online softmax
    block_m: int = 64  # query rows of a tile (q smoothing granularity)
    out_bf16: bool = True  # output rounded to bf16


def simulate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: Scheme, sm_scale: float | None = None):
    """Attention ``softmax(q kᵀ * sm_scale) v`` of ``q [B, H, Sq, D]``, ``k, v [B, H, Sk, D]`` under scheme ``s``.

    Steps (each optional per the scheme): K smoothing, Q smoothing, Hadamard rotation, q/k quantization,
    QK product (exact or FP8-accumulator model), block-wise online softmax with quantized P, V
    smoothing and quantization, PV accumulation (fp32, FP8 accumulator, or two-level), normalization,
    bf16 output. Returns float64 ``[B, H, Sq, D]``.
    """
    q, k, v = q.to(F64), k.to(F64), v.to(F64)
    D = q.shape[-1]
    Sk = k.shape[-2]
    sm = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    if s.k_smooth:
        k = k - k.mean(-2, keepdim=True)
    bias = None
    if s.q_smooth:  # per tile of block_m queries: s = (q - q̄) kᵀ + q̄ kᵀ, the second term in fp32
        qg = q.unflatten(-2, (-1, s.block_m))
        qbar = qg.mean(-2, keepdim=True)
        q = (qg - qbar).flatten(-3, -2)
        bias = (qbar.float() @ k.float().unsqueeze(-3).transpose(-1, -2)).to(F64)  # [B,H,T,1,Sk]
        bias = bias.expand(*qg.shape[:-1], Sk).flatten(-3, -2) * sm
    if s.qk_balance:  # SmoothQuant between q and k: (q / λ)(k λ)ᵀ = q kᵀ for any per-channel λ > 0
        aq, ak = q.abs().amax(-2, keepdim=True), k.abs().amax(-2, keepdim=True)
        lam = torch.where((aq > 0) & (ak > 0), (aq / ak).sqrt(), torch.ones_like(aq)).float().to(F64)
        q, k = q / lam, k * lam
    if s.rotate:
        q, k = hadamard_transform(q), hadamard_transform(k)
    qc, qs = quantize_groups(q, s.qk_fmt, s.q_rows)
    kc, ks = quantize_groups(k, s.qk_fmt, s.k_rows)
    limited_qk = s.qk_acc == "fp22" and s.qk_fmt == "e4m3"
    t = chunked_dot(qc, kc.transpose(-1, -2), None, 32, limited_qk)
    scores = t * qs * ks.transpose(-1, -2) * sm
    if bias is not None:
        scores = scores + bias

    vmean = None
    if s.v_smooth:
        vmean = v.float().mean(-2, keepdim=True).to(F64)
        v = v - vmean
    if s.v_fmt == "e4m3x2":
        vhi, vsc = quantize_channels(v, "e4m3", s.v_scale)
        vlo = round_e4m3(v / vsc - vhi)  # the residual in e4m3 (same per-channel scale)
        vparts = [vhi, vlo]
    else:
        vc, vsc = quantize_channels(v, s.v_fmt, s.v_scale)
        vparts = [vc]

    B, H, Sq, _ = q.shape
    m = torch.full((B, H, Sq, 1), -math.inf, dtype=F64)
    l = torch.zeros((B, H, Sq, 1), dtype=F64)
    acc32 = torch.zeros((B, H, Sq, D), dtype=F64)
    inner = None  # the limited-precision accumulator (acc == "fp22")
    limited_pv = s.acc == "fp22" and s.p_fmt == "e4m3" and s.v_fmt.startswith("e4m3")
    pscale = P_SCALE if s.p_fmt == "e4m3" else 1.0
    for i, start in enumerate(range(0, Sk, s.block_n)):
        sb = scores[..., start:start + s.block_n]
        m_new = torch.maximum(m, sb.amax(-1, keepdim=True))
        alpha = torch.exp(m - m_new)
        p = torch.exp(sb - m_new)
        l = l * alpha + p.sum(-1, keepdim=True)
        pq = {"e4m3": lambda x: round_e4m3(x * P_SCALE), "fp16": round_fp16, "bf16": round_bf16,
              "exact": lambda x: x}[s.p_fmt](p)
        acc32 = acc32 * alpha
        if limited_pv:
            inner = torch.zeros_like(acc32) if inner is None else inner * alpha
            for part in vparts:
                inner = chunked_dot(pq, part[..., start:start + s.block_n, :], inner, 32, limited=True)
            if s.promote_every is not None and (i + 1) % s.promote_every == 0:
                acc32, inner = acc32 + inner, None
        else:
            for part in vparts:
                acc32 = acc32 + pq @ part[..., start:start + s.block_n, :]
        m = m_new
    if inner is not None:
        acc32 = acc32 + inner
    out = acc32 * vsc / (pscale * l)
    if vmean is not None:
        out = out + vmean
    return round_bf16(out) if s.out_bf16 else out


# ------------------------------------------------------------------------------------------------
# the candidates: name -> function(q, k, v) -> output
def exact_attention(q, k, v):
    """float64 truth: ``softmax(q kᵀ / sqrt(D)) v`` in one block, no rounding anywhere."""
    q, k, v = q.to(F64), k.to(F64), v.to(F64)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
    return w @ v


def bf16_flash(q, k, v):
    """Model of bf16 flash attention (FA2/FA3/cuDNN): bf16 q/k/v, fp32 scores, P rounded to bf16 per
    block of 64 keys against the running max, fp32 accumulation, bf16 output."""
    return simulate(q, k, v, Scheme(rotate=False, qk_fmt="bf16", p_fmt="bf16", v_fmt="bf16"))


def torch_sdpa_bf16(q, k, v):
    """torch's own SDPA on bf16 inputs (CPU kernel), bf16 output."""
    return F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16()).to(F64)


def today_ref(q, k, v):
    """q8lib today as ``reference.fp8_attention_ref`` defines it: Hadamard q/k, e4m3 per token, e4m3 V per
    channel, e4m3(P*448), exact (fp32) accumulation of PV."""
    return simulate(q, k, v, Scheme())


def today_hopper(q, k, v):
    """q8lib today as the Triton kernel runs on sm_90: as :func:`today_ref` but QK and PV through the FP8
    wgmma accumulator, PV accumulated over all keys without promotion (``acc = tl.dot(p8, v8, acc)``)."""
    return simulate(q, k, v, Scheme(acc="fp22", qk_acc="fp22"))


def today_2level(q, k, v):
    """Today with two-level PV accumulation: each 64-key block's PV in a zeroed FP8 accumulator, added
    to an fp32 one (``acc = acc * alpha + tl.dot(p8, v8)``)."""
    return simulate(q, k, v, Scheme(acc="fp22", promote_every=1, qk_acc="fp22"))


def e4m3_ksmooth(q, k, v):
    """Today (Hadamard, e4m3 per token) + K smoothing, two-level PV."""
    return simulate(q, k, v, Scheme(k_smooth=True, acc="fp22", promote_every=1, qk_acc="fp22"))


def e4m3_ksmooth_norot(q, k, v):
    """e4m3 per token + K smoothing, no Hadamard rotation, two-level PV."""
    return simulate(q, k, v, Scheme(rotate=False, k_smooth=True, acc="fp22", promote_every=1, qk_acc="fp22"))


def int8_token_ksmooth(q, k, v):
    """INT8 QK per token (exact int32 accumulation) + K smoothing + Hadamard; e4m3 PV two-level."""
    return simulate(q, k, v, Scheme(k_smooth=True, qk_fmt="int8", acc="fp22", promote_every=1))


def int8_block64_ksmooth(q, k, v):
    """INT8 QK with one scale per 64-row q tile and per 64-key k block + K smoothing + Hadamard; e4m3 PV."""
    return simulate(q, k, v, Scheme(k_smooth=True, qk_fmt="int8", q_rows=64, k_rows=64, acc="fp22",
                                    promote_every=1))


def int8_block64_ksmooth_norot(q, k, v):
    """As :func:`int8_block64_ksmooth` without the Hadamard rotation (SageAttention-style per block)."""
    return simulate(q, k, v, Scheme(rotate=False, k_smooth=True, qk_fmt="int8", q_rows=64, k_rows=64,
                                    acc="fp22", promote_every=1))


def int8_block128_ksmooth(q, k, v):
    """INT8 QK per 128-row q tile / 128-key k block + K smoothing + Hadamard; e4m3 PV two-level."""
    return simulate(q, k, v, Scheme(k_smooth=True, qk_fmt="int8", q_rows=128, k_rows=128, acc="fp22",
                                    promote_every=1, block_n=128))


def int8_warp_ksmooth(q, k, v):
    """INT8 QK, q scale per 16 rows (one warp of a 64-row wgmma tile), k per 64-key block, K smoothing,
    Hadamard; e4m3 PV two-level."""
    return simulate(q, k, v, Scheme(k_smooth=True, qk_fmt="int8", q_rows=16, k_rows=64, acc="fp22",
                                    promote_every=1))


def int8_warp_qksmooth_norot(q, k, v):
    """SageAttention2-like QK: Q smoothing per 64-row tile (q̄·kᵀ bias in fp32) + K smoothing, INT8 per warp
    (q) / per block (k), no rotation; e4m3 PV two-level."""
    return simulate(q, k, v, Scheme(rotate=False, k_smooth=True, q_smooth=True, qk_fmt="int8", q_rows=16,
                                    k_rows=64, acc="fp22", promote_every=1))


def int8_token_balance(q, k, v):
    """INT8 QK per token + K smoothing + q/k channel balancing (λ per head and channel from the amax of q
    and k over tokens) + Hadamard; e4m3 PV two-level."""
    return simulate(q, k, v, Scheme(k_smooth=True, qk_balance=True, qk_fmt="int8", acc="fp22", promote_every=1))


def int8_block64_balance(q, k, v):
    """:func:`int8_block64_ksmooth` + q/k channel balancing."""
    return simulate(q, k, v, Scheme(k_smooth=True, qk_balance=True, qk_fmt="int8", q_rows=64, k_rows=64,
                                    acc="fp22", promote_every=1))


def e4m3_balance_norot(q, k, v):
    """e4m3 QK per token + K smoothing + q/k channel balancing, no rotation; e4m3 PV two-level."""
    return simulate(q, k, v, Scheme(rotate=False, k_smooth=True, qk_balance=True, acc="fp22", promote_every=1,
                                    qk_acc="fp22"))


def int8_token_balance_fp16pv(q, k, v):
    """:func:`int8_token_balance` with P and V in fp16 (fp16 PV wgmma, fp32 accumulation)."""
    return simulate(q, k, v, Scheme(k_smooth=True, qk_balance=True, qk_fmt="int8", p_fmt="fp16", v_fmt="fp16"))


def int8_block64_balance_fp16pv(q, k, v):
    """:func:`int8_block64_balance` with P and V in fp16."""
    return simulate(q, k, v, Scheme(k_smooth=True, qk_balance=True, qk_fmt="int8", q_rows=64, k_rows=64,
                                    p_fmt="fp16", v_fmt="fp16"))


def int8_qtoken_kblock_balance_fp16pv(q, k, v):
    """INT8 q per token (its scale is a row factor, free in the kernel) and k per 64-key block (one scalar a
    block: no per-column multiply), K smoothing + q/k balancing + Hadamard; fp16 P and V, fp32 accumulation."""
    return simulate(q, k, v, Scheme(k_smooth=True, qk_balance=True, qk_fmt="int8", q_rows=1, k_rows=64,
                                    p_fmt="fp16", v_fmt="fp16"))


def int8_qtoken_kblock_balance_norot_fp16pv(q, k, v):
    """:func:`int8_qtoken_kblock_balance_fp16pv` without the Hadamard rotation (does balancing replace it?)."""
    return simulate(q, k, v, Scheme(rotate=False, k_smooth=True, qk_balance=True, qk_fmt="int8", q_rows=1,
                                    k_rows=64, p_fmt="fp16", v_fmt="fp16"))


def int8_qtoken_kblock_balance(q, k, v):
    """:func:`int8_qtoken_kblock_balance_fp16pv` with today's e4m3 PV (two-level accumulation)."""
    return simulate(q, k, v, Scheme(k_smooth=True, qk_balance=True, qk_fmt="int8", q_rows=1, k_rows=64,
                                    acc="fp22", promote_every=1))


def int8_block64_balance_vsplit(q, k, v):
    """:func:`int8_block64_balance` with V as two e4m3 terms (two FP8 PV wgmmas, one accumulator)."""
    return simulate(q, k, v, Scheme(k_smooth=True, qk_balance=True, qk_fmt="int8", q_rows=64, k_rows=64,
                                    v_fmt="e4m3x2", acc="fp22", promote_every=1))


def int8_token_ksmooth_vsmooth(q, k, v):
    """:func:`int8_token_ksmooth` + V smoothing (mean value per channel subtracted, added back)."""
    return simulate(q, k, v, Scheme(k_smooth=True, qk_fmt="int8", v_smooth=True, acc="fp22", promote_every=1))


def int8_token_ksmooth_vsplit(q, k, v):
    """:func:`int8_token_ksmooth` with V as two e4m3 terms (hi + residual, same per-channel scale): two PV
    wgmmas with the same P into the same accumulator."""
    return simulate(q, k, v, Scheme(k_smooth=True, qk_fmt="int8", v_fmt="e4m3x2", acc="fp22", promote_every=1))


def int8_token_ksmooth_fp16pv(q, k, v):
    """:func:`int8_token_ksmooth` with P and V in fp16 (fp16 wgmma, fp32 accumulation): SageAttention1's PV."""
    return simulate(q, k, v, Scheme(k_smooth=True, qk_fmt="int8", p_fmt="fp16", v_fmt="fp16"))


def today_vtensor(q, k, v):
    """Today but one V scale per head (per tensor, cuDNN FP8's granularity), fp32 accumulation."""
    return simulate(q, k, v, Scheme(v_scale="tensor"))


def exact_qk_e4m3_pv(q, k, v):
    """Error split: exact QK, today's e4m3 P and V (fp32 accumulation)."""
    return simulate(q, k, v, Scheme(qk_fmt="exact"))


def e4m3_qk_exact_pv(q, k, v):
    """Error split: today's e4m3 QK (Hadamard, per token), exact P and V."""
    return simulate(q, k, v, Scheme(p_fmt="exact", v_fmt="exact"))


def exact_qk_e4m3p_exactv(q, k, v):
    """Error split: only P in e4m3 (P*448)."""
    return simulate(q, k, v, Scheme(qk_fmt="exact", v_fmt="exact"))


SCHEMES = {f.__name__: f for f in (
    bf16_flash, torch_sdpa_bf16, today_ref, today_hopper, today_2level, today_vtensor,
    e4m3_ksmooth, e4m3_ksmooth_norot, int8_token_ksmooth, int8_block64_ksmooth, int8_block64_ksmooth_norot,
    int8_block128_ksmooth, int8_warp_ksmooth, int8_warp_qksmooth_norot,
    int8_token_balance, int8_block64_balance, e4m3_balance_norot,
    int8_token_ksmooth_vsmooth, int8_token_ksmooth_vsplit, int8_token_ksmooth_fp16pv,
    int8_token_balance_fp16pv, int8_block64_balance_fp16pv, int8_block64_balance_vsplit,
    int8_qtoken_kblock_balance, int8_qtoken_kblock_balance_fp16pv, int8_qtoken_kblock_balance_norot_fp16pv,
    exact_qk_e4m3_pv, e4m3_qk_exact_pv, exact_qk_e4m3p_exactv,
)}


# ------------------------------------------------------------------------------------------------
# inputs
def gaussian_inputs(B, H, S, D, seed):
    """q, k, v ~ N(0, 1) i.i.d. (float64)."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, S, D, generator=g, dtype=F64) for _ in range(3))


def outlier_inputs(B, H, S, D, seed, variant="disjoint"):
    """q, k with outlier channels and a common key offset; v ~ N(0, 1).

    Base q, k ~ N(0, 1). Per head, 4 channels (random, fixed by the seed) are outliers:
    * ``"disjoint"``: q's 4 outlier channels and k's 4 (different channels) are multiplied by 20; the
      logits' std is then ~7 (sharp attention, not one-hot);
    * ``"shared"``: the same 4 channels of q and of k are multiplied by 5 (logit std ~6.3).
    In both, every key gets the same per-channel offset ``o_c ~ N(0, 3²)`` (``o_c ~ N(0, 15²)`` on k's
    outlier channels): a bias that cancels under softmax but dominates k's per-token max, as in DiT keys.
    """
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, S, D, generator=g, dtype=F64) for _ in range(3))
    for h in range(H):
        perm = torch.randperm(D, generator=g)
        cq = perm[:4]
        ck = perm[4:8] if variant == "disjoint" else cq
        f = 20.0 if variant == "disjoint" else 5.0
        q[:, h, :, cq] *= f
        k[:, h, :, ck] *= f
        off = 3.0 * torch.randn(D, generator=g, dtype=F64)
        off[ck] *= 5.0
        k[:, h] += off
    return q, k, v


def query_rows(S: int, n: int, block: int = 128) -> torch.Tensor:
    """Indices of ``n`` query rows: whole ``block``-row tiles spread evenly over ``S`` (all rows if n >= S)."""
    if n >= S:
        return torch.arange(S)
    tiles = S // block
    pick = torch.linspace(0, tiles - 1, n // block).round().long().unique()
    return torch.cat([torch.arange(t * block, (t + 1) * block) for t in pick.tolist()])


def rows_for(S: int, n_queries: int) -> int:
    """Query rows measured at ``S`` tokens: ``n_queries`` up to 4096 tokens, 128 beyond (the cost is rows x keys)."""
    return n_queries if S <= 4096 else 128


def metrics(out, ref) -> dict:
    out, ref = out.to(F64), ref.to(F64)
    rel = ((out - ref).norm() / ref.norm()).item()
    cos = F.cosine_similarity(out.flatten(0, -2), ref.flatten(0, -2), dim=-1)
    return dict(rel_err=round(rel, 6), cos_mean=round(cos.mean().item(), 7), cos_min=round(cos.min().item(), 7))


def run_case(q, k, v, schemes, n_queries):
    """Every scheme on ``q[..., rows, :]`` against all keys; returns ``{scheme: metrics}``."""
    rows = query_rows(q.shape[-2], rows_for(q.shape[-2], n_queries))
    qs = q[..., rows, :]
    ref = exact_attention(qs, k, v)
    out = {}
    for name in schemes:
        out[name] = metrics(SCHEMES[name](qs, k, v), ref)
    return out


def synthetic_study(schemes, shapes, seed, n_queries, log):
    results = []
    for dist in ("gaussian", "outlier_disjoint", "outlier_shared"):
        for (B, H, S, D) in shapes:
            if dist == "gaussian":
                q, k, v = gaussian_inputs(B, H, S, D, seed)
            else:
                q, k, v = outlier_inputs(B, H, S, D, seed, dist.split("_")[1])
            t0 = time.perf_counter()
            res = run_case(q, k, v, schemes, n_queries)
            log(f"{dist:17s} B{B} H{H} S{S} D{D}: " + " ".join(f"{n}={r['rel_err']:.4f}" for n, r in res.items())
                + f"  ({time.perf_counter() - t0:.1f}s)")
            logits = (q[..., :256, :] @ k.transpose(-1, -2)) / math.sqrt(D)
            results.append(dict(input=dist, shape=[B, H, S, D], query_rows=len(query_rows(S, rows_for(S, n_queries))),
                                seed=seed,
                                logit_std=round(logits.std(-1).mean().item(), 3), schemes=res))
    return results


# ------------------------------------------------------------------------------------------------
# the trained tiny model
def _heldout_prompts(n):
    from q8lib.shapes import HELDOUT_TRIPLES, caption_text

    return [caption_text(*t) for t in HELDOUT_TRIPLES[:n]]


class CaptureProcessor:
    """Study-local LTX attention processor: plain SDPA (as diffusers computes it) that records
    q/k/v after norm_q/norm_k + RoPE, ``[B, H, S, D]``, of the transformer forward number ``at``."""

    def __init__(self, store: dict, name: str, counter: list, at: int):
        self.store, self.name, self.counter, self.at = store, name, counter, at

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from q8lib.reference import attention_inputs

        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attention_inputs(attn, attn.to_q(hidden_states), attn.to_k(ctx), attn.to_v(ctx), image_rotary_emb)
        lengths = None
        if attention_mask is not None:
            from q8lib.attention import mask_to_key_lengths

            lengths = mask_to_key_lengths(attention_mask, hidden_states.shape[0])
        if self.counter[0] == self.at:
            self.store[self.name] = (q.detach().clone(), k.detach().clone(), v.detach().clone(),
                                     None if lengths is None else lengths.clone())
        from q8lib.reference import sdpa_attention

        out = sdpa_attention(q, k, v, lengths).transpose(1, 2).flatten(2, 3)
        return attn.to_out[1](attn.to_out[0](out))


class SchemeProcessor:
    """Study-local LTX attention processor: projections (Q8 or not) + norm + RoPE, then ``scheme(q, k, v)``
    per sample (keys cut to the text mask's length in cross-attention), then ``to_out``."""

    def __init__(self, scheme):
        self.scheme = scheme

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from q8lib.attention import mask_to_key_lengths
        from q8lib.reference import attention_inputs

        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attention_inputs(attn, attn.to_q(hidden_states), attn.to_k(ctx), attn.to_v(ctx), image_rotary_emb)
        B = q.shape[0]
        if attention_mask is None:
            out = self.scheme(q, k, v).to(q.dtype).transpose(1, 2).flatten(2, 3)
            return attn.to_out[1](attn.to_out[0](out))
        lengths = mask_to_key_lengths(attention_mask, B).clamp(1, k.shape[-2])
        outs = []
        for b in range(B):
            n = int(lengths[b])
            outs.append(self.scheme(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n]))
        out = torch.cat(outs).to(q.dtype).transpose(1, 2).flatten(2, 3)
        return attn.to_out[1](attn.to_out[0](out))


def _attention_modules(model):
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "set_processor") and hasattr(m, "processor")]


def capture_activations(pipe, height, width, num_frames, steps, at, prompt, seed=0):
    """q/k/v of every attention layer at transformer forward number ``at`` of a ``steps``-step generation."""
    store, counter = {}, [0]
    tr = pipe.transformer
    originals = {n: m.processor for n, m in _attention_modules(tr)}
    for n, m in _attention_modules(tr):
        m.set_processor(CaptureProcessor(store, n, counter, at))
    hook = tr.register_forward_hook(lambda *a: counter.__setitem__(0, counter[0] + 1))
    try:
        with torch.no_grad():
            pipe(prompt=prompt, height=height, width=width, num_frames=num_frames, num_inference_steps=steps,
                 guidance_scale=3.0, negative_prompt="", generator=torch.Generator().manual_seed(seed),
                 output_type="latent")
    finally:
        hook.remove()
        for n, m in _attention_modules(tr):
            m.set_processor(originals[n])
    return store


def real_study(pipe, schemes, sizes, steps, at, log):
    """The schemes on the trained model's own q/k/v (conditional sample of the CFG batch)."""
    results = []
    prompt = _heldout_prompts(1)[0]
    for (h, w, f) in sizes:
        store = capture_activations(pipe, h, w, f, steps, at, prompt)
        for name, (q, k, v, lengths) in store.items():
            b = q.shape[0] - 1  # the conditional half of the CFG batch
            n = k.shape[-2] if lengths is None else int(lengths[b].clamp(1, k.shape[-2]))
            qb, kb, vb = q[b:b + 1].double(), k[b:b + 1, :, :n].double(), v[b:b + 1, :, :n].double()
            use = [s for s in schemes if "qksmooth" not in s or qb.shape[-2] % 64 == 0]
            t0 = time.perf_counter()
            res = run_case(qb, kb, vb, use, n_queries=qb.shape[-2])
            kmean = kb.mean(-2)
            stats = dict(q_absmax_over_rms=round((qb.abs().amax(-1) / qb.pow(2).mean(-1).sqrt()).mean().item(), 2),
                         k_absmax_over_rms=round((kb.abs().amax(-1) / kb.pow(2).mean(-1).sqrt()).mean().item(), 2),
                         k_mean_norm_over_k_norm=round((kmean.norm(dim=-1) / kb.norm(dim=-1).mean(-1)).mean().item(), 3),
                         logit_std=round(((qb @ kb.transpose(-1, -2)) / 8.0).std(-1).mean().item(), 3))
            log(f"real {h}x{w}x{f} {name} q{tuple(qb.shape)} k{tuple(kb.shape)}: "
                + " ".join(f"{s}={r['rel_err']:.4f}" for s, r in res.items()) + f" ({time.perf_counter() - t0:.1f}s)")
            results.append(dict(input="tiny_ltx", size=[h, w, f], layer=name, q_shape=list(qb.shape),
                                k_shape=list(kb.shape), forward_index=at, steps=steps, prompt=prompt, stats=stats,
                                schemes=res))
    return results


def _latents_and_frames(pipe, prompts, seeds, settings):
    final = {}

    def keep(p, i, t, kw):
        final["latents"] = kw["latents"].detach().clone()
        return kw

    gens = [torch.Generator().manual_seed(s) for s in seeds]
    with torch.no_grad():
        frames = pipe(prompt=prompts, generator=gens, output_type="np", callback_on_step_end=keep,
                      callback_on_step_end_tensor_inputs=["latents"], **settings).frames
    import numpy as np

    return final["latents"], np.asarray(frames, dtype=np.float32)


def e2e_study(pipe, schemes, n_prompts, log):
    """Generate with fp32, with each scheme in every attention layer (fp32 linears), with Q8 linears + SDPA
    (int8, reference backend) and with Q8 linears + each scheme; compare with fp32."""
    import numpy as np

    from q8lib import Q8Config, quantize_
    from q8lib.judge import agreement, judge_video, psnr, ssim
    from q8lib.pipeline import default_settings
    from q8lib.shapes import parse_caption

    settings = default_settings()
    prompts = _heldout_prompts(n_prompts)
    seeds = list(range(len(prompts)))
    captions = [parse_caption(p) for p in prompts]
    base = pipe.transformer
    q8 = quantize_(copy.deepcopy(base), Q8Config(weight_dtype="int8", backend="reference", attention="keep"),
                   progress=False)
    runs = {}

    def generate(name, transformer, scheme=None):
        t0 = time.perf_counter()
        originals = {n: m.processor for n, m in _attention_modules(transformer)}
        if scheme is not None:
            for n, m in _attention_modules(transformer):
                m.set_processor(SchemeProcessor(SCHEMES[scheme]))
        pipe.transformer = transformer
        try:
            runs[name] = _latents_and_frames(pipe, prompts, seeds, settings)
        finally:
            pipe.transformer = base
            for n, m in _attention_modules(transformer):
                m.set_processor(originals[n])
        log(f"e2e {name}: {time.perf_counter() - t0:.1f}s")

    generate("fp32", base)
    generate("q8_linears_sdpa", q8)
    q8fp8 = quantize_(copy.deepcopy(base), Q8Config(weight_dtype="fp8_e4m3", backend="reference", attention="keep"),
                      progress=False)
    generate("q8fp8_linears_sdpa", q8fp8)  # Hopper's default weight dtype, for reference
    for s in schemes:
        generate(f"fp32_linears+{s}", base, s)
        generate(f"q8_linears+{s}", q8, s)
    ref_lat, ref_frames = runs["fp32"]
    ref_judge = [judge_video(f) for f in ref_frames]
    out = dict(settings=settings, prompts=prompts, seeds=seeds, q8_linears="Q8Config(weight_dtype='int8', "
               "backend='reference') (q8fp8: weight_dtype='fp8_e4m3'), diffusers' SDPA processors kept unless a "
               "scheme is named; fp32_linears: the unquantized fp32 transformer",
               fp32_vs_caption=float(np.mean([agreement(j, c)["all"] for j, c in zip(ref_judge, captions)])), runs={})
    for name, (lat, frames) in runs.items():
        if name == "fp32":
            continue
        judges = [judge_video(f) for f in frames]
        ps = [psnr(a, b) for a, b in zip(ref_frames, frames)]
        out["runs"][name] = dict(
            latent_rel_err=round(((lat - ref_lat).norm() / ref_lat.norm()).item(), 6),
            psnr_db_mean=round(float(np.mean(ps)), 3), psnr_db_min=round(float(np.min(ps)), 3),
            ssim_mean=round(float(np.mean([ssim(a, b) for a, b in zip(ref_frames, frames)])), 5),
            vs_caption=float(np.mean([agreement(j, c)["all"] for j, c in zip(judges, captions)])),
            vs_fp32=float(np.mean([agreement(j, r)["all"] for j, r in zip(judges, ref_judge)])),
        )
        r = out["runs"][name]
        log(f"e2e {name}: latent rel {r['latent_rel_err']:.4f} PSNR {r['psnr_db_mean']:.2f} dB "
            f"(min {r['psnr_db_min']:.2f}) caption {r['vs_caption']:.2f} vs-fp32 {r['vs_fp32']:.2f}")
    return out


# ------------------------------------------------------------------------------------------------
def markdown_tables(result: dict) -> str:
    """Markdown tables of a results dict: rel. error per scheme and input (synthetic, then the tiny model's
    layers as the max over layers), then the end-to-end runs."""
    lines = []
    syn = result.get("synthetic", [])
    if syn:
        cols = [(r["input"], r["shape"]) for r in syn]
        head = ["scheme"] + [f"{i.replace('outlier_', 'out_')} S{s[2]} D{s[3]}" for i, s in cols]
        lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for name in syn[0]["schemes"]:
            lines.append("| " + " | ".join([f"`{name}`"] + [f"{r['schemes'][name]['rel_err']:.4f}" for r in syn]) + " |")
        lines.append("")
    real = result.get("tiny_ltx_activations", [])
    if real:
        groups = {}
        for r in real:
            kind = "self" if r["layer"].endswith("attn1") else "cross"
            groups.setdefault((tuple(r["size"]), kind), []).append(r)
        head = ["scheme"] + [f"tiny {h}x{w}x{f} {kind} (max over {len(v)} layers)" for (h, w, f), kind in groups
                             for v in [groups[((h, w, f), kind)]]]
        lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for name in real[0]["schemes"]:
            cells = []
            for rs in groups.values():
                vals = [r["schemes"][name]["rel_err"] for r in rs if name in r["schemes"]]
                cells.append(f"{max(vals):.4f}" if vals else "-")
            lines.append("| " + " | ".join([f"`{name}`"] + cells) + " |")
        lines.append("")
    e2e = result.get("end_to_end")
    if e2e:
        lines += ["| run (vs fp32) | latent rel. err | PSNR mean dB | PSNR min dB | SSIM | caption | vs fp32 judge |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, r in e2e["runs"].items():
            lines.append(f"| `{name}` | {r['latent_rel_err']:.4f} | {r['psnr_db_mean']:.2f} | {r['psnr_db_min']:.2f} | "
                         f"{r['ssim_mean']:.4f} | {r['vs_caption']:.2f} | {r['vs_fp32']:.2f} |")
    return "\n".join(lines)


def versions() -> dict:
    import diffusers

    return dict(python=platform.python_version(), torch=torch.__version__, diffusers=diffusers.__version__,
                platform=platform.platform(), threads=torch.get_num_threads())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes and fewer prompts (~5 min on 2 cores)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "accuracy" / "attention_accuracy_cpu.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", nargs="*", default=[], choices=["synthetic", "real", "e2e"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--table", metavar="JSON", help="print markdown tables of an earlier results file and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(markdown_tables(json.loads(Path(args.table).read_text())))
        return None
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    schemes = list(SCHEMES)
    if args.quick:
        shapes = [(1, 2, 1024, 64), (1, 2, 1024, 128)]
        n_queries, real_sizes, n_prompts = 256, [(32, 32, 17)], 4
        e2e_schemes = ["today_hopper", "int8_qtoken_kblock_balance", "int8_qtoken_kblock_balance_fp16pv"]
    else:
        shapes = [(1, 2, 1024, 64), (1, 2, 4096, 64), (1, 2, 1024, 128), (1, 2, 4096, 128), (1, 1, 16384, 64)]
        n_queries, real_sizes, n_prompts = 512, [(32, 32, 17), (64, 64, 33)], 8
        e2e_schemes = ["today_hopper", "int8_token_ksmooth", "int8_qtoken_kblock_balance",
                       "int8_block64_balance_vsplit", "int8_qtoken_kblock_balance_fp16pv"]
    result = dict(
        what="Accuracy of 8-bit attention quantization schemes vs float64 truth (issue #14 item 1); "
             "benchmarks/attention_accuracy.py",
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"), argv=sys.argv[1:], versions=versions(),
        schemes={n: " ".join((f.__doc__ or "").split()) for n, f in SCHEMES.items()},
        accumulator_model=" ".join((fp22.__doc__ or "").split()),
        inputs=dict(gaussian=" ".join(gaussian_inputs.__doc__.split()),
                    outlier=" ".join(outlier_inputs.__doc__.split()),
                    tiny_ltx="q/k/v after norm_q/norm_k + RoPE of every attention layer of the trained tiny LTX-Video "
                             "(q8lib/assets/tiny-ltx-shapes), conditional half of the CFG batch, captured at one "
                             "transformer forward of an fp32 generation"),
        metric="rel_err = ||o - o_ref|| / ||o_ref|| (Frobenius over the measured query rows, all heads); cosine "
               "similarity per output row (mean, min); o_ref float64 exact attention",
    )
    out_path = Path(args.out)

    def dump():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1) + "\n")

    if args.skip and out_path.is_file():  # keep the skipped parts of an earlier run of the same file
        earlier = json.loads(out_path.read_text())
        keys = {"synthetic": "synthetic", "real": "tiny_ltx_activations", "e2e": "end_to_end"}
        for part in args.skip:
            if keys[part] in earlier:
                result[keys[part]] = earlier[keys[part]]
                result.setdefault("carried_over", {})[keys[part]] = dict(date=earlier.get("date"),
                                                                         argv=earlier.get("argv"))
    if "synthetic" not in args.skip:
        result["synthetic"] = synthetic_study(schemes, shapes, args.seed, n_queries, log)
        dump()
    if "real" not in args.skip or "e2e" not in args.skip:
        from q8lib.tiny import default_pipeline

        pipe = default_pipeline()
    if "real" not in args.skip:
        result["tiny_ltx_activations"] = real_study(pipe, schemes, real_sizes, steps=8, at=4, log=log)
        dump()
    if "e2e" not in args.skip:
        result["end_to_end"] = e2e_study(pipe, e2e_schemes, n_prompts, log)
        dump()
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    dump()
    log(f"wrote {out_path}")
    return result


if __name__ == "__main__":
    main()
