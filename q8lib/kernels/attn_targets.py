"""Compile specs of the attention kernels for :mod:`q8lib.kernels.targets` (FP8 and INT8 paths, LTX's head dims)."""
from __future__ import annotations

import torch

from . import attn_producers as _prod
from . import cudnn_attention as _cudnn
from . import fp8_attention as _fa
from . import int8_attention as _ia
from . import int8_producers as _ip
from ._library import table_entry
from ._target_base import _NAME, _PTR, _TEXT, _TOKENS, LTX_MODELS, Spec

__all__ = ["fp8_attn_specs", "int8_attn_specs"]


def _rope_args(p: str, rope: bool, H: int, D: int, split: bool = False) -> dict:
    if split:  # LTX-2's split tables [1, H, S, D/2]
        return {"COS": p, "SIN": p, "scb": 0, "scs": D // 2, "sch": _TOKENS * D // 2}
    return {"COS": p, "SIN": p, "scb": 0, "scs": H * D if rope else 0, "sch": D if rope else 0}


def fp8_attn_specs(cap: int) -> list[Spec]:
    """The FP8 attention path at LTX's head dims (64: 2B, 128: 13B; 32 heads): the q/k producer for self-attention
    (norm across heads + RoPE), cross-attention (norm, no RoPE) and the plain ``attention`` op (neither), bf16
    and fp32 rows; the SDPA path's norm + RoPE producer; the v amax and quantization kernels; the attention
    kernel without key lengths (self) and with them (cross, 128 text tokens)."""
    out = []
    for m in LTX_MODELS.values():
        D, H = m["head_dim"], m["heads"]
        x = {"sxb": _TOKENS * H * D, "sxs": H * D, "sxh": D}
        for quant in (True, False):
            # (norm, rope, split RoPE: LTX-2's layout)
            forms = [(True, True, False), (True, True, True), (True, False, False)] + ([(False, False, False)] if quant
                                                                                         else [])
            for norm, rope, split in forms:
                for xd in (torch.bfloat16, torch.float32) if quant and norm and rope and not split else (torch.bfloat16,):
                    kind = _prod.qk_kind(D, norm, rope, quant, split)
                    measured = _prod.qk_table_entry(cap, D, norm, rope, quant, split, xd)
                    meta, _ = _prod.qk_meta(D, H, norm, norm, rope, quant, measured, capability=cap, rope_split=split)
                    warps, stages = meta.pop("num_warps"), meta.pop("num_stages")
                    p = _PTR[xd]
                    args = {"X": p, **x, "W": p, **_rope_args(p, rope, H, D, split)}
                    if quant:
                        args |= {"HAD": "*bf16", "OUT": "*fp8e4nv", "OUTS": "*fp32", "S": _TOKENS, "S_PAD": _TOKENS,
                                 "H": H, "eps": 1e-5, "out_scale": 0.18, "n_tiles": 1000}
                        meta["GRID_ROUND"] = False
                    else:
                        args |= {"OUT": p, "QSCALE": p, "S": _TOKENS, "H": H, "eps": 1e-5, "n_tiles": 1000}
                        meta |= {"OUT_FP8": False, "GRID_ROUND": False}
                    name = "qk_quant" if quant else "norm_rope"
                    kernel = "_qk_quant_kernel" if quant else "_qk_norm_rope_kernel"
                    src = f"row_tune.json sm_{cap} {kind}" if measured else "default"
                    form = kind.rsplit('/', 1)[1]
                    out.append(Spec(f"attn/{name}/D{D}/{form}/{_NAME[xd]}",
                                    f"q8lib.kernels.attn_producers:{kernel}", args, meta, warps, stages, src,
                                    dots=quant, wgmma=quant and meta["BLOCK_T"] * meta["HP"] % 64 == 0))
                    if not quant and norm and rope:  # attention="fp8_tensor"'s q: e4m3 with a static scale
                        out.append(Spec(f"attn/{name}/D{D}/{form}/{_NAME[xd]}->e4m3",
                                        f"q8lib.kernels.attn_producers:{kernel}",
                                        args | {"OUT": "*fp8e4nv", "QSCALE": "*fp32"},
                                        meta | {"OUT_FP8": True, "GRID_ROUND": False}, warps, stages, src))
        chunk, block_k, warps = _prod.v_tiles()
        v = {"V": "*bf16", "svb": _TOKENS * H * D, "svs": H * D, "svh": D}
        out.append(Spec(f"attn/v_amax/D{D}", "q8lib.kernels.attn_producers:_v_amax_kernel",
                        {**v, "AMAX": "*fp32", "S": _TOKENS, "H": H}, {"D": D, "BLOCK_K": block_k, "CHUNK": chunk},
                        warps, None, "v_tiles()"))
        out.append(Spec(f"attn/v_quant/D{D}", "q8lib.kernels.attn_producers:_v_quant_kernel",
                        {**v, "AMAX": "*fp32", "OUT": "*fp8e4nv", "OUTS": "*fp32", "S": _TOKENS, "S_PAD": _TOKENS,
                         "H": H}, {"D": D, "BLOCK_K": block_k, "GRID_ROUND": False}, warps, None, "v_tiles()"))
        # attention="fp8_tensor": K smoothing and per-tensor e4m3 of k and v (cuDNN's engine itself is not Triton)
        rows = {"K": "*bf16", "V": "*bf16"}
        (bs, bc), (cs, cc) = _cudnn.KV_STATS_TILE, _cudnn.KV_CODES_TILE
        for lens, sk in ((False, _TOKENS), (True, _TEXT)):  # self-attention; text keys with their lengths
            tag, lp = ("/lens" if lens else ""), ("*i32" if lens else "*bf16")
            out.append(Spec(f"attn/kv_stats/D{D}{tag}", "q8lib.kernels.cudnn_attention:_kv_stats_kernel",
                            {**rows, "LENS": lp, "KSUM": "*fp32", "KMAX": "*fp32", "KMIN": "*fp32", "VMAX": "*fp32",
                             "S": sk, "C": H * D, "rows_per_chunk": 768}, {"HAS_LENS": lens, "BLOCK_S": bs,
                                                                         "BLOCK_C": bc}, 4, None, "KV_STATS_TILE"))
            for smooth in (True, False):
                out.append(Spec(f"attn/kv_codes/D{D}/{'smooth' if smooth else 'plain'}{tag}",
                                "q8lib.kernels.cudnn_attention:_kv_codes_kernel",
                                {**rows, "LENS": lp, "MEAN": "*fp32", "KINV": "*fp32", "VINV": "*fp32",
                                 "K8": "*fp8e4nv", "V8": "*fp8e4nv", "S": sk, "C": H * D},
                                {"HAS_LENS": lens, "SMOOTH": smooth, "GRID_ROUND": False, "BLOCK_S": cs,
                                 "BLOCK_C": cc}, 8, None, "KV_CODES_TILE"))
        bm, bn, warps, stages, fast_exp, warp_spec, split = _fa.fwd_config_for(D, cap)
        for lens, sk in ((False, _TOKENS), (True, _TEXT)):
            args = {"Q": "*fp8e4nv", "QS": "*fp32", "K": "*fp8e4nv", "KS": "*fp32", "VT": "*fp8e4nv", "VS": "*fp32",
                    "LENS": "*i32" if lens else "*fp32", "O": "*bf16", "sob": _TOKENS * H * D, "sos": H * D, "soh": D,
                    "H": H, "SQ": _TOKENS, "SQ_PAD": _TOKENS, "SK": sk, "SK_PAD": sk}
            ce = {"D": D, "BLOCK_M": bm, "BLOCK_N": bn, "HAS_LENS": lens, "FAST_EXP": fast_exp, "GRID_ROUND": False,
                  "WARP_SPEC": warp_spec, "SPLIT": split}
            out.append(Spec(f"attn/fwd/D{D}/{'cross' if lens else 'self'}", "q8lib.kernels.fp8_attention:_attn_fwd_kernel",
                            args, ce, warps, stages, f"fwd_config_for({D}, {cap})", dots=True, wgmma=True))
    return out


# INT8 producer forms: (name, norm, rope, key lengths): self-attention q/k (norm + RoPE), cross-attention q (norm)
# and k (norm, text lengths), the plain ``attention`` op (neither; k with and without lengths).
_INT8_FORMS = (("self", True, True, False), ("cross", True, False, False), ("cross_lens", True, False, True),
               ("plain", False, False, False), ("plain_lens", False, False, True))


def int8_attn_specs(cap: int) -> list[Spec]:
    """The INT8 attention path at LTX's head dims: the statistics and quantize producers (q: per-row scales, k:
    block scales, shift) in every :data:`_INT8_FORMS` form, bf16 rows (fp32 too for self-attention); the kernel
    for self-attention (bf16 ``v``, fp32 ``v`` converted in registers) and cross-attention (128 keys, lengths)."""
    out = []
    for m in LTX_MODELS.values():
        D, H = m["head_dim"], m["heads"]
        x = {"sxb": _TOKENS * H * D, "sxs": H * D, "sxh": D}
        for form, norm, rope, lens in _INT8_FORMS:
            for xd in (torch.bfloat16, torch.float32) if form == "self" else (torch.bfloat16,):
                smeta, _ = _ip.producer_meta(D, H, norm, norm, rope, capability=cap, stats=True)
                meta, _ = _ip.producer_meta(D, H, norm, norm, rope, capability=cap)
                p = _PTR[xd]
                common = {"X": p, **x, "W": p, **_rope_args(p, rope, H, D)}
                tag = f"D{D}/{form}/{_NAME[xd]}"
                warps, stages = smeta.pop("num_warps"), smeta.pop("num_stages")
                out.append(Spec(f"attn_int8/stats/{tag}", "q8lib.kernels.int8_producers:_qk_stats_kernel",
                                {**common, "LENS": "*i32" if lens else p, "ST": "*fp32", "S": _TOKENS, "B": 2,
                                 "H": H, "NB": _TOKENS // _ip.STATS_CHUNK, "eps": 1e-5, "n_items": 1000},
                                {**smeta, "KB": _ip.STATS_CHUNK, "HAS_LENS": lens}, warps, stages, "producer_meta(stats)"))
                warps, stages = meta.pop("num_warps"), meta.pop("num_stages")
                ce = {**meta, "KB": _ip.KEY_BLOCK, "HAS_LENS": lens}
                for block in (False, True) if not lens else (True,):
                    args = {**common, "SHIFT": "*fp32", "FAC": "*fp32", "LENS": "*i32" if lens else "*fp32",
                            "BAMAX": "*fp32", "OUT": "*i8", "OUTS": "*fp32", "S": _TOKENS, "S_PAD": _TOKENS, "H": H,
                            "eps": 1e-5, "n_tiles": 1000}
                    out.append(Spec(f"attn_int8/quant_{'k' if block else 'q'}/{tag}",
                                    "q8lib.kernels.int8_producers:_qk_int8_kernel", args,
                                    {**ce, "HAS_SHIFT": block, "PER_BLOCK": block}, warps, stages, "producer_meta()"))
        for name, lens, sk, vd in (("self", False, _TOKENS, torch.bfloat16), ("self_fp32v", False, _TOKENS, torch.float32),
                                   ("cross", True, _TEXT, torch.bfloat16)):
            bm, warps, stages, fast_exp, magic = _ia.int8_fwd_config_for(D, cap, vd)
            args = {"Q": "*i8", "QS": "*fp32", "K": "*i8", "KS": "*fp32", "V": _PTR[vd], "svb": sk * H * D,
                    "svs": H * D, "svh": D, "LENS": "*i32" if lens else "*fp32", "O": "*bf16", "sob": _TOKENS * H * D,
                    "sos": H * D, "soh": D, "H": H, "SQ": _TOKENS, "SQ_PAD": _TOKENS, "SK": sk, "SK_PAD": sk}
            ce = {"D": D, "BLOCK_M": bm, "BLOCK_N": _ip.KEY_BLOCK, "HAS_LENS": lens, "FAST_EXP": fast_exp,
                  "MAGIC_CVT": magic, "PV_FP16": vd == torch.float16, "INTERP": False}
            out.append(Spec(f"attn_int8/fwd/D{D}/{name}", "q8lib.kernels.int8_attention:_int8_attn_fwd_kernel", args,
                            ce, warps, stages, f"int8_fwd_config_for({D}, {cap}, {vd})", dots=True, wgmma=True))
    return out
