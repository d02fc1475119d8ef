"""The ``q8lib`` command line: ``generate``, ``compare``, ``convert``, ``bench``, ``memory``, ``demo``.

Only parsing and printing happen here: each subcommand is one call into :mod:`q8lib.app.run`
(or :mod:`q8lib.bench`), which checks every argument before any model is loaded. Known failures
(bad settings, missing model or package, bad checkpoint, unusable backend, GPU out of memory) end
with one ``q8lib <command>: error: ...`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings

import torch

from .. import bench
from ..config import RUNTIME_ATTENTION
from ..errors import Q8Error, Q8Warning
from ..versions import check_versions
from . import run
from .measure import oom_message

__all__ = ["main", "build_parser"]


# ------------------------------------------------------------------------------------------------
def _add_model_args(p: argparse.ArgumentParser, precision: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="tiny",
                   help="'tiny' (embedded tiny default, CPU, offline; the default), a hub id such as "
                        "Lightricks/LTX-Video, Lightricks/LTX-Video-0.9.7-dev, Lightricks/LTX-Video-0.9.8-13B-distilled "
                        "(LTXConditionPipeline) or Lightricks/LTX-2 (video + audio), a local diffusers pipeline folder "
                        "(the pipeline follows its model_index.json), the aliases ltx-2b / ltx-13b, or random-2b / "
                        "random-13b / random-ltx2 (full size, random weights)")
    g.add_argument("--checkpoint", default=None,
                   help="Q8 transformer: a q8lib checkpoint or the earlier public Q8 layout (folder or hub id); "
                        "without it the model's transformer is converted on the fly")
    g.add_argument("--checkpoint-subfolder", default=None, help="subfolder of --checkpoint holding the transformer")
    if precision:
        g.add_argument("--precision", default="q8", choices=["q8", "bf16"],
                       help="q8: 8-bit transformer (default); bf16: the unquantized transformer in --dtype")
    g.add_argument("--weight-dtype", default="auto", choices=["auto", "int8", "fp8_e4m3"],
                   help="8-bit type of the Q8 linears (auto: fp8_e4m3 on Hopper, else int8)")
    g.add_argument("--text-encoder-precision", default="bf16", choices=["bf16", "q8"],
                   help="q8: the text encoder's layer linears (Gemma 3 for LTX-2, T5) in 8 bits of --weight-dtype while "
                        "it encodes the prompt (it is freed before denoising either way); bf16: as loaded, in --dtype")
    g.add_argument("--attention", default="fp8", choices=RUNTIME_ATTENTION, help="attention of the Q8 transformer")
    g.add_argument("--backend", default="auto",
                   help="q8lib backend: auto (fastest that runs here, reference otherwise with a warning), "
                        "reference, triton (fails if it cannot run)")
    g.add_argument("--device", default="auto", help="auto (cuda if visible, else cpu), cpu, cuda, cuda:1 ...")
    g.add_argument("--dtype", default="auto", help="high-precision dtype: auto (bf16 on GPUs, fp32 on CPUs), bf16, fp16, fp32")
    g.add_argument("--offload", default="none", choices=["none", "model", "sequential"],
                   help="model: keep idle components on the CPU (diffusers model CPU offload); sequential: each "
                        "module's weights on the GPU only for its forward (least memory, slowest); needs accelerate")
    g.add_argument("--vae-tiling", action="store_true", help="decode the video in tiles (less memory)")


def _add_generation_args(p: argparse.ArgumentParser, output_default: str) -> None:
    g = p.add_argument_group("video")
    g.add_argument("--prompt", required=True, help="what the video shows")
    g.add_argument("--negative-prompt", default=None,
                   help="what to avoid (default: LTX's usual negative prompt; empty for the tiny default)")
    g.add_argument("--frames", type=int, default=None, help="8k+1 frames (tiny default 17, full size 81)")
    g.add_argument("--height", type=int, default=None, help="multiple of 32 (tiny default 32, full size 480)")
    g.add_argument("--width", type=int, default=None, help="multiple of 32 (tiny default 32, full size 704)")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (tiny default 8, full size 50)")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default 3; <=1 disables CFG)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--fps", type=int, default=25, help="frame rate of the video (also conditions the model)")
    g.add_argument("--image", default=None, help="first frame: image-to-video (LTXImageToVideoPipeline, "
                   "LTX2ImageToVideoPipeline; 0.9.7/0.9.8: a frame-0 condition of LTXConditionPipeline)")
    g.add_argument("--output", default=output_default, help="mp4 to write; a JSON sidecar goes beside it")
    r = p.add_argument_group("runs")
    r.add_argument("--prompt-cache", default=None, help="folder of cached prompt embeddings (default ~/.cache/q8lib/prompt_embeds, or $Q8LIB_CACHE)")
    r.add_argument("--no-prompt-cache", action="store_true", help="always run the text encoder, store nothing")
    r.add_argument("--keep-text-encoder", action="store_true", help="do not free the text encoder before denoising")
    r.add_argument("--warmup", type=int, default=0, help="untimed runs first (2 steps each, the recipe's with "
                   "--distilled; compiles GPU kernels)")
    r.add_argument("--repeats", type=int, default=1, help="timed runs; the JSON holds each and the medians")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--no-video", action="store_true", help="measure only: write the JSON (and plot), no mp4")
    r.add_argument("--wandb", action="store_true", help="log the video and metrics to Weights & Biases (needs 'wandb')")
    r.add_argument("--wandb-project", default="q8lib")


def _hadamard_block(text: str):
    """``--hadamard-block``: ``auto``, ``full`` (None: the whole width) or a power of two."""
    if text in ("auto", "full"):
        return None if text == "full" else text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a power of two, 'full' or 'auto', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="q8lib", description="8-bit (Q8) inference of LTX-Video in diffusers.",
        epilog="Without --model everything runs on the embedded tiny default, offline, on a CPU.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="text (or image) to video; writes an mp4 and a JSON sidecar")
    _add_model_args(gen)
    _add_generation_args(gen, "outputs/q8lib_video.mp4")
    fast = gen.add_argument_group("speed (GPU)")
    fast.add_argument("--compile", action="store_true", help="regional torch.compile of the transformer blocks")
    fast.add_argument("--cuda-graph", action="store_true",
                      help="replay each transformer forward from one CUDA graph (needs --device cuda; first step captures)")
    gen.add_argument("--upsampler", default=None, metavar="REPO_OR_DIR",
                     help="two stages (LTX-Video 0.9.7/0.9.8): generate at 2/3 size, upsample the latents 2x with this "
                          "latent upsampler (e.g. Lightricks/ltxv-spatial-upscaler-0.9.7), denoise again (strength 0.4 "
                          "of 10 steps), resize to --height/--width (diffusers' documented recipe); LTX-2 with "
                          "--distilled: half size, 2x, 3 refining steps")
    gen.add_argument("--stage2-lora", default=None, metavar="FILE_DIR_OR_REPO",
                     help="with --upsampler and an LTX-2 dev checkpoint: the distilled LoRA for stage 2 (diffusers' "
                          "two-stage example: Lightricks/LTX-2 with --stage2-lora-weight "
                          "ltx-2-19b-distilled-lora-384.safetensors)")
    gen.add_argument("--stage2-lora-weight", default=None, metavar="NAME",
                     help="the LoRA's weight file inside the --stage2-lora folder or repo")
    gen.add_argument("--distilled", action="store_true",
                     help="an LTX-2 distilled checkpoint: its recipe (8 steps at the distilled sigmas, guidance 1; "
                          "with --upsampler the two-stage one); fixes --steps and --guidance")
    gen.set_defaults(func=_generate)

    cmp_ = sub.add_parser("compare", help="same seed, unquantized vs Q8: side-by-side mp4, per-frame PSNR/SSIM JSON and plot")
    _add_model_args(cmp_, precision=False)
    _add_generation_args(cmp_, "outputs/q8lib_compare.mp4")
    cmp_.set_defaults(func=_compare)

    conv = sub.add_parser("convert", help="bf16 LTX transformer -> q8lib checkpoint, with a size report")
    conv.add_argument("source", help="hub id (Lightricks/LTX-Video), local pipeline or transformer folder, or 'tiny'")
    conv.add_argument("output", help="folder to write (config.json, safetensors, q8lib.json)")
    conv.add_argument("--subfolder", default="transformer", help="transformer subfolder of a pipeline (default transformer)")
    conv.add_argument("--weight-dtype", default="auto", choices=["auto", "int8", "fp8_e4m3"])
    conv.add_argument("--hadamard-block", type=_hadamard_block, default="auto",
                      help="rotation block: a power of two (1: no rotation), 'full' (the whole width) or 'auto' "
                           "(default: full for int8, none for fp8_e4m3)")
    conv.add_argument("--device", default="auto", help="where to quantize (a GPU is much faster)")
    conv.add_argument("--report", default=None, help="also write the size report as JSON here")
    conv.set_defaults(func=_convert)

    bench = sub.add_parser("bench", help="the project benchmark (q8lib.bench); arguments go to it", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)

    mem = sub.add_parser("memory", help="transformer-only peak GPU memory and forward time at one shape")
    mem.add_argument("--model", default="random-13b",
                     help="random-13b (default), random-2b, random-ltx2, tiny, or a hub id/folder (LTX-Video or LTX-2)")
    mem.add_argument("--precision", default="q8", choices=["q8", "bf16"])
    mem.add_argument("--weight-dtype", default="auto", choices=["auto", "int8", "fp8_e4m3"])
    mem.add_argument("--attention", default="fp8", choices=RUNTIME_ATTENTION)
    mem.add_argument("--backend", default="auto")
    mem.add_argument("--device", default="auto")
    mem.add_argument("--frames", type=int, default=81)
    mem.add_argument("--height", type=int, default=480)
    mem.add_argument("--width", type=int, default=704)
    mem.add_argument("--batch", type=int, default=2, help="transformer batch (2 = one video with CFG)")
    mem.add_argument("--text-tokens", type=int, default=None,
                     help="prompt tokens (default: the pipeline's max_sequence_length, 128 for LTX-Video, 1024 for LTX-2)")
    mem.add_argument("--repeats", type=int, default=3)
    mem.add_argument("--limit-gib", type=float, default=None, help="report whether the peak fits under this")
    mem.add_argument("--output", default=None, help="write the result JSON here")
    mem.set_defaults(func=_memory)

    demo = sub.add_parser("demo", help="convert the embedded tiny LTX transformer to Q8 and compare one forward")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--batch", type=int, default=2)
    demo.add_argument("--dtype", default="int8", choices=["int8", "fp8_e4m3"])
    demo.add_argument("--attention", default="fp8", choices=RUNTIME_ATTENTION)
    demo.set_defaults(func=_demo)
    return parser


# ------------------------------------------------------------------------------------------------
def _options(args) -> dict:
    """The :class:`~q8lib.app.run.RunOptions` fields among the parsed arguments."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(run.RunOptions) if hasattr(args, f.name)}


def _generate(args) -> int:
    opts = _options(args)
    report = run.generate(opts.pop("prompt"), **opts)
    s, r = report["settings"], report["results"]
    t, mem = r["timings"], r["memory"].get("peak_gib")
    print(f"wrote {' '.join(report['outputs'] + [str(run.sidecar_for(args.output))])} ({s['num_frames']} frames, "
          f"{s['height']}x{s['width']})")
    print(f"end to end {t['end_to_end_s']:.2f} s (transformer {t['transformer_s']:.2f} s, VAE decode "
          f"{t['vae_decode_s']:.2f} s), load {r['load_s']:.1f} s, prompt cache {r['prompt_cache']}, "
          f"backend {report['pipeline']['backend']}" + (f", peak {mem:.2f} GiB" if mem is not None else ""))
    return 0


def _compare(args) -> int:
    opts = _options(args)
    report = run.compare(opts.pop("prompt"), **opts)
    r, out = report["results"], report["outputs"]
    m, rt, qt = r["metrics"], r["reference"]["timings"], r["q8"]["timings"]
    video_note = "" if out["video"] is None else f"{out['video']} (left: {report['pipeline']['dtype']}, right: Q8), "
    print(f"wrote {video_note}{run.sidecar_for(args.output)}" + (f" and {out['plot']}" if out["plot"] else ""))
    print(f"PSNR mean {m['psnr_db_mean']:.2f} dB (min {m['psnr_db_min']:.2f}), SSIM mean "
          f"{m['ssim_mean']:.4f} (min {m['ssim_min']:.4f}); transformer {rt['transformer_s']:.2f} s -> "
          f"{qt['transformer_s']:.2f} s, end to end {rt['end_to_end_s']:.2f} s -> {qt['end_to_end_s']:.2f} s")
    return 0


def _convert(args) -> int:
    rep = run.convert(args.source, args.output, args.subfolder, args.weight_dtype, args.hadamard_block, args.device,
                      args.report)
    mb = 1e6
    print(f"converted {rep['source']} -> {rep['output']} ({rep['weight_dtype']}, hadamard_block={rep['hadamard_block']}) "
          f"in {rep['seconds']:.1f} s")
    print(f"  parameters      {rep['params']:>15,}  (8-bit {rep['params_8bit']:,}, kept high precision {rep['params_kept']:,})")
    print(f"  bf16 weights    {rep['bf16_bytes'] / mb:>12.2f} MB")
    print(f"  q8lib weights   {rep['q8_bytes'] / mb:>12.2f} MB  ({rep['ratio']:.1%} of bf16)")
    return 0


def _bench(args) -> int:
    return int(bench.main(list(args.bench_args)) or 0)


def _memory(args) -> int:
    report = run.memory(args.model, args.precision, args.weight_dtype, args.attention, args.backend, args.device,
                        args.frames, args.height, args.width, args.batch, args.repeats, args.limit_gib, args.output,
                        args.text_tokens)
    rep, shape = report["results"], report["shape"]
    peak = f"peak {rep['peak_gib']:.2f} GiB (weights {rep['weights_gib']:.2f} GiB)" if "peak_gib" in rep \
        else "peak memory is measured on CUDA devices only"
    audio = f" + {shape['audio_tokens']} audio" if "audio_tokens" in shape else ""
    print(f"{rep['model']} {rep['precision']} ({rep['backend']}) at {shape['video_tokens']}{audio} tokens, "
          f"{shape['text_tokens']} text tokens x batch {args.batch}: {peak}, forward {rep['forward_ms_median']:.1f} ms"
          + (f", fits {args.limit_gib} GiB: {rep['fits']}" if "fits" in rep else ""))
    return 0


def _demo(args) -> int:
    d = run.demo(args.seed, args.batch, args.dtype, args.attention)
    print(d["inspect"].table())
    print(f"\nQ8 ({d['weight_dtype']}, attention={d['attention']}, backend={d['backend']}) vs fp32 on the tiny default:")
    print(f"  relative error {d['relative_error']:.4f}   cosine {d['cosine']:.6f}")
    print(f"  weights+buffers {d['bytes_ref'] / 1e6:.2f} MB -> {d['bytes_q8'] / 1e6:.2f} MB")
    print(f"  forward {d['ms_ref']:.1f} ms -> {d['ms_q8']:.1f} ms (CPU reference path; speed comes from the GPU backends)")
    return 0


# ------------------------------------------------------------------------------------------------
def _quiet_library_logs() -> None:
    """diffusers' and transformers' info/warning logs (loading notes, accelerate hints) are not the CLI's
    output: keep their errors only. Python warnings, q8lib's own among them, still print."""
    for name in ("diffusers", "transformers"):
        try:
            logging_module = __import__(f"{name}.utils.logging", fromlist=["set_verbosity_error"])
            logging_module.set_verbosity_error()
        except ImportError:  # pragma: no cover
            pass


def main(argv=None) -> int:
    """Entry point of ``q8lib`` and ``python -m q8lib``; returns the exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after 'bench' belongs to q8lib.bench, options included
        args = argparse.Namespace(command="bench", bench_args=argv[1:], func=_bench)
    else:
        args = parser.parse_args(argv)
    old_format = warnings.formatwarning

    def short_format(msg, cat, *a, **k):  # q8lib's own warnings as one line; others as Python prints them
        return f"q8lib: warning: {msg}\n" if issubclass(cat, Q8Warning) else old_format(msg, cat, *a, **k)

    warnings.formatwarning = short_format
    _quiet_library_logs()
    try:
        for problem in check_versions():  # an unsupported install is worth one line, not a refusal
            warnings.warn(Q8Warning(problem), stacklevel=1)
        return args.func(args) or 0
    except (Q8Error, torch.OutOfMemoryError) as e:
        msg = " ".join(str(e).split())  # one line, whatever the message held
        if isinstance(e, torch.OutOfMemoryError):
            msg = oom_message(None, getattr(args, "device", "cuda"))
        print(f"q8lib {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"q8lib {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = old_format
