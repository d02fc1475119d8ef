"""A fused forward for LTX-2's block (diffusers' ``LTX2VideoTransformerBlock``) on Q8 modules.

Same math as diffusers 0.42's block forward, with the 8-bit work arranged as :mod:`q8lib.fused` does for
LTX-Video 0.9.x blocks. Each stream (video, audio) carries its residual and folds every residual add into the next
quantization:

* each RMSNorm + its modulation ``* (1 + scale) + shift`` + rotation + quantization is one row pass
  (``rms_norm_quantize``), its codes shared by the projections that read them (``to_q``/``to_k``/``to_v`` of a
  self-attention; the a2v query and the v2a keys/values read the same norm under two modulations: two passes);
* the residual add after an attention (gated by the AdaLN or a2v/v2a gate where diffusers gates it) is fused into
  the next norm's quantization (``add_quantize``: the new hidden states written once, not read back);
* the text is quantized once per cross-attention for ``to_k``/``to_v``; attention outputs once for ``to_out``;
* attention runs :func:`q8lib.attention.q8_attention_core` (norm_q/k + RoPE fused into the producers on a GPU,
  a2v/v2a with the keys' own tables) where the mask is key lengths, else :func:`q8lib.ltx2.ltx2_attention_core`,
  as :class:`q8lib.attention.Q8LTX2AttnProcessor` chooses; FFNs run :func:`q8lib.fused_ops.ffn`.

Why: in the compiled LTX-2 forward on an H200 (``benchmarks/results/transformer_ltx2_h200_s10.json``) the norms
and modulations (inductor kernels writing bf16) and q8lib's separate row quantizations took ~80 of its 118 ms of
glue. LTX-2.3's layout is fused too: a gated attention's gate logits read its float query input, so that norm is
also computed in float (one more pass, for ``to_gate_logits`` kept in high precision); cross-attention modulation
(the query's norm modulated, the text modulated by the prompt table, the output gated) follows diffusers. Calls with
STG perturbation, an active LoRA adapter, sequential CPU offload or an argument this forward does not know run
diffusers' forward. Installed by :func:`q8lib.fused.install_fused_blocks`.
"""
from __future__ import annotations

import types
import weakref

from torch import nn

from .attention import head_gates, ltx2_coded_attention, ltx2_core
from .backends import resolve_backend
from .fused_ops import ffn, ffn_eligible, ffn_slots, linear, q8_of, runs_adapter
from .modules import Q8Linear
from .offload import is_offloaded

__all__ = ["eligible", "linear_slots", "fused_ltx2_block_forward", "model_dtype_rope_forward",
           "install_model_dtype_rope", "uninstall_model_dtype_rope"]

BLOCK_CLASS = "LTX2VideoTransformerBlock"
_ATTENTIONS = ("attn1", "audio_attn1", "attn2", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn")
_ROPES = ("rope", "audio_rope", "cross_attn_rope", "cross_attn_audio_rope")
_NORMS = ("norm1", "norm2", "norm3", "audio_norm1", "audio_norm2", "audio_norm3", "audio_to_video_norm",
          "video_to_audio_norm")


def linear_slots(block) -> list:
    """``(parent._modules, name)`` of every linear of the block (see :func:`q8lib.fused_ops.runs_adapter`)."""
    slots = []
    for name in _ATTENTIONS:
        a = getattr(block, name)
        slots += [(a._modules, k) for k in ("to_q", "to_k", "to_v")] + [(a.to_out._modules, "0")]
    return slots + ffn_slots(block.ff) + ffn_slots(block.audio_ff)


def eligible(block, mode: str = "fp8") -> str | None:
    """``None`` if :func:`fused_ltx2_block_forward` can run this block in attention ``mode``, else why not."""
    if type(block).__name__ != BLOCK_CLASS:
        return f"a {type(block).__name__}, not diffusers' {BLOCK_CLASS}"
    if mode == "int8":
        return "INT8 attention is not built for LTX-2's attention"
    try:
        lins = [q8_of(d[k]) for d, k in linear_slots(block)]
        norms = [getattr(block, n) for n in _NORMS]
    except (AttributeError, IndexError, KeyError, TypeError) as e:
        return f"not an LTX-2 block layout ({e})"
    if not all(type(m) is Q8Linear for m in lins):
        return "some linears are not Q8Linear (kept in high precision?)"
    if not (ffn_eligible(block.ff) and ffn_eligible(block.audio_ff)):
        return "a feed-forward is not a Q8GELU + Q8Linear FeedForward"
    if len({(m.qdtype, m.hadamard_block, m.backend) for m in lins}) != 1:
        return "linears differ in 8-bit dtype, Hadamard block or backend"
    if not all(hasattr(n, "eps") and hasattr(n, "weight") for n in norms):
        return "a block norm is not an RMSNorm"
    for table, adaln in ((block.scale_shift_table, block.video_cross_attn_adaln),
                         (block.audio_scale_shift_table, block.audio_cross_attn_adaln)):
        if table.shape[0] != (9 if adaln else 6):
            return f"a scale_shift_table has {table.shape[0]} rows, not {9 if adaln else 6}"
    return None


class _Stream:
    """One stream's hidden states ``h`` and the residual not yet added (``pending``: ``(r, gate or None)``), which
    the next :meth:`norm_quantize` adds in the same pass as the norm."""

    def __init__(self, be, h, qdtype, hadamard_block):
        self.be, self.h, self.qd, self.hb, self.pending = be, h, qdtype, hadamard_block, None

    def add(self, r, gate=None):
        self.flush()
        self.pending = (r, gate)

    def flush(self):
        if self.pending is not None:
            r, gate = self.pending
            self.h = self.h + r * gate if gate is not None else self.h + r
            self.pending = None
        return self.h

    def norm_quantize(self, norm, scale=None, shift=None):
        """``norm(h) * (1 + scale) + shift`` rotated and quantized -> ``(codes, scales)``, adding the pending residual
        to ``h`` in the same pass."""
        if self.pending is None:
            return self.be.rms_norm_quantize(self.h, norm.weight, norm.eps, scale, shift, self.qd, self.hb)
        (r, gate), self.pending = self.pending, None
        self.h, q, s = self.be.add_quantize(self.h, r, gate, self.qd, self.hb, True, norm.weight, norm.eps, scale,
                                            shift)
        return q, s


def _attend(st, be, attn, x, ctx, dtype, q_rope=None, k_rope=None, mask=None):
    """One attention from quantized query rows ``x`` and key/value rows ``ctx`` (``(codes, scales)`` pairs) to its
    ``to_out`` output ``[B, Sq, D]``, through the core and gates :class:`q8lib.attention.Q8LTX2AttnProcessor` uses. A
    gated attention's ``x`` is ``(codes, scales, float rows)``: its gate logits come from the float query input, as
    in diffusers (``to_gate_logits`` stays in high precision)."""
    gate_logits = attn.to_gate_logits(x[2]) if attn.to_gate_logits is not None else None
    q = linear(be, attn.to_q, *x[:2], dtype)
    k, v = linear(be, attn.to_k, *ctx, dtype), linear(be, attn.to_v, *ctx, dtype)
    out_q = q8_of(attn.to_out[0])
    coded = ltx2_coded_attention(attn, out_q, q, k, v, q_rope, k_rope, mask, st["mode"], st["backend"], gate_logits)
    if coded is not None:  # fp8_tensor: to_out reads the e4m3 output (gates in its quantizer)
        return linear(be, out_q, *coded, dtype)
    out = ltx2_core(attn, q, k, v, q_rope, k_rope, mask, st["mode"], st["backend"])
    if gate_logits is None:
        return linear(be, out_q, *be.quantize_activation(out, out_q.qdtype, out_q.hadamard_block), dtype)
    # the gates multiply the output in to_out's quantizer: no pass over the gated rows of its own (19.9 ms of
    # inductor kernels per forward at LTX-2.3's full size on the H200, transformer_ltx23_h200_s11.json)
    gated = be.gated_quantize(out, head_gates(gate_logits), out_q.qdtype, out_q.hadamard_block)
    return linear(be, out_q, *gated, dtype)


def fused_ltx2_block_forward(self, hidden_states, audio_hidden_states, encoder_hidden_states,
                             audio_encoder_hidden_states, temb, temb_audio, temb_ca_scale_shift,
                             temb_ca_audio_scale_shift, temb_ca_gate, temb_ca_audio_gate, temb_prompt=None,
                             temb_prompt_audio=None, video_rotary_emb=None, audio_rotary_emb=None,
                             ca_video_rotary_emb=None, ca_audio_rotary_emb=None, encoder_attention_mask=None,
                             audio_encoder_attention_mask=None, self_attention_mask=None,
                             audio_self_attention_mask=None, a2v_cross_attention_mask=None,
                             v2a_cross_attention_mask=None, use_a2v_cross_attention=True,
                             use_v2a_cross_attention=True, perturbation_mask=None, all_perturbed=None, **extra):
    """``LTX2VideoTransformerBlock.forward`` on Q8 modules (bound by :func:`q8lib.fused.install_fused_blocks`).

    ``hidden_states [B, S, D]`` (video), ``audio_hidden_states [B, Sa, Da]``, text ``[B, T, D]`` / ``[B, T, Da]``,
    ``temb [B, 1 or S, 6*D]`` and the other modulation inputs as diffusers passes them, RoPE tables in either of
    LTX-2's layouts; returns ``(hidden_states, audio_hidden_states)``. Runs diffusers' forward for what it does
    not fuse (module docstring).
    """
    args = dict(hidden_states=hidden_states, audio_hidden_states=audio_hidden_states,
                encoder_hidden_states=encoder_hidden_states, audio_encoder_hidden_states=audio_encoder_hidden_states,
                temb=temb, temb_audio=temb_audio, temb_ca_scale_shift=temb_ca_scale_shift,
                temb_ca_audio_scale_shift=temb_ca_audio_scale_shift, temb_ca_gate=temb_ca_gate,
                temb_ca_audio_gate=temb_ca_audio_gate, temb_prompt=temb_prompt, temb_prompt_audio=temb_prompt_audio,
                video_rotary_emb=video_rotary_emb, audio_rotary_emb=audio_rotary_emb,
                ca_video_rotary_emb=ca_video_rotary_emb, ca_audio_rotary_emb=ca_audio_rotary_emb,
                encoder_attention_mask=encoder_attention_mask,
                audio_encoder_attention_mask=audio_encoder_attention_mask, self_attention_mask=self_attention_mask,
                audio_self_attention_mask=audio_self_attention_mask, a2v_cross_attention_mask=a2v_cross_attention_mask,
                v2a_cross_attention_mask=v2a_cross_attention_mask, use_a2v_cross_attention=use_a2v_cross_attention,
                use_v2a_cross_attention=use_v2a_cross_attention, perturbation_mask=perturbation_mask,
                all_perturbed=all_perturbed)
    if (extra or perturbation_mask is not None or all_perturbed or runs_adapter(self._q8_fused["slots"])
            or is_offloaded(self)):
        return type(self).forward(self, **args, **extra)
    return _fused_forward(self, **args)


def _fused_forward(self, hidden_states, audio_hidden_states, encoder_hidden_states, audio_encoder_hidden_states,
                   temb, temb_audio, temb_ca_scale_shift, temb_ca_audio_scale_shift, temb_ca_gate, temb_ca_audio_gate,
                   temb_prompt, temb_prompt_audio, video_rotary_emb, audio_rotary_emb, ca_video_rotary_emb,
                   ca_audio_rotary_emb, encoder_attention_mask, audio_encoder_attention_mask, self_attention_mask,
                   audio_self_attention_mask, a2v_cross_attention_mask, v2a_cross_attention_mask,
                   use_a2v_cross_attention, use_v2a_cross_attention, **_):
    st = self._q8_fused
    be = resolve_backend(st["backend"], hidden_states.device)
    first = q8_of(self.attn1.to_q)
    qd, hb, batch = first.qdtype, first.hadamard_block, hidden_states.size(0)
    video = _Stream(be, hidden_states, qd, hb)
    audio = _Stream(be, audio_hidden_states, qd, hb)
    dt, adt = hidden_states.dtype, audio_hidden_states.dtype
    v_ada = self.get_mod_params(self.scale_shift_table, temb, batch)
    a_ada = self.get_mod_params(self.audio_scale_shift_table, temb_audio, batch)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = v_ada[:6]
    a_shift_msa, a_scale_msa, a_gate_msa, a_shift_mlp, a_scale_mlp, a_gate_mlp = a_ada[:6]

    def query(stream, norm, attn, scale=None, shift=None):
        """The attention's query rows: codes and scales, plus the float rows its gate logits read if it is gated."""
        x = stream.norm_quantize(norm, scale, shift)
        if attn.to_gate_logits is None:
            return x
        return (*x, be.rms_norm(stream.h, norm.weight, norm.eps, scale, shift))

    # 1. self-attention of each stream: norm + modulation quantized once for q, k and v
    x = query(video, self.norm1, self.attn1, scale_msa, shift_msa)
    video.add(_attend(st, be, self.attn1, x, x[:2], dt, video_rotary_emb, None, self_attention_mask), gate_msa)
    x = query(audio, self.audio_norm1, self.audio_attn1, a_scale_msa, a_shift_msa)
    audio.add(_attend(st, be, self.audio_attn1, x, x[:2], adt, audio_rotary_emb, None, audio_self_attention_mask),
              a_gate_msa)

    # 2. text cross-attention; in LTX-2.3's layout (cross_attn_adaln) the query's norm is modulated, the output
    # gated, and the text modulated by the prompt's own table
    text_mod = a_text_mod = None
    if self.cross_attn_adaln:
        text_mod = _prompt_mod(self, self.prompt_scale_shift_table, temb_prompt, batch, hidden_states)
        a_text_mod = _prompt_mod(self, self.audio_prompt_scale_shift_table, temb_prompt_audio, batch,
                                 audio_hidden_states)
    for stream, norm, attn, ctx, ctx_mod, ada, adaln, mask, dtype in (
            (video, self.norm2, self.attn2, encoder_hidden_states, text_mod, v_ada, self.video_cross_attn_adaln,
             encoder_attention_mask, dt),
            (audio, self.audio_norm2, self.audio_attn2, audio_encoder_hidden_states, a_text_mod, a_ada,
             self.audio_cross_attn_adaln, audio_encoder_attention_mask, adt)):
        shift_q, scale_q, gate_q = ada[6:9] if adaln else (None, None, None)
        if ctx_mod is not None:
            ctx = ctx * (1 + ctx_mod[1]) + ctx_mod[0]
        x = query(stream, norm, attn, scale_q, shift_q)
        stream.add(_attend(st, be, attn, x, be.quantize_activation(ctx, qd, hb), dtype, mask=mask), gate_q)

    # 3. audio-to-video and video-to-audio: each side's norm under the a2v and the v2a modulation, both taken
    # before either cross-attention adds to its stream (as diffusers)
    if use_a2v_cross_attention or use_v2a_cross_attention:
        v_a2v_scale, v_a2v_shift, v_v2a_scale, v_v2a_shift = (t.squeeze(2) for t in self.get_mod_params(
            self.video_a2v_cross_attn_scale_shift_table[:4, :], temb_ca_scale_shift, batch))
        a2v_gate = self.get_mod_params(self.video_a2v_cross_attn_scale_shift_table[4:, :], temb_ca_gate,
                                       batch)[0].squeeze(2)
        a_a2v_scale, a_a2v_shift, a_v2a_scale, a_v2a_shift = (t.squeeze(2) for t in self.get_mod_params(
            self.audio_a2v_cross_attn_scale_shift_table[:4, :], temb_ca_audio_scale_shift, batch))
        v2a_gate = self.get_mod_params(self.audio_a2v_cross_attn_scale_shift_table[4:, :], temb_ca_audio_gate,
                                       batch)[0].squeeze(2)
        a2v = v2a = None
        if use_a2v_cross_attention:
            vq = query(video, self.audio_to_video_norm, self.audio_to_video_attn, v_a2v_scale, v_a2v_shift)
            akv = audio.norm_quantize(self.video_to_audio_norm, a_a2v_scale, a_a2v_shift)
            a2v = (self.audio_to_video_attn, vq, akv, dt, ca_video_rotary_emb, ca_audio_rotary_emb,
                   a2v_cross_attention_mask)
        if use_v2a_cross_attention:
            vkv = video.norm_quantize(self.audio_to_video_norm, v_v2a_scale, v_v2a_shift)
            aq = query(audio, self.video_to_audio_norm, self.video_to_audio_attn, a_v2a_scale, a_v2a_shift)
            v2a = (self.video_to_audio_attn, aq, vkv, adt, ca_audio_rotary_emb, ca_video_rotary_emb,
                   v2a_cross_attention_mask)
        if a2v is not None:
            video.add(_attend(st, be, *a2v), a2v_gate)
        if v2a is not None:
            audio.add(_attend(st, be, *v2a), v2a_gate)

    # 4. feed-forward of each stream: residual add + norm + modulation + quantization in one pass
    out = ffn(be, self.ff, *video.norm_quantize(self.norm3, scale_mlp, shift_mlp), dt)
    hidden_states = video.flush() + out * gate_mlp
    out = ffn(be, self.audio_ff, *audio.norm_quantize(self.audio_norm3, a_scale_mlp, a_shift_mlp), adt)
    audio_hidden_states = audio.flush() + out * a_gate_mlp
    return hidden_states, audio_hidden_states


def _prompt_mod(block, table, temb_prompt, batch, like):
    """``(shift, scale)`` of the text for cross-attention (LTX-2.3): from ``temb_prompt`` when the model passes it,
    else the static per-layer table (diffusers' ``use_prompt_adaln_single=False``)."""
    if temb_prompt is not None:
        return block.get_mod_params(table, temb_prompt, batch)
    return table[None, None].to(device=like.device, dtype=like.dtype).unbind(dim=2)

def model_dtype_rope_forward(self, coords, device=None):
    """``LTX2AudioVideoRotaryPosEmbed.forward`` with the tables in the transformer's float dtype (diffusers returns
    float32). Why: the split tables ``[B, H, S, D/2]`` are, for each of cos and sin, as many float32 bytes as the bf16
    q they rotate, and every attention producer of every block reads them for q and for k; in bf16 they are half
    that. The bf16 rounding of cos/sin (<= 2^-9) is below the bf16 rounding of q and k themselves. (LTX-1's
    ``compact_rope_forward`` also computes one sample for the batch; here the coordinates come per sample from the
    pipeline, and checking that they agree would sync with the GPU.)"""
    cos, sin = type(self).forward(self, coords, device)
    model = self._q8_model()
    dtype = model.dtype if model is not None else cos.dtype
    return cos.to(dtype), sin.to(dtype)


def install_model_dtype_rope(model: nn.Module) -> None:
    """Give the LTX-2 model's four RoPE modules :func:`model_dtype_rope_forward` (undo:
    :func:`uninstall_model_dtype_rope`)."""
    for name in _ROPES:
        rope = getattr(model, name, None)
        if type(rope).__name__ == "LTX2AudioVideoRotaryPosEmbed" and "forward" not in rope.__dict__:
            rope._q8_model = weakref.ref(model)  # no reference cycle through the module tree
            rope.forward = types.MethodType(model_dtype_rope_forward, rope)


def uninstall_model_dtype_rope(model: nn.Module) -> None:
    for name in _ROPES:
        rope = getattr(model, name, None)
        if rope is not None and getattr(rope.__dict__.get("forward"), "__func__", None) is model_dtype_rope_forward:
            del rope.forward, rope._q8_model
