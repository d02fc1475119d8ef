"""diffusers' memory options with a Q8 LTX-Video transformer (and bf16 in the same run): peak GPU memory and time.

    python benchmarks/bench_memory_options.py        # CUDA GPU: random-2b at the shape of record, 4 steps (~5 min on an H200)
    python benchmarks/bench_memory_options.py --device cpu --model tiny --frames 9 --height 32 --width 32 --steps 1 \\
        --text-encoder none --out /tmp/mem.json      # smoke run on a CPU (no memory figures there)

Per transformer precision (``--variants``), the pipeline is built once with ``q8lib.app.load_pipeline`` on the
device (random weights for ``random-2b``; with ``--text-encoder pipeline``, the default, it holds a T5 encoder of
T5-XXL's size, 9.5 GB in bf16, as a diffusers user's pipeline does, and encodes the prompts at every call), then
measured under each memory option, in this order because sequential offload cannot be undone:

* ``none``: every component on the GPU;
* ``model``: ``pipe.enable_model_cpu_offload()`` (one component on the GPU at a time);
* ``sequential``: ``pipe.enable_sequential_cpu_offload()`` (one module's weights at a time; q8lib loads one
  transformer block's at a time, see ``q8lib/offload.py``);

each without and with ``pipe.vae.enable_tiling()``. A generation is one whole pipeline call at the shape of record
(81 frames 480x704, CFG: transformer batch 2, 128 text tokens) with ``--steps`` denoising steps instead of 50, timed by
``q8lib.app.run_pipeline``: end-to-end time (perf_counter around the synchronized call, text encoding and the offload
copies included), transformer forward per step (CUDA events, median), VAE decode, peak allocated memory up to the
decode and during it, peak reserved memory. ``est_50_steps_s`` adds the missing steps at the median step time.
Medians over ``--repeats`` after ``--warmup`` calls of (at most) two steps. Also records that ``q8lib.enable_cuda_graphs`` refuses
an offloaded transformer. A configuration that fails is recorded with its error and the run goes on.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import sys
import time

import torch

import q8lib
from q8lib.app import (encode_prompts, environment, free_text_encoder, load_pipeline, resolve_device, run_pipeline,
                       settings_for)
from q8lib.models import module_bytes
from q8lib.outputs import write_json
from q8lib.versions import package_versions

OFFLOADS = ("none", "model", "sequential")  # the order they are applied in
PROMPT = "a red circle moving right"


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    p.add_argument("--model", default=None, help="default: random-2b on a GPU, tiny on a CPU")
    p.add_argument("--variants", default="q8,bf16", help="transformer precisions, comma-separated: q8, bf16")
    p.add_argument("--offload", default=",".join(OFFLOADS), help="memory options, comma-separated: none, model, sequential")
    p.add_argument("--tiling", default="off,on", help="VAE tiling settings to measure on top of each: off, on")
    p.add_argument("--text-encoder", default="pipeline", choices=["pipeline", "none"],
                   help="pipeline: the pipeline holds a text encoder (random-* models: T5-XXL's size) and encodes the "
                        "prompts at every call; none: embeddings computed once, the text encoder dropped (q8lib's app)")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=704)
    p.add_argument("--steps", type=int, default=4, help="denoising steps per generation (the shape of record has 50)")
    p.add_argument("--guidance", type=float, default=3.0, help="> 1: CFG, transformer batch 2")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls of (at most) two steps before each configuration")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per configuration (medians)")
    p.add_argument("--weight-dtype", default="auto", help="Q8 weights: auto (fp8_e4m3 on Hopper), int8, fp8_e4m3")
    p.add_argument("--out", default="benchmarks/results/memory_options_h200.json")
    args = p.parse_args(argv)
    for name in ("variants", "offload", "tiling"):
        setattr(args, name, [v.strip() for v in getattr(args, name).split(",") if v.strip()])
    bad = [v for v in args.offload if v not in OFFLOADS] + [v for v in args.tiling if v not in ("off", "on")]
    if bad or not set(args.variants) <= {"q8", "bf16"}:
        p.error(f"unknown --variants/--offload/--tiling values: {bad or args.variants}")
    args.offload = [m for m in OFFLOADS if m in args.offload]
    return args


def _enable(pipe, mode, device):
    if mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)


def _clear(cuda):
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _measure(pipe, settings, embeds, args, cuda) -> dict:
    # two steps: with one, the flow-matching schedule of the random-* models (shift_terminal) divides by zero
    warm = dataclasses.replace(settings, num_inference_steps=min(2, settings.num_inference_steps))
    for _ in range(args.warmup):
        run_pipeline(pipe, warm, embeds, progress=False)
    runs = []
    for _ in range(args.repeats):
        _clear(cuda)
        r = run_pipeline(pipe, settings, embeds, progress=False)
        runs.append(dict(timings=r["timings"], memory=r["memory"]))
    t = {k: statistics.median(r["timings"][k] for r in runs) for k in
         ("end_to_end_s", "transformer_s", "transformer_forward_ms", "vae_decode_s")}
    m = {k: max(r["memory"][k] for r in runs) for k in runs[0]["memory"]}
    est = t["end_to_end_s"] + (50 - settings.num_inference_steps) * t["transformer_forward_ms"] / 1e3
    return dict(step_ms=t["transformer_forward_ms"], vae_decode_s=t["vae_decode_s"], end_to_end_s=t["end_to_end_s"],
                transformer_s=t["transformer_s"], est_50_steps_s=est, **m, runs=runs)


def _cuda_graph_refusal(pipe) -> str:
    try:
        q8lib.enable_cuda_graphs(pipe.transformer)
    except q8lib.Q8Error as e:
        return f"{type(e).__name__}: {e}"
    q8lib.disable_cuda_graphs(pipe.transformer)
    return "not refused"


def main(argv=None) -> int:
    args = _args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    model = args.model or ("random-2b" if cuda else "tiny")
    settings = settings_for(model, PROMPT, num_frames=args.frames, height=args.height, width=args.width,
                            num_inference_steps=args.steps, guidance_scale=args.guidance)
    fmt = {} if args.weight_dtype == "auto" else {"weight_dtype": args.weight_dtype}
    results, sizes, refusals, shape, info = {}, {}, {}, None, {}
    start = time.perf_counter()

    def document(complete: bool) -> dict:
        env = environment(device)
        env["versions"].update({k: v for k, v in package_versions("accelerate", "transformers").items()
                                if k in ("accelerate", "transformers")})
        doc = dict(
            kind="q8lib memory options", **env, model=model, text_encoder=args.text_encoder,
            text_encoder_note=({"none": "prompt embeddings computed once, no text encoder in the pipeline"}.get(
                args.text_encoder) or ("the pipeline holds a T5 encoder of T5-XXL's size (random weights, word-level "
                                       "tokenizer) and encodes the prompts in every call" if model.startswith("random-")
                                       else "the pipeline holds the model's text encoder and encodes the prompts in every call")),
            shape=shape, settings=dataclasses.asdict(settings), pipelines=info, component_gib=sizes,
            steps_note=(f"{settings.num_inference_steps} denoising steps per generation instead of the 50 of the shape of "
                        "record; est_50_steps_s = end_to_end_s + (50 - steps) x step_ms"),
            timing=(f"median of {args.repeats} pipeline calls after {args.warmup} warm-up calls (<= 2 steps) per configuration; "
                    "step_ms: transformer forward (CUDA events on GPUs), median; end_to_end_s: whole call, synchronized"),
            memory=("GiB; resident_gib: allocated before the call; denoise_peak_gib: peak allocated from the call's start "
                    "(text encoding included) to the VAE decode; decode_peak_gib: during the decode; reserved_peak_gib: "
                    "the caching allocator's peak (emptied before each call)"),
            refusals=refusals, results=results, wall_s=time.perf_counter() - start, complete=complete)
        return doc

    for precision in args.variants:
        _clear(cuda)
        t0 = time.perf_counter()
        pipe = load_pipeline(model, precision=precision, device=device, q8_config=q8lib.Q8Config(**fmt),
                             full_size_text_encoder=args.text_encoder == "pipeline" and model.startswith("random-"))
        pipe.set_progress_bar_config(disable=True)
        embeds = {}
        if args.text_encoder == "none":
            embeds, _ = encode_prompts(pipe, settings, model)
            free_text_encoder(pipe)
        shape = settings.shape(pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio)
        info[precision] = {k: pipe.q8lib_info[k] for k in ("backend", "weight_dtype", "attention", "dtype")}
        sizes[precision] = {f"{name}_gib": module_bytes(m) / 2**30 for name, m in pipe.components.items()
                            if isinstance(m, torch.nn.Module)}
        print(f"[{time.perf_counter() - start:6.1f} s] {precision}: built in {time.perf_counter() - t0:.1f} s "
              f"({', '.join(f'{k} {v:.2f}' for k, v in sizes[precision].items())})", flush=True)
        for mode in args.offload:
            try:
                _enable(pipe, mode, device)
            except Exception as e:  # recorded, like a failed generation
                for tiling in args.tiling:
                    results[f"{precision}_{mode}" + ("_tiling" if tiling == "on" else "")] = dict(
                        precision=precision, offload=mode, vae_tiling=tiling == "on", error=f"{type(e).__name__}: {e}")
                print(f"  {precision} {mode}: could not enable: {type(e).__name__}: {e}", flush=True)
                continue
            if mode != "none" and precision == "q8" and "cuda_graphs_with_offload" not in refusals:
                refusals["cuda_graphs_with_offload"] = _cuda_graph_refusal(pipe)
            for tiling in args.tiling:
                (pipe.vae.enable_tiling if tiling == "on" else pipe.vae.disable_tiling)()
                name = f"{precision}_{mode}" + ("_tiling" if tiling == "on" else "")
                row = dict(precision=precision, offload=mode, vae_tiling=tiling == "on")
                try:
                    row.update(_measure(pipe, settings, embeds, args, cuda))
                    peak = f"peak {row['peak_gib']:.2f} GiB, " if "peak_gib" in row else ""
                    print(f"[{time.perf_counter() - start:6.1f} s]   {name:<24} {peak}step {row['step_ms']:.1f} ms, "
                          f"decode {row['vae_decode_s']:.2f} s, end to end {row['end_to_end_s']:.2f} s", flush=True)
                except Exception as e:
                    row["error"] = f"{type(e).__name__}: {str(e)[:1000]}"
                    print(f"  {name}: failed: {row['error'][:300]}", flush=True)
                results[name] = row
                write_json(args.out, document(False))  # so a run cut short keeps what it measured
        del pipe, embeds
        _clear(cuda)
    write_json(args.out, document(True))
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
