"""Accuracy of q8lib's INT8 attention (``mode="int8"``) as built, on CPU (issue #14; not a test).

    PYTHONPATH=. python benchmarks/int8_attention_accuracy.py [--quick] [--skip synthetic real e2e]

What the session-5 study (``benchmarks/attention_accuracy.py``) emulated, now through the library: the reference
math :func:`q8lib.reference.int8_attention_ref` (what the reference backend runs, and what the Triton kernels
compute up to their twins' tolerance) and, on the 1024-token shapes, the Triton kernels themselves under the
interpreter (``q8lib.kernels.attention.attention(..., mode="int8")``). Against float64 attention:

* synthetic: the study's Gaussian and outlier inputs and shapes, with issue #14's targets checked per shape
  (<= 0.03 Gaussian; <= 2 x bf16 + 0.03 with outliers, bf16 = the study's ``bf16_flash`` model);
* the trained tiny LTX-Video's q/k/v (every attention layer, 32x32x17 and 64x64x33) with the range of ``v``
  (the 16-bit ``P @ V`` needs ``|v|`` below fp16's 65504 only for fp16 ``v``: bf16 and fp32 ``v`` go through bf16);
* end to end: the tiny model generating with INT8, FP8 and SDPA attention (``--e2e-modes``; ``fp8_tensor`` too,
  in every attention), with fp32 and with Q8 linears (``--weight-dtype``, reference backend), against the fp32
  model: PSNR of the decoded clips, latent error, SSIM.

Writes ``benchmarks/results/accuracy/int8_attention_cpu.json`` (``--out``).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from q8lib import reference as ref

_STUDY = Path(__file__).resolve().parent / "attention_accuracy.py"
_spec = importlib.util.spec_from_file_location("attention_accuracy", _STUDY)
A = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("attention_accuracy", A)
_spec.loader.exec_module(A)

F64 = torch.float64


def _bf16_out(fn):
    """``fn(q, k, v)`` on float32 inputs, output rounded to bf16 (what the kernels write), float64 back."""
    return lambda q, k, v: fn(q.float(), k.float(), v.float()).to(torch.bfloat16).to(F64)


def _kernel(q, k, v):
    from q8lib.kernels import attention as ka

    return ka.attention(q.float(), k.float(), v.float(), mode="int8").to(torch.bfloat16).to(F64)


METHODS = {
    "int8_ref": _bf16_out(ref.int8_attention_ref),  # the INT8 math (reference backend), bf16 output
    "fp8_ref": _bf16_out(ref.fp8_attention_ref),  # today's FP8 attention (reference math)
    "bf16_flash": A.bf16_flash,  # the study's bf16 flash-attention model (the targets' bf16)
    "torch_sdpa_bf16": A.torch_sdpa_bf16,
}


def synthetic(shapes, n_queries, kernel_max_s, log):
    out = []
    for dist in ("gaussian", "outlier_disjoint", "outlier_shared"):
        for (B, H, S, D) in shapes:
            q, k, v = (A.gaussian_inputs(B, H, S, D, 0) if dist == "gaussian"
                       else A.outlier_inputs(B, H, S, D, 0, dist.split("_")[1]))
            rows = A.query_rows(S, A.rows_for(S, n_queries))
            qs = q[..., rows, :]
            exact = A.exact_attention(qs, k, v)
            t0 = time.perf_counter()
            res = {n: A.metrics(f(qs, k, v), exact) for n, f in METHODS.items()}
            if S <= kernel_max_s:
                res["int8_triton_interpreter"] = A.metrics(_kernel(qs, k, v), exact)
            bf16 = res["bf16_flash"]["rel_err"]
            target = 0.03 if dist == "gaussian" else 2 * bf16 + 0.03
            row = dict(input=dist, shape=[B, H, S, D], query_rows=len(rows), target=round(target, 6),
                       int8_meets_target=res["int8_ref"]["rel_err"] <= target, schemes=res)
            log(f"{dist:17s} {B}x{H}x{S}x{D}: " + " ".join(f"{n}={r['rel_err']:.4f}" for n, r in res.items())
                + f" target {target:.4f} ({time.perf_counter() - t0:.1f}s)")
            out.append(row)
    return out


def real(pipe, sizes, log):
    """The trained tiny model's q/k/v (conditional half of the CFG batch, 5th of 8 forwards) and their ranges
    (both CFG halves; ``v_absmax`` bounds what the 16-bit ``P @ V`` must hold)."""
    out = []
    prompt = A._heldout_prompts(1)[0]
    for (h, w, f) in sizes:
        store = A.capture_activations(pipe, h, w, f, 8, 4, prompt)
        for name, (q, k, v, lengths) in store.items():
            b = q.shape[0] - 1
            n = k.shape[-2] if lengths is None else int(lengths[b].clamp(1, k.shape[-2]))
            qb, kb, vb = q[b:b + 1].double(), k[b:b + 1, :, :n].double(), v[b:b + 1, :, :n].double()
            exact = A.exact_attention(qb, kb, vb)
            res = {m: A.metrics(fn(qb, kb, vb), exact) for m, fn in METHODS.items()}
            stats = dict(v_absmax=round(v.abs().max().item(), 3), v_rms=round(v.pow(2).mean().sqrt().item(), 3),
                         q_absmax=round(q.abs().max().item(), 3), k_absmax=round(k.abs().max().item(), 3))
            log(f"tiny {h}x{w}x{f} {name} k{tuple(kb.shape)}: " + " ".join(f"{m}={r['rel_err']:.4f}"
                                                                          for m, r in res.items()) + f" {stats}")
            out.append(dict(size=[h, w, f], layer=name, q_shape=list(qb.shape), k_shape=list(kb.shape), stats=stats,
                            schemes=res))
    return out


def end_to_end(pipe, n_prompts, log, modes=("sdpa", "fp8", "int8"), weight_dtype="int8"):
    import numpy as np

    from q8lib import Q8Config, quantize_, restore_attention, set_q8_attention
    from q8lib.app.settings import default_settings
    from q8lib.tiny.judge import psnr, ssim

    settings = default_settings()
    prompts = A._heldout_prompts(n_prompts)
    seeds = list(range(len(prompts)))
    base = pipe.transformer
    runs = {}

    def generate(name, transformer):
        t0 = time.perf_counter()
        pipe.transformer = transformer
        try:
            runs[name] = A._latents_and_frames(pipe, prompts, seeds, settings)
        finally:
            pipe.transformer = base
        log(f"e2e {name}: {time.perf_counter() - t0:.1f}s")

    generate("fp32", base)
    # fp8_tensor runs FP8 only with many queries and keys (q8lib.reference.fp8_tensor_applies); the tiny model has
    # few, so it is lowered here to put every attention in FP8 (at full size: video self-attention, LTX-2's text
    # cross-attention)
    saved = ref.FP8_TENSOR_MIN_QUERIES, ref.FP8_TENSOR_MIN_KEYS
    ref.FP8_TENSOR_MIN_QUERIES = ref.FP8_TENSOR_MIN_KEYS = 1
    try:
        for mode in modes:
            if mode != "sdpa":  # fp32 linears with the Q8 processor's attention
                set_q8_attention(base, mode, backend="reference")
                try:
                    generate(f"fp32_linears+{mode}", base)
                finally:
                    restore_attention(base)
            q8 = quantize_(copy.deepcopy(base), Q8Config(weight_dtype=weight_dtype), backend="reference",
                           attention=mode, progress=False)
            generate(f"q8_linears+{mode}", q8)
            del q8
    finally:
        ref.FP8_TENSOR_MIN_QUERIES, ref.FP8_TENSOR_MIN_KEYS = saved
    ref_lat, ref_frames = runs.pop("fp32")
    out = dict(settings=settings, prompts=prompts, seeds=seeds,
               runs_note="fp32_linears+X: the fp32 transformer with q8lib's attention processor in mode X (reference "
                         f"backend); q8_linears+X: quantize_(Q8Config(weight_dtype={weight_dtype!r}), "
                         "backend='reference', attention=X); fp8_tensor in every attention of the tiny model; "
                         "everything against the fp32 pipeline", runs={})
    for name, (lat, frames) in runs.items():
        ps = [psnr(a, b) for a, b in zip(ref_frames, frames)]
        out["runs"][name] = dict(latent_rel_err=round(((lat - ref_lat).norm() / ref_lat.norm()).item(), 6),
                                 psnr_db_mean=round(float(np.mean(ps)), 3), psnr_db_min=round(float(np.min(ps)), 3),
                                 ssim_mean=round(float(np.mean([ssim(a, b) for a, b in zip(ref_frames, frames)])), 5))
        r = out["runs"][name]
        log(f"e2e {name}: latent {r['latent_rel_err']:.4f} PSNR {r['psnr_db_mean']:.2f} (min {r['psnr_db_min']:.2f}) "
            f"SSIM {r['ssim_mean']:.4f}")
    return out


def _versions() -> dict:
    import triton

    return {**A.versions(), "triton": triton.__version__}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1024-token shapes, one tiny size, 2 prompts")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "accuracy" / "int8_attention_cpu.json"))
    ap.add_argument("--skip", nargs="*", default=[], choices=["synthetic", "real", "e2e"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--e2e-modes", default="sdpa,fp8,int8", help="attention modes of the end-to-end runs")
    ap.add_argument("--weight-dtype", default="int8", choices=["int8", "fp8_e4m3"], help="the Q8 linears' format")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    if args.quick:
        shapes, sizes, n_prompts = [(1, 2, 1024, 64), (1, 2, 1024, 128)], [(32, 32, 17)], 2
    else:
        shapes = [(1, 2, 1024, 64), (1, 2, 4096, 64), (1, 2, 1024, 128), (1, 2, 4096, 128), (1, 1, 16384, 64)]
        sizes, n_prompts = [(32, 32, 17), (64, 64, 33)], 8
    result = dict(what="q8lib INT8 attention (mode='int8') vs float64 attention, as built (issue #14); "
                       "benchmarks/int8_attention_accuracy.py",
                  date=datetime.now(timezone.utc).isoformat(timespec="seconds"), argv=sys.argv[1:],
                  device="CPU (Triton kernels under TRITON_INTERPRET=1)", versions=_versions(),
                  methods={"int8_ref": "q8lib.reference.int8_attention_ref, bf16 output",
                           "int8_triton_interpreter": "q8lib.kernels.attention.attention(mode='int8'): the Triton "
                                                      "producers + kernel in the interpreter, bf16 output",
                           "fp8_ref": "q8lib.reference.fp8_attention_ref (today's FP8 attention), bf16 output",
                           "bf16_flash": A.bf16_flash.__doc__.split("\n")[0] + " (the study's model)",
                           "torch_sdpa_bf16": "torch's CPU SDPA on bf16 inputs"},
                  metric="rel_err = ||o - o_ref|| / ||o_ref|| over the measured query rows (whole 128-row tiles; "
                         "128 rows at 16384 tokens), all heads; o_ref float64 exact attention")
    out_path = Path(args.out)

    def dump():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1) + "\n")

    if "synthetic" not in args.skip:
        result["synthetic"] = synthetic(shapes, 512, 1024, log)
        result["synthetic_all_meet_targets"] = all(r["int8_meets_target"] for r in result["synthetic"])
        dump()
    if "real" not in args.skip or "e2e" not in args.skip:
        from q8lib.tiny import default_pipeline

        pipe = default_pipeline()
    if "real" not in args.skip:
        result["tiny_ltx_activations"] = real(pipe, sizes, log)
        dump()
    if "e2e" not in args.skip:
        result["end_to_end"] = end_to_end(pipe, n_prompts, log, tuple(args.e2e_modes.split(",")), args.weight_dtype)
        dump()
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    dump()
    log(f"wrote {out_path}")
    return result


if __name__ == "__main__":
    main()
