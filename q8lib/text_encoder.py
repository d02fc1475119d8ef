"""8-bit linears for the text encoders of LTX pipelines: :func:`quantize_text_encoder_`.

LTX-2's text encoder is Gemma 3 (``Gemma3ForConditionalGeneration``, ~12B parameters, most of them in the linears of
its text layers); LTX-Video's is T5 v1.1 XXL (``T5EncoderModel``, 4.8B). Both run once per prompt, before denoising,
and the app frees them before the transformer runs; in 8 bits they need about half the memory while they are loaded.

The recipe is the transformer's (:class:`~q8lib.modules.Q8Linear`: per-channel weight scales, per-token activation
scales, int8 with a Hadamard rotation or fp8_e4m3), applied to the linears of the encoder's transformer layers only:

* Gemma 3 (``Gemma3DecoderLayer``): ``self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj``;
* T5 (``T5Block``): ``layer.0.SelfAttention.{q,k,v,o}`` and ``layer.1.DenseReluDense.{wi_0,wi_1,wo}`` (``wi`` for the
  ungated T5).

Everything else stays as loaded: token embeddings, norms, T5's relative position bias, Gemma's ``lm_head``, vision
tower and multimodal projector (unused by LTX-2's prompt encoding, and small), the rotary tables.

Measured error (tests/test_text_encoder.py): only on tiny random encoders, whose weights have none of the activation
outliers trained encoders have; the error of real Gemma 3 / T5-XXL weights in 8 bits is not measured here.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .config import Q8Config, default_weight_dtype
from .errors import SettingsError, UnsupportedModelError
from .hadamard import check_hadamard_size
from .modules import Q8Linear

__all__ = ["quantize_text_encoder_", "Q8TextLinear", "TEXT_ENCODER_LINEARS", "text_encoder_targets",
           "is_text_encoder_quantized", "auto_hadamard_block"]

# The encoder classes q8lib converts -> the class of their transformer layers, and the linears converted in each layer.
TEXT_ENCODER_LAYERS = {
    "Gemma3ForConditionalGeneration": "Gemma3DecoderLayer",
    "Gemma3Model": "Gemma3DecoderLayer",
    "Gemma3ForCausalLM": "Gemma3DecoderLayer",
    "Gemma3TextModel": "Gemma3DecoderLayer",
    "T5EncoderModel": "T5Block",
}
TEXT_ENCODER_LINEARS = {
    "Gemma3DecoderLayer": tuple(f"self_attn.{p}_proj" for p in "qkvo") + tuple(f"mlp.{p}_proj" for p in
                                                                                ("gate", "up", "down")),
    "T5Block": tuple(f"layer.0.SelfAttention.{p}" for p in "qkvo") + tuple(f"layer.1.DenseReluDense.{p}" for p in
                                                                           ("wi_0", "wi_1", "wi", "wo")),
}

FilterFn = Callable[[nn.Module, str], bool]


def auto_hadamard_block(in_features: int, weight_dtype: str) -> int:
    """The rotation block of a text-encoder linear when no :class:`Q8Config` is given: none (``1``) for fp8_e4m3, as
    for the transformer; for int8 the largest power of two dividing ``in_features`` (the full width where it is a
    power of two, as for the transformer; Gemma 3 12B's 3840-wide inputs get 256, its 15360-wide ``down_proj`` 1024,
    since a Sylvester rotation needs a power-of-two size)."""
    return 1 if weight_dtype == "fp8_e4m3" else in_features & -in_features


class Q8TextLinear(Q8Linear):
    """A :class:`Q8Linear` that answers in the dtype of the ``nn.Linear`` it replaced (``output_dtype``): input
    ``[..., K]`` in any float dtype -> ``[..., N]`` in ``output_dtype``. ``.to(dtype)`` / ``.half()`` change
    ``output_dtype`` as they would have changed that layer's weight (the 8-bit buffers keep their dtype).

    T5 keeps ``wo`` in float32 inside a bf16 or fp16 model (transformers' ``_keep_in_fp32_modules``), and its
    float32 output is what the residual stream gets; a plain Q8Linear would answer in its input's dtype instead."""

    def __init__(self, *args, output_dtype: torch.dtype = torch.float32, **kwargs):
        super().__init__(*args, **kwargs)
        self.output_dtype = output_dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear, qdtype="int8", hadamard_block=None, activation=None, backend="auto"):
        m = super().from_linear(linear, qdtype, hadamard_block, activation, backend)
        m.output_dtype = linear.weight.dtype
        return m

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        probe = fn(torch.empty(0, dtype=self.output_dtype))  # the dtype a float weight of the layer would now have
        if probe.is_floating_point():
            self.output_dtype = probe.dtype
        return out

    def forward(self, x: torch.Tensor, x_scale: torch.Tensor | None = None, out_dtype=None) -> torch.Tensor:
        return super().forward(x, x_scale, out_dtype or self.output_dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", output_dtype={self.output_dtype}"


class _T5FeedForwardQ8(nn.Module):
    """T5's ``DenseReluDense`` (gated ``wi_0``/``wi_1`` or plain ``wi``, activation, dropout, ``wo``) with a Q8 ``wo``.

    transformers' forward casts ``wo``'s input to ``wo.weight.dtype`` unless that is int8 (it is meant for a ``wo``
    kept in float32); a Q8 ``wo`` holding float8_e4m3fn would have its activations cast to fp8 without a scale (NaN
    past 448). This forward is the same math without that cast: the Q8 ``wo`` quantizes its input with per-token
    scales and answers in the replaced ``wo``'s dtype (:class:`Q8TextLinear`)."""

    def __init__(self, ff: nn.Module):
        super().__init__()
        for name, child in ff.named_children():  # wi_0/wi_1 or wi, wo, dropout, act: same names, same state dict keys
            self.add_module(name, child)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "wi_0"):
            h = self.act(self.wi_0(hidden_states)) * self.wi_1(hidden_states)
        else:
            h = self.act(self.wi(hidden_states))
        return self.wo(self.dropout(h))


def is_text_encoder_quantized(text_encoder: nn.Module) -> bool:
    return any(isinstance(m, Q8Linear) for m in text_encoder.modules())


def _layer_class(text_encoder: nn.Module) -> str:
    """The layer class of a supported encoder; :class:`UnsupportedModelError` naming what was found otherwise."""
    name = type(text_encoder).__name__
    if name not in TEXT_ENCODER_LAYERS:
        layers = sorted({type(m).__name__ for m in text_encoder.modules() if type(m).__name__.endswith(("Layer", "Block"))})
        raise UnsupportedModelError(
            f"quantize_text_encoder_ converts the text encoders of LTX-2 (transformers' Gemma 3: "
            f"{', '.join(k for k in TEXT_ENCODER_LAYERS if k.startswith('Gemma'))}) and of LTX-Video (T5EncoderModel), "
            f"got a {name}" + (f" (its layers: {', '.join(layers[:6])})" if layers else "")
            + "; pass pipe.text_encoder of an LTX2Pipeline or LTXPipeline")
    return TEXT_ENCODER_LAYERS[name]


def text_encoder_targets(text_encoder: nn.Module) -> list[tuple[str, list[tuple[str, nn.Linear]]]]:
    """``[(layer name, [(dotted name, nn.Linear), ...]), ...]``: every transformer layer of ``text_encoder`` (in
    order) with the linears :func:`quantize_text_encoder_` converts (:data:`TEXT_ENCODER_LINEARS`)."""
    layer_class = _layer_class(text_encoder)
    out = []
    for name, layer in text_encoder.named_modules():
        if type(layer).__name__ != layer_class:
            continue
        found = []
        for rel in TEXT_ENCODER_LINEARS[layer_class]:
            try:
                m = layer.get_submodule(rel)
            except AttributeError:  # T5: wi (ungated) or wi_0/wi_1 (gated)
                continue
            if isinstance(m, nn.Linear):
                found.append((f"{name}.{rel}", m))
        out.append((name, found))
    if not out:
        raise UnsupportedModelError(f"the {type(text_encoder).__name__} holds no {layer_class} layers to convert")
    return out


def _kept(name: str, keep: tuple[str, ...]) -> bool:
    parts = name.split(".")
    return any(k in parts or name == k or name.startswith(k + ".") for k in keep)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


@torch.no_grad()
def quantize_text_encoder_(text_encoder: nn.Module, config: Q8Config | None = None, filter_fn: FilterFn | None = None,
                           progress: bool = True, *, weight_dtype: str | None = None, backend: str = "auto") -> nn.Module:
    """Swap the linears of a text encoder's transformer layers for 8-bit :class:`Q8TextLinear`, in place, layer by
    layer (the extra memory is one linear's float32 copy). Returns ``text_encoder``.

    Converted (:data:`TEXT_ENCODER_LINEARS`): Gemma 3's attention and MLP projections, T5's attention and
    feed-forward linears; a weight ``[N, K]`` becomes ``Q(W H) [N, K]`` int8 or float8_e4m3fn plus ``scales [N]``.
    Each converted linear takes ``[..., K]`` and returns ``[..., N]`` in the dtype the replaced layer returned.
    Kept as loaded: embeddings, norms, position tables, ``lm_head``, the vision tower and multimodal projector.

    Args:
        text_encoder: transformers' ``Gemma3ForConditionalGeneration`` (LTX-2; also ``Gemma3Model``,
            ``Gemma3ForCausalLM``, ``Gemma3TextModel``) or ``T5EncoderModel`` (LTX-Video), loaded, unquantized.
        config: the weight format (``weight_dtype``, ``hadamard_block`` used for every linear, whose width it must
            divide); its ``keep_high_precision`` names are matched on the encoder's module names too.
        filter_fn: ``filter_fn(linear, dotted_name) -> bool`` picks among the linears above those to convert.
        weight_dtype: instead of ``config``: ``"int8"`` or ``"fp8_e4m3"`` (default as :class:`Q8Config`'s) with the
            rotation block of :func:`auto_hadamard_block` per linear, which takes any width.
        backend: the q8lib backend the linears run on (``"auto"``: fastest for their device).

    Raises :class:`UnsupportedModelError` for other models, :class:`SettingsError` for an already quantized encoder,
    both ``config`` and ``weight_dtype``, or a rotation block that a width cannot take, before any weight changes.

    Accuracy: measured only on tiny random encoders (tests/test_text_encoder.py: the hidden states LTX-2's pipeline
    stacks, and T5's last hidden state, against fp32); random weights have no activation outliers, so the error on
    real Gemma 3 / T5-XXL weights is not measured.
    """
    layers = text_encoder_targets(text_encoder)
    if is_text_encoder_quantized(text_encoder):
        raise SettingsError(f"this {type(text_encoder).__name__} is already quantized (it holds Q8Linear modules); "
                            "quantize_text_encoder_ takes the unquantized text encoder")
    if config is not None and weight_dtype is not None:
        raise SettingsError("pass config or weight_dtype, not both (weight_dtype picks the rotation per linear)")
    if config is not None and not isinstance(config, Q8Config):
        raise SettingsError(f"config must be a q8lib.Q8Config, got {type(config).__name__}")
    if filter_fn is not None and not callable(filter_fn):
        raise SettingsError(f"filter_fn must be a function (module, fqn) -> bool, got {type(filter_fn).__name__}")
    fmt = config.weight_dtype if config is not None else Q8Config(weight_dtype=weight_dtype or default_weight_dtype()).weight_dtype
    keep = config.keep_high_precision if config is not None else ()
    plan, bad = [], []
    for layer_name, linears in layers:
        todo = []
        for name, lin in linears:
            if _kept(name, keep) or (filter_fn is not None and not filter_fn(lin, name)):
                continue
            block = config.hadamard_block if config is not None else auto_hadamard_block(lin.in_features, fmt)
            try:
                check_hadamard_size(lin.in_features, block)
            except SettingsError:
                bad.append(f"{name} (input width {lin.in_features})")
            todo.append((name, lin, block))
        plan.append((layer_name, todo))
    if bad:
        raise SettingsError(f"hadamard_block={config.hadamard_block} cannot rotate {len(bad)} linears of this "
                            f"{type(text_encoder).__name__}: {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}; "
                            "pass a power-of-two hadamard_block dividing every width, or weight_dtype= instead of "
                            "config (the rotation block is then picked per linear)")
    from tqdm.auto import tqdm

    count = 0
    for layer_name, todo in tqdm(plan, desc="q8lib quantize text encoder", disable=not progress, leave=False):
        for name, lin, block in todo:
            _set_submodule(text_encoder, name, Q8TextLinear.from_linear(lin, fmt, block, backend=backend))
            count += 1
            if name.endswith("DenseReluDense.wo"):  # T5: a forward without the cast to wo.weight's dtype
                ff_name = name.rpartition(".")[0]
                _set_submodule(text_encoder, ff_name, _T5FeedForwardQ8(text_encoder.get_submodule(ff_name)))
    text_encoder._q8_text_encoder = dict(weight_dtype=fmt, converted=count,
                                         hadamard_block=config.hadamard_block if config is not None else "auto")
    return text_encoder
