"""LTX-2 (diffusers' ``LTX2VideoTransformer3DModel``) in q8lib: what differs from LTX-Video 0.9.x. Experimental.

The recipe is LTX-Video's (:mod:`q8lib.convert`): inside the transformer blocks every ``nn.Linear`` becomes a
:class:`~q8lib.modules.Q8Linear` (the FFN up-projection a :class:`~q8lib.modules.Q8GELU`), the block RMSNorms
:class:`~q8lib.modules.Q8RMSNorm`; same weight formats, per-channel weight and per-token activation scales.
An LTX-2 block holds two streams (video and audio) and six attentions: video and audio self-attention
(``attn1``, ``audio_attn1``), text cross-attention (``attn2``, ``audio_attn2``), audio-to-video and
video-to-audio cross-attention (``audio_to_video_attn``, ``video_to_audio_attn``), and two FFNs
(``ff``, ``audio_ff``; with or without bias, ``ff_bias``/``audio_ff_bias``). Differences from LTX-1:

* **Kept in high precision** (:data:`~q8lib.config.KEEP_HIGH_PRECISION_LTX2`, what the default list means here):
  everything outside the blocks as for LTX-1 (input/output projections of both streams, timestep, caption and
  cross-attention modulation embeddings, output norms and tables) and, inside the blocks, the gated-attention
  ``to_gate_logits`` linears (``query_dim -> heads``, present when ``gated_attn``/``audio_gated_attn``). Measured
  on a tiny random LTX-2 (``benchmarks/ltx2_keep_study.py``, numbers in its docstring): quantizing them alone
  adds 0.3% (int8) / 1.0% (fp8_e4m3) relative error to the outputs, a quarter to a fifth of what all the other
  block linears add, for 0.15% of the weights, and would add a quantization pass over each gated attention's
  input for a GEMM with ``heads`` (32) outputs.
* **Attention**: :class:`q8lib.attention.Q8LTX2AttnProcessor`, LTX-2's processor signature (separate query and
  key RoPE for a2v/v2a, gated attention, STG perturbation) over the helpers below: RoPE in both of diffusers'
  layouts (``rope_type="interleaved"``: ``(cos, sin) [B, S, H*D]``; ``"split"``, the released checkpoints':
  ``[B, H, S, D/2]``), key masks as right-padded lengths (FP8 or SDPA) or, for masks that are not, as an
  additive bias (SDPA in the model dtype). Attention with key lengths or no mask takes LTX-1's path
  (:func:`q8lib.attention.q8_attention_core`: norm + RoPE, interleaved or split, with the keys' own tables in a2v/v2a,
  fused into the q/k producers on a GPU); masks per query or with left padding apply ``norm_q``/``norm_k`` and RoPE in
  PyTorch (:func:`ltx2_attention_core`), then SDPA under the mask.
* **Fused blocks** (:mod:`q8lib.fused_ltx2`, installed on the triton backend as for LTX-1; LTX-2.0's and
  LTX-2.3's layouts): each norm + modulation is one pass with the quantization after it, and each residual add is
  folded into the next one. Calls under STG perturbation or with an active LoRA adapter run diffusers'
  ``LTX2VideoTransformerBlock.forward`` on the Q8 modules, with two fusions below the block: each attention quantizes its context once for ``to_k``/``to_v`` (and
  for ``to_q`` in self-attention: :func:`q8lib.attention.project_qkv`), and on the triton backend each FFN runs
  q8lib's FFN path (:func:`q8lib.fused.install_fused_ffns`: the GELU in the down-projection's quantizer).
  Context parallelism is not supported with q8lib's LTX-2 attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import reference as ref
from .backends import resolve_backend
from .errors import SettingsError
from .quant import host_sync_allowed

__all__ = ["LTX2_CLASS_NAME", "LTX_CLASS_NAME", "transformer_classes", "class_name_for_config", "is_ltx2",
           "apply_split_rotary_emb", "key_mask", "ltx2_attention_core"]

LTX_CLASS_NAME = "LTXVideoTransformer3DModel"
LTX2_CLASS_NAME = "LTX2VideoTransformer3DModel"
# config keys only LTX-2 has: a config dict without ``_class_name`` (q8lib's own callers strip it) is LTX-2 if it
# holds one of them
_LTX2_ONLY_KEYS = ("audio_in_channels", "audio_num_attention_heads", "audio_attention_head_dim")


def transformer_classes() -> dict:
    """``{class name: class}`` of the diffusers transformers q8lib converts (imported on first use: diffusers
    loads slowly)."""
    from diffusers import LTX2VideoTransformer3DModel, LTXVideoTransformer3DModel

    return {LTX_CLASS_NAME: LTXVideoTransformer3DModel, LTX2_CLASS_NAME: LTX2VideoTransformer3DModel}


def class_name_for_config(cfg: dict) -> str:
    """The transformer class a ``config.json`` dict describes: its ``_class_name`` when present (raising
    :class:`SettingsError` for a class q8lib does not convert), else LTX-2 if it holds LTX-2-only keys, else LTX-1."""
    name = cfg.get("_class_name")
    if name is None:
        return LTX2_CLASS_NAME if any(k in cfg for k in _LTX2_ONLY_KEYS) else LTX_CLASS_NAME
    if name not in (LTX_CLASS_NAME, LTX2_CLASS_NAME):
        raise SettingsError(f"the config describes a {name}; q8lib converts {LTX_CLASS_NAME} (LTX-Video 0.9.x) and "
                            f"{LTX2_CLASS_NAME} (LTX-2, experimental) only")
    return name


def is_ltx2(model) -> bool:
    """Whether ``model`` is diffusers' LTX-2 transformer (checked by class name: no diffusers import)."""
    return type(model).__name__ == LTX2_CLASS_NAME


apply_split_rotary_emb = ref.apply_split_rotary_emb  # LTX-2's split RoPE (q8lib.reference, where the kernels' twins live)


def key_mask(mask: torch.Tensor | None, batch: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(key_lengths [B] int32, None)`` for a key mask that keeps a prefix of the keys (right padding, or every
    key: what LTX-2's text connectors hand over), else ``(None, bias)`` with ``bias`` an additive or boolean mask
    ``[B, 1, Sq or 1, Sk]`` for SDPA (masks per query, such as IC-LoRA's video self-attention mask, or left
    padding). Takes diffusers' additive ``0``/negative masks or booleans (``True`` = keep). While torch.compile
    traces or a CUDA graph is captured the prefix check (a host sync) is skipped and key masks are taken as
    right-padded, as :func:`q8lib.attention.mask_to_key_lengths` does."""
    if mask is None:
        return None, None
    m = mask.reshape(batch, -1, mask.shape[-1]) if mask.dim() != 4 else mask.flatten(1, 2)
    if m.shape[1] != 1:  # one mask row per query: not expressible as key lengths
        return None, m[:, None]
    keep = m[:, 0] if m.dtype == torch.bool else m[:, 0] > -1.0
    lengths = keep.sum(-1, dtype=torch.int32)
    if host_sync_allowed(keep):
        prefix = torch.arange(keep.shape[-1], device=keep.device)[None] < lengths[:, None]
        if not bool((prefix == keep).all()):
            return None, m[:, None]
    return lengths, None


def ltx2_attention_core(attn, query, key, value, query_rotary_emb=None, key_rotary_emb=None, key_lengths=None,
                        bias=None, fp8=True, backend="auto"):
    """Between an ``LTX2Attention``'s projections and its gate/``to_out``: ``norm_q``/``norm_k`` (RMSNorm across
    heads), RoPE on q with ``query_rotary_emb`` and on k with ``key_rotary_emb`` (default: the query's), then
    the backend's attention (FP8 or SDPA; with ``bias``: SDPA under that mask). ``[B, S, H*D]`` in,
    ``[B, Sq, H*D]`` out in ``value.dtype``."""
    query, key = attn.norm_q(query), attn.norm_k(key)
    if query_rotary_emb is not None:
        # the tables' layout says which RoPE (diffusers passes split ones for rope_type="split")
        query = ref.apply_any_rotary_emb(query, query_rotary_emb)
        key = ref.apply_any_rotary_emb(key, query_rotary_emb if key_rotary_emb is None else key_rotary_emb)
    q, k, v = (t.unflatten(2, (attn.heads, -1)).transpose(1, 2) for t in (query, key, value))
    if bias is not None:
        if bias.dtype != torch.bool:
            bias = bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    else:
        out = resolve_backend(backend, q.device).attention(q, k, v, key_lengths, None, "fp8" if fp8 else "sdpa")
    return out.transpose(1, 2).flatten(2, 3).to(value.dtype)
