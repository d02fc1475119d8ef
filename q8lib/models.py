"""The LTX-Video architectures q8lib knows by name, and what every caller needs to run one without data.

* :data:`CATALOGUE`: the 2B, 13B and LTX-2 transformers (hub id, ``config.json`` widths, how a random Q8
  copy is built; LTX-2's other components), and :data:`T5_XXL_CONFIG`, LTX-Video's text encoder; the one place
  these are written down. The command line's ``random-2b`` / ``random-13b`` / ``random-ltx2``.
* LTX-2 (experimental in q8lib): :data:`LTX2_CONFIG`, :data:`LTX23_CONFIG` (full size), the pipeline components'
  configs, and :data:`LTX2_TINY_CONFIG` (the same layout at toy widths).
* :func:`dummy_inputs` / :func:`ltx2_dummy_inputs`: seeded transformer inputs of any shape (tests, notebooks,
  benchmarks, the CLI).
* :func:`module_bytes` / :func:`param_count`: sizes of a module's tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["LTX_2B_CONFIG", "LTX_13B_CONFIG", "T5_XXL_CONFIG", "LTXModel", "CATALOGUE", "dummy_inputs", "module_bytes",
           "param_count", "LTX2_CONFIG", "LTX23_CONFIG", "LTX2_TINY_CONFIG", "ltx2_dummy_inputs",
           "LTX_VAE_SCALE_FACTORS", "latent_grid", "LTX2_VIDEO_VAE_CONFIG", "LTX2_AUDIO_VAE_CONFIG",
           "LTX2_VOCODER_CONFIG", "LTX2_CONNECTORS_CONFIG"]

# The real architectures (diffusers defaults for 2B; the 13B variant's widths).
LTX_2B_CONFIG = dict(in_channels=128, out_channels=128, num_attention_heads=32, attention_head_dim=64,
                     cross_attention_dim=2048, num_layers=28, caption_channels=4096)
LTX_13B_CONFIG = dict(in_channels=128, out_channels=128, num_attention_heads=32, attention_head_dim=128,
                      cross_attention_dim=4096, num_layers=48, caption_channels=4096)

# LTX-2 (``LTX2VideoTransformer3DModel``, ``Lightricks/LTX-2``: one size, 19B parameters, a video stream of 32 heads x
# 128 and an audio stream of 32 heads x 64, 48 blocks). LTX-2 has no 2B variant; this is the release. The values
# are the "2.0" transformer config of diffusers' conversion script (scripts/convert_ltx2_to_diffusers.py,
# huggingface/diffusers at 8d8a656; the script is not in the installed package). They equal the defaults of
# LTX2VideoTransformer3DModel.__init__ in diffusers 0.42.1 except rope_type: the released model uses "split".
LTX2_CONFIG = dict(
    in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32, attention_head_dim=128,
    cross_attention_dim=4096, vae_scale_factors=(8, 32, 32), pos_embed_max_pos=20, base_height=2048, base_width=2048,
    audio_in_channels=128, audio_out_channels=128, audio_patch_size=1, audio_patch_size_t=1,
    audio_num_attention_heads=32, audio_attention_head_dim=64, audio_cross_attention_dim=2048, audio_scale_factor=4,
    audio_pos_embed_max_pos=20, audio_sampling_rate=16000, audio_hop_length=160, num_layers=48,
    activation_fn="gelu-approximate", qk_norm="rms_norm_across_heads", norm_elementwise_affine=False, norm_eps=1e-6,
    caption_channels=3840, attention_bias=True, attention_out_bias=True, rope_theta=10000.0, rope_double_precision=True,
    causal_offset=1, timestep_scale_multiplier=1000, cross_attn_timestep_scale_multiplier=1000, rope_type="split")
# LTX-2.3 (``Lightricks/LTX-2.3``): LTX-2's widths with gated attention, cross-attention modulation, STG-ready
# (perturbed) attention processors and the text projection moved into the connectors. The "2.3" config of the same
# conversion script in a later version (as mirrored in doc-hex/diffusers-py39 at bd4a661; not in the installed
# package).
LTX23_CONFIG = dict(LTX2_CONFIG, gated_attn=True, cross_attn_mod=True, audio_gated_attn=True, audio_cross_attn_mod=True,
                    use_prompt_embeddings=False, perturbed_attn=True)
# LTX2_CONFIG's layout at toy widths (CPU tests, studies): power-of-two widths everywhere (the Hadamard rotation
# and FP8 attention need them), video and audio streams of different widths, split RoPE as released.
LTX2_TINY_CONFIG = dict(LTX2_CONFIG, in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=64,
                        cross_attention_dim=128, audio_in_channels=16, audio_out_channels=16,
                        audio_num_attention_heads=2, audio_attention_head_dim=32, audio_cross_attention_dim=64,
                        num_layers=2, caption_channels=32)

# The other components of the released LTX-2 pipeline (Lightricks/LTX-2 in diffusers' layout), as the "2.0" configs of
# the same conversion script (huggingface/diffusers at 8d8a656): the video VAE (128 latent channels, 32x in space, 8x
# in time; timestep_conditioning is a conversion flag, off by default), the audio VAE (8 latent channels x 16 mel
# bins = the transformer's 128 audio channels), the vocoder (24 kHz) and the text connectors that turn Gemma-3 12B's
# 49 stacked hidden states (3840 wide) into each stream's prompt tokens. For random-weight pipelines of full size
# (memory and time of a whole generation); the classes are diffusers' AutoencoderKLLTX2Video, AutoencoderKLLTX2Audio,
# LTX2Vocoder and LTX2TextConnectors. Sizes (diffusers 0.42.1): video VAE 1.22B parameters (2.4 GB in bf16), audio
# VAE 53M, vocoder 56M, connectors 1.43B (2.9 GB): with the 8-bit transformer (18.4 GB) they exceed 24 GB together,
# so a 24 GB GPU runs the pipeline with its components offloaded in turn (model CPU offload).
LTX2_VIDEO_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=128, block_out_channels=(256, 512, 1024, 2048),
    down_block_types=("LTX2VideoDownBlock3D",) * 4, decoder_block_out_channels=(256, 512, 1024),
    layers_per_block=(4, 6, 6, 2, 2), decoder_layers_per_block=(5, 5, 5, 5),
    spatio_temporal_scaling=(True, True, True, True), decoder_spatio_temporal_scaling=(True, True, True),
    decoder_inject_noise=(False, False, False, False), downsample_type=("spatial", "temporal", "spatiotemporal",
                                                                        "spatiotemporal"),
    upsample_residual=(True, True, True), upsample_factor=(2, 2, 2), timestep_conditioning=False, patch_size=4,
    patch_size_t=1, resnet_norm_eps=1e-6, encoder_causal=True, decoder_causal=False,
    encoder_spatial_padding_mode="zeros", decoder_spatial_padding_mode="reflect", spatial_compression_ratio=32,
    temporal_compression_ratio=8)
LTX2_AUDIO_VAE_CONFIG = dict(
    base_channels=128, output_channels=2, ch_mult=(1, 2, 4), num_res_blocks=2, attn_resolutions=None, in_channels=2,
    resolution=256, latent_channels=8, norm_type="pixel", causality_axis="height", dropout=0.0,
    mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=64, double_z=True)
LTX2_VOCODER_CONFIG = dict(
    in_channels=128, hidden_channels=1024, out_channels=2, upsample_kernel_sizes=[16, 15, 8, 4, 4],
    upsample_factors=[6, 5, 2, 2, 2], resnet_kernel_sizes=[3, 7, 11], resnet_dilations=[[1, 3, 5]] * 3,
    leaky_relu_negative_slope=0.1, output_sampling_rate=24000)
LTX2_CONNECTORS_CONFIG = dict(
    caption_channels=3840, text_proj_in_factor=49, video_connector_num_attention_heads=30,
    video_connector_attention_head_dim=128, video_connector_num_layers=2, video_connector_num_learnable_registers=128,
    audio_connector_num_attention_heads=30, audio_connector_attention_head_dim=128, audio_connector_num_layers=2,
    audio_connector_num_learnable_registers=128, connector_rope_base_seq_len=4096, rope_theta=10000.0,
    rope_double_precision=True, causal_temporal_positioning=False, rope_type="split")

# The text encoder of every LTX-Video release: T5 v1.1 XXL's encoder (4.76B parameters, 9.5 GB in bf16), as
# transformers' T5Config; random-weight pipelines build it only to measure memory (q8lib.app.loading).
T5_XXL_CONFIG = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                     relative_attention_num_buckets=32, relative_attention_max_distance=128,
                     feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
                     tie_word_embeddings=False)


@dataclass(frozen=True)
class LTXModel:
    """One LTX release: its hub id, its transformer's ``config.json`` widths, whether a random-weight Q8 copy is
    built directly in 8 bits (13B and LTX-2: no bf16 copy ever exists), the pipeline family that runs it
    (:mod:`q8lib.app.pipelines`) and the configs of the pipeline's other components where they are not diffusers'
    defaults (LTX-2: ``vae``, ``audio_vae``, ``vocoder``, ``connectors``)."""

    name: str
    hub_id: str
    transformer_config: dict
    q8_directly: bool
    family: str = "ltx"
    components: dict = field(default_factory=dict)


CATALOGUE = {
    "2b": LTXModel("2b", "Lightricks/LTX-Video", LTX_2B_CONFIG, q8_directly=False),
    "13b": LTXModel("13b", "Lightricks/LTX-Video-0.9.7-dev", LTX_13B_CONFIG, q8_directly=True),
    "ltx2": LTXModel("ltx2", "Lightricks/LTX-2", LTX2_CONFIG, q8_directly=True, family="ltx2",
                     components=dict(vae=LTX2_VIDEO_VAE_CONFIG, audio_vae=LTX2_AUDIO_VAE_CONFIG,
                                     vocoder=LTX2_VOCODER_CONFIG, connectors=LTX2_CONNECTORS_CONFIG)),
}


# LTX-Video 0.9.x's VAE (diffusers' AutoencoderKLLTXVideo defaults, every release): 8x in time, 32x in space.
LTX_VAE_SCALE_FACTORS = (8, 32, 32)


def latent_grid(frames: int, height: int, width: int, scale_factors=LTX_VAE_SCALE_FACTORS) -> tuple[int, int, int]:
    """The latent grid ``(frames, height, width)`` of a video of ``frames`` at ``height`` x ``width`` pixels, as
    the LTX pipelines compute it: the VAE keeps the first frame and compresses the others ``scale_factors[0]``x
    in time (``1 + (frames - 1) // 8``), and ``scale_factors[1:]``x in space (``height // 32``, ``width // 32``).
    LTX-2's factors are its config's ``vae_scale_factors``; LTX-Video 0.9.x's :data:`LTX_VAE_SCALE_FACTORS`."""
    ft, fh, fw = scale_factors
    if frames < 1 or (frames - 1) % ft or height % fh or width % fw:
        raise ValueError(f"{frames} frames at {height}x{width}: the pipelines take 1 + {ft}k frames and sizes that "
                         f"are multiples of {fh}x{fw}")
    return 1 + (frames - 1) // ft, height // fh, width // fw


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


def ltx2_dummy_inputs(config: dict, batch: int = 2, frames: int = 2, height: int = 4, width: int = 4,
                      audio_frames: int = 9, text_tokens: int = 16, *, seed: int = 0, device="cpu",
                      dtype: torch.dtype = torch.float32, text_kept: int | None = None,
                      timestep: float = 500.0) -> dict:
    """Keyword arguments for one forward of an LTX-2 transformer with ``config``, as diffusers' ``LTX2Pipeline``
    passes them (``pipeline_ltx2.py``, the denoising loop; the coordinates for RoPE are left to the model, which
    computes them with the same ``prepare_video_coords``/``prepare_audio_coords`` calls from ``num_frames``,
    ``height``, ``width``, ``fps`` and ``audio_num_frames``):

    * ``hidden_states [batch, frames*height*width, in_channels]`` (packed video latents) and ``audio_hidden_states
      [batch, audio_frames, audio_in_channels]`` (packed audio latents), standard normal from a CPU generator
      seeded with ``seed``;
    * ``encoder_hidden_states``/``audio_encoder_hidden_states [batch, text_tokens, width]``: the text connectors'
      outputs, of ``caption_channels`` width (LTX-2.0; the model projects them) or, without the model's
      caption projection (``use_prompt_embeddings=False``, LTX-2.3), of each stream's width;
    * ``timestep``, ``sigma`` ``[batch]`` (the pipeline passes the timestep as both); the text mask
      ``[batch, text_tokens]`` (1 = token) for both streams: all ones by default (LTX-2's connectors replace
      padding with learned registers), else the first ``text_kept`` tokens; ``fps`` 24; ``use_cross_timestep``
      ``True`` (the pipeline's default).
    """
    g = torch.Generator().manual_seed(seed)
    video_dim = config["num_attention_heads"] * config["attention_head_dim"]
    audio_dim = config["audio_num_attention_heads"] * config["audio_attention_head_dim"]
    projected = config.get("use_prompt_embeddings", True)
    text_v = config["caption_channels"] if projected else video_dim
    text_a = config["caption_channels"] if projected else audio_dim
    mask = torch.ones(batch, text_tokens, dtype=torch.long)
    if text_kept is not None:
        mask[:, text_kept:] = 0
    t = torch.full((batch,), float(timestep))

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    return dict(
        hidden_states=randn(batch, frames * height * width, config["in_channels"]),
        audio_hidden_states=randn(batch, audio_frames, config["audio_in_channels"]),
        encoder_hidden_states=randn(batch, text_tokens, text_v),
        audio_encoder_hidden_states=randn(batch, text_tokens, text_a),
        timestep=t.to(device), sigma=t.to(device),
        encoder_attention_mask=mask.to(device), audio_encoder_attention_mask=mask.to(device),
        num_frames=frames, height=height, width=width, fps=24.0, audio_num_frames=audio_frames,
        use_cross_timestep=True,
    )


def _tensors(module: nn.Module):
    return list(module.parameters()) + list(module.buffers())


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (8-bit weights count one byte each)."""
    return sum(t.numel() * t.element_size() for t in _tensors(module))


def param_count(module: nn.Module) -> int:
    """Elements of a module's parameters and buffers."""
    return sum(t.numel() for t in _tensors(module))
