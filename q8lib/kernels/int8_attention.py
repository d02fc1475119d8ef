"""INT8 attention kernel (Triton) + launcher + ``q8lib::int8_attention_fwd`` op + fake + reference twin.

Online-softmax attention over 64-key blocks on the INT8 producers' outputs (:mod:`.int8_producers`):

* ``tl.dot(q8, k8)``: int8 x int8 -> int32 (exact), converted to float32 (``MAGIC_CVT``: by adding
  ``0x4B400000`` and reinterpreting, an integer add instead of an I2F on the conversion unit, exact for
  ``|t| < 2**22 > 127 * 127 * 256``), scaled by ``qs[row] * ks[block]``: one factor a row a block, applied
  in the exp2 FFMA (the FP8 kernel's softmax step, ``fp8_attention._softmax_block``, P scaled to 448);
* ``P`` and ``V`` in 16 bits (:func:`q8lib.reference.pv_dtype`: fp16 for fp16 ``v``, else bf16), ``acc +=
  tl.dot(p16, v16)`` accumulated in float32. ``v`` is read as the projection wrote it (``[B, Sk, H, D]``, last
  stride 1, any dtype; converted in registers when it is not 16-bit): no v producer, no padding.

Keys at ``>= key_lengths[b]`` (clamped to ``[1, Sk]``) are masked in the last, partial block (a separate loop
tail, as in :mod:`.fp8_attention`); q/k are padded to ``attn_producers.SEQ_PAD`` by their producer. Output
``[B, Sq, H, D]`` in the output tensor's dtype. Reference twin: :func:`int8_attention_fwd_ref`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import reference as ref
from ._jit import batch_head, key_length, round_bf16, softmax_start
from ._library import dual_op, interpreting, launchable
from .attn_producers import SEQ_PAD
from .fp8_attention import _softmax_block, _store_out
from .int8_producers import KEY_BLOCK

__all__ = ["INT8_FWD_CONFIG", "INT8_FWD_CONFIG_ADA", "INT8_FWD_CONFIG_CPU", "INT8_FWD_CONFIG_FP32V", "int8_fwd_config",
           "int8_fwd_config_for", "launch_int8_fwd", "int8_attention_fwd", "int8_attention_fwd_ref"]


@triton.jit
def _scores(q, k_ptrs, KS, ks_base, start, D: tl.constexpr, BLOCK_N: tl.constexpr, MAGIC_CVT: tl.constexpr):
    """``(float32 q8 . k8 [BM, BN], ks)`` of the key block at ``start``."""
    t = tl.dot(q, tl.trans(tl.load(k_ptrs + start * D)))  # int32
    if MAGIC_CVT:  # 1.5 * 2**23 + t has t in its low mantissa bits: exact, one integer add
        tf = (t + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0
    else:
        tf = t.to(tl.float32)
    return tf, tl.load(KS + ks_base + start // BLOCK_N)


@triton.jit
def _pv(p, v, acc, PV_FP16: tl.constexpr, INTERP: tl.constexpr):
    """``acc + P @ V`` with P and V rounded to 16 bits, float32 accumulation."""
    dt: tl.constexpr = tl.float16 if PV_FP16 else tl.bfloat16
    if INTERP:  # the interpreter's 16-bit dots are wrong, its bf16 cast truncates: an fp32 dot of rounded values
        if PV_FP16:
            return tl.dot(p.to(dt).to(tl.float32), v.to(dt).to(tl.float32), acc)
        return tl.dot(round_bf16(p), round_bf16(v.to(tl.float32)), acc)
    return tl.dot(p.to(dt), v.to(dt), acc)


@triton.jit
def _int8_attn_fwd_kernel(
    Q, QS, K, KS,  # [B,H,Sqp,D] int8, [B,H,Sqp] f32 (softmax scale * log2(e) in), [B,H,Skp,D] int8, [B,H,Skp/64] f32
    V, svb, svs, svh,  # [B, Sk, H, D], stride over D is 1
    LENS,  # [B] int32 key lengths (HAS_LENS)
    O, sob, sos, soh,  # [B, Sq, H, D], stride over D is 1
    H, SQ, SQ_PAD, SK, SK_PAD,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_LENS: tl.constexpr,
    FAST_EXP: tl.constexpr, MAGIC_CVT: tl.constexpr, PV_FP16: tl.constexpr, INTERP: tl.constexpr,
):
    """Each program owns BLOCK_M query rows of one (batch, head); BLOCK_N == KEY_BLOCK keys a step."""
    bh, b, h = batch_head(H)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    d = tl.arange(0, D)
    bh64 = bh.to(tl.int64)
    q = tl.load(Q + (bh64 * SQ_PAD + offs_m[:, None]) * D + d[None, :])
    qs = tl.load(QS + bh64 * SQ_PAD + offs_m)
    m_i, l_i, acc = softmax_start(BLOCK_M, D)
    length = key_length(LENS, b, SK, HAS_LENS)
    k_ptrs = K + (bh64 * SK_PAD + offs_n[:, None]) * D + d[None, :]
    ks_base = bh64 * (SK_PAD // BLOCK_N)
    v_ptrs = V + b.to(tl.int64) * svb + offs_n.to(tl.int64)[:, None] * svs + h * svh + d[None, :]
    keep = offs_n < BLOCK_N  # all true; the masked tail below replaces it

    n_full = (length // BLOCK_N) * BLOCK_N
    for start in range(0, n_full, BLOCK_N):
        t, ks = _scores(q, k_ptrs, KS, ks_base, start, D, BLOCK_N, MAGIC_CVT)
        v = tl.load(v_ptrs + start * svs)  # < 2**31: one sample's elements
        p, m_i, l_i, acc = _softmax_block(t, qs * ks, m_i, l_i, acc, keep, False, FAST_EXP)
        acc = _pv(p, v, acc, PV_FP16, INTERP)
    if n_full < length:  # the last, partial key block: keys >= length masked (and never loaded from v)
        keep = (n_full + offs_n) < length
        t, ks = _scores(q, k_ptrs, KS, ks_base, n_full, D, BLOCK_N, MAGIC_CVT)
        v = tl.load(v_ptrs + n_full * svs, mask=keep[:, None], other=0.0)
        p, m_i, l_i, acc = _softmax_block(t, qs * ks, m_i, l_i, acc, keep, True, FAST_EXP)
        acc = _pv(p, v, acc, PV_FP16, INTERP)
    _store_out(O, acc, l_i, tl.full([D], 1.0, tl.float32), b, h, offs_m, d, sob, sos, soh, SQ)


# ------------------------------------------------------------------------------------------------
# Tile configuration, launcher, op, fake

# (BLOCK_M, num_warps, num_stages, fast_exp (inline ex2.approx.ftz), magic int32 -> float32 conversion); the key
# tile is KEY_BLOCK (64: one k scale a tile). Hopper: the fastest of the H200 sweep (benchmarks/bench_attention.py
# --int8-sweep, benchmarks/results/attention_h200_int8.json): 0.524 ms at [2,32,3630,64] (was 0.569 with 128 rows
# and 8 warps), 0.785 ms at D=128 (254 registers, no spills; was 1.205 with 2 stages). Every entry compiles without
# spills for sm_90 / sm_89 within their shared memory (q8lib.kernels.targets, tests/test_kernel_targets.py).
INT8_FWD_CONFIG = {64: (64, 4, 3, False, True), 128: (128, 4, 3, False, True)}
# sm_89 (99 KB of shared memory a block; untested): 8 warps at D=128, where 4 need all 255 registers
INT8_FWD_CONFIG_ADA = {64: (64, 4, 2, False, True), 128: (64, 8, 2, False, True)}
INT8_FWD_CONFIG_CPU = (32, 4, 1, False, True)  # interpreter: small tiles, no inline PTX
# float32 V (a float32 model): its P·V tiles need more registers; at D=128, 4 warps would spill on sm_90
INT8_FWD_CONFIG_FP32V = {128: (128, 8, 3, False, True)}


def int8_fwd_config(d: int, device: torch.device, v_dtype: torch.dtype = torch.bfloat16):
    if device.type == "cpu":
        return INT8_FWD_CONFIG_CPU
    major, minor = torch.cuda.get_device_capability(device)
    return int8_fwd_config_for(d, major * 10 + minor, v_dtype)


def int8_fwd_config_for(d: int, capability: int, v_dtype: torch.dtype = torch.bfloat16):
    """The kernel's tile config for head dim ``d`` and values of ``v_dtype`` on GPUs of compute capability
    ``capability`` (89: sm_89)."""
    if capability >= 90 and v_dtype == torch.float32 and d in INT8_FWD_CONFIG_FP32V:
        return INT8_FWD_CONFIG_FP32V[d]
    table = INT8_FWD_CONFIG_ADA if capability < 90 else INT8_FWD_CONFIG
    return table.get(d, table[64])


def launch_int8_fwd(q8, qs, k8, ks, v, key_lengths, out, config=None):
    """Fill ``out [B, Sq, H, D]`` (last stride 1) with INT8 attention of the producer outputs; ``v [B, Sk, H, D]``
    (last stride 1). Returns the launched kernel handle."""
    B, H, sq_pad, D = q8.shape
    sq, sk = out.shape[1], v.shape[1]
    bm, warps, stages, fast_exp, magic = config or int8_fwd_config(D, q8.device, v.dtype)
    if SEQ_PAD % bm:
        raise ValueError(f"INT8 attention tile config {config} needs BLOCK_M dividing the sequence padding {SEQ_PAD}")
    lens = key_lengths if key_lengths is not None else qs  # dummy pointer when unused
    return launchable(_int8_attn_fwd_kernel, q8)[(triton.cdiv(sq, bm), B * H)](
        q8, qs, k8, ks, v, v.stride(0), v.stride(1), v.stride(2), lens,
        out, out.stride(0), out.stride(1), out.stride(2), H, sq, sq_pad, sk, k8.shape[2],
        D=D, BLOCK_M=bm, BLOCK_N=KEY_BLOCK, HAS_LENS=key_lengths is not None, FAST_EXP=fast_exp, MAGIC_CVT=magic,
        PV_FP16=v.dtype == torch.float16, INTERP=interpreting(q8), num_warps=warps, num_stages=stages,
    )


def _int8_attention_fwd_impl(q8: torch.Tensor, qs: torch.Tensor, k8: torch.Tensor, ks: torch.Tensor, v: torch.Tensor,
                             key_lengths: torch.Tensor | None, sq: int, out_dtype: torch.dtype) -> torch.Tensor:
    """INT8 attention of producer outputs -> ``[B, sq, H, D]`` in ``out_dtype``.

    ``q8 [B, H, Sqp, D]`` int8, ``qs [B, H, Sqp]`` (softmax scale * log2(e) folded in), ``k8 [B, H, Skp, D]``
    int8, ``ks [B, H, Skp / 64]``, ``v [B, Sk, H, D]`` (last stride 1), ``key_lengths [B]`` int32 or None.
    """
    B, H, _, D = q8.shape
    out = torch.empty(B, sq, H, D, device=q8.device, dtype=out_dtype)
    lens = None if key_lengths is None else key_lengths.to(torch.int32).contiguous()
    launch_int8_fwd(q8, qs, k8, ks, v, lens, out)
    return out


def _int8_attention_fwd_fake(q8, qs, k8, ks, v, key_lengths, sq, out_dtype):
    B, H, _, D = q8.shape
    return q8.new_empty(B, sq, H, D, dtype=out_dtype)


int8_attention_fwd = dual_op("int8_attention_fwd", _int8_attention_fwd_impl, _int8_attention_fwd_fake)


def int8_attention_fwd_ref(q8, qs, k8, ks, v, key_lengths, sq, out_dtype):
    """Twin of :func:`int8_attention_fwd` (one key block, float32): :func:`q8lib.reference.int8_attention_codes_ref`
    on the unpadded rows and keys. Returns ``[B, sq, H, D]`` in ``out_dtype``."""
    sk = v.shape[1]
    out = ref.int8_attention_codes_ref(q8[:, :, :sq], qs[:, :, :sq], k8[:, :, :sk], ks, v.transpose(1, 2),
                                       key_lengths, KEY_BLOCK)
    return out.transpose(1, 2).to(out_dtype)
