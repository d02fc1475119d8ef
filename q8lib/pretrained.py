"""Loading a saved Q8 pipeline the diffusers way: :func:`load_pipeline_q8`.

diffusers 0.42 offers no way to register a third-party quantizer (its ``from_pretrained`` knows a fixed
list of ``quant_method`` values), so a pipeline whose transformer q8lib quantized cannot load itself:
diffusers refuses the transformer folder, whose ``config.json`` carries q8lib's ``quantization_config``
(:meth:`~q8lib.config.Q8Config.to_quantization_config`), with a message naming this module's loader.
What diffusers does support is handing ``from_pretrained`` a component already built; this loader does
exactly that with the transformer :func:`~q8lib.checkpoint.load_q8` reads::

    pipe = DiffusionPipeline.from_pretrained(folder, transformer=q8lib.load_q8(folder, subfolder="transformer"))
"""
from __future__ import annotations

import os

import torch

from .checkpoint import load_q8
from .errors import SettingsError

__all__ = ["load_pipeline_q8"]

# from_pretrained arguments that also say where and how the transformer's files are found.
_SHARED = ("local_files_only", "variant", "revision")


def load_pipeline_q8(path_or_repo: str | os.PathLike, pipeline_class=None, *, device: str | torch.device | None = None,
                     backend: str = "auto", attention: str = "fp8", **from_pretrained_kwargs):
    """A diffusers pipeline (folder or hub id) whose transformer was saved quantized by q8lib.

    The folder is what ``pipe.save_pretrained(folder)`` wrote after ``q8lib.quantize_(pipe.transformer, ...)``
    (or a pipeline whose ``transformer/`` folder :func:`~q8lib.checkpoint.save_q8` wrote). The transformer is
    loaded by :func:`~q8lib.checkpoint.load_q8` (``backend``, ``attention``: its runtime choices; ``device``:
    where it is built, so that the fast path for that device is installed, and where the whole pipeline is
    moved), everything else by ``pipeline_class.from_pretrained`` (default ``diffusers.DiffusionPipeline``,
    which picks the class from ``model_index.json``) with ``from_pretrained_kwargs`` (``dtype``/``torch_dtype``,
    ``variant``, ``local_files_only``, ``revision``, ...). The dtype also sets the transformer's high-precision
    tensors; without it they keep their stored dtype.
    """
    if "transformer" in from_pretrained_kwargs:
        raise SettingsError("load_pipeline_q8 loads the transformer itself; to pass your own, call "
                            "the pipeline class's from_pretrained(folder, transformer=...) directly")
    if pipeline_class is None:
        from diffusers import DiffusionPipeline

        pipeline_class = DiffusionPipeline
    dtype = from_pretrained_kwargs.get("dtype") or from_pretrained_kwargs.get("torch_dtype")  # diffusers' precedence
    if isinstance(dtype, dict):  # diffusers' per-component form: {"transformer": ..., "default": ...}
        dtype = dtype.get("transformer", dtype.get("default"))
    shared = {k: from_pretrained_kwargs[k] for k in _SHARED if k in from_pretrained_kwargs}
    transformer = load_q8(path_or_repo, subfolder="transformer", device=device or "cpu", torch_dtype=dtype,
                          backend=backend, attention=attention, **shared)
    pipe = pipeline_class.from_pretrained(path_or_repo, transformer=transformer, **from_pretrained_kwargs)
    return pipe if device is None else pipe.to(device)
