"""What an LTX-Video transformer holds: parameters and forward FLOPs per module type, and which modules Q8 converts.

:func:`inspect_transformer` reads LTX-Video 0.9.x (one stream, two attentions per block); :func:`ltx2_layout` reads
LTX-2's block (two streams, six attentions, two FFNs: :mod:`q8lib.ltx2`) part by part.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .config import Q8Config
from .convert import check_ltx_transformer, config_for, modules_to_convert
from .errors import UnsupportedModelError
from .ltx2 import LTX2_CLASS_NAME, is_ltx2
from .modules import Q8GELU, Q8Linear, Q8RMSNorm

__all__ = ["InspectReport", "inspect_transformer", "LTX2_BLOCK_PARTS", "LTX2Layout", "ltx2_layout"]


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


# The children of diffusers' LTX2VideoTransformerBlock that compute, in forward order, and what each does. Each
# attention and FFN has its own RMSNorm before it (``norm1`` before ``attn1``, ..., ``audio_norm3`` before
# ``audio_ff``).
LTX2_BLOCK_PARTS = {
    "attn1": "video self-attention",
    "audio_attn1": "audio self-attention",
    "attn2": "video cross-attention to the text",
    "audio_attn2": "audio cross-attention to the text",
    "audio_to_video_attn": "video queries, audio keys/values (a2v)",
    "video_to_audio_attn": "audio queries, video keys/values (v2a)",
    "ff": "video feed-forward (GELU-tanh MLP)",
    "audio_ff": "audio feed-forward (GELU-tanh MLP)",
}


@dataclass
class LTX2Layout:
    """What :func:`ltx2_layout` found: one block part by part, and the whole model's 8-bit and kept modules."""

    num_layers: int
    rows: list  # block 0, one dict per part: part, role, q8 (relative names), kept (relative names), params
    converted: list  # dotted names of the modules q8lib makes 8-bit (a GELU by its own name), whole model
    kept_linears: list  # dotted names of the nn.Linear layers that stay high precision, whole model
    params: dict  # where the parameters are: 8-bit modules / kept in the blocks / outside the blocks

    def converted_by_kind(self) -> dict:
        """``{kind: count}`` of :attr:`converted` over the whole model."""
        counts: dict = {}
        for name in self.converted:
            if name.count(".") == 2:  # transformer_blocks.<i>.<norm>: the block's own norms
                kind = "block norms"
            elif name.endswith("net.0"):
                kind = "FFN up-projections (GELU fused in)"
            elif name.endswith("net.2"):
                kind = "FFN down-projections"
            else:
                kind = "attention linears"
            counts[kind] = counts.get(kind, 0) + 1
        order = ("attention linears", "FFN up-projections (GELU fused in)", "FFN down-projections", "block norms")
        return dict(sorted(counts.items(), key=lambda kc: order.index(kc[0])))

    def block_table(self) -> str:
        """One line per part of a block: what it does, which of its modules become 8-bit, which stay."""
        rows = [f"{'part':<21}{'what it does':<41}{'8-bit in q8lib':<25}{'stays high precision':<30}{'params':>8}"]
        for r in self.rows:
            q8 = " ".join(r["q8"]) or "-"
            kept = " ".join(r["kept"]) or "-"
            rows.append(f"{r['part']:<21}{r['role']:<41}{q8:<25}{kept:<30}{r['params']:>8,}")
        return "\n".join(rows)

    def summary(self) -> str:
        """Counts over the whole model: the 8-bit modules by kind, the kept linears, the parameter split."""
        n = self.num_layers
        kinds = ", ".join(f"{c // n} {k}" for k, c in self.converted_by_kind().items())
        inside = [k for k in self.kept_linears if k.startswith("transformer_blocks.")]
        gates = sorted({k.rsplit(".", 1)[-1] for k in inside})
        total = sum(self.params.values())
        return "\n".join([
            f"8-bit: {len(self.converted)} modules = {n} blocks x {len(self.converted) // n} ({kinds})",
            f"kept high precision: {len(self.kept_linears) - len(inside)} linears outside the blocks, {len(inside)} "
            f"inside them" + (f" ({', '.join(gates)})" if gates else ""),
            "parameters: " + ", ".join(f"{k} {v:,} ({v / max(total, 1):.1%})" for k, v in self.params.items()),
        ])


def _q8_names(model: nn.Module, config: Q8Config | None) -> list[str]:
    """The modules q8lib converts: the Q8 modules of a converted model, else those ``config`` would convert."""
    if any(isinstance(m, Q8Linear) for m in model.modules()):
        gelus = {n for n, m in model.named_modules() if isinstance(m, Q8GELU)}
        return [n for n, m in model.named_modules() if isinstance(m, (Q8GELU, Q8RMSNorm))
                or (isinstance(m, Q8Linear) and n.rpartition(".")[0] not in gelus)]
    return [n for n, _, _ in modules_to_convert(model, config_for(config or Q8Config(), LTX2_CLASS_NAME))]


def ltx2_layout(model: nn.Module, config: Q8Config | None = None) -> LTX2Layout:
    """Part by part, what one LTX-2 block holds and what q8lib makes of it (``config``'s keep list; default
    :data:`~q8lib.config.KEEP_HIGH_PRECISION_LTX2`), and the whole model's 8-bit modules, kept linears and parameter
    split. ``model``: diffusers' ``LTX2VideoTransformer3DModel``, unquantized (on any device, the meta device
    too) or converted by :func:`q8lib.quantize_` (then its Q8 modules are what is converted). Parameters count
    elements of parameters and buffers (an 8-bit weight as its elements; the Q8 modules' ``scales`` are not counted).
    """
    check_ltx_transformer(model)
    if not is_ltx2(model):
        raise UnsupportedModelError(f"ltx2_layout reads {LTX2_CLASS_NAME}, got {type(model).__name__}; "
                                    "inspect_transformer reads LTX-Video 0.9.x")
    converted = _q8_names(model, config)
    targets = set(converted)

    def within(name):  # the module itself or one of its parents is converted
        parts = name.split(".")
        return any(".".join(parts[:i]) in targets for i in range(1, len(parts) + 1))

    def own(m):  # elements of a module's own tensors, without the Q8 scales
        tensors = list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False))
        return sum(t.numel() for tname, t in tensors if not (isinstance(m, Q8Linear) and tname == "scales"))

    def count(module):
        return sum(own(m) for m in module.modules())

    kept = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not within(n)]
    params = {"8-bit modules": 0, "kept, in the blocks": 0, "kept, outside the blocks": 0}
    for name, m in model.named_modules():
        where = ("8-bit modules" if within(name) else "kept, in the blocks"
                 if name.startswith("transformer_blocks.") else "kept, outside the blocks")
        params[where] += own(m)
    rows, prefix = [], "transformer_blocks.0."
    block = model.transformer_blocks[0]
    for part, role in LTX2_BLOCK_PARTS.items():
        full, sub = prefix + part, block.get_submodule(part)
        rows.append(dict(part=part, role=role, params=count(sub),
                         q8=[n[len(full) + 1:] for n in converted if n.startswith(full + ".")],
                         kept=[n[len(full) + 1:] for n in kept if n.startswith(full + ".")]
                         + [c for c, _ in sub.named_children() if c.startswith("norm_")]))
    norms = [n[len(prefix):] for n in converted if n.startswith(prefix) and "." not in n[len(prefix):]]
    rows.append(dict(part=f"{len(norms)} block norms", role="RMSNorm before each attention and FFN",
                     q8=[f"all {len(norms)}"] if norms else [], kept=[],
                     params=sum(count(block.get_submodule(n)) for n in norms)))
    tables = dict(block.named_parameters(recurse=False))
    rows.append(dict(part="block tables", role="AdaLN scale/shift/gate tables", q8=[], kept=[f"{len(tables)} tables"],
                     params=sum(t.numel() for t in tables.values())))
    return LTX2Layout(num_layers=len(model.transformer_blocks), rows=rows, converted=converted, kept_linears=kept,
                      params=params)
