"""The training loops of the tiny LTX-Video (VAE, then transformer + T5 with flow matching) and their knobs.

:class:`TrainConfig` holds every setting, :class:`Trainer` runs the phases and writes resumable
checkpoints; :mod:`q8lib.tiny.train` is the command line that drives it and judges the result.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import Q8CheckpointError
from . import shapes
from .components import SHAPES_GENERATION, make_shapes_components

__all__ = ["TrainConfig", "SMOKE", "Trainer"]


@dataclass
class TrainConfig:
    """All knobs of a run (saved to ``<out>/train_config.json``)."""

    seed: int = 0
    size: int = 32  # pixels, square
    frames: int = 17  # 8k + 1 for the 4x temporal VAE
    # VAE phase
    vae_steps: int = 4000
    vae_batch: int = 64
    vae_lr: float = 1e-3
    vae_kl: float = 1e-5
    fg_weight: float = 4.0  # extra loss weight on pixels of the shape (a small part of the frame)
    vae_budget_fraction: float = 0.22  # of budget_s
    # transformer phase
    pool: int = 32768  # clips rendered and encoded once
    steps: int = 40000
    batch: int = 256
    lr: float = 4e-4
    weight_decay: float = 0.01
    warmup: int = 200
    ema: float = 0.999
    cond_dropout: float = 0.1
    # time and bookkeeping
    budget_s: float = 470.0  # whole run, eval included
    eval_reserve_s: float = 110.0  # kept for export + eval when sharing budget_s
    ckpt_every_s: float = 90.0
    log_every: int = 25
    # model sizes (None = the shipped configs in q8lib.tiny)
    transformer_overrides: dict = field(default_factory=dict)
    vae_block_out_channels: tuple | None = None
    t5_overrides: dict = field(default_factory=dict)
    # evaluation
    eval: bool = True
    eval_prompts: int = 0  # 0 = every held-out prompt
    eval_seeds: int = 2
    eval_steps: int = SHAPES_GENERATION["num_inference_steps"]
    eval_guidance: float = SHAPES_GENERATION["guidance_scale"]
    eval_backends: tuple = ("reference", "auto")
    eval_train_prompts: int = 36  # also judge the reference model on this many training prompts
    num_videos: int = 4


SMOKE = TrainConfig(
    frames=9, vae_steps=6, vae_batch=2, pool=16, steps=6, batch=4, warmup=2, budget_s=120, eval_reserve_s=0,
    ckpt_every_s=0, log_every=2,
    transformer_overrides=dict(num_attention_heads=2, num_layers=1, cross_attention_dim=128, caption_channels=32),
    vae_block_out_channels=(8, 8, 8, 8), t5_overrides=dict(d_model=32, d_kv=8, d_ff=64),
    eval_prompts=2, eval_seeds=1, eval_steps=2, eval_backends=("reference",), eval_train_prompts=0, num_videos=1,
)


class _Logger:
    """Appends rows to ``losses.csv`` and, if enabled, to Weights & Biases."""

    FIELDS = ["phase", "step", "loss", "lr", "elapsed_s"]

    def __init__(self, out: Path, wandb_run=None):
        self.path = out / "losses.csv"
        new = not self.path.exists()
        self.f = open(self.path, "a", newline="")
        self.w = csv.DictWriter(self.f, fieldnames=self.FIELDS)
        if new:
            self.w.writeheader()
        self.wandb = wandb_run

    def log(self, **row):
        self.w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
        self.f.flush()
        if self.wandb is not None:
            self.wandb.log({f"{row['phase']}/loss": row["loss"], f"{row['phase']}/lr": row["lr"]}, step=None)

    def close(self):
        self.f.close()


def _lr_factor(step: int, progress: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to 0.1 over ``progress`` in [0, 1]."""
    w = min(1.0, (step + 1) / max(warmup, 1))
    return w * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


def _to_model_range(x01: torch.Tensor) -> torch.Tensor:
    return x01 * 2 - 1  # the LTX VAE works in [-1, 1]


class Trainer:
    def __init__(self, cfg: TrainConfig, out: Path, device: torch.device, resume: bool = False, wandb_run=None):
        self.cfg, self.out, self.device = cfg, out, device
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        self.c = make_shapes_components(cfg.seed, cfg.transformer_overrides, cfg.vae_block_out_channels, cfg.t5_overrides)
        for k in ("vae", "text_encoder", "transformer"):
            self.c[k].to(device).float().train()
        self.state = dict(phase="vae", vae_step=0, vae_elapsed=0.0, tr_step=0, tr_elapsed=0.0, total_elapsed=0.0)
        self.vae_opt = torch.optim.AdamW(self.c["vae"].parameters(), lr=cfg.vae_lr, weight_decay=0.0)
        self.tr_params = list(self.c["transformer"].parameters()) + list(self.c["text_encoder"].parameters())
        self.tr_opt = torch.optim.AdamW(self.tr_params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
        self.ema = [p.detach().clone().float() for p in self.tr_params]
        ckpt = out / "checkpoint.pt"
        if resume and ckpt.exists():
            self._load(ckpt)
            print(f"resumed from {ckpt}: phase {self.state['phase']}, vae step {self.state['vae_step']}, "
                  f"transformer step {self.state['tr_step']}")
        self.log = _Logger(out, wandb_run)
        self.start = self._last_ckpt = time.perf_counter()
        self.spent_before = self.state["total_elapsed"]  # seconds used by earlier (resumed) processes

    def elapsed(self) -> float:
        """Wall-clock seconds of the whole run so far, earlier processes included."""
        return self.spent_before + time.perf_counter() - self.start

    # --- checkpoints ------------------------------------------------------------------------------
    def _save(self):
        self.state["total_elapsed"] = self.elapsed()
        tmp = self.out / "checkpoint.pt.tmp"
        torch.save(dict(state=self.state, cfg=asdict(self.cfg),
                        models={k: self.c[k].state_dict() for k in ("vae", "text_encoder", "transformer")},
                        vae_opt=self.vae_opt.state_dict(), tr_opt=self.tr_opt.state_dict(), ema=self.ema), tmp)
        os.replace(tmp, self.out / "checkpoint.pt")
        self._last_ckpt = time.perf_counter()

    def _maybe_save(self):
        if self.cfg.ckpt_every_s and time.perf_counter() - self._last_ckpt > self.cfg.ckpt_every_s:
            self._save()

    def _load(self, path: Path):
        # weights_only: tensors, numbers, strings and containers only; a checkpoint that holds any other
        # object (code that would run on unpickling) is refused, never executed.
        try:
            ck = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:  # UnpicklingError for foreign objects, RuntimeError/EOFError for broken files
            raise Q8CheckpointError(f"{path}: cannot resume from it ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                                    "it is not a q8lib training checkpoint, or it holds objects other than tensors "
                                    "and plain data. Delete it or start without --resume.") from None
        if not isinstance(ck, dict) or not {"state", "models", "vae_opt", "tr_opt", "ema"} <= set(ck):
            raise Q8CheckpointError(f"{path}: not a q8lib training checkpoint (keys state, models, vae_opt, tr_opt, ema)")
        self.state = ck["state"]
        for k, sd in ck["models"].items():
            self.c[k].load_state_dict(sd)
        self.vae_opt.load_state_dict(ck["vae_opt"])
        self.tr_opt.load_state_dict(ck["tr_opt"])
        self.ema = [e.to(self.device) for e in ck["ema"]]

    def _end_step(self, phase: str, key: str, t0: float, bar, loss, lr: float) -> None:
        """Count the step (``state[key + "_step"]``), its elapsed time, progress bar, periodic log, checkpoint."""
        st = self.state
        st[f"{key}_step"] += 1
        st[f"{key}_elapsed"] = time.perf_counter() - t0
        bar.update()
        if st[f"{key}_step"] % self.cfg.log_every == 0 or st[f"{key}_step"] == 1:
            lv = loss.item()
            bar.set_postfix(loss=f"{lv:.4f}")
            self.log.log(phase=phase, step=st[f"{key}_step"], loss=lv, lr=lr, elapsed_s=st[f"{key}_elapsed"])
        self._maybe_save()

    # --- phase 1: VAE -----------------------------------------------------------------------------
    def train_vae(self, deadline: float):
        """Train until ``cfg.vae_steps`` or ``time.perf_counter() >= deadline``."""
        cfg, vae, st = self.cfg, self.c["vae"], self.state
        bg = _to_model_range(torch.tensor(shapes.BACKGROUND, device=self.device)).view(1, 3, 1, 1, 1)
        bar = tqdm(total=cfg.vae_steps, initial=st["vae_step"], desc="vae", dynamic_ncols=True)
        t0 = time.perf_counter() - st["vae_elapsed"]
        allotted = max(deadline - t0, 1e-6)  # this phase's whole time, earlier processes included
        while st["vae_step"] < cfg.vae_steps:
            progress = max(st["vae_step"] / cfg.vae_steps, (time.perf_counter() - t0) / allotted)
            if progress >= 1:
                break
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + st["vae_step"])
            caps = shapes.sample_captions(cfg.vae_batch, g, "train")
            x = _to_model_range(shapes.render(caps, cfg.frames, cfg.size, g, self.device))
            lr = cfg.vae_lr * _lr_factor(st["vae_step"], progress, 100)
            for group in self.vae_opt.param_groups:
                group["lr"] = lr
            with _autocast(self.device):
                post = vae.encode(x).latent_dist
                z = post.mean + post.std * torch.randn(post.mean.shape, device=self.device)
                rec = vae.decode(z).sample.float()
            weight = 1 + cfg.fg_weight * ((x - bg).abs().amax(1, keepdim=True) > 0.1).float()
            err = rec - x
            kl = 0.5 * (post.mean.float() ** 2 + post.var.float() - 1 - post.logvar.float()).mean()
            loss = (weight * (err.abs() + err.square())).mean() + cfg.vae_kl * kl
            self.vae_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            self.vae_opt.step()
            self._end_step("vae", "vae", t0, bar, loss, lr)
        bar.close()
        vae.eval()
        st["phase"] = "transformer"
        self._save()

    # --- phase 2: transformer + T5 ----------------------------------------------------------------
    @torch.no_grad()
    def _encode_pool(self):
        """Render and encode the training pool -> packed, normalised latents ``[N, S, C]`` and caption ids."""
        from diffusers import LTXPipeline
        cfg, vae = self.cfg, self.c["vae"].eval()
        g = torch.Generator().manual_seed(cfg.seed + 7)
        captions = shapes.all_captions("train")
        cap_idx = torch.randint(len(captions), (cfg.pool,), generator=g)
        chunks, chunk = [], 512
        for i in tqdm(range(0, cfg.pool, chunk), desc="encode pool", leave=False):
            caps = [captions[j] for j in cap_idx[i:i + chunk].tolist()]
            x = _to_model_range(shapes.render(caps, cfg.frames, cfg.size, g, self.device))
            with _autocast(self.device):
                chunks.append(vae.encode(x).latent_dist.mode().float())
        lat = torch.cat(chunks)  # [N, C, F', H', W']
        mean, std = lat.mean((0, 2, 3, 4)), lat.std((0, 2, 3, 4)).clamp_min(1e-3)  # a dead channel stays finite
        vae.latents_mean.copy_(mean)
        vae.latents_std.copy_(std)
        self.latent_shape = tuple(lat.shape[2:])
        lat = LTXPipeline._normalize_latents(lat, mean, std, vae.config.scaling_factor)
        self.pool = LTXPipeline._pack_latents(lat, 1, 1)  # patch size 1
        self.pool_caps = cap_idx.to(self.device)
        tok = self.c["tokenizer"]
        enc = tok([c.text for c in captions] + [""], padding="max_length", max_length=128, truncation=True,
                  return_tensors="pt")
        self.tok_ids, self.tok_mask = enc.input_ids.to(self.device), enc.attention_mask.to(self.device)
        self.empty_caption = len(captions)

    def train_transformer(self, deadline: float):
        """Train until ``cfg.steps`` or ``time.perf_counter() >= deadline`` (the pool encoding included)."""
        cfg, st = self.cfg, self.state
        tr, t5 = self.c["transformer"].train(), self.c["text_encoder"].train()
        self._encode_pool()
        f, h, w = self.latent_shape
        rope_scale = (self.c["vae"].temporal_compression_ratio / 25.0, self.c["vae"].spatial_compression_ratio,
                      self.c["vae"].spatial_compression_ratio)  # LTXPipeline's default frame_rate=25
        gen = torch.Generator(self.device).manual_seed(cfg.seed + 11 + st["tr_step"])
        bar = tqdm(total=cfg.steps, initial=st["tr_step"], desc="transformer", dynamic_ncols=True)
        t0 = time.perf_counter() - st["tr_elapsed"]
        allotted = max(deadline - t0, 1e-6)
        while st["tr_step"] < cfg.steps:
            progress = max(st["tr_step"] / cfg.steps, (time.perf_counter() - t0) / allotted)
            if progress >= 1:
                break
            b = cfg.batch
            idx = torch.randint(self.pool.shape[0], (b,), generator=gen, device=self.device)
            x0 = self.pool[idx]
            cap = self.pool_caps[idx]
            drop = torch.rand(b, generator=gen, device=self.device) < cfg.cond_dropout
            cap = torch.where(drop, torch.full_like(cap, self.empty_caption), cap)
            sigma = torch.rand(b, generator=gen, device=self.device)
            noise = torch.randn(x0.shape, generator=gen, device=self.device)
            s = sigma.view(b, 1, 1)
            xt = (1 - s) * x0 + s * noise
            lr = cfg.lr * _lr_factor(st["tr_step"], progress, cfg.warmup)
            for group in self.tr_opt.param_groups:
                group["lr"] = lr
            with _autocast(self.device):
                # Like LTXPipeline.encode_prompt: T5 sees the padded ids without a mask.
                text = t5(self.tok_ids[cap])[0]
                pred = tr(hidden_states=xt, encoder_hidden_states=text, timestep=sigma * 1000,
                          encoder_attention_mask=self.tok_mask[cap], num_frames=f, height=h, width=w,
                          rope_interpolation_scale=rope_scale, return_dict=False)[0]
            loss = F.mse_loss(pred.float(), noise - x0)
            self.tr_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.tr_params, 1.0)
            self.tr_opt.step()
            decay = min(cfg.ema, (1 + st["tr_step"]) / (10 + st["tr_step"]))
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.tr_params], 1 - decay)
            self._end_step("transformer", "tr", t0, bar, loss, lr)
        bar.close()
        st["phase"] = "export"
        self._save()

    # --- phase 3: export --------------------------------------------------------------------------
    @torch.no_grad()
    def export(self, path: Path) -> Path:
        """Save the EMA weights as a diffusers ``LTXPipeline`` folder (transformer and VAE in bf16)."""
        from diffusers import LTXPipeline

        for p, e in zip(self.tr_params, self.ema):
            p.copy_(e)
        c = self.c
        pipe = LTXPipeline(scheduler=c["scheduler"], vae=c["vae"].eval(), text_encoder=c["text_encoder"].eval(),
                           tokenizer=c["tokenizer"], transformer=c["transformer"].eval())
        if path.exists():
            shutil.rmtree(path)
        # bf16 halves the files; the VAE's latent statistics stay exact enough in bf16 too.
        c["transformer"].to(torch.bfloat16)
        c["vae"].to(torch.bfloat16)
        pipe.save_pretrained(path, safe_serialization=True)
        _portable_tokenizer_class(path)
        c["transformer"].float()
        c["vae"].float()
        self.state["phase"] = "done"
        self._save()
        return path


def _portable_tokenizer_class(path: Path) -> None:
    """transformers 5 records the fast tokenizer as ``TokenizersBackend``, a name 4.x lacks; both
    versions load ``PreTrainedTokenizerFast``, so write that."""
    for f, key in ((path / "model_index.json", None), (path / "tokenizer" / "tokenizer_config.json", "tokenizer_class")):
        d = json.loads(f.read_text())
        if key is None:
            d["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
        else:
            d[key] = "PreTrainedTokenizerFast"
        f.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
