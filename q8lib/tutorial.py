"""Small helpers that let one notebook run on the embedded tiny default (CPU, offline) and on a real
checkpoint (GPU) unchanged: read the parameters, quiet logs and progress bars, load a transformer or a
pipeline by name.

``model="tiny"`` means the embedded default (``q8lib.tiny``); anything else is a Hugging Face hub id
(e.g. ``"Lightricks/LTX-Video"``) or a local diffusers directory. Loading a hub id offline fails with
a :class:`ModelUnavailableError` that says what to do instead of a long hub traceback.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch

__all__ = ["ModelUnavailableError", "Params", "read_params", "quiet", "load_transformer", "load_pipeline",
           "transformer_config", "example_inputs"]

TINY = "tiny"


class ModelUnavailableError(RuntimeError):
    """The requested model cannot be loaded here (offline, unknown id, missing files)."""


@dataclass
class Params:
    """The parameters every notebook reads at the top (see :func:`read_params`)."""

    model: str
    device: str
    seed: int
    dtype: torch.dtype

    @property
    def tiny(self) -> bool:
        return self.model == TINY


def read_params(environ=None) -> Params:
    """``Q8_MODEL`` (default ``"tiny"``), ``Q8_DEVICE`` (default cuda if available else cpu),
    ``Q8_SEED`` (default 0) and ``Q8_DTYPE`` (``bf16``/``fp16``/``fp32``, default bf16)."""
    env = os.environ if environ is None else environ
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    name = env.get("Q8_DTYPE", "bf16")
    if name not in dtypes:
        raise ValueError(f"Q8_DTYPE must be one of {sorted(dtypes)}, got {name!r}")
    return Params(
        model=env.get("Q8_MODEL", TINY) or TINY,
        device=env.get("Q8_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"),
        seed=int(env.get("Q8_SEED", "0")),
        dtype=dtypes[name],
    )


def quiet() -> None:
    """Silence progress bars and library chatter so notebook outputs only show what the cells print."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _unavailable(model: str, what: str, e: Exception) -> ModelUnavailableError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    hint = ("HF_HUB_OFFLINE is set, so nothing is downloaded; unset it to download once, "
            if offline else "check the id and your network, ")
    return ModelUnavailableError(
        f"Could not load the {what} of {model!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
        f"{hint}or pass a local directory, or run with Q8_MODEL=tiny (the embedded default, offline)."
    )


def transformer_config(model: str) -> dict:
    """The transformer's ``config.json`` as a dict (``"tiny"``: the tiny default's)."""
    from diffusers import LTXVideoTransformer3DModel

    if model == TINY:
        return dict(load_transformer(TINY).config)
    try:
        return dict(LTXVideoTransformer3DModel.load_config(model, subfolder="transformer"))
    except Exception as e:  # noqa: BLE001 - hub/OS errors of many kinds
        raise _unavailable(model, "transformer config", e) from e


def load_transformer(model: str = TINY, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A high-precision ``LTXVideoTransformer3DModel`` in eval mode on ``device`` in ``dtype``."""
    if model == TINY:
        from . import tiny

        return tiny.make_tiny_transformer().to(device=device, dtype=dtype).eval()
    from diffusers import LTXVideoTransformer3DModel

    try:
        m = LTXVideoTransformer3DModel.from_pretrained(model, subfolder="transformer", torch_dtype=dtype)
    except Exception as e:  # noqa: BLE001
        raise _unavailable(model, "transformer", e) from e
    return m.to(device).eval()


def load_pipeline(model: str = TINY, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """An ``LTXPipeline`` with progress bars off: the tiny default (offline) or ``from_pretrained(model)``."""
    from diffusers import LTXPipeline

    if model == TINY:
        from . import tiny

        pipe = tiny.make_tiny_pipeline()
        for component in (pipe.transformer, pipe.vae, pipe.text_encoder):
            component.to(device=device, dtype=dtype)
    else:
        try:
            pipe = LTXPipeline.from_pretrained(model, torch_dtype=dtype)
        except Exception as e:  # noqa: BLE001
            raise _unavailable(model, "pipeline", e) from e
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def example_inputs(config, batch: int = 2, frames: int = 3, height: int = 8, width: int = 8, text_tokens: int = 16,
                   seed: int = 0, device="cpu", dtype: torch.dtype = torch.float32) -> dict:
    """Keyword arguments for one forward of an LTX transformer with ``config``: seeded random latents
    ``[B, frames*height*width, in_channels]`` and text ``[B, text_tokens, caption_channels]``, timestep 500,
    and a text mask whose last sample is right-padded to half length."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, text_tokens, dtype=torch.long)
    mask[-1, text_tokens // 2:] = 0
    return dict(
        hidden_states=torch.randn(batch, frames * height * width, config["in_channels"], generator=g).to(device, dtype),
        encoder_hidden_states=torch.randn(batch, text_tokens, config["caption_channels"], generator=g).to(device, dtype),
        timestep=torch.full((batch,), 500, device=device),
        encoder_attention_mask=mask.to(device),
        num_frames=frames, height=height, width=width,
    )
