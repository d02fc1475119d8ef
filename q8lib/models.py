"""The LTX-Video architectures q8lib knows by name, and what every caller needs to run one without data.

* :data:`CATALOGUE`: the 2B and 13B transformers (hub id, ``config.json`` widths, how a random Q8
  copy is built), and :data:`T5_XXL_CONFIG`, their text encoder; the one place these are written down.
* :func:`dummy_inputs`: seeded transformer inputs of any shape (tests, notebooks, benchmarks, the CLI).
* :func:`module_bytes` / :func:`param_count`: sizes of a module's tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LTX_2B_CONFIG", "LTX_13B_CONFIG", "T5_XXL_CONFIG", "LTXModel", "CATALOGUE", "dummy_inputs", "module_bytes", "param_count"]

# The real architectures (diffusers defaults for 2B; the 13B variant's widths).
LTX_2B_CONFIG = dict(in_channels=128, out_channels=128, num_attention_heads=32, attention_head_dim=64,
                     cross_attention_dim=2048, num_layers=28, caption_channels=4096)
LTX_13B_CONFIG = dict(in_channels=128, out_channels=128, num_attention_heads=32, attention_head_dim=128,
                      cross_attention_dim=4096, num_layers=48, caption_channels=4096)

# The text encoder of every LTX-Video release: T5 v1.1 XXL's encoder (4.76B parameters, 9.5 GB in bf16), as
# transformers' T5Config; random-weight pipelines build it only to measure memory (q8lib.app.loading).
T5_XXL_CONFIG = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                     relative_attention_num_buckets=32, relative_attention_max_distance=128,
                     feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
                     tie_word_embeddings=False)


@dataclass(frozen=True)
class LTXModel:
    """One LTX-Video release: its hub id, its transformer's ``config.json`` widths, and whether a
    random-weight Q8 copy is built directly in 8 bits (the 13B: no bf16 copy ever exists)."""

    name: str
    hub_id: str
    transformer_config: dict
    q8_directly: bool


CATALOGUE = {
    "2b": LTXModel("2b", "Lightricks/LTX-Video", LTX_2B_CONFIG, q8_directly=False),
    "13b": LTXModel("13b", "Lightricks/LTX-Video-0.9.7-dev", LTX_13B_CONFIG, q8_directly=True),
}


def dummy_inputs(config: dict, batch: int = 2, frames: int = 3, height: int = 8, width: int = 8,
                 text_tokens: int = 16, *, seed: int = 0, device="cpu", dtype: torch.dtype = torch.float32,
                 text_kept: int | None = None) -> dict:
    """Keyword arguments for one forward of an LTX transformer with ``config`` (its ``config.json`` dict):

    * ``hidden_states`` ``[batch, frames*height*width, in_channels]`` and ``encoder_hidden_states``
      ``[batch, text_tokens, caption_channels]``: standard normal, from a CPU generator seeded with
      ``seed`` (the same numbers on every device), then moved to ``device``/``dtype``;
    * ``timestep`` ``[batch]`` = 500; ``encoder_attention_mask`` ``[batch, text_tokens]`` (1 = token,
      0 = padding): with ``text_kept=None`` the last sample is right-padded to half length, else every
      sample keeps its first ``text_kept`` tokens (right padding, as T5 gives);
    * ``num_frames``, ``height``, ``width``: the latent grid.
    """
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, text_tokens, dtype=torch.long)
    if text_kept is None:
        mask[-1, text_tokens // 2:] = 0
    else:
        mask[:, text_kept:] = 0
    return dict(
        hidden_states=torch.randn(batch, frames * height * width, config["in_channels"], generator=g).to(device, dtype),
        encoder_hidden_states=torch.randn(batch, text_tokens, config["caption_channels"], generator=g).to(device, dtype),
        timestep=torch.full((batch,), 500, device=device),
        encoder_attention_mask=mask.to(device),
        num_frames=frames, height=height, width=width,
    )


def _tensors(module: nn.Module):
    return list(module.parameters()) + list(module.buffers())


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (8-bit weights count one byte each)."""
    return sum(t.numel() * t.element_size() for t in _tensors(module))


def param_count(module: nn.Module) -> int:
    """Elements of a module's parameters and buffers."""
    return sum(t.numel() for t in _tensors(module))
