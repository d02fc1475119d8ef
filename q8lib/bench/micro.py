"""``python -m q8lib.bench --micro``: per-op timings at one block's shapes (GEMM implementations, row kernels).

Reaches into the kernel modules on purpose (GEMM implementation switch, row-kernel tile size): it
measures the kernels themselves, below the public API.
"""
from __future__ import annotations

import math

import torch

from ..kernels import row_quant as _rowquant
from ..kernels import linear as kl
from ..metrics import relative_error
from ..modules import quantize_weight
from ..quant import FP8, INT8

__all__ = ["micro"]


def micro(cfg, batch, tokens, text, device):
    """Per-op timings at one block's shapes (median of do_bench, L2 flushed between runs)."""
    import triton.testing as tt  # GPU only

    def bench(fn):
        return tt.do_bench(fn, warmup=25, rep=100, return_mode="median")

    D = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    F_ = 4 * D
    M, Mt = batch * tokens, batch * text
    gemms = {  # name: (M, N, K, count per block)
        "qkv_o_self+q_o_cross": (M, D, D, 6), "kv_cross": (Mt, D, cfg["cross_attention_dim"], 2),
        "ff_up": (M, F_, D, 1), "ff_down": (M, D, F_, 1), "qkv_concat": (M, 3 * D, D, 0)}
    out = {"gemm": {}, "rows": {}}
    torch.manual_seed(0)
    for gname, (m_, n_, k_, cnt) in gemms.items():
        x = torch.randn(m_, k_, device=device, dtype=torch.bfloat16)
        w = torch.randn(n_, k_, device=device, dtype=torch.bfloat16) / math.sqrt(k_)
        b = torch.randn(n_, device=device)
        flop = 2 * m_ * n_ * k_
        res = {"M": m_, "N": n_, "K": k_, "count_per_block": cnt}
        res["bf16_mm"] = bench(lambda: torch.nn.functional.linear(x, w, b.bfloat16()))
        ref = torch.nn.functional.linear(x.float(), w.float(), b)
        for qd, qn in ((FP8, "fp8"), (INT8, "int8")):
            wq, ws = quantize_weight(w, qd)
            xq, xs = kl.quantize_activation(x, qd)
            impls = ["triton"] + (["scaled_mm"] if qd == FP8 else ["int_mm"])
            for impl in impls:
                prev = kl.set_gemm_impl(impl)
                try:
                    y = kl.matmul(xq, xs, wq, ws, b, None, torch.bfloat16)
                    res[f"{qn}_{impl}"] = bench(lambda: kl.matmul(xq, xs, wq, ws, b, None, torch.bfloat16))
                    res[f"{qn}_{impl}_rel_err"] = relative_error(y, ref)
                except Exception as e:  # noqa: BLE001 - record and go on
                    res[f"{qn}_{impl}"] = f"error: {type(e).__name__}: {e}"[:300]
                finally:
                    kl.set_gemm_impl(prev)
        for k, v in list(res.items()):
            if isinstance(v, float) and not k.endswith("rel_err") and k not in ("M", "N", "K"):
                res[k + "_tflops"] = flop / v / 1e9
        out["gemm"][gname] = res
        x = w = b = ref = None  # free this shape's tensors before the next one
    x = torch.randn(batch, tokens, D, device=device, dtype=torch.bfloat16) * 4
    h = torch.randn(batch, tokens, F_, device=device, dtype=torch.bfloat16)
    sc, sh = torch.randn(batch, 1, D, device=device, dtype=torch.bfloat16) * 0.1, torch.randn(batch, 1, D, device=device, dtype=torch.bfloat16)
    for qd, qn in ((FP8, "fp8"), (INT8, "int8")):
        for hb in (None, 128):
            tag = f"{qn}_{'full' if hb is None else 'b' + str(hb)}"
            rows = {
                "rms_norm_quantize": (lambda: kl.rms_norm_quantize(x, None, 1e-6, sc, sh, qd, hb), x.numel() * 3 + M * 4),
                "quantize_activation": (lambda: kl.quantize_activation(x, qd, hb), x.numel() * 3 + M * 4),
                "gelu_quantize_ffn": (lambda: kl.gelu_quantize(h, qd, hb), h.numel() * 3 + M * 4),
            }
            for rname, (fn, nbytes) in rows.items():
                ms = bench(fn)
                out["rows"][f"{rname}_{tag}"] = {"ms": ms, "GBps": nbytes / ms / 1e6}
    out["rows"]["bf16_copy_same_bytes_as_quantize"] = {"ms": bench(lambda: x.clone())}
    default_te = _rowquant.TILE_ELEMS
    try:  # tile size sweep (elements per program step = rows x K)
        for te in (2048, 4096, 8192, 16384):
            _rowquant.TILE_ELEMS = te
            out["rows"][f"sweep_tile{te}_rms_norm_quantize_fp8"] = {"ms": bench(lambda: kl.rms_norm_quantize(x, None, 1e-6, sc, sh, FP8, None))}
            out["rows"][f"sweep_tile{te}_gelu_quantize_fp8"] = {"ms": bench(lambda: kl.gelu_quantize(h, FP8, None))}
    finally:
        _rowquant.TILE_ELEMS = default_te
    return out
