"""The embedded tiny default: LTX-Video components small enough to run a whole pipeline offline on a CPU.

Every piece is a real diffusers/transformers class in its usual format, so the same code paths
(`from_pretrained`, `save_pretrained`, ``LTXPipeline``) run on the tiny model and on
``Lightricks/LTX-Video``. Weights are seeded random unless a trained tiny checkpoint is shipped.
"""
from __future__ import annotations

import torch

__all__ = ["TINY_TRANSFORMER_CONFIG", "make_tiny_transformer", "make_tiny_tokenizer", "make_tiny_text_encoder",
           "make_tiny_vae", "make_tiny_pipeline", "LTX_2B_CONFIG", "LTX_13B_CONFIG"]

# Power-of-two dims so every Q8 path (Hadamard, 8-bit GEMM, FP8 attention with head_dim 64) runs.
TINY_TRANSFORMER_CONFIG = dict(
    in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
    num_attention_heads=2, attention_head_dim=64, cross_attention_dim=128,
    num_layers=2, caption_channels=32,
)
# The real architectures (diffusers defaults for 2B; the 13B variant's widths).
LTX_2B_CONFIG = dict(in_channels=128, out_channels=128, num_attention_heads=32, attention_head_dim=64,
                     cross_attention_dim=2048, num_layers=28, caption_channels=4096)
LTX_13B_CONFIG = dict(in_channels=128, out_channels=128, num_attention_heads=32, attention_head_dim=128,
                      cross_attention_dim=4096, num_layers=48, caption_channels=4096)

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


def make_tiny_tokenizer(max_length: int = 32):
    """A ``PreTrainedTokenizerFast`` over a word-level vocabulary built in code (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(TINY_VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=max_length)


def make_tiny_text_encoder(seed: int = 0, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(TINY_VOCAB), d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(cfg).eval()


def make_tiny_vae(seed: int = 0):
    """A tiny ``AutoencoderKLLTXVideo`` like diffusers' own LTX tests (8 latent channels, patch 1)."""
    from diffusers import AutoencoderKLLTXVideo

    torch.manual_seed(seed)
    return AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False,
        patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False,
    ).eval()


def make_tiny_pipeline(seed: int = 0, transformer=None):
    """A complete offline ``LTXPipeline`` (tokenizer, T5, VAE, scheduler, transformer) on the CPU."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline

    return LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=make_tiny_vae(seed),
        text_encoder=make_tiny_text_encoder(seed),
        tokenizer=make_tiny_tokenizer(),
        transformer=transformer if transformer is not None else make_tiny_transformer(seed),
    )
