"""Video files: side-by-side clips, mp4 writing and a per-frame metrics plot (PSNR/SSIM: :mod:`q8lib.metrics`).

Videos are float tensors ``[F, 3, H, W]`` with values in ``[0, 1]`` (what ``LTXPipeline`` returns
per video with ``output_type="pt"``). Every file is written whole or not at all (:mod:`q8lib.outputs`).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import SettingsError
from ..metrics import check_video, psnr, ssim
from ..outputs import atomic_path

__all__ = ["side_by_side", "write_video", "plot_metrics", "psnr", "ssim", "check_video"]  # psnr, ssim: q8lib.metrics


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


def write_video(frames: torch.Tensor, path: str | Path, fps: int = 25, audio: torch.Tensor | None = None,
                audio_sample_rate: int | None = None) -> Path:
    """Write ``[F, 3, H, W]`` in ``[0, 1]`` as an H.264 mp4; with ``audio`` (``[C, S]`` float waveform in ``[-1, 1]``,
    one or two channels, at ``audio_sample_rate`` Hz: LTX-2's) an AAC track goes into the same file.

    Without audio the frames go through imageio-ffmpeg (diffusers' ``export_to_video``); with audio through PyAV
    (diffusers' ``encode_video``, which LTX-2's pipelines document; :func:`q8lib.app.pipelines.check_family_packages`
    checks that PyAV is installed before a run starts). Frames are padded (edge pixels) to multiples of 16 on the
    way in, which players need.
    """
    frames = check_video(frames).clamp(0, 1).cpu()
    h, w = frames.shape[-2:]
    ph, pw = (-h) % 16, (-w) % 16
    if ph or pw:
        frames = F.pad(frames, (0, pw, 0, ph), mode="replicate")
    if audio is not None and (audio.dim() not in (1, 2) or not audio_sample_rate or audio_sample_rate < 1):
        raise SettingsError(f"audio must be [channels, samples] or [samples] with a positive sample rate, got shape "
                            f"{tuple(audio.shape)} at {audio_sample_rate!r} Hz")
    path = Path(path)
    with atomic_path(path) as tmp:  # a failed or interrupted write leaves no half-written mp4
        if audio is None:
            from diffusers.utils import export_to_video

            export_to_video([f.permute(1, 2, 0).numpy() for f in frames], str(tmp), fps=fps)
        else:
            from diffusers.utils import encode_video

            pixels = (frames * 255).round().to(torch.uint8).permute(0, 2, 3, 1)  # [F, H, W, 3]
            encode_video(pixels, fps=fps, output_path=str(tmp), audio=audio.float().cpu(),
                         audio_sample_rate=int(audio_sample_rate))
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
