"""Tiny LTX-2 and LTX-Video 0.9.7-style pipeline folders in the hub repos' on-disk layout, built offline.

Each builder makes every component with the real diffusers/transformers class at toy widths, seeded, and writes it
with ``save_pretrained``: ``model_index.json`` naming the pipeline, one subfolder per component (``config.json`` +
safetensors; tokenizer and scheduler files), as ``Lightricks/LTX-2`` and ``Lightricks/LTX-Video-0.9.7-dev`` lay
themselves out. The loading code under test reads them exactly as it reads a downloaded repo.

* :func:`ltx2_folder`: ``LTX2Pipeline`` (or ``LTX2ConditionPipeline``): LTX-2 transformer
  (:data:`q8lib.models.LTX2_TINY_CONFIG`), Gemma-3 text encoder (``Gemma3ForConditionalGeneration``, 2 text layers
  of width 32, a one-layer vision tower) with a word-level ``GemmaTokenizer`` built in code, text connectors, video
  and audio VAEs, vocoder; optionally ``latent_upsampler/`` as the LTX-2 repo ships it.
* :func:`ltx097_folder`: ``LTXConditionPipeline`` with an LTX transformer of the 0.9.7 13B's layout (head size 128),
  the tiny default's T5 encoder and tokenizer and a tiny LTX VAE; :func:`ltx_upsampler_folder`: the separate
  ``LTXLatentUpsamplePipeline`` repo (``Lightricks/ltxv-spatial-upscaler-0.9.7``'s layout).
"""
from __future__ import annotations

from pathlib import Path

import torch

from q8lib.models import LTX2_TINY_CONFIG
from q8lib.tiny.components import TINY_VOCAB, make_tiny_text_encoder, make_tiny_tokenizer, make_tiny_vae

# LTX-Video 0.9.7's transformer layout (diffusers' convert_ltx_to_diffusers.py, version 0.9.7) at toy widths; its
# input and caption widths match the tiny VAE (8 latent channels) and the tiny T5 (d_model 32).
LTX097_TINY = dict(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2,
                   attention_head_dim=128, cross_attention_dim=256, num_layers=2, activation_fn="gelu-approximate",
                   qk_norm="rms_norm_across_heads", norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=32,
                   attention_bias=True, attention_out_bias=True)


def _gemma(seed: int):
    """A tiny Gemma-3 (text 2 layers x 32 wide, vision tower 1 layer) and a word-level Gemma tokenizer over the tiny
    default's vocabulary (left padding is set by LTX-2's pipeline)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, GemmaTokenizerFast

    words = ["<pad>", "<eos>", "<bos>", "<unk>"] + [w for w in TINY_VOCAB if w not in ("<pad>", "</s>", "<unk>")]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = GemmaTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>", model_max_length=64)
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, max_position_embeddings=128, sliding_window=16, pad_token_id=0,
                eos_token_id=1, bos_token_id=2)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    torch.manual_seed(seed)
    encoder = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4))
    return tokenizer, encoder.eval()


def ltx2_components(seed: int = 0) -> dict:
    """The components of a tiny LTX-2 pipeline (``LTX2Pipeline(**components)``)."""
    from diffusers import (AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler,
                           LTX2VideoTransformer3DModel)
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    tokenizer, text_encoder = _gemma(seed)
    torch.manual_seed(seed)
    transformer = LTX2VideoTransformer3DModel(**LTX2_TINY_CONFIG).eval()
    # hidden states of the embeddings and both text layers (3 x 32) -> 32-wide video and audio prompt tokens
    connectors = LTX2TextConnectors(
        caption_channels=32, text_proj_in_factor=3, video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=16, video_connector_num_layers=1, video_connector_num_learnable_registers=None,
        audio_connector_num_attention_heads=2, audio_connector_attention_head_dim=16, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None, connector_rope_base_seq_len=32, rope_theta=10000.0,
        rope_double_precision=False, causal_temporal_positioning=False, rope_type="split")
    # 16 latent channels (the transformer's in_channels), 4x spatial and 4x temporal compression
    vae = AutoencoderKLLTX2Video(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
        layers_per_block=(1, 1), decoder_layers_per_block=(1, 1, 1), spatio_temporal_scaling=(True, True),
        decoder_spatio_temporal_scaling=(True, True), decoder_inject_noise=(False, False, False),
        downsample_type=("spatiotemporal", "spatiotemporal"), upsample_residual=(False, False),
        upsample_factor=(1, 1), timestep_conditioning=False, patch_size=1, patch_size_t=1, encoder_causal=True,
        decoder_causal=False)
    # 4 latent channels x 4 latent mel bins = the transformer's 16 audio channels
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=16, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=32, latent_channels=4, norm_type="pixel", causality_axis="height", dropout=0.0,
        mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=16)
    vocoder = LTX2Vocoder(in_channels=2 * 16, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[4, 4],
                          upsample_factors=[2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
                          leaky_relu_negative_slope=0.1, output_sampling_rate=16000)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                                                base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1)
    return dict(scheduler=scheduler, vae=vae.eval(), audio_vae=audio_vae.eval(), text_encoder=text_encoder,
                tokenizer=tokenizer, connectors=connectors.eval(), transformer=transformer, vocoder=vocoder.eval())


def ltx2_folder(root: str | Path, seed: int = 0, pipeline: str = "LTX2Pipeline", upsampler: bool = False) -> Path:
    """Write a tiny LTX-2 repo to ``root`` (saved from diffusers' ``pipeline`` class); ``upsampler`` adds the
    ``latent_upsampler/`` folder the LTX-2 repo ships beside its pipeline. Returns ``root``."""
    import diffusers

    root = Path(root)
    getattr(diffusers, pipeline)(**ltx2_components(seed)).save_pretrained(root)
    if upsampler:
        from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

        torch.manual_seed(seed)
        LTX2LatentUpsamplerModel(in_channels=16, mid_channels=32, num_blocks_per_stage=1).save_pretrained(
            root / "latent_upsampler")
    return root


def ltx097_folder(root: str | Path, seed: int = 0) -> Path:
    """Write a tiny LTX-Video 0.9.7-style repo (``LTXConditionPipeline``; scheduler without dynamic shifting, as
    diffusers' conversion writes 0.9.7) to ``root``. Returns ``root``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXConditionPipeline, LTXVideoTransformer3DModel

    root = Path(root)
    torch.manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(**LTX097_TINY).eval()
    LTXConditionPipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=False),
                         vae=make_tiny_vae(seed), text_encoder=make_tiny_text_encoder(seed),
                         tokenizer=make_tiny_tokenizer(max_length=64), transformer=transformer).save_pretrained(root)
    return root


def ltx_upsampler_folder(root: str | Path, seed: int = 0) -> Path:
    """Write a tiny ``LTXLatentUpsamplePipeline`` repo (VAE + ``latent_upsampler/``) to ``root``. Returns ``root``."""
    from diffusers import LTXLatentUpsamplePipeline
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel

    root = Path(root)
    torch.manual_seed(seed)
    upsampler = LTXLatentUpsamplerModel(in_channels=8, mid_channels=32, num_blocks_per_stage=1)
    LTXLatentUpsamplePipeline(vae=make_tiny_vae(seed), latent_upsampler=upsampler).save_pretrained(root)
    return root


def ltx2_lora_file(path: str | Path, repo: str | Path, rank: int = 4, scale: float = 0.05, seed: int = 1) -> Path:
    """Write a diffusers-format LoRA (``transformer.<linear>.lora_A/B.weight``) over every linear of the transformer
    blocks of the LTX-2 repo ``repo`` to ``path`` (a ``.safetensors`` file): a stand-in for LTX-2's distilled LoRA."""
    from diffusers import LTX2VideoTransformer3DModel
    from safetensors.torch import save_file

    transformer = LTX2VideoTransformer3DModel.from_pretrained(repo, subfolder="transformer")
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, m in transformer.named_modules():
        if isinstance(m, torch.nn.Linear) and name.startswith("transformer_blocks."):
            state[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, m.in_features, generator=g) * scale
            state[f"transformer.{name}.lora_B.weight"] = torch.randn(m.out_features, rank, generator=g) * scale
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path
