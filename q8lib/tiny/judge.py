"""An automatic judge for the moving-shapes videos, and the bf16-vs-Q8 evaluation built on it.

The judge reads a decoded clip ``[F, H, W, 3]`` in ``[0, 1]`` with no learned parts:

1. background = per-channel median of the border pixels over all frames;
2. foreground = pixels farther from the background than half the clip's contrast (99th percentile);
3. colour = nearest :data:`~q8lib.tiny.shapes.PALETTE` entry to the mean of the strongest foreground pixels;
4. shape, per frame then median: a triangle (pointing up) holds ~25% of its area in the top half of
   its bounding box (circles and squares 50%); a square fills the corners of its bounding box outside
   the inscribed ellipse (~100%), a circle leaves them empty (~0%);
5. direction = dominant axis of the centroid's displacement from the first to the last frames.

:func:`evaluate_q8` runs a pipeline in high precision and in Q8 on the same noise, judges both, and
measures PSNR/SSIM of the Q8 clip against the high-precision one.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from tqdm.auto import tqdm

from .. import metrics
from ..config import Q8Config, Q8Runtime
from ..convert import quantize_
from ..errors import SettingsError
from .shapes import DIRECTIONS, PALETTE, Caption

__all__ = ["Judgement", "judge_video", "agreement", "psnr", "ssim", "to_frames", "generate_videos", "evaluate_q8"]

MIN_CONTRAST = 0.15  # below this the clip holds no visible object
MIN_TRAVEL_PX = 1.5  # smaller centroid displacements count as "no motion"
TRIANGLE_TOP_FRACTION = 0.4  # triangle ~0.25, circle/square ~0.5
SQUARE_CORNER_FILL = 0.6  # square ~1, circle <= 0.3 on rendered clips


@dataclass
class Judgement:
    """What the judge saw. Attributes are ``None`` when the clip shows no object (or no motion)."""

    color: str | None
    shape: str | None
    direction: str | None
    displacement: tuple[float, float]  # centroid (dx, dy) in pixels, y downwards
    contrast: float
    top_fraction: float
    corner_fill: float
    fill_ratio: float

    @property
    def triple(self):
        return (self.color, self.shape, self.direction)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["displacement"] = [round(v, 3) for v in self.displacement]
        for k in ("contrast", "top_fraction", "corner_fill", "fill_ratio"):
            d[k] = round(d[k], 4)
        return d


def to_frames(video) -> np.ndarray:
    """``[F, H, W, 3]`` (pipeline ``output_type="np"``) or ``[3, F, H, W]`` (:func:`~q8lib.tiny.shapes.render`)
    tensor/array -> float32 numpy ``[F, H, W, 3]``."""
    v = video.detach().float().cpu().numpy() if isinstance(video, torch.Tensor) else np.asarray(video, np.float32)
    if v.ndim != 4:
        raise SettingsError(f"expected one clip [F, H, W, 3] or [3, F, H, W], got shape {v.shape}")
    if v.shape[-1] != 3 and v.shape[0] == 3:
        v = v.transpose(1, 2, 3, 0)
    if v.shape[-1] != 3:
        raise SettingsError(f"expected 3 colour channels, got shape {v.shape}")
    return v.astype(np.float32)


def judge_video(video) -> Judgement:
    """Judge one clip (see the module docstring); ``video`` as accepted by :func:`to_frames`."""
    v = to_frames(video)
    nf, h, w, _ = v.shape
    border = np.concatenate([v[:, 0], v[:, -1], v[:, :, 0], v[:, :, -1]], axis=1).reshape(-1, 3)
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(v - bg, axis=-1)  # [F, H, W]
    contrast = float(np.percentile(dist, 99))
    none = Judgement(None, None, None, (0.0, 0.0), contrast, 0.0, 0.0, 0.0)
    if contrast < MIN_CONTRAST:
        return none
    mask = dist > 0.5 * contrast
    core = dist > 0.75 * contrast
    mean_rgb = v[core].mean(axis=0)
    names = list(PALETTE)
    color = names[int(np.argmin([np.linalg.norm(mean_rgb - np.array(PALETTE[n])) for n in names]))]

    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    cents, tops, corners, fills = [], [], [], []
    for f in range(nf):
        m = mask[f]
        area = m.sum()
        if area < 4:
            cents.append(None)
            continue
        cents.append((xs[m].mean(), ys[m].mean()))
        rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        box = m[y0:y1, x0:x1]
        bh, bw = box.shape
        fills.append(area / box.size)
        yy, xx = np.mgrid[0:bh, 0:bw].astype(np.float32)
        # Share of the area above the box's middle; a row straddling the middle counts half.
        tops.append((box * np.clip(bh / 2 - yy, 0, 1)).sum() / area)
        outside = ((xx + 0.5 - bw / 2) / (bw / 2)) ** 2 + ((yy + 0.5 - bh / 2) / (bh / 2)) ** 2 > 1.0
        corners.append(box[outside].mean() if outside.any() else 0.0)
    valid = [c for c in cents if c is not None]
    if len(valid) < 2:
        return Judgement(color, None, None, (0.0, 0.0), contrast, 0.0, 0.0, 0.0)
    top, corner, fill = float(np.median(tops)), float(np.median(corners)), float(np.median(fills))
    if top < TRIANGLE_TOP_FRACTION:
        shape = "triangle"
    elif corner > SQUARE_CORNER_FILL:
        shape = "square"
    else:
        shape = "circle"
    k = max(1, len(valid) // 5)
    first, last = np.mean(valid[:k], axis=0), np.mean(valid[-k:], axis=0)
    dx, dy = (last - first).tolist()
    if max(abs(dx), abs(dy)) < MIN_TRAVEL_PX:
        direction = None
    else:
        direction = max(DIRECTIONS, key=lambda n: DIRECTIONS[n][0] * dx + DIRECTIONS[n][1] * dy)
    return Judgement(color, shape, direction, (dx, dy), contrast, top, corner, fill)


def agreement(a: Judgement | Caption, b: Judgement | Caption) -> dict:
    """Per-attribute and overall (all three) agreement of two judgements or captions, as booleans."""
    out = {k: getattr(a, k) == getattr(b, k) for k in ("color", "shape", "direction")}
    out["all"] = all(out.values())
    return out


def _clips(a, b):
    """Two clips as ``[F, 3, H, W]`` float tensors (what :mod:`q8lib.metrics` takes)."""
    return tuple(torch.from_numpy(to_frames(v)).permute(0, 3, 1, 2) for v in (a, b))


def psnr(a, b, peak: float = 1.0) -> float:
    """PSNR in dB over the whole of two clips in ``[0, peak]`` (``inf`` when identical; :func:`q8lib.metrics.psnr`)."""
    return float(metrics.psnr(*_clips(a, b), peak, per_frame=False))


def ssim(a, b, peak: float = 1.0, window: int = 7, sigma: float = 1.5) -> float:
    """Mean SSIM over frames and channels (:func:`q8lib.metrics.ssim`) of two clips in ``[0, peak]``.

    A 7-pixel window (rather than 11) because the clips are 32 pixels wide.
    """
    return float(metrics.ssim(*_clips(a, b), peak, window=window, sigma=sigma).mean())


@torch.no_grad()
def generate_videos(pipe, prompts: list[str], seeds: list[int], batch_size: int = 16, progress: bool = True,
                    **gen_kwargs) -> np.ndarray:
    """Run an ``LTXPipeline`` on ``prompts`` (one seeded CPU generator per prompt, so a clip does not
    depend on its batch) -> ``[N, F, H, W, 3]`` float32 in ``[0, 1]``."""
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress, leave=False):
        p, s = prompts[i:i + batch_size], seeds[i:i + batch_size]
        gens = [torch.Generator("cpu").manual_seed(int(x)) for x in s]
        # Draw the noise on the CPU so CPU and GPU runs start from the same latents.
        latents = _initial_latents(pipe, len(p), gens, gen_kwargs)
        frames = pipe(prompt=p, latents=latents, output_type="np", **gen_kwargs).frames
        out.append(np.asarray(frames, dtype=np.float32))
    return np.concatenate(out)


def _initial_latents(pipe, n, gens, kw):
    h = kw.get("height", 512) // pipe.vae_spatial_compression_ratio
    w = kw.get("width", 704) // pipe.vae_spatial_compression_ratio
    f = (kw.get("num_frames", 161) - 1) // pipe.vae_temporal_compression_ratio + 1
    c = pipe.transformer.config.in_channels
    z = torch.stack([torch.randn(c, f, h, w, generator=g) for g in gens])
    z = pipe._pack_latents(z, pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size)
    return z.to(pipe.device)


def evaluate_q8(pipe, captions: list[Caption], seeds_per_prompt: int = 1, q8_configs: dict | None = None,
                batch_size: int = 16, progress: bool = True, reference_videos: np.ndarray | None = None,
                runtimes: dict | None = None, **gen_kwargs) -> tuple[dict, dict]:
    """Judge ``pipe`` (as loaded: the bf16 / high-precision model) and its Q8 conversions on ``captions``.

    ``q8_configs`` maps a name to a :class:`~q8lib.config.Q8Config` (default ``{"q8": Q8Config()}``),
    ``runtimes`` a name to its :class:`~q8lib.config.Q8Runtime` (default: the config's, see
    :meth:`Q8Config.runtime`).
    Every model sees the same prompts and the same initial noise (seed ``1000 k + i`` for the ``k``-th
    seed of prompt ``i``); ``reference_videos`` reuses clips of an earlier call. Returns ``(results, videos)``:
    ``results`` is JSON-ready (per-clip judgements, PSNR/SSIM against the reference, summary rates),
    ``videos`` maps ``"reference"`` and each Q8 name to ``[N, F, H, W, 3]`` arrays.
    """
    q8_configs = q8_configs if q8_configs is not None else {"q8": Q8Config()}
    runtimes = {name: (runtimes or {}).get(name) or cfg.runtime() for name, cfg in q8_configs.items()}
    for name, rt in runtimes.items():
        if not isinstance(rt, Q8Runtime):
            raise SettingsError(f"runtimes[{name!r}] must be a q8lib.Q8Runtime, got {type(rt).__name__}")
    items = [(c, 1000 * k + i) for k in range(seeds_per_prompt) for i, c in enumerate(captions)]
    prompts, seeds = [c.text for c, _ in items], [s for _, s in items]
    videos, timings = {}, {}
    t0 = time.perf_counter()
    if reference_videos is None:
        reference_videos = generate_videos(pipe, prompts, seeds, batch_size, progress, **gen_kwargs)
        timings["reference"] = time.perf_counter() - t0
    videos["reference"] = reference_videos
    original = pipe.transformer
    try:
        for name, cfg in q8_configs.items():
            rt = runtimes[name]
            pipe.transformer = quantize_(copy.deepcopy(original), cfg, backend=rt.backend, attention=rt.attention,
                                         progress=False)
            t0 = time.perf_counter()
            videos[name] = generate_videos(pipe, prompts, seeds, batch_size, progress, **gen_kwargs)
            timings[name] = time.perf_counter() - t0
    finally:
        pipe.transformer = original

    records = []
    for j, (cap, seed) in enumerate(items):
        ref_j = judge_video(videos["reference"][j])
        rec = dict(prompt=cap.text, seed=seed, target=dict(color=cap.color, shape=cap.shape, direction=cap.direction,
                                                           speed=cap.speed or "normal"),
                   reference=ref_j.to_dict(), reference_vs_caption=agreement(ref_j, cap))
        for name in q8_configs:
            qj = judge_video(videos[name][j])
            rec[name] = qj.to_dict()
            rec[f"{name}_vs_caption"] = agreement(qj, cap)
            rec[f"{name}_vs_reference"] = agreement(qj, ref_j)
            rec[f"{name}_psnr_db"] = round(psnr(videos["reference"][j], videos[name][j]), 3)
            rec[f"{name}_ssim"] = round(ssim(videos["reference"][j], videos[name][j]), 5)
        records.append(rec)

    def rate(key, attr="all"):
        return round(float(np.mean([r[key][attr] for r in records])), 4)

    summary = dict(num_clips=len(records), num_prompts=len(captions), seeds_per_prompt=seeds_per_prompt,
                   reference_vs_caption={a: rate("reference_vs_caption", a) for a in ("all", "color", "shape", "direction")},
                   seconds={k: round(v, 2) for k, v in timings.items()})
    for name in q8_configs:
        ps = [r[f"{name}_psnr_db"] for r in records]
        summary[name] = dict(
            config=q8_configs[name].to_metadata() | dict(backend=runtimes[name].backend, attention=runtimes[name].attention),
            vs_caption={a: rate(f"{name}_vs_caption", a) for a in ("all", "color", "shape", "direction")},
            vs_reference={a: rate(f"{name}_vs_reference", a) for a in ("all", "color", "shape", "direction")},
            psnr_db_mean=round(float(np.mean([p for p in ps if np.isfinite(p)] or [float("inf")])), 3),
            psnr_db_min=round(float(np.min(ps)), 3),
            ssim_mean=round(float(np.mean([r[f"{name}_ssim"] for r in records])), 5),
            ssim_min=round(float(np.min([r[f"{name}_ssim"] for r in records])), 5),
        )
    return dict(summary=summary, clips=records), videos
