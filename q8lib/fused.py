"""A fused forward for diffusers' ``LTXVideoTransformerBlock`` on Q8 modules.

Same math as diffusers 0.42's block forward, with the 8-bit work arranged so activations are
read and written as few times as possible:

* ``norm1``/``norm2`` + AdaLN modulation + Hadamard rotation + quantization in one row pass
  (``rms_norm_quantize``); the quantized rows are shared by ``to_q``/``to_k``/``to_v``.
* cross-attention quantizes the hidden states once for ``to_q`` and the text once for ``to_k``/``to_v``.
* the FFN up-projection's GELU runs in the GEMM's epilogue where the backend's GEMM has one
  (``gemm_fuses_gelu``), else in the down-projection's quantizer (cuBLAS fp8: one
  GELU+rotate+quantize pass).
* attention goes through :func:`q8lib.attention.q8_attention_core` (norm_q/k, RoPE, FP8, INT8 or SDPA).
* the gated residual adds after attn1 and attn2 are fused into the next quantizer (``add_quantize``:
  the new hidden states are written once and not read back); the FFN's stays a PyTorch op.
* every op goes through the resolved backend (:mod:`q8lib.backends`), so the reference backend runs
  the same forward on any device and tests check it against the unfused one.
* the model's RoPE tables come in the model dtype, computed once for the batch when the samples
  share coordinates (:func:`compact_rope_forward`): every block's q/k path reads them.
* a block whose linears carry an active LoRA adapter (:mod:`q8lib.lora`) runs diffusers' forward,
  which gives each linear, and so the adapter, its float input (the check: about 2 us per block).

:func:`install_fused_ffns` gives the FFNs of blocks without a fused forward (blocks that are not fully Q8, or every
block under ``attention="keep"``) the same FFN path: their input quantized once, the
GELU in the down-projection's quantizer (or the GEMM epilogue) instead of a pass of its own.

:func:`install_fused_blocks` swaps the forward of every eligible block (instance attribute, no
class patching; also the model's RoPE: :func:`compact_rope_forward` for LTX-1, the tables in the model dtype for
LTX-2); :func:`uninstall_fused_blocks` undoes it. Works with any backend, so the CPU
reference checks the fused path against the unfused one.
"""
from __future__ import annotations

import contextlib
import types

import torch
from torch import nn

from . import fused_ltx2
from .attention import coded_attention, mask_to_key_lengths, q8_attention_core
from .backends import attention_mode, resolve_backend
from .fused_ops import ffn, ffn_eligible, ffn_slots, linear, once_per_mask, q8_of, runs_adapter
from .modules import Q8GELU, Q8Linear
from .offload import is_offloaded, onloaded

__all__ = ["install_fused_blocks", "uninstall_fused_blocks", "fused_block_forward", "is_fused", "compact_rope_forward",
           "install_fused_ffns", "uninstall_fused_ffns", "fused_ffn_forward", "module_forwards"]


def _linear_slots(block) -> list:
    """``(parent._modules, name)`` of each of the block's linears: where peft puts a LoRA layer in or takes it
    out (``setattr`` on the parent), read by :func:`q8lib.fused_ops.runs_adapter` on every call without attribute
    lookups."""
    a1, a2 = block.attn1, block.attn2
    return ([(a1._modules, k) for k in ("to_q", "to_k", "to_v")] + [(a1.to_out._modules, "0")]
            + [(a2._modules, k) for k in ("to_q", "to_k", "to_v")] + [(a2.to_out._modules, "0")]
            + ffn_slots(block.ff))


def _eligible(block) -> str | None:
    """``None`` if the fused forward can run this block, else why not."""
    if type(block).__name__ != "LTXVideoTransformerBlock":  # LTX-2's blocks: q8lib.fused_ltx2
        return f"a {type(block).__name__}, not diffusers' LTXVideoTransformerBlock"
    try:
        lins = [q8_of(m) for m in _linears(block, _linear_slots(block))]
    except (AttributeError, IndexError, KeyError, TypeError) as e:
        return f"not an LTX block layout ({e})"
    if not all(isinstance(m, Q8Linear) for m in lins):
        return "some linears are not Q8Linear (kept in high precision?)"
    if not isinstance(block.ff.net[0], Q8GELU):
        return "feed-forward activation is not a Q8GELU"
    if len({(m.qdtype, m.hadamard_block, m.backend) for m in lins}) != 1:
        return "linears differ in 8-bit dtype, Hadamard block or backend"
    if block.scale_shift_table.shape[0] != 6:
        return "scale_shift_table is not [6, dim]"
    return None


def fused_ffn_forward(self, hidden_states):
    """``FeedForward.forward`` on Q8 modules (bound by :func:`install_fused_ffns`): ``[..., D]`` in and out.
    Runs diffusers' forward when a LoRA adapter needs the linears' float inputs or dropout is active."""
    if runs_adapter(self._q8_ffn["slots"]) or (self.training and any(m.p > 0 for m in list(self.net)[1::2])):
        return type(self).forward(self, hidden_states)
    # sequential CPU offload hooks sit on the modules that hold tensors (the two linears, not the FFN): this
    # forward reads their weights without calling them, so it loads them for the call
    linears = [q8_of(self.net[0].proj), q8_of(self.net[2])]
    if any(is_offloaded(m) for m in linears):
        with onloaded(linears):
            return _ffn_from_float(self, hidden_states)
    return _ffn_from_float(self, hidden_states)


def _ffn_from_float(ff, x):
    up = q8_of(ff.net[0].proj)
    be = resolve_backend(ff._q8_ffn["backend"], x.device)
    return ffn(be, ff, *be.quantize_activation(x, up.qdtype, up.hadamard_block), x.dtype)


def _ffns(model: nn.Module) -> list:
    """The eligible FFNs of blocks that run diffusers' forward (a fused block runs its FFN itself)."""
    return [m for b in _blocks(model) if not is_fused(b) for m in b.modules() if ffn_eligible(m)]


def install_fused_ffns(model: nn.Module, backend: str = "auto") -> int:
    """Give every eligible FFN (:func:`_ffn_eligible`) in the blocks without a fused forward the fused FFN forward;
    returns how many. Undo with :func:`uninstall_fused_ffns`."""
    n = 0
    for ff in _ffns(model):
        if "_q8_ffn" not in ff.__dict__:
            ff._q8_ffn = {"backend": backend, "slots": ffn_slots(ff)}
            ff.forward = types.MethodType(fused_ffn_forward, ff)
            n += 1
    return n


def uninstall_fused_ffns(model: nn.Module) -> int:
    """Restore diffusers' forward on every FFN :func:`install_fused_ffns` changed; returns how many."""
    n = 0
    for m in model.modules():
        if "_q8_ffn" in m.__dict__:
            del m.forward, m._q8_ffn
            n += 1
    return n


@contextlib.contextmanager
def module_forwards(model: nn.Module):
    """Inside the ``with``, fused blocks and FFNs run diffusers' forward, so every Q8 module is called as a module
    (forward hooks see each one, e.g. :func:`q8lib.compare.layer_outputs`); the fused forwards come back after.
    Same math: the fused path only arranges the same ops into fewer passes."""
    parked = [(m, m.__dict__.pop("forward")) for m in model.modules()
              if ("_q8_fused" in m.__dict__ or "_q8_ffn" in m.__dict__) and "forward" in m.__dict__]
    try:
        yield model
    finally:
        for m, fwd in parked:
            m.forward = fwd


def _add_quantize(be, h, r, gate, qd, hb, norm=None, scale=None, shift=None):
    """``h + r * gate`` and its quantization (after ``norm`` + modulation if given): the backend's
    ``add_quantize`` (one pass on the triton backend). Returns ``(h, q, scale)``."""
    return be.add_quantize(h, r, gate, qd, hb, norm is not None, None if norm is None else norm.weight,
                           1e-6 if norm is None else norm.eps, scale, shift)


def _to_out_input(be, st, attn, q, k, v, rope, key_lengths, qd, hb):
    """Attention from the projections to ``to_out``'s quantized input ``(x_q, x_s)``: the e4m3 output as it is for
    ``attention="fp8_tensor"`` (:func:`q8lib.attention.coded_attention`), else the core's output quantized."""
    coded = coded_attention(attn, q8_of(attn.to_out[0]), q, k, v, rope, key_lengths, st["mode"], st["backend"])
    if coded is not None:
        return coded
    out = q8_attention_core(attn, q, k, v, rope, key_lengths, st["mode"], st["backend"])
    return be.quantize_activation(out, qd, hb)


def fused_block_forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None,
                        encoder_attention_mask=None):
    """``LTXVideoTransformerBlock.forward`` on Q8 modules (bound to the block by :func:`install_fused_blocks`).

    ``hidden_states [B, S, D]``, ``encoder_hidden_states [B, T, Dc]``, ``temb [B, 1 or S, 6*D]``,
    ``image_rotary_emb`` ``(cos, sin) [B, S, D]``, ``encoder_attention_mask`` additive ``[B, 1, T]``.
    A block whose linears carry an active LoRA adapter runs diffusers' forward instead: the adapter
    needs each linear's float input, which the fused path does not form (:mod:`q8lib.lora`).

    Under diffusers' ``enable_sequential_cpu_offload`` (every module's tensors offloaded on their own, the
    block's ``scale_shift_table`` included) the submodules' tensors are loaded for the duration of the call
    (:func:`q8lib.offload.onloaded`): this forward reads their weights without calling them.
    """
    if is_offloaded(self):
        with onloaded(list(self.modules())[1:]):
            return _fused_forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb,
                                  encoder_attention_mask)
    return _fused_forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb, encoder_attention_mask)


def _fused_forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb, encoder_attention_mask):
    st = self._q8_fused
    if runs_adapter(st["slots"]):
        return type(self).forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb,
                                  encoder_attention_mask)
    be = resolve_backend(st["backend"], hidden_states.device)
    a1, a2 = self.attn1, self.attn2
    qd, hb = q8_of(a1.to_q).qdtype, q8_of(a1.to_q).hadamard_block
    dt = hidden_states.dtype
    batch = hidden_states.size(0)

    ada = self.scale_shift_table[None, None].to(temb.device) + temb.reshape(batch, temb.size(1), 6, -1)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ada.unbind(dim=2)

    # self-attention: norm1 + modulation + rotation + quantization once, shared by q, k and v
    x_q, x_s = be.rms_norm_quantize(hidden_states, self.norm1.weight, self.norm1.eps, scale_msa, shift_msa, qd, hb)
    q, k, v = (linear(be, m, x_q, x_s, dt) for m in (a1.to_q, a1.to_k, a1.to_v))
    out = linear(be, a1.to_out[0], *_to_out_input(be, st, a1, q, k, v, image_rotary_emb, None, qd, hb), dt)
    # gated residual add fused with the quantization of the new hidden states for cross-attention's q
    hidden_states, x_q, x_s = _add_quantize(be, hidden_states, out, gate_msa, qd, hb)

    # cross-attention: hidden states quantized once for q, the text once for k and v
    q = linear(be, a2.to_q, x_q, x_s, dt)
    c_q, c_s = be.quantize_activation(encoder_hidden_states, qd, hb)
    k, v = linear(be, a2.to_k, c_q, c_s, dt), linear(be, a2.to_v, c_q, c_s, dt)
    key_lengths = once_per_mask(encoder_attention_mask, batch, mask_to_key_lengths, "_q8lib_key_lengths")
    out = linear(be, a2.to_out[0], *_to_out_input(be, st, a2, q, k, v, None, key_lengths, qd, hb), dt)

    # feed-forward: residual add + norm2 + modulation + rotation + quantization in one pass,
    # GELU into the down-projection's quantizer
    hidden_states, x_q, x_s = _add_quantize(be, hidden_states, out, None, qd, hb, self.norm2, scale_mlp, shift_mlp)
    hidden_states = hidden_states + ffn(be, self.ff, x_q, x_s, dt) * gate_mlp
    return hidden_states


def compact_rope_forward(self, hidden_states, num_frames=None, height=None, width=None,
                         rope_interpolation_scale=None, video_coords=None):
    """``LTXVideoRotaryPosEmbed.forward`` returning the cos/sin tables in ``hidden_states.dtype`` and,
    when every sample has the same coordinates (no ``video_coords``, scalar interpolation scales),
    computed for one sample and expanded over the batch (stride 0).

    Why: the tables are ``[B, S, dim]`` float32, twice the bytes of q itself, and every attention
    producer of all blocks reads them; in bf16 and without the duplicate CFG half they are a quarter
    of that and stay in L2. The bf16 rounding of cos/sin (<= 2^-9) is far below the 8-bit quantization
    that follows.
    """
    scales = rope_interpolation_scale if isinstance(rope_interpolation_scale, (tuple, list)) else ()
    same = video_coords is None and not any(isinstance(s, torch.Tensor) and s.numel() > 1 for s in scales)
    batch = hidden_states.size(0)
    cos, sin = type(self).forward(self, hidden_states[:1] if same else hidden_states, num_frames, height, width,
                                  rope_interpolation_scale, video_coords)
    cos, sin = cos.to(hidden_states.dtype), sin.to(hidden_states.dtype)
    if same and batch > 1:
        cos, sin = cos.expand(batch, -1, -1), sin.expand(batch, -1, -1)
    return cos, sin


def _install_compact_rope(model: nn.Module) -> None:
    rope = getattr(model, "rope", None)
    if rope is not None and type(rope).__name__ == "LTXVideoRotaryPosEmbed" and "forward" not in rope.__dict__:
        rope.forward = types.MethodType(compact_rope_forward, rope)


def _uninstall_compact_rope(model: nn.Module) -> None:
    rope = getattr(model, "rope", None)
    if rope is not None and getattr(rope.__dict__.get("forward"), "__func__", None) is compact_rope_forward:
        del rope.forward


def _linears(block, slots=None) -> list:
    """The linears in ``slots`` (default: the fused block's) as the model holds them: ``Q8Linear``, or a LoRA layer
    around one (:mod:`q8lib.lora`)."""
    return [d[k] for d, k in (block._q8_fused["slots"] if slots is None else slots)]


def _blocks(model: nn.Module):
    return list(getattr(model, "transformer_blocks", []))


def is_fused(block: nn.Module) -> bool:
    return "_q8_fused" in block.__dict__


def install_fused_blocks(model: nn.Module, mode: str | bool = "fp8", backend: str = "auto",
                         bias_dtype: torch.dtype | None = torch.bfloat16, *, fp8: bool | None = None) -> int:
    """Give every eligible block of a quantized LTX transformer the fused forward (LTX-Video 0.9.x blocks:
    :func:`fused_block_forward`; LTX-2 blocks: :func:`q8lib.fused_ltx2.fused_ltx2_block_forward`); returns how many.

    ``mode`` (``"fp8"``, ``"int8"``, ``"sdpa"``; ``fp8=True/False`` as earlier) and ``backend`` are passed to the
    attention core. ``bias_dtype`` keeps a non-persistent
    copy of each bias in that dtype (the output dtype of the bf16 model), so the cuBLAS path does
    not cast it every call; ``None`` keeps only the float32 biases. Blocks that are not fully Q8
    keep diffusers' forward. Undo with :func:`uninstall_fused_blocks`.
    """
    mode = attention_mode(mode if fp8 is None else fp8)
    n = 0
    for block in _blocks(model):
        if is_fused(block):
            continue
        if type(block).__name__ == fused_ltx2.BLOCK_CLASS:
            if fused_ltx2.eligible(block, mode) is not None:
                continue
            forward, slots = fused_ltx2.fused_ltx2_block_forward, fused_ltx2.linear_slots(block)
        elif _eligible(block) is None:
            forward, slots = fused_block_forward, _linear_slots(block)
        else:
            continue
        block._q8_fused = {"mode": mode, "backend": backend, "slots": slots}
        block.forward = types.MethodType(forward, block)
        if bias_dtype is not None:
            for lin in map(q8_of, _linears(block)):
                if lin.bias is not None:
                    lin.register_buffer("bias_out", lin.bias.to(bias_dtype), persistent=False)
        n += 1
    if n:
        _install_compact_rope(model)
        fused_ltx2.install_model_dtype_rope(model)
    return n


def uninstall_fused_blocks(model: nn.Module) -> int:
    """Restore diffusers' block forward on every block :func:`install_fused_blocks` changed; returns how many."""
    n = 0
    for block in _blocks(model):
        if not is_fused(block):
            continue
        for lin in map(q8_of, _linears(block)):
            lin._buffers.pop("bias_out", None)
        del block.forward, block._q8_fused
        n += 1
    _uninstall_compact_rope(model)
    fused_ltx2.uninstall_model_dtype_rope(model)
    return n


def install_if_fast(model: nn.Module, config, device: torch.device | str | None = None) -> int:
    """The hook of ``quantize_``/``load_q8``: install the fused forward when ``config.backend``
    resolves, for ``device`` (default: the model's device), to a backend whose fused ops are single kernels
    (``Backend.fused_blocks``: the triton backend), and the fused FFN forward in the blocks left with diffusers'
    forward (:func:`install_fused_ffns`: blocks that are not fully Q8, or ``attention="keep"``); elsewhere
    diffusers' forward stays. Returns the number of fused blocks. ``device`` is for a model built on the CPU that runs on a
    GPU (CPU offload)."""
    p = next(iter(model.parameters()), None)
    if p is None or not resolve_backend(config.backend, p.device if device is None else device).fused_blocks:
        return 0
    n = 0
    if config.attention != "keep":  # the fused forward runs q8lib's attention core; "keep" means diffusers'
        n = install_fused_blocks(model, config.attention, backend=config.backend,
                                 bias_dtype=getattr(model, "dtype", torch.bfloat16))
    install_fused_ffns(model, config.backend)  # the FFNs of the blocks left with diffusers' forward
    return n
