"""Video helpers: per-frame PSNR/SSIM, side-by-side clips, mp4 writing and a metrics plot.

Videos are float tensors ``[F, 3, H, W]`` with values in ``[0, 1]`` (what ``LTXPipeline`` returns
per video with ``output_type="pt"``).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import SettingsError
from .outputs import atomic_path

__all__ = ["psnr", "ssim", "side_by_side", "write_video", "plot_metrics", "check_video"]


def check_video(v: torch.Tensor, what: str = "video") -> torch.Tensor:
    """Validate ``[F, C, H, W]`` and return it as float32."""
    if v.ndim != 4:
        raise SettingsError(f"{what} must be [frames, channels, height, width], got shape {tuple(v.shape)}")
    return v.float()


def _pair(a: torch.Tensor, b: torch.Tensor):
    a, b = check_video(a, "first video"), check_video(b, "second video")
    if a.shape != b.shape:
        raise SettingsError(f"videos differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return a, b


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-frame PSNR in dB of ``[F, C, H, W]`` videos -> ``[F]`` float64 (``inf`` for identical frames)."""
    a, b = _pair(a, b)
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-frame SSIM (Wang et al. 2004, Gaussian window, valid region, mean over channels) -> ``[F]``.

    ``window`` shrinks to the largest odd size that fits frames smaller than it. Constants
    ``K1=0.01, K2=0.03`` as in the paper; computed in float64.
    """
    a, b = _pair(a, b)
    a, b = a.double(), b.double()
    window = min(window, a.shape[-1], a.shape[-2])
    window -= 1 - window % 2  # odd
    g = _gaussian(window, sigma)
    c = a.shape[1]
    kh = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    kw = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def blur(x):  # separable Gaussian, depthwise, no padding
        return F.conv2d(F.conv2d(x, kh, groups=c), kw, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def side_by_side(*videos: torch.Tensor, gap: int = 4) -> torch.Tensor:
    """Concatenate ``[F, C, H, W]`` videos left to right with a white ``gap``-pixel bar -> ``[F, C, H, W']``."""
    if not videos:
        raise SettingsError("side_by_side needs at least one video")
    vs = [check_video(v) for v in videos]
    if len({tuple(v.shape[:3]) for v in vs}) != 1:
        raise SettingsError(f"videos need equal frames/channels/height, got {[tuple(v.shape) for v in vs]}")
    bar = torch.ones(*vs[0].shape[:3], gap)
    parts = []
    for i, v in enumerate(vs):
        if i:
            parts.append(bar)
        parts.append(v.cpu())
    return torch.cat(parts, dim=-1)


def write_video(frames: torch.Tensor, path: str | Path, fps: int = 25) -> Path:
    """Write ``[F, 3, H, W]`` in ``[0, 1]`` as an H.264 mp4 (imageio-ffmpeg via diffusers' ``export_to_video``).

    Frames are padded (edge pixels) to multiples of 16 on the way in, which players need.
    """
    from diffusers.utils import export_to_video

    frames = check_video(frames).clamp(0, 1).cpu()
    h, w = frames.shape[-2:]
    ph, pw = (-h) % 16, (-w) % 16
    if ph or pw:
        frames = F.pad(frames, (0, pw, 0, ph), mode="replicate")
    path = Path(path)
    arrays = [f.permute(1, 2, 0).numpy() for f in frames]
    with atomic_path(path) as tmp:  # a failed or interrupted write leaves no half-written mp4
        export_to_video(arrays, str(tmp), fps=fps)
    return path


def plot_metrics(metrics: dict, path: str | Path, title: str = "") -> Path | None:
    """Plot per-frame curves (``{"psnr_db": [...], "ssim": [...]}``) side by side as a PNG.

    Returns ``None`` with a warning when matplotlib (an optional dependency) is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed, so no plot was written (pip install matplotlib)", stacklevel=2)
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.2), squeeze=False)
    for ax, (name, values) in zip(axes[0], metrics.items()):
        vals = [v if math.isfinite(v) else float("nan") for v in values]
        ax.plot(range(len(vals)), vals, marker="o", ms=3)
        ax.set_xlabel("frame")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return path
