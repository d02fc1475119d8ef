"""Train the tiny LTX-Video on synthetic moving shapes: ``python -m q8lib.tiny.train``.

Three phases, each resumable from ``<out>/checkpoint.pt`` (``--resume``):

1. **vae**: a tiny ``AutoencoderKLLTXVideo`` learns to reconstruct freshly rendered clips (L1 + L2,
   foreground pixels weighted up, a small KL term);
2. **transformer**: a pool of clips is rendered and encoded once; the per-channel latent mean/std
   go into the VAE's ``latents_mean``/``latents_std`` (what ``LTXPipeline`` denormalises with); the
   ``LTXVideoTransformer3DModel`` and a tiny ``T5EncoderModel`` are trained jointly with rectified
   flow matching as ``FlowMatchEulerDiscreteScheduler`` samples it: ``x_t = (1 - s) x_0 + s eps``,
   timestep ``1000 s``, target ``eps - x_0``; 10% of captions are dropped for classifier-free guidance;
3. **export + eval**: EMA weights are saved with ``LTXPipeline.save_pretrained`` (transformer and VAE
   in bf16, safetensors), reloaded with ``from_pretrained`` and judged on the held-out prompts in
   high precision and in Q8 (:func:`q8lib.tiny.judge.evaluate_q8`).

Everything is seeded. ``--budget-s`` bounds the wall clock (training phases stop early and export);
losses go to ``<out>/losses.csv`` (and W&B with ``--wandb``). ``--smoke`` is a seconds-long CPU run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from ..config import Q8Config, Q8Runtime
from ..versions import package_versions
from . import shapes
from .components import SHAPES_GENERATION, default_pipeline
from .judge import agreement, evaluate_q8, judge_video
from .trainer import SMOKE, TrainConfig, Trainer

__all__ = ["TrainConfig", "SMOKE", "Trainer", "train", "run_eval", "main"]


def _versions() -> dict:
    v = package_versions("diffusers", "transformers")
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return dict(torch=v["torch"], diffusers=v["diffusers"], transformers=v["transformers"], device=dev)


def run_eval(cfg: TrainConfig, model_dir: Path, out: Path, device: torch.device) -> dict:
    """Load the exported folder with ``from_pretrained`` and judge it in its own dtype (bf16 on a GPU,
    fp32 on a CPU) and in Q8 for each of ``cfg.eval_backends``. Writes ``judge_tiny_ltx_shapes.json``
    after each backend (a backend that fails is recorded, not fatal) and side-by-side mp4s."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipe = default_pipeline(device=device, torch_dtype=dtype, path=model_dir)
    gen = dict(SHAPES_GENERATION, height=cfg.size, width=cfg.size, num_frames=cfg.frames,
               num_inference_steps=cfg.eval_steps, guidance_scale=cfg.eval_guidance)
    caps = shapes.heldout_captions()
    if cfg.eval_prompts:
        caps = caps[:: max(1, len(caps) // cfg.eval_prompts)][: cfg.eval_prompts]
    path = out / "judge_tiny_ltx_shapes.json"

    # The reference model alone, and how well the judge and the VAE do on ground truth (upper bounds).
    results, videos = evaluate_q8(pipe, caps, cfg.eval_seeds, {}, batch_size=64, **gen)
    summary = results["summary"]
    g = torch.Generator().manual_seed(cfg.seed + 99)
    gt = shapes.render(caps, cfg.frames, cfg.size, g)
    with torch.no_grad():
        vae = pipe.vae
        rec = vae.decode(vae.encode((gt * 2 - 1).to(device, vae.dtype)).latent_dist.mode()).sample
    rec = (rec.float().cpu() / 2 + 0.5).clamp(0, 1)
    summary["judge_on_ground_truth"] = round(float(np.mean(
        [agreement(judge_video(gt[i]), c)["all"] for i, c in enumerate(caps)])), 4)
    summary["judge_on_vae_reconstruction"] = round(float(np.mean(
        [agreement(judge_video(rec[i]), c)["all"] for i, c in enumerate(caps)])), 4)
    summary["vae_reconstruction_psnr_db"] = round(float(10 * torch.log10(1 / ((rec - gt) ** 2).mean())), 3)
    if cfg.eval_train_prompts:
        tcaps = shapes.sample_captions(cfg.eval_train_prompts, torch.Generator().manual_seed(cfg.seed + 5), "train")
        rt, _ = evaluate_q8(pipe, tcaps, 1, {}, batch_size=64, **gen)
        summary["train_prompts_reference_vs_caption"] = rt["summary"]["reference_vs_caption"]
    summary["backend_errors"] = {}
    results["meta"] = dict(model="q8lib/assets/tiny-ltx-shapes", reference_dtype=str(dtype).replace("torch.", ""),
                           generation=gen, heldout_triples=[list(t) for t in shapes.HELDOUT_TRIPLES], **_versions())

    def write():
        path.write_text(json.dumps(results, indent=1) + "\n")

    write()
    for b in cfg.eval_backends:
        name = f"q8_{b}"
        try:
            r, v = evaluate_q8(pipe, caps, cfg.eval_seeds, {name: Q8Config()}, batch_size=64,
                               reference_videos=videos["reference"], runtimes={name: Q8Runtime(backend=b)}, **gen)
        except Exception as e:  # noqa: BLE001 - report the backend, keep the others
            summary["backend_errors"][name] = f"{type(e).__name__}: {e}"
            write()
            continue
        summary[name] = r["summary"][name]
        summary["seconds"].update(r["summary"]["seconds"])
        for a, c in zip(results["clips"], r["clips"]):
            a.update({k: val for k, val in c.items() if k.startswith(name)})
        videos[name] = v[name]
        write()
        np.savez_compressed(out / "eval_videos.npz", prompts=np.array([r["prompt"] for r in results["clips"]]),
                            **{k: (v * 255).round().astype(np.uint8) for k, v in videos.items()})
        if len(videos) >= 2:
            try:
                _write_videos(videos, caps, cfg, out)
            except Exception as e:  # noqa: BLE001 - no ffmpeg here: the clips are in eval_videos.npz
                print(f"could not write mp4s ({type(e).__name__}: {e}); clips are in eval_videos.npz")
    return results


def _write_videos(videos: dict, caps, cfg: TrainConfig, out: Path, scale: int = 8):
    """Side-by-side mp4s, reference | the last Q8 variant, with a white divider, nearest-neighbour
    upscaled ``scale`` times so the 32-pixel clips are visible (the clips in ``videos/``)."""
    import imageio.v2 as imageio

    (out / "videos").mkdir(exist_ok=True)
    q8 = [k for k in videos if k != "reference"][-1]
    step = max(1, len(caps) // max(cfg.num_videos, 1))
    for j in range(0, min(len(caps), step * cfg.num_videos), step):
        ref, qv = videos["reference"][j], videos[q8][j]
        divider = np.ones((*ref.shape[:2], 1, 3), ref.dtype)
        clip = np.concatenate([ref, divider, qv], axis=2).repeat(scale, 1).repeat(scale, 2)
        name = f"tiny_shapes_{caps[j].text.replace(' ', '_')}_bf16_vs_q8.mp4"
        imageio.mimwrite(out / "videos" / name, (clip * 255).round().astype(np.uint8), fps=8, macro_block_size=8,
                         quality=6)


def _export_to(out: Path, model_dir: Path, dst: Path) -> Path:
    """Replace the components in ``dst`` (leaving e.g. its ``MODEL_CARD.md`` alone); the run's logs go
    to ``dst/training/``."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        target = dst / item.name
        if target.is_dir():
            shutil.rmtree(target)
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, target)
    (dst / "training").mkdir(exist_ok=True)
    for name in ("losses.csv", "train_config.json", "train_summary.json"):
        if (out / name).exists():
            shutil.copy2(out / name, dst / "training" / name)
    return dst


def train(cfg: TrainConfig, out: str | Path, device: str | None = None, resume: bool = False,
          export: str | Path | None = None, use_wandb: bool = False) -> dict:
    """Run every phase not yet done (see the module docstring); returns a summary dict."""
    out = Path(out)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run = None
    if use_wandb:
        try:
            import wandb
        except ImportError as e:
            raise SystemExit("--wandb needs `pip install wandb` (or pip install 'q8lib[wandb]')") from e
        run = wandb.init(project="q8lib-tiny-ltx-shapes", config=asdict(cfg))
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    t = Trainer(cfg, out, device, resume, run)
    start = t.start
    # Deadlines on this process's clock: the VAE gets its share of the budget, the transformer what is
    # left of it less the time kept for export and evaluation.
    if t.state["phase"] == "vae":
        t.train_vae(start + cfg.vae_budget_fraction * cfg.budget_s - t.state["vae_elapsed"])
    if t.state["phase"] == "transformer":
        t.train_transformer(start + cfg.budget_s - cfg.eval_reserve_s - t.spent_before)
    model_dir = out / "model"
    if t.state["phase"] in ("export", "done"):
        t.export(model_dir)
    t.log.close()
    summary = dict(out=str(out), vae_steps=t.state["vae_step"], transformer_steps=t.state["tr_step"],
                   vae_s=round(t.state["vae_elapsed"], 1), transformer_s=round(t.state["tr_elapsed"], 1),
                   train_s=round(time.perf_counter() - start, 1), **_versions())
    if cfg.eval:
        res = run_eval(cfg, model_dir, out, device)
        summary["judge"] = {k: v for k, v in res["summary"].items() if k != "backend_errors"}
        summary["backend_errors"] = res["summary"]["backend_errors"]
    summary["total_s"] = round(time.perf_counter() - start, 1)
    if export:
        summary["exported_to"] = str(export)
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if export:
        _export_to(out, model_dir, Path(export))
    if run is not None:
        run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        run.finish()
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m q8lib.tiny.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/tiny-ltx-shapes", help="run folder: checkpoint, losses.csv, model/")
    p.add_argument("--smoke", action="store_true", help="a seconds-long CPU configuration (what CI runs)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--export", default=None, help="also copy the exported model folder here "
                                                   "(e.g. q8lib/assets/tiny-ltx-shapes)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--budget-s", type=float, default=None, help="wall-clock budget of the whole run, eval included")
    p.add_argument("--steps", type=int, default=None, help="max transformer steps")
    p.add_argument("--vae-steps", type=int, default=None, help="max VAE steps")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--reserve-s", type=float, default=None, help="seconds of --budget-s kept for export (+ eval)")
    p.add_argument("--pool", type=int, default=None, help="clips in the transformer's training pool")
    p.add_argument("--no-eval", action="store_true", help="skip the judge evaluation")
    p.add_argument("--eval-only", action="store_true", help="only judge <out>/model (after a run)")
    p.add_argument("--eval-seeds", type=int, default=None, help="seeds per held-out prompt")
    p.add_argument("--wandb", action="store_true", help="log to Weights & Biases (imported only then)")
    a = p.parse_args(argv)
    cfg = SMOKE if a.smoke else TrainConfig()
    over = {k: v for k, v in dict(budget_s=a.budget_s, steps=a.steps, vae_steps=a.vae_steps, batch=a.batch,
                                  seed=a.seed, pool=a.pool, eval_reserve_s=a.reserve_s, eval_seeds=a.eval_seeds).items() if v is not None}
    if a.no_eval:
        over["eval"] = False
    cfg = replace(cfg, **over)
    if a.eval_only:
        device = torch.device(a.device or ("cuda" if torch.cuda.is_available() and not a.smoke else "cpu"))
        res = run_eval(cfg, Path(a.out) / "model", Path(a.out), device)
        print(json.dumps(res["summary"], indent=1))
        return 0
    summary = train(cfg, a.out, a.device or ("cpu" if a.smoke else None), a.resume, a.export, a.wandb)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
