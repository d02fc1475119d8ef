"""Render the README's results section from the committed JSON in benchmarks/results/.

    python benchmarks/readme_results.py          # rewrite the block between the results markers
    python benchmarks/readme_results.py --check  # exit 1 if README.md is out of date (tests run this)

Only the newest file of each kind is tabulated (``TRANSFORMER``, ``attention_h100.json``,
``generate_*_h100.json``, ``MEMORY_OPTIONS``, ``judge_*.json``); superseded runs stay in the folder and in notebook 06.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from q8lib.bench.results import load_result

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- results -->", "<!-- /results -->"


TRANSFORMER = "transformer_h200_s5.json"  # the newest same-run transformer benchmark (H200, session 5)


def _load(name):
    return load_result(RESULTS / name)


def _f(v, fmt):
    return "–" if v is None else format(v, fmt)


# newest same-run benchmarks of the full-size 13B and LTX-2 (H200, session 8), shown after the 2B table
FULL_SIZE = ("transformer_13b_h200.json", "transformer_ltx2_h200.json")
# the newest runs (H200, session 13: attention="fp8_tensor", cuDNN's FP8 engine behind q8lib's producers), each with
# its own bf16 + compile but fewer variants than the runs above (a session's 30 device-minutes)
LATEST_FULL_SIZE = ("transformer_ltx2_h200_s13.json", "transformer_ltx23_h200_s13.json", "transformer_13b_h200_s13.json",
                    "transformer_h200_s13.json")
# the long video (257 frames at 704x1216), timed against bf16 + compile + CUDA graph
LONG_VIDEO = "transformer_h200_long_s13.json"
LTX2_GENERATE = "generate_ltx2_random_h200.json"
UNDER_REPORTED = ("\\* peak taken after the CUDA graph's capture (runs before session 8): the activations in the "
                  "graph's pool are missing, so it under-reports; `benchmarks/results/transformer_h200_s8.json` measures "
                  "it from before the capture: q8lib + compile + graph {} MB against bf16 + compile's {} MB ({:.2f}x).")


def _under_reported(r: dict, name: str) -> bool:
    return name.endswith("_graph") and "reserved_peak_mb" not in r


def _transformer(d, file=TRANSFORMER, note="") -> list[str]:
    s = d["shape"]
    extra = f", {s['audio_tokens']} audio tokens" if s.get("audio_tokens") else ""
    out = [f"**Transformer forward**, {s['model']} ({s['num_layers']} blocks), {s['tokens']} latent tokens "
           f"({'x'.join(map(str, s['latent']))}){extra} x batch {s['batch']}, {s['text_tokens']} text tokens; "
           f"{d['device']}, torch {d['versions']['torch']}, triton {d['versions']['triton']}, {d['date'][:10]}; "
           f"{d['timing']} (`benchmarks/results/{file}`{note}).", "",
           "| variant | fwd ms | x bf16+compile | 50 steps s | peak MB | x bf16 peak | rel err vs bf16 | cos vs bf16 |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    starred = False
    for name, r in d["results"].items():
        if "error" in r or "skipped" in r:
            out.append(f"| {name} | {'failed' if 'error' in r else 'skipped'} (see JSON) | | | | | | |")
            continue
        star = "\\*" if _under_reported(r, name) else ""
        starred |= bool(star)
        out.append(f"| {name} | {_f(r.get('fwd_ms'), '.1f')} | {_f(r.get('x_vs_bf16_compile'), '.2f')} | "
                   f"{_f(r.get('est_50_steps_s'), '.2f')} | {_f(r.get('peak_mb'), '.0f')}{star} | "
                   f"{_f(r.get('peak_x_vs_bf16'), '.2f')}{star} | {_f(r.get('rel_err_vs_bf16'), '.4f')} | "
                   f"{_f(r.get('cos_vs_bf16'), '.5f')} |")
    s8 = _load("transformer_h200_s8.json")
    if starred and file == TRANSFORMER and s8:
        q, b = s8["results"]["q8lib_compile_graph"]["peak_mb"], s8["results"]["bf16_compile"]["peak_mb"]
        out += ["", UNDER_REPORTED.format(round(q), round(b), q / b)]
    elif starred:
        out += ["", "\\* under-reported, as above."]
    return out


def _ltx2_generate() -> list[str]:
    """The end-to-end LTX-2 run (random full-size weights, model offload) and what its peak means for 24 GB GPUs."""
    d = _load(LTX2_GENERATE)
    if not d:
        return []
    st, p, r = d["settings"], d["pipeline"], d["results"]
    t, m = r["timings"], r["memory"]
    return [f"**LTX-2 end to end** (`q8lib generate --model random-ltx2 --offload {p['offload']}`: the released "
            f"pipeline's components at full size with random weights, `benchmarks/results/{LTX2_GENERATE}`; "
            f"{d['device']}, {d['date'][:10]}): {st['num_frames']} frames at {st['height']}x{st['width']}, "
            f"{st['num_inference_steps']} steps, {p['weight_dtype']} transformer with {p['attention']} attention, eager: "
            f"peak {m['peak_gib']:.2f} GiB while denoising ({m['reserved_peak_gib']:.2f} GiB reserved), "
            f"{m['decode_peak_gib']:.2f} GiB while decoding, transformer weights {m['transformer_weights_gib']:.2f} GiB; "
            f"{t['transformer_forward_ms']:.0f} ms per transformer forward, VAE decode {t['vae_decode_s']:.1f} s. "
            "Under a 24 GB GPU's memory, measured on an H200 (not on a 24 GB card). Prompt embeddings were random "
            "(Gemma 3 12B is not built at full size here): with the real encoder, encode first in 8 bits "
            "(`--text-encoder-precision q8`, about 12 GB of weights; freed before denoising).", ""]


def _attention(d) -> list[str]:
    out = [f"**Attention** ({d['device']}, {d['date'][:10]}, CUDA-graph timing; "
           "`benchmarks/results/attention_h100.json`). `q8_fp8_kernel` is the attention kernel on pre-quantized "
           "inputs, `q8_fp8_op` adds the q/k/v quantization producers.", "",
           "| shape [B, H, Sq, Sk, D] | variant | ms | TFLOP/s | x cuDNN bf16 time | rel err vs fp32 |",
           "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, sh in d["shapes"].items():
        if not name.startswith(("self_", "cross_")):
            continue
        res = sh["results"]
        base = res.get("sdpa_cudnn_bf16", {}).get("ms")
        for v in ("sdpa_cudnn_bf16", "sdpa_flash_bf16", "q8_fp8_kernel", "q8_fp8_op"):
            r = res.get(v)
            if not isinstance(r, dict) or "ms" not in r:
                continue
            out.append(f"| {sh['shape']} | {v} | {r['ms']:.3f} | {r['tflops']:.0f} | "
                       f"{_f(base and r['ms'] / base, '.2f')} | {_f(r.get('rel_err'), '.4f')} |")
    return out


def _judge(d) -> list[str]:
    s, g = d["summary"], d["meta"]["generation"]
    q = s["q8_auto"]
    return [f"**Tiny trained default** (`q8lib/assets/tiny-ltx-shapes`, {s['num_prompts']} held-out prompts x "
            f"{s['seeds_per_prompt']} seeds, {g['num_frames']} frames {g['height']}x{g['width']}, "
            f"{g['num_inference_steps']} steps; {d['meta']['device']}): the automatic judge agrees with the caption "
            f"on {s['reference_vs_caption']['all']:.0%} of bf16 clips; Q8 agrees with bf16 on "
            f"{q['vs_reference']['all']:.0%}; Q8 vs bf16 PSNR {q['psnr_db_mean']:.1f} dB (min {q['psnr_db_min']:.1f}), "
            f"SSIM {q['ssim_mean']:.3f} (min {q['ssim_min']:.3f}) (`benchmarks/results/judge_tiny_ltx_shapes.json`)."]


def _generate() -> list[str]:
    q2, cmp, q13, mem = (_load(f"generate_{n}_h100.json") for n in ("2b", "compare_2b", "13b", "13b_memory"))
    if not (q2 and cmp):
        return []
    sh = q2["shape"]
    out = [f"**End to end** (`q8lib generate` / `compare` / `memory`, random weights, {sh['frames']} frames "
           f"{sh['height']}x{sh['width']}, transformer batch {sh['transformer_batch']} (CFG), eager unless stated, "
           f"{q2['device']}, {q2['date'][:10]}; `benchmarks/results/generate_*_h100.json`):", "",
           "| model | steps | transformer fwd ms | end to end s | VAE decode s | weights GiB | peak denoise / decode GiB |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def row(name, steps, r):
        t, m = r["timings"], r["memory"]
        return (f"| {name} | {steps} | {t['transformer_forward_ms']:.1f} | {t['end_to_end_s']:.2f} | "
                f"{t['vae_decode_s']:.2f} | {_f(m.get('transformer_weights_gib'), '.2f')} | "
                f"{m['denoise_peak_gib']:.2f} / {m['decode_peak_gib']:.2f} |")

    ref = cmp["results"]["reference"]
    out.append(row("2B bf16", cmp["settings"]["num_inference_steps"], ref))
    out.append(row(f"2B Q8 ({q2['pipeline']['weight_dtype']}, {q2['pipeline']['attention']} attention)",
                   q2["settings"]["num_inference_steps"], q2["results"]))
    for prec in ("bf16", "q8"):  # `generate --compile --cuda-graph` runs, where committed
        g = _load(f"generate_2b_{prec}_graph_h100.json")
        if g:
            p = g["pipeline"]
            what = "bf16" if prec == "bf16" else f"Q8 ({p['weight_dtype']}, {p['attention']} attention)"
            out.append(row(f"2B {what}, compile + CUDA graph ({g['date'][:10]})", g["settings"]["num_inference_steps"],
                           g["results"]))
    if q13:
        out.append(row(f"13B Q8 ({q13['pipeline']['weight_dtype']})", q13["settings"]["num_inference_steps"],
                       q13["results"]))
    m = cmp["results"]["metrics"]
    out += ["", f"Q8 vs bf16 from the same noise and embeddings (2B): PSNR {m['psnr_db_mean']:.1f} dB "
                f"(min {m['psnr_db_min']:.1f}), SSIM {m['ssim_mean']:.4f}; end-to-end speed "
                f"{cmp['results']['speedup']['end_to_end']:.2f}x of bf16 in this eager pipeline."]
    if mem:
        r = mem["results"]
        out.append(f"13B Q8 transformer alone (`q8lib memory`): peak {r['peak_gib']:.2f} GiB "
                   f"(limit {r['limit_gib']:.0f}, fits: {r['fits']}), forward median {r['forward_ms_median']:.0f} ms.")
    return out


MEMORY_OPTIONS = "memory_options_h200.json"  # benchmarks/bench_memory_options.py


def memory_options_table(d, name=MEMORY_OPTIONS) -> list[str]:
    """The memory-options run (``bench_memory_options.py``) as a paragraph and a table."""
    s, st = d["shape"], d["settings"]
    q8 = d.get("pipelines", {}).get("q8") or {}
    te = d.get("text_encoder_note") or d["text_encoder"]
    out = [f"**Memory options** (diffusers' CPU offloads and VAE tiling; {d['model']}, {s['frames']} frames "
           f"{s['height']}x{s['width']}, transformer batch {s['transformer_batch']} (CFG), {s['text_tokens']} text tokens, "
           f"{st['num_inference_steps']} denoising steps per call, scaled to 50 from the step time; {te}; Q8: "
           f"{q8.get('weight_dtype')}, {q8.get('attention')} attention, eager; {d['device']}, torch "
           f"{d['versions']['torch']}, accelerate {d['versions'].get('accelerate')}, {d['date'][:10]}; "
           f"`benchmarks/results/{name}`). Peak allocated GPU memory over the whole call (text encoding and denoising / "
           "VAE decode) and the allocator's reserved peak.", "",
           "| transformer | offload | VAE tiling | peak GiB (denoise / decode) | reserved GiB | step ms | VAE decode s | "
           "end to end s | est. 50 steps s |",
           "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in d["results"].values():
        head = f"| {'Q8' if r['precision'] == 'q8' else r['precision']} | {r['offload']} | {'on' if r['vae_tiling'] else 'off'} |"
        if "error" in r:
            out.append(f"{head} failed: {r['error'].splitlines()[0][:80]} | | | | | |")
            continue
        peak = (f"{r['denoise_peak_gib']:.2f} / {r['decode_peak_gib']:.2f}" if "denoise_peak_gib" in r else "–")
        out.append(f"{head} {peak} | {_f(r.get('reserved_peak_gib'), '.2f')} | {r['step_ms']:.1f} | "
                   f"{r['vae_decode_s']:.2f} | {r['end_to_end_s']:.2f} | {r['est_50_steps_s']:.1f} |")
    refusal = d.get("refusals", {}).get("cuda_graphs_with_offload")
    if refusal:
        out += ["", f"`q8lib.enable_cuda_graphs` on the offloaded Q8 transformer: {refusal.split(':')[0]} (refused)."]
    return out


def render() -> str:
    parts = []
    t = _load(TRANSFORMER)
    if t:
        parts += _transformer(t, note="; `q8lib_norot*`: fp8 without the rotation, the default fp8 format since "
                                      "session 5") + [""]
    for name in FULL_SIZE:
        f = _load(name)
        if f:
            parts += _transformer(f, name, "; random weights") + [""]
    for name in LATEST_FULL_SIZE:
        f = _load(name)
        if f:
            parts += _transformer(f, name, "; random weights; a later session, its own bf16 + compile") + [""]
    f = _load(LONG_VIDEO)
    if f:
        b = f["results"].get("bf16_compile_graph", {}).get("fwd_ms")
        ratios = "; ".join(f"{n} {r['fwd_ms'] / b:.3f}x" for n, r in f["results"].items()
                           if b and "fwd_ms" in r and n != "bf16_compile_graph")
        parts += _transformer(f, LONG_VIDEO, f"; random weights; x bf16 + compile + graph: {ratios}") + [""]
    parts += _ltx2_generate()
    a = _load("attention_h100.json")
    if a:
        parts += _attention(a) + [""]
    gen = _generate()
    if gen:
        parts += gen + [""]
    m = _load(MEMORY_OPTIONS)
    if m:
        parts += memory_options_table(m) + [""]
    for p in sorted(RESULTS.glob("judge_*.json")):
        parts += _judge(json.loads(p.read_text())) + [""]
    if not parts:
        parts = ["No benchmark result has been committed yet.", ""]
    return "\n".join(parts).rstrip() + "\n"


def _replace(readme: str, body: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README.md lacks the {BEGIN} ... {END} markers")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{body}{END}{tail}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    path = ROOT / "README.md"
    readme = path.read_text()
    new = _replace(readme, render())
    if args.check:
        if new != readme:
            print("README.md results are out of date: run python benchmarks/readme_results.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
