"""Prompt embeddings: computed by the pipeline's T5, cached on disk, or random stand-ins for random models.

:class:`PromptCache` stores T5 prompt embeddings on disk so repeated runs skip the text encoder,
which :func:`free_text_encoder` releases before denoising; :func:`encode_prompts` gets the
embeddings for one :class:`~q8lib.app.settings.GenerationSettings` from wherever they are.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import ModelUnavailableError, Q8Warning
from ..outputs import atomic_path
from ..tiny.components import default_pipeline
from .settings import RANDOM_MODELS, TINY, GenerationSettings

__all__ = ["default_cache_dir", "PromptCache", "weights_id", "text_encoder_id_of", "text_encoder_suffix", "random_prompt_embeds",
           "encode_prompts", "free_text_encoder"]


def default_cache_dir() -> Path:
    """``$Q8LIB_CACHE/prompt_embeds`` (default ``~/.cache/q8lib/prompt_embeds``)."""
    return Path(os.environ.get("Q8LIB_CACHE", Path.home() / ".cache" / "q8lib")) / "prompt_embeds"


class PromptCache:
    """Prompt embeddings on disk (one safetensors file per model/prompt/negative/length/CFG).

    Keyed by a hash of everything that changes the embeddings, so a hit never returns another
    model's or prompt's tensors. Files hold ``prompt_embeds [N, T, C]``, ``prompt_attention_mask [N, T]``
    and, with CFG, the ``negative_*`` pair.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    @staticmethod
    def key(model_id: str, settings: GenerationSettings) -> str:
        parts = [model_id, settings.prompt, settings.negative_prompt if settings.cfg else None,
                 settings.max_sequence_length, settings.cfg]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def load(self, key: str) -> dict | None:
        """The cached tensors, or ``None`` on a miss; an unreadable file warns and counts as a miss."""
        p = self.path(key)
        if not p.exists():
            return None
        try:
            return load_file(p)
        except Exception as e:  # truncated or foreign file: encode again (and overwrite it on save)
            warnings.warn(Q8Warning(f"prompt cache file {p} is unreadable ({type(e).__name__}); encoding the prompt "
                                    "again"), stacklevel=2)
            return None

    def save(self, key: str, tensors: dict, info: dict | None = None) -> Path | None:
        """Store ``tensors`` (atomically: a concurrent reader never sees half a file); a failure warns and
        returns ``None``, since a cache must never stop a run."""
        p = self.path(key)
        try:
            with atomic_path(p) as tmp:
                save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp,
                          metadata={k: str(v) for k, v in (info or {}).items()})
        except OSError as e:
            warnings.warn(Q8Warning(f"could not write the prompt cache {p} ({e.strerror or e}); continuing without "
                                    "caching"), stacklevel=2)
            return None
        return p


def weights_id(module) -> str:
    """A short hash of a (small) module's weights."""
    h = hashlib.sha256()
    for k, t in module.state_dict().items():
        h.update(k.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def text_encoder_suffix(text_encoder_precision: str = "bf16", weight_dtype: str | None = None) -> str:
    """What :func:`text_encoder_id_of`'s id gets for an 8-bit text encoder (``""`` for the unquantized one), so
    embeddings of a Q8 encoder are never served to a bf16 run, nor the reverse, nor int8's to fp8_e4m3."""
    return "" if text_encoder_precision == "bf16" else f"|text-encoder:{text_encoder_precision}-{weight_dtype}"


def text_encoder_id_of(pipe, model: str, seed: int = 0) -> str:
    """What identifies the text encoder for the cache key (the same before and after it is freed)."""
    known = getattr(pipe, "q8lib_info", {}).get("text_encoder_id")
    if known:
        return known
    if model == TINY:  # the tiny default may change (trained weights): key on its weights
        enc = getattr(pipe, "text_encoder", None)
        return "tiny:" + weights_id(enc if enc is not None else default_pipeline().text_encoder)
    return str(Path(model).resolve()) if Path(model).is_dir() else model


def random_prompt_embeds(settings: GenerationSettings, dim: int, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-in T5 output for random-weight models: ``[1, T, dim]`` unit-RMS noise and a right-padded mask.

    The kept length follows the prompt's word count (T5 gives ~1.3 tokens per word + EOS) so the
    attention sees real padding.
    """
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    gen = torch.Generator().manual_seed(seed)
    t = settings.max_sequence_length
    n = max(1, min(t, round(1.3 * len(text.split())) + 1))
    embeds = torch.randn(1, t, dim, generator=gen)
    mask = torch.zeros(1, t, dtype=torch.int64)
    mask[:, :n] = 1
    return embeds * mask[..., None], mask


def encode_prompts(pipe, settings: GenerationSettings, model: str = TINY, cache: PromptCache | None = None,
                   seed: int = 0) -> tuple[dict, dict]:
    """Prompt embeddings for ``settings`` from ``cache`` or the pipeline's T5, saved to ``cache`` on a miss.

    Returns ``(kwargs for the pipeline call, info)``; ``info`` says whether the cache hit and how
    long encoding took. Random-weight models (no text encoder) get :func:`random_prompt_embeds`.
    """
    connectors = getattr(pipe, "connectors", None)  # LTX-2: the embeddings are Gemma-3's stacked hidden states
    if model in RANDOM_MODELS and connectors is not None:
        cache = None  # random-ltx2's stand-in embeddings are 0.8 GB a prompt: made again, not cached
    key = PromptCache.key(text_encoder_id_of(pipe, model, seed), settings) if cache is not None else None
    start = time.perf_counter()
    tensors = cache.load(key) if cache is not None else None
    hit = tensors is not None
    if not hit:
        if model in RANDOM_MODELS:
            dim = (pipe.transformer.config.caption_channels if connectors is None else
                   connectors.config.caption_channels * connectors.config.text_proj_in_factor)
            pe, pm = random_prompt_embeds(settings, dim, settings.prompt)
            tensors = dict(prompt_embeds=pe, prompt_attention_mask=pm)
            if settings.cfg:
                ne, nm = random_prompt_embeds(settings, dim, "negative: " + settings.negative_prompt)
                tensors.update(negative_prompt_embeds=ne, negative_prompt_attention_mask=nm)
        elif getattr(pipe, "text_encoder", None) is None:
            raise ModelUnavailableError(
                "the prompt embeddings are not cached and the text encoder was not loaded; "
                "run once with the text encoder (the default) to fill the cache")
        else:
            with torch.no_grad():
                pe, pm, ne, nm = pipe.encode_prompt(
                    settings.prompt, settings.negative_prompt, do_classifier_free_guidance=settings.cfg,
                    num_videos_per_prompt=1, max_sequence_length=settings.max_sequence_length,
                    device=pipe._execution_device)
            tensors = dict(prompt_embeds=pe, prompt_attention_mask=pm)
            if settings.cfg:
                tensors.update(negative_prompt_embeds=ne, negative_prompt_attention_mask=nm)
        if cache is not None:
            cache.save(key, tensors, dict(model=model, prompt=settings.prompt[:200]))
    if not settings.cfg:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("negative_")}
    # The pipeline feeds embeddings to the transformer as they are: give them its device and dtype.
    dtype = pipe.transformer.proj_in.weight.dtype if getattr(pipe, "transformer", None) is not None else None
    tensors = {k: v.to(device=pipe._execution_device, dtype=dtype if v.is_floating_point() and dtype else v.dtype)
               for k, v in tensors.items()}
    info = dict(prompt_cache="hit" if hit else ("miss" if cache is not None else "off"),
                text_encode_s=round(time.perf_counter() - start, 4), prompt_cache_key=key)
    return tensors, info


def free_text_encoder(pipe) -> None:
    """Drop the T5 encoder (and its GPU memory) from ``pipe``; prompts must then come as embeddings."""
    if getattr(pipe, "text_encoder", None) is None:
        return
    pipe.register_modules(text_encoder=None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


