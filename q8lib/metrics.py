"""How close two outputs are: relative error and cosine of tensors, per-frame PSNR/SSIM of videos.

Videos are float tensors ``[F, C, H, W]`` with values in ``[0, data_range]`` (what ``LTXPipeline``
returns per video with ``output_type="pt"``). Layer-by-layer SQNR lives in :mod:`q8lib.compare`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import SettingsError

__all__ = ["relative_error", "cosine", "check_video", "psnr", "ssim"]


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """``||y - ref|| / ||ref||`` over all elements, in float32."""
    y, ref = y.float().flatten(), ref.float().flatten()
    return (y - ref).norm().item() / ref.norm().item()


def cosine(y: torch.Tensor, ref: torch.Tensor) -> float:
    """Cosine similarity of ``y`` and ``ref`` flattened, in float32."""
    return F.cosine_similarity(y.float().flatten(), ref.float().flatten(), dim=0).item()


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


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, per_frame: bool = True) -> torch.Tensor:
    """PSNR in dB of ``[F, C, H, W]`` videos, float64: per frame ``[F]``, or with ``per_frame=False``
    one value over the whole clip (``inf`` where identical)."""
    a, b = _pair(a, b)
    err = (a.double() - b.double()).pow(2)
    mse = err.flatten(1).mean(1) if per_frame else err.mean()
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
