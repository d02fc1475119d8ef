"""Attention micro-benchmark: cuDNN / flash bf16 SDPA vs q8lib's FP8 and INT8 attention, in one run.

    python benchmarks/bench_attention.py [--sweep] [--int8-sweep] [--skip-fp8] [--skip-int8] [--cudnn-fp8] \
        [--shapes NAME,...] [--out benchmarks/results/attention_h100.json]

Shapes (LTX-Video): self-attention [2, 32, 3630, 64] (the shape of record), [2, 32, 14520, 64],
[2, 32, 3630, 128] (13B heads), [2, 32, 6144, 128] (LTX-2's video stream) and cross-attention of 3630 queries to 128 text keys with key lengths
(128, 77). Variants per shape:

* ``sdpa_cudnn_bf16``, ``sdpa_flash_bf16``: PyTorch SDPA pinned to one backend (bf16 in/out), on ``[B, H, S, D]``
  views of ``[B, S, H, D]`` rows as in the model; ``sdpa_cudnn_bf16_bhsd`` cuDNN on ``[B, H, S, D]``-contiguous ones.
* ``q8_fp8_kernel``: the FP8 attention kernel alone on producer outputs (what SDPA is compared to).
* ``q8_fp8_op``: the whole backend op on bf16 ``[B, H, S, D]`` (producers for q/k/v + kernel).
* ``q8_kernels_fp8``: the original ``q8_kernels`` FP8 attention, if that package is installed.
* ``cudnn_fp8_kernel`` (``--cudnn-fp8``, needs ``nvidia-cudnn-frontend``): cuDNN's FP8 SDPA on per-tensor e4m3
  q/k/v with an e4m3 output (q8lib's op ``q8lib::cudnn_fp8_sdpa``), its error with the output decoded;
  ``q8_fp8tensor_op`` the whole ``attention="fp8_tensor"`` op (K smoothing, per-tensor quantization, cuDNN, the
  decoded output), with key lengths where the shape has them.
* ``q8_int8_kernel``, ``q8_int8_op``, ``q8_int8_quant_qk``: the INT8 attention (``mode="int8"``: K smoothing,
  q/k balancing, int8 q per token / k per 64-key block, bf16 P·V) kernel alone, the whole op, its q/k producers.

Times are medians of CUDA-event timings after warm-up; ``tflops`` counts ``4 B H Sq Sk D``.
``rel_err`` is ``||out - ref|| / ||ref||`` against float32 SDPA on the same inputs.
``--sweep`` also times every tile configuration of the FP8 kernel and records which is fastest; ``--int8-sweep``
the same for the INT8 kernel (:data:`INT8_SWEEP`); ``--skip-fp8`` leaves the FP8 variants out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import tempfile

import torch
import torch.nn.functional as F

from q8lib.timing import time_ms

SHAPES = [  # (name, B, H, Sq, Sk, D, key_lengths)
    ("self_2x32x3630x64", 2, 32, 3630, 3630, 64, None),
    ("self_2x32x14520x64", 2, 32, 14520, 14520, 64, None),
    ("self_2x32x3630x128", 2, 32, 3630, 3630, 128, None),
    ("self_2x32x6144x128", 2, 32, 6144, 6144, 128, None),  # LTX-2's video self-attention (121 frames at 768x512)
    ("cross_2x32x3630x128keys_64", 2, 32, 3630, 128, 64, (128, 77)),
]

SWEEP = [  # (BLOCK_M, BLOCK_N, num_warps, num_stages, fast_exp, warp_specialize, split)
    (64, 64, 4, 3, False, False, False), (64, 64, 4, 3, True, False, False), (64, 64, 4, 2, False, False, False),
    (64, 64, 4, 4, False, False, False), (64, 128, 4, 3, False, False, False), (64, 128, 4, 2, False, False, False),
    (64, 32, 4, 3, False, False, False), (128, 64, 8, 3, False, False, False), (128, 128, 8, 3, False, False, False),
    (64, 64, 4, 3, False, False, True), (64, 64, 4, 2, False, False, True), (64, 128, 4, 2, False, False, True),
    (64, 64, 8, 3, False, False, True), (64, 64, 4, 3, False, True, False),  # warp-specialized last: riskiest
]


INT8_SWEEP = [  # (BLOCK_M, num_warps, num_stages, fast_exp, magic int32 -> float32 conversion); BLOCK_N is 64
    (128, 8, 3, False, True), (128, 8, 3, False, False), (128, 8, 2, False, True), (128, 8, 4, False, True),
    (128, 4, 3, False, True), (64, 4, 3, False, True), (64, 4, 2, False, True), (64, 8, 3, False, True),
    (128, 8, 3, True, True),
]


def bench(fn, warmup=5, reps=30, graph=True):
    """Median milliseconds of ``fn()`` and the peak MB it allocates.

    ``graph``: capture one call in a CUDA graph and time its replays with CUDA events, so Python
    and launch overhead (several custom ops and Triton launches per call) stay out of GPU time.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run = fn
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        run = g.replay
        for _ in range(3):
            run()
    times = time_ms(run, reps)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return statistics.median(times), peak


def rel_err(out, ref):
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def sass_stats(compiled) -> dict:
    """Registers/spills and the matrix/exp instructions the compiled kernel holds (PTX and SASS)."""
    st = {"n_regs": getattr(compiled, "n_regs", None), "n_spills": getattr(compiled, "n_spills", None)}
    ptx = compiled.asm.get("ptx", "")
    st["ptx_wgmma_e4m3"] = sum(1 for ln in ptx.splitlines() if "wgmma.mma_async" in ln and "e4m3" in ln)
    st["ptx_wgmma_s8"] = sum(1 for ln in ptx.splitlines() if "wgmma.mma_async" in ln and ".s8" in ln)
    st["ptx_wgmma_other"] = sum(1 for ln in ptx.splitlines() if "wgmma.mma_async" in ln and "e4m3" not in ln
                                and ".s8" not in ln)
    st["ptx_cvt_f32_s32"] = ptx.count("cvt.rn.f32.s32")
    st["ptx_mma_sync"] = ptx.count("mma.sync")
    st["ptx_ex2"] = ptx.count("ex2.approx")
    try:
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            sass = subprocess.run(["cuobjdump", "-sass", f.name], capture_output=True, text=True, timeout=60).stdout
        for op in ("QGMMA", "HGMMA", "IGMMA", "HMMA", "IMMA", "MUFU.EX2", "I2F", "LDL", "STL", "F2FP", "SHFL"):
            st["sass_" + op] = sum(1 for ln in sass.splitlines() if op in ln)
        st["_sass"] = sass
    except Exception as e:  # cuobjdump missing: the PTX counts still say which instructions were asked for
        st["sass_error"] = repr(e)
    return st


def core_bench(result, table, dev, ref, ka):
    """Everything between the projections and ``to_out`` of an LTX-2B attention layer.

    ``core_bf16*``: ``norm_q``/``norm_k`` (torch RMSNorm), interleaved RoPE, bf16 SDPA (PyTorch's
    default backend choice), eager and ``torch.compile``d; ``core_q8_fp8``: q8lib's fused path
    (producers with norm + RoPE + Hadamard + e4m3, then the FP8 kernel). Self-attention with RoPE
    over 3630 tokens, and cross-attention to 128 text keys with lengths (128, 77).
    """
    import types

    from q8lib.attention import q8_attention_core

    B, S, H, D, T = 2, 3630, 32, 64, 128
    inner = H * D
    attn = types.SimpleNamespace(heads=H)
    attn.norm_q = torch.nn.RMSNorm(inner, eps=1e-5, device=dev, dtype=torch.bfloat16)
    attn.norm_k = torch.nn.RMSNorm(inner, eps=1e-5, device=dev, dtype=torch.bfloat16)
    with torch.no_grad():
        attn.norm_q.weight.normal_(1.0, 0.2)
        attn.norm_k.weight.normal_(1.0, 0.2)
    torch.manual_seed(1)
    x = [torch.randn(B, S, inner, device=dev, dtype=torch.bfloat16) for _ in range(3)]
    ang = torch.randn(B, S, inner // 2, device=dev).repeat_interleave(2, -1)
    rope = (ang.cos(), ang.sin())
    txt = [torch.randn(B, T, inner, device=dev, dtype=torch.bfloat16) for _ in range(2)]
    kl = torch.tensor([128, 77], device=dev, dtype=torch.int32)
    cases = {"core_self_rope_2x3630x32x64": (x[0], x[1], x[2], rope, None, 4 * B * H * S * S * D),
             "core_cross_2x3630x128keys": (x[0], txt[0], txt[1], None, kl, 4 * B * H * S * T * D)}

    def bf16(q, k, v, rope, kl):
        return q8_attention_core(attn, q, k, v, rope, kl, False, "reference")

    compiled = torch.compile(bf16)
    for name, (q, k, v, rp, lens, flops) in cases.items():
        with torch.no_grad():
            exact = q8_attention_core(attn, q.float(), k.float(), v.float(), rp, lens, False, "reference")
            res = {}
            for variant, fn in (("core_bf16_eager", lambda: bf16(q, k, v, rp, lens)),
                                ("core_bf16_compile", lambda: compiled(q, k, v, rp, lens)),
                                ("core_q8_fp8", lambda: ka.fused_attention_core(attn, q, k, v, rp, lens)),
                                ("core_q8_int8", lambda: ka.fused_attention_core(attn, q, k, v, rp, lens, "int8"))):
                try:
                    out = fn()
                    ms, peak = bench(fn)
                    res[variant] = {"ms": ms, "tflops": flops / ms / 1e9, "peak_mb": peak, "rel_err": rel_err(out, exact)}
                except Exception as e:
                    res[variant] = {"error": repr(e)[:300]}
                r = res[variant]
                if "ms" in r:
                    table.append(f"{name:28s} {variant:20s} {r['ms']:8.3f} ms {r['tflops']:7.1f} TFLOP/s "
                                 f"err {r['rel_err']:.4f}")
            if rp is not None:  # the q producer alone with RMSNorm + RoPE fused (one of two per layer)
                q4 = q.unflatten(2, (H, D))
                c4, s4 = (t.unflatten(2, (H, D)) for t in rp)
                w = attn.norm_q.weight.detach()
                ms, _ = bench(lambda: ka.quant_qk(q4, w, 1e-5, c4, s4, 1.0))
                res["q8_quant_q_norm_rope"] = {"ms": ms}
                table.append(f"{name:28s} {'q8_quant_q_norm_rope':20s} {ms:8.3f} ms")
        result["shapes"][name] = {"shape": [B, S, inner] if lens is None else [B, S, T, inner], "results": res}
    print("\n".join(table[-6:]), flush=True)


def int8_bench(name, res, record, q, k, v, kl, ref_out, sweep, result, dump):
    """The INT8 attention on ``q, k, v [B, H, S, D]`` (views of ``[B, S, H, D]`` bf16): with ``sweep`` every
    :data:`INT8_SWEEP` config of the kernel first (the fastest becomes ``INT8_FWD_CONFIG[D]``), then the kernel
    alone on the producers' outputs, the whole op and the q/k producers (``record``), the kernel against the INT8
    reference math on two heads (float32 on the GPU) and that math against float32 SDPA."""
    from q8lib import reference as ref
    from q8lib.kernels import attention as ka
    from q8lib.kernels import int8_attention as IA

    B, H, Sq, D = q.shape
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    qscale = ref.LOG2E / math.sqrt(D)
    ops = ka.int8_quant_qk(qt, kt, None, -1.0, None, -1.0, None, None, kl, qscale)

    def poisoned():
        return torch.full((B, Sq, H, D), float("nan"), device=q.device, dtype=torch.bfloat16)

    if sweep:
        sw = result["int8_sweep"][name] = {}
        for cfg in INT8_SWEEP:
            try:
                ob = poisoned()
                ck = IA.launch_int8_fwd(*ops, vt, kl, ob, config=cfg)
                assert not ob.isnan().any(), "unwritten outputs"
                err = rel_err(ob.transpose(1, 2), ref_out)
                ms, _ = bench(lambda: IA.launch_int8_fwd(*ops, vt, kl, ob, config=cfg))
                st = sass_stats(ck)
                st.pop("_sass", None)
                sw[str(cfg)] = {"ms": ms, "tflops": 4 * B * H * Sq * k.shape[2] * D / ms / 1e9, "rel_err": err, **st}
            except Exception as e:
                sw[str(cfg)] = {"error": repr(e)[:300]}
            print(f"  int8 sweep {name} {cfg}: {sw[str(cfg)]}", flush=True)
            dump()
        ok = {c: r["ms"] for c, r in zip(INT8_SWEEP, sw.values()) if "ms" in r}
        if ok:
            best = min(ok, key=ok.get)
            IA.INT8_FWD_CONFIG[D] = best
            sw["best"] = str(best)
    res["int8_config"] = str(IA.int8_fwd_config(D, q.device))
    out = poisoned()
    IA.launch_int8_fwd(*ops, vt, kl, out)
    assert not out.isnan().any(), "INT8 kernel left unwritten (NaN) outputs"
    record("q8_int8_kernel", lambda: IA.int8_attention_fwd(*ops, vt, kl, Sq, torch.bfloat16), out.transpose(1, 2))
    op_out = ka.attention(q, k, v, kl, mode="int8")
    record("q8_int8_op", lambda: ka.attention(q, k, v, kl, mode="int8"), op_out)
    record("q8_int8_quant_qk", lambda: ka.int8_quant_qk(qt, kt, None, -1.0, None, -1.0, None, None, kl, qscale))
    r8 = ref.int8_attention_ref(q[:, :2].float(), k[:, :2].float(), v[:, :2].float(), kl)
    res["q8_int8_op"]["rel_err_vs_int8_ref_2heads"] = rel_err(op_out[:, :2], r8)
    res["int8_ref_2heads_rel_err"] = rel_err(r8, ref_out[:, :2])


def cudnn_fp8_bench(res, record, q, k, v, kl):
    """cuDNN's FP8 SDPA through q8lib's op (``attention="fp8_tensor"``, :mod:`q8lib.kernels.cudnn_attention`): the
    engine alone on per-tensor e4m3 q/k/v (``cudnn_fp8_kernel``), the op with its K smoothing and quantization
    (``q8_fp8tensor_op``) and, with key lengths, its error against the reference emulation on two heads; a failure
    (package missing, engine refusing the shape) is recorded, not raised."""
    from q8lib import reference as ref
    from q8lib.kernels import cudnn_attention as ca

    try:
        codes = [ref.quantize_per_tensor(t) for t in (q, k, v)]
        (q8, dq), (k8, dk), (v8, dv) = codes
        sm = 1.0 / math.sqrt(q.shape[-1])
        out = ca.cudnn_fp8_sdpa(q8, k8, v8, dq, dk, dv, None, sm).float() * dv
    except Exception as e:  # noqa: BLE001 - e.g. no nvidia-cudnn-frontend: say why in the JSON
        res["cudnn_fp8_kernel"] = {"error": repr(e)[:300]}
        return
    record("cudnn_fp8_kernel", lambda: ca.cudnn_fp8_sdpa(q8, k8, v8, dq, dk, dv, None, sm), out)
    try:
        op_out = ca.fp8_tensor_attention(q, k, v, kl)
    except Exception as e:  # noqa: BLE001
        res["q8_fp8tensor_op"] = {"error": repr(e)[:300]}
        return
    record("q8_fp8tensor_op", lambda: ca.fp8_tensor_attention(q, k, v, kl), op_out)
    r = ref.fp8_tensor_attention_ref(q[:, :2].float(), k[:, :2].float(), v[:, :2].float(), kl)
    res["q8_fp8tensor_op"]["rel_err_vs_ref_2heads"] = rel_err(op_out[:, :2], r)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweep", action="store_true", help="time every tile configuration of the FP8 kernel")
    ap.add_argument("--int8-sweep", action="store_true", help="time every INT8_SWEEP configuration of the INT8 kernel")
    ap.add_argument("--skip-fp8", action="store_true", help="leave out the FP8 variants (INT8 and SDPA only)")
    ap.add_argument("--cudnn-fp8", action="store_true", help="also cuDNN's FP8 SDPA (nvidia-cudnn-frontend)")
    ap.add_argument("--skip-int8", action="store_true", help="leave out the INT8 variants")
    ap.add_argument("--out", default="benchmarks/results/attention_h100.json")
    ap.add_argument("--asm-dir", default=None, help="write the TTGIR/SASS of the chosen kernels here")
    ap.add_argument("--shapes", default=None, help="comma-separated subset of shape names")
    args = ap.parse_args()

    import triton

    from q8lib import reference as ref
    from q8lib.kernels import attention as ka
    from q8lib.kernels import fp8_attention as FA
    from q8lib.kernels import int8_attention as IA

    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    try:
        import diffusers

        dver = diffusers.__version__
    except ImportError:
        dver = None
    try:
        import q8_kernels  # noqa: F401  (peer; not on PyPI for this torch)

        have_q8k = True
    except ImportError:
        have_q8k = False
    from torch.nn.attention import SDPBackend, sdpa_kernel

    result = {
        "device": props.name, "sm": f"{props.major}{props.minor}", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "diffusers": dver,
                     "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()},
        "default_config": {str(k): str(v) for k, v in FA.FWD_CONFIG.items()},
        "default_int8_config": {str(k): str(v) for k, v in IA.INT8_FWD_CONFIG.items()},
        "shapes": {}, "sweep": {}, "int8_sweep": {}, "notes": "tflops = 4*B*H*Sq*Sk*D / time (cross: Sk = padded text length)",
    }
    table = []

    def dump():  # after every measurement: a run cut short by its time limit still leaves its numbers
        result["chosen_config"] = {str(k): str(v) for k, v in FA.FWD_CONFIG.items()}
        result["chosen_int8_config"] = {str(k): str(v) for k, v in IA.INT8_FWD_CONFIG.items()}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)

    names = None if args.shapes is None else set(args.shapes.split(","))
    for name, B, H, Sq, Sk, D, lens in SHAPES:
        if names and name not in names:
            continue
        torch.manual_seed(0)
        # projections give [B, S, H*D]; attention sees [B, H, S, D] views of them
        q = torch.randn(B, Sq, H, D, device=dev, dtype=torch.bfloat16).transpose(1, 2)
        k = torch.randn(B, Sk, H, D, device=dev, dtype=torch.bfloat16).transpose(1, 2)
        v = torch.randn(B, Sk, H, D, device=dev, dtype=torch.bfloat16).transpose(1, 2)
        kl = None if lens is None else torch.tensor(lens, device=dev, dtype=torch.int32)
        mask = None if kl is None else ref.key_lengths_to_mask(kl, Sk)
        flops = 4 * B * H * Sq * Sk * D
        # float32 SDPA reference (memory-efficient kernel handles fp32 at every size)
        ref_out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
        res = {}

        def record(variant, fn, out=None):
            graph = True
            try:
                ms, peak = bench(fn)
            except Exception:  # not capturable in a CUDA graph: time the eager calls
                graph = False
                try:
                    ms, peak = bench(fn, graph=False)
                except Exception as e:  # e.g. cuDNN refuses a mask or shape: record why
                    res[variant] = {"error": repr(e)[:300]}
                    return
            r = {"ms": ms, "tflops": flops / ms / 1e9, "peak_mb": peak, "cuda_graph": graph}
            if out is not None:
                r["rel_err"] = rel_err(out, ref_out)
            res[variant] = r

        for variant, backend in (("sdpa_cudnn_bf16", SDPBackend.CUDNN_ATTENTION),
                                 ("sdpa_flash_bf16", SDPBackend.FLASH_ATTENTION),
                                 ("sdpa_efficient_bf16", SDPBackend.EFFICIENT_ATTENTION)):
            if mask is not None and backend == SDPBackend.FLASH_ATTENTION:
                res[variant] = {"error": "flash SDPA takes no attention mask"}
                continue

            def sd(backend=backend):
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

            try:
                out = sd()
            except Exception as e:
                res[variant] = {"error": repr(e)[:300]}
                continue
            record(variant, sd, out)
        # the same cuDNN kernel on [B, H, S, D]-contiguous q/k/v (the model hands it [B, S, H, D] rows viewed as
        # [B, H, S, D]): whether the layout the producers write costs cuDNN speed
        qc, kc, vc = (t.contiguous() for t in (q, k, v))

        def sd_bhsd():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                return F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask)

        try:
            record("sdpa_cudnn_bf16_bhsd", sd_bhsd, sd_bhsd())
        except Exception as e:  # noqa: BLE001 - cuDNN refusing the call is the answer
            res["sdpa_cudnn_bf16_bhsd"] = {"error": repr(e)[:300]}
        del qc, kc, vc

        if not args.skip_fp8:
            qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
            q8, qs = ka.quant_qk(qt, None, -1.0, None, None, ka.LOG2E / math.sqrt(D))
            k8, ks = ka.quant_qk(kt, None, -1.0, None, None, 1.0)
            vt8, vs = ka.quant_v(vt)
            if args.sweep and lens is None and Sq <= 4096:
                # time every tile configuration, then measure the variants below with the fastest
                sw = {}
                for cfg in SWEEP:
                    try:
                        ob = torch.full((B, Sq, H, D), float("nan"), device=dev, dtype=torch.bfloat16)
                        ck = FA.launch_fwd(q8, qs, k8, ks, vt8, vs, kl, Sk, ob, config=cfg)
                        assert not ob.isnan().any(), "unwritten outputs"
                        err = rel_err(ob.transpose(1, 2), ref_out)
                        ms, _ = bench(lambda: FA.launch_fwd(q8, qs, k8, ks, vt8, vs, kl, Sk, ob, config=cfg))
                        st = sass_stats(ck)
                        sass = st.pop("_sass", "")
                        sw[str(cfg)] = {"ms": ms, "tflops": flops / ms / 1e9, "rel_err": err, **st}
                        if args.asm_dir and cfg == SWEEP[0]:
                            os.makedirs(args.asm_dir, exist_ok=True)
                            with open(os.path.join(args.asm_dir, f"attn_d{D}.ttgir"), "w") as f:
                                f.write(ck.asm.get("ttgir", ""))
                            with open(os.path.join(args.asm_dir, f"attn_d{D}.sass"), "w") as f:
                                f.write(sass)
                    except Exception as e:
                        sw[str(cfg)] = {"error": repr(e)[:300]}
                    print(f"  sweep {name} {cfg}: {sw[str(cfg)]}", flush=True)
                    result["sweep"][name] = sw
                    dump()
                ok = {c: r["ms"] for c, r in zip(SWEEP, sw.values()) if "ms" in r}
                if ok:
                    best = min(ok, key=ok.get)
                    FA.FWD_CONFIG[D] = best
                    sw["best"] = str(best)
                result["sweep"][name] = sw
            res["config"] = str(FA.fwd_config(D, dev))
            out_buf = torch.full((B, Sq, H, D), float("nan"), device=dev, dtype=torch.bfloat16)  # poisoned
            FA.launch_fwd(q8, qs, k8, ks, vt8, vs, kl, Sk, out_buf)
            assert not out_buf.isnan().any(), "kernel left unwritten (NaN) outputs"
            record("q8_fp8_kernel", lambda: ka.attention_fwd(q8, qs, k8, ks, vt8, vs, kl, Sq, Sk, torch.bfloat16),
                   out_buf.transpose(1, 2))
            op_out = ka.attention(q, k, v, kl)
            record("q8_fp8_op", lambda: ka.attention(q, k, v, kl), op_out)
            res["q8_fp8_op"]["ms_eager_no_graph"] = bench(lambda: ka.attention(q, k, v, kl), graph=False)[0]
            record("q8_quant_q", lambda: ka.quant_qk(qt, None, -1.0, None, None, 1.0))
            record("q8_quant_v", lambda: ka.quant_v(vt))
            # FP8 reference math on two heads (float32 on the GPU), to separate kernel bugs from FP8 error
            bn = FA.fwd_config(D, dev)[1]
            r8 = ref.fp8_attention_ref(q[:, :2].float(), k[:, :2].float(), v[:, :2].float(), kl, block_n=bn)
            res["q8_fp8_kernel"]["rel_err_vs_fp8_ref_2heads"] = rel_err(op_out[:, :2], r8)
            res["fp8_ref_2heads_rel_err"] = rel_err(r8, ref_out[:, :2])
            if have_q8k:
                res["q8_kernels_fp8"] = {"error": "adapter not written: q8_kernels is installed but not benchmarked"}
            del q8, k8, vt8, op_out
        if args.cudnn_fp8:
            cudnn_fp8_bench(res, record, q, k, v, kl)
        if not args.skip_int8:
            int8_bench(name, res, record, q, k, v, kl, ref_out, args.int8_sweep and lens is None and Sq <= 4096,
                       result, dump)
        cud = res.get("sdpa_cudnn_bf16", {}).get("ms")
        for variant in ("q8_fp8_kernel", "q8_fp8_op", "q8_int8_kernel", "q8_int8_op", "cudnn_fp8_kernel",
                        "q8_fp8tensor_op"):
            if cud and "ms" in res.get(variant, {}):
                res[variant]["speedup_vs_cudnn"] = cud / res[variant]["ms"]
        result["shapes"][name] = {"shape": [B, H, Sq, Sk, D], "key_lengths": lens, "gflop": flops / 1e9,
                                  "results": res}
        dump()

        for variant, r in res.items():
            if isinstance(r, dict) and "ms" in r:
                table.append(f"{name:28s} {variant:20s} {r['ms']:8.3f} ms {r['tflops']:7.1f} TFLOP/s "
                             f"err {r.get('rel_err', float('nan')):.4f}")
        print("\n".join(table[-8:]), flush=True)
        del q, k, v, ref_out
        torch.cuda.empty_cache()

    if not names or "core" in names:
        core_bench(result, table, dev, ref, ka)
    dump()
    print("\n".join(table))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
