"""Video files: side-by-side clips, mp4 writing and a per-frame metrics plot (PSNR/SSIM: :mod:`q8lib.metrics`).

Videos are float tensors ``[F, 3, H, W]`` with values in ``[0, 1]`` (what ``LTXPipeline`` returns
per video with ``output_type="pt"``). Every file is written whole or not at all (:mod:`q8lib.outputs`).

An mp4 without audio is written by the first of :data:`VIDEO_WRITERS` that is installed: imageio-ffmpeg (a
dependency, through diffusers' ``export_to_video``), else PyAV, else OpenCV; :func:`video_writer` names the
one a call will use (the command line records it in its JSON report, :func:`write_video` logs it).
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import MissingPackageError, SettingsError
from ..metrics import check_video, psnr, ssim
from ..outputs import atomic_path

__all__ = ["side_by_side", "write_video", "video_writer", "VIDEO_WRITERS", "plot_metrics", "psnr", "ssim",
           "check_video"]  # psnr, ssim: q8lib.metrics

logger = logging.getLogger(__name__)
# The mp4 writers without audio, in the order tried: name, the modules it imports, what to install for it.
VIDEO_WRITERS = (("imageio-ffmpeg", ("imageio", "imageio_ffmpeg"), "imageio-ffmpeg"),
                 ("pyav", ("av",), "av"),
                 ("opencv", ("cv2",), "opencv-python-headless"))


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def video_writer(audio: bool = False) -> str:
    """The writer :func:`write_video` uses here: ``"imageio-ffmpeg"``, ``"pyav"`` or ``"opencv"`` (tried in the order
    of :data:`VIDEO_WRITERS`); with ``audio`` always ``"pyav"``. Raises :class:`MissingPackageError` naming what to
    install when none is installed."""
    if audio:
        if _importable("av"):
            return "pyav"
        raise MissingPackageError("writing a video with its audio track needs PyAV: pip install av (or 'q8lib[ltx2]')")
    for name, modules, _ in VIDEO_WRITERS:
        if all(_importable(m) for m in modules):
            return name
    raise MissingPackageError("writing an mp4 needs imageio-ffmpeg, PyAV or OpenCV and none of them is installed: "
                              "pip install " + ", or pip install ".join(p for *_, p in VIDEO_WRITERS))


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

    Without audio the frames go through the first installed of imageio-ffmpeg (diffusers' ``export_to_video``,
    H.264), PyAV (diffusers' ``encode_video``, H.264) and OpenCV (``cv2.VideoWriter``: H.264 where its build has
    an encoder, else MPEG-4 part 2, ``mp4v``, which browsers may not play); :func:`video_writer` names it and an
    INFO line of the ``q8lib.app.video`` logger records it. With audio PyAV writes both (``encode_video``, which
    LTX-2's pipelines document; :func:`q8lib.app.pipelines.check_family_packages` checks that PyAV is installed
    before a run starts). Frames are padded (edge pixels) to multiples of 16 on the way in, which players need.
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
    writer = video_writer(audio is not None)
    with atomic_path(path) as tmp:  # a failed or interrupted write leaves no half-written mp4
        if writer == "imageio-ffmpeg":
            from diffusers.utils import export_to_video

            export_to_video([f.permute(1, 2, 0).numpy() for f in frames], str(tmp), fps=fps)
        elif writer == "pyav":
            from diffusers.utils import encode_video

            pixels = (frames * 255).round().to(torch.uint8).permute(0, 2, 3, 1)  # [F, H, W, 3]
            encode_video(pixels, fps=fps, output_path=str(tmp), audio=None if audio is None else audio.float().cpu(),
                         audio_sample_rate=None if audio is None else int(audio_sample_rate))
        else:
            writer = _write_with_opencv(frames, tmp, fps)
    logger.info("wrote %s with %s", path, writer)
    return path


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 (C libraries' stderr: FFmpeg's, OpenCV's) to /dev/null inside the block."""
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (a detached process): nothing to quiet
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _write_with_opencv(frames: torch.Tensor, path: Path, fps: int) -> str:
    """``cv2.VideoWriter``: H.264 (``avc1``) where this OpenCV build can encode it, else MPEG-4 part 2 (``mp4v``,
    which pip's OpenCV wheels always have); returns ``"opencv (<fourcc>)"``."""
    import cv2

    pixels = (frames * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # [F, H, W, 3] RGB
    size = (pixels.shape[2], pixels.shape[1])  # (width, height)
    for fourcc in ("avc1", "mp4v"):
        with _quiet_stderr():  # a build without H.264 says so on the C-level stderr, before mp4v is tried
            out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), size)
        if out.isOpened():
            break
        out.release()
    else:
        raise MissingPackageError(f"OpenCV {getattr(cv2, '__version__', '?')} cannot write mp4 here (neither avc1 nor "
                                  "mp4v opened): pip install imageio-ffmpeg")
    try:
        for frame in pixels:
            out.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        out.release()
    return f"opencv ({fourcc})"


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
