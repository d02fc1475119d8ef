"""peft's LoRA layer for a :class:`~q8lib.modules.Q8Linear`: the adapter runs in the model's float dtype
beside the 8-bit linear, on the float input.

:func:`q8lib.lora.load_lora` registers :class:`Q8LoraLinear` with peft's custom-module API
(``LoraConfig._register_custom_module``), so peft builds it for every ``Q8Linear`` a LoRA targets. Being
a peft ``LoraLayer``, it answers diffusers' and peft's adapter calls (``set_adapters``, ``disable_lora``,
``enable_lora``, ``delete_adapters``, ``unload_lora_weights``, ``fuse_lora``/``unfuse_lora``) like
peft's own ``lora.Linear``. This module imports peft (the optional ``[lora]`` extra).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

from .backends import resolve_backend
from .errors import Q8Warning, SettingsError
from .modules import Q8Linear, quantize_weight

__all__ = ["Q8LoraLinear"]

FUSE_INSTEAD = ("For a LoRA fused without the extra rounding, fuse it into the bf16 model before quantizing: "
                "pipe.load_lora_weights(...); pipe.fuse_lora(); pipe.unload_lora_weights(); "
                "q8lib.quantize_(pipe.transformer, q8lib.Q8Config()).")


class Q8LoraLinear(nn.Module, LoraLayer):
    """``y = act(Q8Linear_pre-activation(x) + Σ scaling_a · B_a A_a x)`` for the active adapters ``a``.

    ``x`` is the float input (the adapter never sees 8-bit codes); the 8-bit part is exactly what the
    wrapped ``Q8Linear`` computes, and its GELU (the FFN up-projection's epilogue) applies after the
    adapter's term, as diffusers applies GELU after the adapted projection. Plain LoRA only (no DoRA or
    other variants). The adapter weights stay in a float dtype (peft would move them to the base
    weight's dtype, float8 included; :func:`q8lib.lora.load_lora` casts them to the model's dtype).

    ``merge`` (diffusers' ``fuse_lora``) dequantizes the 8-bit weight, adds ``B A`` and requantizes: a
    second rounding of every merged weight, and ``unmerge`` rounds again (lossy both ways; a
    :class:`~q8lib.errors.Q8Warning` says so).
    """

    def __init__(self, base_layer: Q8Linear, adapter_name: str, **kwargs):
        # kwargs: what peft passes a custom LoRA layer (r, lora_alpha and a LoraConfig as ``config`` in
        # peft >= 0.19; r, lora_alpha and the config's fields one by one before)
        super().__init__()
        LoraLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, **kwargs)

    def _get_in_out_features(self, module):
        return module.in_features, module.out_features

    def resolve_lora_variant(self, **kwargs):
        if kwargs.get("use_dora") or getattr(kwargs.get("config"), "use_dora", False):
            raise SettingsError("q8lib's LoRA layer for 8-bit linears runs plain LoRA; this adapter uses DoRA")
        variant = super().resolve_lora_variant(**kwargs)
        if variant is not None:
            raise SettingsError(f"q8lib's LoRA layer for 8-bit linears runs plain LoRA, not {type(variant).__name__}")
        return None

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device=None) -> None:
        """Device only: the base weight's dtype is 8-bit (peft would cast the adapter to float8_e4m3fn)."""
        device = device or self.get_base_layer().weight.device
        for name in self.adapter_layer_names:
            layer = getattr(self, name, None)
            if isinstance(layer, nn.ModuleDict) and adapter_name in layer:
                layer[adapter_name] = layer[adapter_name].to(device)

    def _adapters_to_run(self) -> list[str]:
        return [a for a in self.active_adapters if a in self.lora_A]

    def runs_adapter(self) -> bool:
        """Whether ``forward`` does more than the 8-bit linear: an active adapter that is not merged, or
        merged adapters to unmerge because adapters were disabled (peft's rule). :mod:`q8lib.fused` runs
        the unfused block forward then, as only that gives each linear its float input."""
        if self.disable_adapters:
            return self.merged
        return not self.merged and bool(self._adapters_to_run())

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        base = self.get_base_layer()
        if self.disable_adapters and self.merged:
            self.unmerge()
        if not self.runs_adapter():
            return base(x, *args, **kwargs)
        if args or kwargs:
            raise SettingsError("a LoRA adapter needs the linear's float input, not quantized rows; blocks whose "
                                "linears carry an active adapter run diffusers' unfused forward")
        be = resolve_backend(base.backend, base.weight.device)
        x_q, x_s = be.quantize_activation(x, base.qdtype, base.hadamard_block)
        y = be.matmul(x_q, x_s, base.weight, base.scales, base.bias, None, x.dtype)
        for a in self._adapters_to_run():
            lora_a = self.lora_A[a]
            h = self._cast_input_dtype(x, lora_a.weight.dtype)
            y = (y + self.lora_B[a](lora_a(self.lora_dropout[a](h))) * self.scaling[a]).to(x.dtype)
        if base.activation == "gelu_tanh":
            y = F.gelu(y.float(), approximate="tanh").to(x.dtype)
        return y

    # --- fuse_lora / unfuse_lora ---------------------------------------------------------------------
    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``scaling · B A`` in float32, ``[out_features, in_features]``."""
        a, b = self.lora_A[adapter].weight.float(), self.lora_B[adapter].weight.float()
        return (b @ a) * self.scaling[adapter]

    def _delta_bias(self, adapter: str):
        return self.lora_B[adapter].bias.float() * self.scaling[adapter] if self.lora_bias.get(adapter) else None

    @torch.no_grad()
    def _requantize(self, adapters: list[str], sign: float, safe: bool = False) -> None:
        base = self.get_base_layer()
        w = base.dequantized_weight()
        bias = None if base.bias is None else base.bias.float()
        for a in adapters:
            w = w + sign * self.get_delta_weight(a)
            db = self._delta_bias(a)
            if db is not None:
                if bias is None:
                    raise SettingsError(f"adapter {a!r} has a lora_B bias but {type(base).__name__} has none")
                bias = bias + sign * db
        if safe and not torch.isfinite(w).all():
            raise ValueError(f"NaNs or infinities in the merged weights of adapters {adapters}; not merged")
        w_q, w_s = quantize_weight(w, base.qdtype, base.hadamard_block)
        base.weight.copy_(w_q)
        base.scales.copy_(w_s)
        if bias is not None:
            base.bias.copy_(bias)
            if getattr(base, "bias_out", None) is not None:  # the fused block's cast copy
                base.bias_out.copy_(bias.to(base.bias_out.dtype))
        warnings.warn("merging or unmerging a LoRA in 8-bit weights dequantizes, adds and requantizes them: one more "
                      "rounding of each merged weight (lossy). " + FUSE_INSTEAD, Q8Warning, stacklevel=3)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Fold the adapters into the 8-bit weight (dequantize, add, requantize: lossy)."""
        adapters = [a for a in check_adapters_to_merge(self, adapter_names) if a in self.lora_A]
        if adapters:
            self._requantize(adapters, 1.0, safe_merge)
            self.merged_adapters.extend(adapters)

    def unmerge(self) -> None:
        """Take the merged adapters out again (dequantize, subtract, requantize: lossy, not bit-exact)."""
        if self.merged:
            self._requantize(list(self.merged_adapters), -1.0)
            self.merged_adapters.clear()

    def __repr__(self) -> str:
        return "lora." + super().__repr__()
