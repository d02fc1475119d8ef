"""The inputs of a generate/compare run that are read before any model loads: the first-frame image,
the prompt cache folder, the output paths and optional packages, and the Weights & Biases run.

Each check raises a :class:`~q8lib.errors.Q8Error` subclass, so a bad input stops the run in
seconds, not after minutes of loading.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from ..errors import MissingPackageError, Q8Warning, SettingsError
from ..outputs import check_output_dir, check_output_file
from .prompts import PromptCache
from .settings import MODEL_ALIASES, RANDOM_MODELS, TINY, GenerationSettings
from .video import video_writer

__all__ = ["load_image", "open_prompt_cache", "needs_text_encoder", "check_video_output", "WandbRun"]


def load_image(path: str | None):
    """The first frame as an RGB PIL image (local file or http(s) URL), or ``None`` without one;
    :class:`SettingsError` if it cannot be read."""
    if path is None:
        return None
    from PIL import Image

    if "://" in path:
        if not path.startswith(("http://", "https://")):
            raise SettingsError(f"--image {path!r}: give a local file or an http(s) URL")
        from diffusers.utils import load_image as load_url

        try:
            return load_url(path)
        except Exception as e:  # no network, HTTP error, not an image: all the user's to fix
            raise SettingsError(f"--image: could not load {path} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                                "check the URL and the network, or download the image and pass the file") from None
    p = Path(path).expanduser()
    if not p.is_file():
        raise SettingsError(f"--image {path!r} is not a file")
    try:
        with Image.open(p) as img:
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise SettingsError(f"--image {path!r} is not an image Pillow can read ({type(e).__name__}); "
                            "pass a PNG, JPEG or WebP file") from None


def open_prompt_cache(folder: str | None, enabled: bool = True) -> PromptCache | None:
    """The prompt cache, or ``None`` (with a warning) when its folder cannot be used: the run goes on without it."""
    if not enabled:
        return None
    cache = PromptCache(folder)
    try:
        check_output_dir(cache.root, "--prompt-cache")
    except SettingsError as e:
        warnings.warn(Q8Warning(f"{e}; running without the prompt cache"), stacklevel=2)
        return None
    return cache


def needs_text_encoder(model: str, settings: GenerationSettings, cache: PromptCache | None,
                       text_encoder_suffix: str = "") -> bool:
    """False when the embeddings of a hub/local model are cached: T5 is then not even loaded. ``text_encoder_suffix``
    (:func:`~q8lib.app.prompts.text_encoder_suffix`) keys an 8-bit text encoder's embeddings apart."""
    model = MODEL_ALIASES.get(model, model)
    if model in RANDOM_MODELS:
        return False
    if cache is None or model == TINY:  # the tiny key hashes the (cheap) encoder itself
        return True
    model_id = str(Path(model).resolve()) if Path(model).is_dir() else model
    return not cache.path(PromptCache.key(model_id + text_encoder_suffix, settings)).exists()


def check_video_output(output, warmup: int, repeats: int, write_video: bool) -> Path:
    """Check the run counts, the mp4 path and (unless ``write_video=False``) that an mp4 writer is installed
    (:func:`~q8lib.app.video.video_writer`); returns the path."""
    if warmup < 0 or repeats < 1:
        raise SettingsError(f"--warmup must be >= 0 and --repeats >= 1, got {warmup} and {repeats}")
    out = check_output_file(output, (".mp4",), "--output")
    if write_video:
        try:
            video_writer()  # imageio-ffmpeg, else PyAV, else OpenCV
        except MissingPackageError as e:
            raise MissingPackageError(f"{e}, or pass --no-video") from None
    return out


class WandbRun:
    """A Weights & Biases run (``wandb`` is an optional extra, imported only here, with a clear error if missing)."""

    def __init__(self, project: str, job: str, config: dict):
        try:
            import wandb
        except ImportError as e:
            raise MissingPackageError("--wandb needs the optional 'wandb' package: pip install 'q8lib[wandb]' "
                                      "(set WANDB_MODE=offline to log without an account)") from e
        self.wandb, self.run = wandb, wandb.init(project=project, job_type=job, config=config)

    def finish(self, video: Path | None, metrics: dict, fps: int) -> None:
        media = {"video": self.wandb.Video(str(video), fps=fps, format="mp4")} if video is not None else {}
        self.run.log({**media, **metrics})
        self.run.finish()
