"""The tutorial layer: helpers that only the notebooks use, so one notebook runs on the embedded tiny
default (CPU, offline) and on a real checkpoint (GPU) unchanged: read the parameters, quiet logs and
progress bars, load a transformer or its config by name, make example transformer inputs.
Plots and tables are in :mod:`q8lib.tutorial.viz`, the diffusers patch audit in :mod:`q8lib.tutorial.patching`.
Notebook 03's measured activations and pictures are in :mod:`q8lib.tutorial.activations` and
:mod:`q8lib.tutorial.quant_plots`, notebook 05's prompt box in :mod:`q8lib.tutorial.prompt_box` and its table of
the attention modes in :mod:`q8lib.tutorial.attention_modes`.

``model="tiny"`` means the embedded default; anything else is a Hugging Face hub id (e.g.
``"Lightricks/LTX-Video"``) or a local diffusers directory. Loading goes through
:mod:`q8lib.app.loading`, which raises ``ModelUnavailableError`` with what to do when a hub model
cannot be fetched (offline).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch

from ..app import loading
from ..app.settings import TINY
from ..errors import ModelUnavailableError, Q8Warning
from ..models import dummy_inputs

__all__ = ["Params", "read_params", "quiet", "load_transformer", "transformer_config", "example_inputs"]


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
    warnings.filterwarnings("default", category=Q8Warning)  # but q8lib's own (a fallback to the reference math, ...)
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


def transformer_config(model: str) -> dict:
    """The transformer's ``config.json`` as a dict (``"tiny"``: the tiny default's), without loading weights
    (:func:`q8lib.app.loading.transformer_config`)."""
    try:
        return loading.transformer_config(model)
    except ModelUnavailableError as e:  # in a notebook the model comes from Q8_MODEL
        raise ModelUnavailableError(f"{e} In the notebooks: Q8_MODEL=tiny (the embedded default, offline).") from None


def load_transformer(model: str = TINY, device="cpu", dtype: torch.dtype = torch.float32):
    """The high-precision (unquantized) transformer of ``model`` (see :func:`q8lib.app.loading.load_transformer`)."""
    return loading.load_transformer(model, precision="bf16", device=device, dtype=dtype).eval()


def example_inputs(config, batch: int = 2, frames: int = 3, height: int = 8, width: int = 8, text_tokens: int = 16,
                   seed: int = 0, device="cpu", dtype: torch.dtype = torch.float32) -> dict:
    """Keyword arguments for one forward of an LTX transformer with ``config``: seeded random latents
    ``[B, frames*height*width, in_channels]`` and text ``[B, text_tokens, caption_channels]``, timestep 500,
    and a text mask whose last sample is right-padded to half length (:func:`q8lib.models.dummy_inputs`)."""
    return dummy_inputs(config, batch, frames, height, width, text_tokens, seed=seed, device=device, dtype=dtype)
