"""The embedded tiny default: LTX-Video components small enough to run a whole pipeline offline on a CPU.

Every piece is a real diffusers/transformers class in its usual format, so the same code paths
(`from_pretrained`, `save_pretrained`, ``LTXPipeline``) run on the tiny model and on
``Lightricks/LTX-Video``. Two flavours:

* ``make_tiny_*``: seeded random weights (shapes and code paths only);
* :func:`default_pipeline`: the tiny LTX-Video *trained* on synthetic moving shapes
  (:mod:`q8lib.tiny.shapes`, :mod:`q8lib.tiny.train`), shipped in ``q8lib/assets/tiny-ltx-shapes``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import TinyDefaultMissingError
from .shapes import VOCAB

__all__ = ["TINY_TRANSFORMER_CONFIG", "make_tiny_transformer", "make_tiny_tokenizer", "make_tiny_text_encoder",
           "make_tiny_vae", "SHAPES_DIR", "SHAPES_TRANSFORMER_CONFIG", "SHAPES_VAE_CONFIG", "SHAPES_T5_CONFIG",
           "SHAPES_GENERATION", "SHAPES_SCHEDULER_CONFIG", "make_shapes_components", "has_default_pipeline",
           "default_pipeline", "TinyDefaultMissingError"]

# Power-of-two dims so every Q8 path (Hadamard, 8-bit GEMM, FP8 attention with head_dim 64) runs.
TINY_TRANSFORMER_CONFIG = dict(
    in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
    num_attention_heads=2, attention_head_dim=64, cross_attention_dim=128,
    num_layers=2, caption_channels=32,
)

TINY_VOCAB = ["<pad>", "</s>", "<unk>"] + (
    "a an the red green blue yellow white black orange purple circle square triangle ball box "
    "moving moves right left up down slowly quickly fast slow on in of and with background video"
).split()


def make_tiny_transformer(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A seeded random ``LTXVideoTransformer3DModel`` with :data:`TINY_TRANSFORMER_CONFIG` (+ overrides)."""
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    model = LTXVideoTransformer3DModel(**{**TINY_TRANSFORMER_CONFIG, **overrides}).eval()
    return model if dtype == torch.float32 else model.to(dtype)


def make_tiny_tokenizer(max_length: int = 32, vocab: list[str] | None = None):
    """A ``PreTrainedTokenizerFast`` over a word-level vocabulary built in code (no download).

    ``vocab`` starts with ``<pad>``, ``</s>``, ``<unk>`` (default :data:`TINY_VOCAB`). Input is lowercased.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocab or TINY_VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=max_length)


def make_tiny_text_encoder(seed: int = 0, d_model: int = 32, **overrides):
    """A seeded random tiny ``T5EncoderModel`` (2 layers, ``d_model`` wide; ``overrides`` go to ``T5Config``)."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    kw = dict(vocab_size=len(TINY_VOCAB), d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
              relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(T5Config(**{**kw, **overrides})).eval()


def make_tiny_vae(seed: int = 0, block_out_channels=(8, 8, 8, 8)):
    """A tiny ``AutoencoderKLLTXVideo`` like diffusers' own LTX tests (8 latent channels, patch 1,
    4x spatial and 4x temporal compression); ``block_out_channels`` sets its width."""
    from diffusers import AutoencoderKLLTXVideo

    torch.manual_seed(seed)
    return AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=tuple(block_out_channels),
        decoder_block_out_channels=tuple(block_out_channels), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False,
        patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False,
    ).eval()


# ------------------------------------------------------------------------------------------------
# The trained default: a tiny LTX-Video trained on q8lib.tiny.shapes (see q8lib/tiny/train.py and MODEL_CARD.md).
SHAPES_DIR = Path(__file__).parents[1] / "assets" / "tiny-ltx-shapes"
# dim 256 = 4 heads x 64, FFN 1024 (diffusers' 4x), 4 blocks: every Q8 path runs (Hadamard over 256
# and 1024, FP8 attention with head_dim 64). Text: a tiny T5 (d_model 64) trained jointly.
SHAPES_TRANSFORMER_CONFIG = dict(
    in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
    num_attention_heads=4, attention_head_dim=64, cross_attention_dim=256,
    num_layers=4, caption_channels=64,
)
SHAPES_VAE_CONFIG = dict(block_out_channels=(16, 32, 64, 64))
SHAPES_T5_CONFIG = dict(d_model=64, d_kv=16, d_ff=256, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                        dropout_rate=0.0)
SHAPES_SCHEDULER_CONFIG = dict(shift=1.0, use_dynamic_shifting=False)
# What the model was trained on (LTXPipeline needs height/width multiples of 32). Measured on the CPU
# on the 12 held-out triples: 12/12 right at 32x32 with 20 or 8 steps; 0/12 at 64x64 (never trained
# there); 11/12 with a wordy negative prompt (its words are outside the vocabulary): keep it empty.
SHAPES_GENERATION = dict(height=32, width=32, num_frames=17, num_inference_steps=20, guidance_scale=3.0,
                         negative_prompt="")


def make_shapes_components(seed: int = 0, transformer_overrides: dict | None = None,
                           vae_block_out_channels=None, t5_overrides: dict | None = None) -> dict:
    """Untrained components of the moving-shapes model, as a dict for ``LTXPipeline(**components)``.

    The tokenizer's vocabulary is :data:`q8lib.tiny.shapes.VOCAB`; overrides shrink it for smoke runs.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    t5 = {**SHAPES_T5_CONFIG, **(t5_overrides or {})}
    return dict(
        tokenizer=make_tiny_tokenizer(max_length=128, vocab=VOCAB),
        text_encoder=make_tiny_text_encoder(seed, vocab_size=len(VOCAB), **t5),
        vae=make_tiny_vae(seed, vae_block_out_channels or SHAPES_VAE_CONFIG["block_out_channels"]),
        transformer=make_tiny_transformer(seed, **{**SHAPES_TRANSFORMER_CONFIG, **(transformer_overrides or {})}),
        scheduler=FlowMatchEulerDiscreteScheduler(**SHAPES_SCHEDULER_CONFIG),
    )


def has_default_pipeline(path: str | Path | None = None) -> bool:
    """Whether the trained tiny model's folder (with ``model_index.json``) is present."""
    return (Path(path or SHAPES_DIR) / "model_index.json").is_file()


def default_pipeline(device: str | torch.device = "cpu", torch_dtype: torch.dtype = torch.float32,
                     path: str | Path | None = None):
    """The trained tiny LTX-Video (moving shapes) as an ``LTXPipeline``, loaded offline with ``from_pretrained``.

    Generate with :data:`SHAPES_GENERATION` (32x32 pixels, 17 frames)::

        pipe = default_pipeline()
        video = pipe("a red circle moving right", **SHAPES_GENERATION).frames[0]

    Raises :class:`TinyDefaultMissingError` (with what to do) when the folder is missing.
    """
    from diffusers import LTXPipeline

    path = Path(path or SHAPES_DIR)
    if not has_default_pipeline(path):
        raise TinyDefaultMissingError(
            f"The trained tiny LTX-Video is missing: no model_index.json in {path}. Reinstall q8lib with its "
            "assets, or retrain it with `python -m q8lib.tiny.train --export " + str(path) + "` (about 10 minutes "
            "on one GPU), or build random-weight components with q8lib.tiny.make_shapes_components()."
        )
    pipe = LTXPipeline.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
