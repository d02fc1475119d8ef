"""What an LTX-Video transformer holds: parameters and forward FLOPs per module type, and which modules Q8 converts."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .config import Q8Config
from .convert import check_ltx_transformer, config_for, modules_to_convert
from .modules import Q8GELU, Q8Linear, Q8RMSNorm

__all__ = ["InspectReport", "inspect_transformer"]


@dataclass
class InspectReport:
    """What :func:`inspect_transformer` found: parameters and forward FLOPs per module type."""

    params: dict = field(default_factory=dict)  # module type -> parameter count
    flops: dict = field(default_factory=dict)  # module type -> FLOPs per forward
    converted: list = field(default_factory=list)  # dotted names that become Q8 (GELUs as their projection)
    kept: list = field(default_factory=list)  # dotted names of linears kept in high precision
    shape: dict = field(default_factory=dict)

    @property
    def total_params(self):
        return sum(self.params.values())

    @property
    def total_flops(self):
        return sum(self.flops.values())

    def converted_by_kind(self) -> dict:
        """``{kind: count}`` of :attr:`converted`: self-/cross-attention and feed-forward linears (a GELU counts
        once, as its projection, which runs with the GELU fused) and block norms; what ``quantize_`` replaces."""
        counts: dict = {}
        for name in self.converted:
            kind = "feed-forward linear" if ".ff." in name else _kind(name, None)
            kind = {"norms": "block norm", "NoneType": "other module"}.get(kind, kind)
            counts[kind] = counts.get(kind, 0) + 1
        order = ("self-attn linear", "cross-attn linear", "feed-forward linear", "block norm")
        return dict(sorted(counts.items(), key=lambda kc: (order.index(kc[0]) if kc[0] in order else len(order), kc[0])))

    def converted_summary(self) -> str:
        """One line: how many modules Q8 converts, by kind, and per block where every block holds the same."""
        counts = self.converted_by_kind()
        blocks = {n.split(".")[1] for n in self.converted if n.startswith("transformer_blocks.")}
        n = len(blocks)
        per_block = bool(n) and all(c % n == 0 for c in counts.values()) and all(
            name.startswith("transformer_blocks.") for name in self.converted)
        each = {k: c // n if per_block else c for k, c in counts.items()}
        parts = ", ".join(f"{c} {k}{'s' if c != 1 else ''}" for k, c in each.items())
        if per_block:
            return f"{len(self.converted)} converted modules = {n} blocks x {len(self.converted) // n} ({parts})"
        return f"{len(self.converted)} converted modules ({parts})"

    def table(self) -> str:
        rows = [f"{'module type':<28}{'params':>14}{'share':>8}{'GFLOP/fwd':>14}{'share':>8}"]
        for k in sorted(set(self.params) | set(self.flops), key=lambda k: (-self.flops.get(k, 0), k)):
            p, f = self.params.get(k, 0), self.flops.get(k, 0)
            rows.append(f"{k:<28}{p:>14,}{p / self.total_params:>8.1%}{f / 1e9:>14.1f}{f / max(self.total_flops, 1):>8.1%}")
        rows.append(f"{'total':<28}{self.total_params:>14,}{'':>8}{self.total_flops / 1e9:>14.1f}")
        return "\n".join(rows)


def inspect_transformer(model: nn.Module, num_tokens: int = 3630, text_tokens: int = 128, batch: int = 2,
                        config: Q8Config | None = None) -> InspectReport:
    """Parameter counts and FLOPs per forward by module type, and which modules Q8 converts.

    FLOPs count multiply-adds as 2 at ``batch`` x ``num_tokens`` video tokens and ``text_tokens``
    text tokens: linears on the text side (``caption_projection``, cross-attention ``to_k``/``to_v``)
    see text tokens, ``time_embed`` one token per sample, everything else video tokens.
    Works on meta-device models too.
    """
    check_ltx_transformer(model)
    config = config_for(config or Q8Config(), type(model).__name__)
    rep = InspectReport(shape=dict(num_tokens=num_tokens, text_tokens=text_tokens, batch=batch))
    targets = modules_to_convert(model, config)
    converted = {n for n, _, _ in targets}
    converted |= {n for n, m in model.named_modules() if isinstance(m, (Q8Linear, Q8GELU, Q8RMSNorm))}
    norms = {n for n, _, kind in targets if kind == "norm"}
    for name, m in model.named_modules():
        kind = _kind(name, m)
        for pname, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            k = "scale_shift_table" if pname == "scale_shift_table" else kind
            rep.params[k] = rep.params.get(k, 0) + t.numel()
        if isinstance(m, (nn.Linear, Q8Linear)):
            if name.startswith("caption_projection") or name.endswith(("attn2.to_k", "attn2.to_v")):
                tokens = batch * text_tokens
            elif name.startswith("time_embed"):
                tokens = batch
            else:
                tokens = batch * num_tokens
            rep.flops[kind] = rep.flops.get(kind, 0) + 2 * tokens * m.in_features * m.out_features
            owner = name[: -len(".proj")] if name.endswith(".proj") else name
            (rep.converted if owner in converted or name in converted else rep.kept).append(name)
        elif type(m).__name__ == "LTXAttention":
            sk = text_tokens if name.endswith("attn2") else num_tokens
            rep.flops["attention (softmax(QKᵀ)V)"] = rep.flops.get("attention (softmax(QKᵀ)V)", 0) + (
                4 * batch * m.heads * num_tokens * sk * m.head_dim)
        elif name in norms or isinstance(m, Q8RMSNorm):
            rep.converted.append(name)  # block norms; a GELU is listed as its projection, the linear above
    return rep


def _kind(name: str, m: nn.Module) -> str:
    if name.endswith(("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")):
        return "self-attn linear"
    if name.endswith(("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")):
        return "cross-attn linear"
    if ".ff." in name and isinstance(m, (nn.Linear, Q8Linear)):
        return "feed-forward linear"
    if "norm" in name.rsplit(".", 1)[-1]:
        return "norms"
    top = name.split(".")[0]
    return top if top in ("proj_in", "proj_out", "time_embed", "caption_projection") else type(m).__name__
