"""LTX-Video transformer helpers: inspect, quantize in place, convert state dicts, save and load.

The flow follows gpt-fast: build the quantized state dict, swap modules to Q8 skeletons, then
``load_state_dict(assign=True)``. Loading a checkpoint builds the model on the meta device, so
no bf16 copy is ever materialised.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .attention import set_q8_attention
from .config import Q8Config
from .modules import Q8GELU, Q8Linear, Q8RMSNorm, quantize_weight

__all__ = [
    "Q8CheckpointError",
    "check_ltx_transformer",
    "quantize_",
    "convert_state_dict",
    "save_q8",
    "load_q8",
    "quantize_pretrained",
    "inspect_transformer",
    "is_quantized",
    "build_q8_skeleton",
    "activate_q8",
]

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
META_NAME = "q8lib.json"
CONFIG_NAME = "config.json"
# The earlier public Q8 checkpoint: int8 Q(W H) with H over the full input dim, fp32 `scales`.
LEGACY_CONFIG = dict(weight_dtype="int8", hadamard_block=None)


class Q8CheckpointError(ValueError):
    """A checkpoint or model does not match what q8lib expects; the message names what differs."""


def _ltx_classes():
    from diffusers import LTXVideoTransformer3DModel
    from diffusers.models.activations import GELU
    from diffusers.models.normalization import RMSNorm

    return LTXVideoTransformer3DModel, GELU, RMSNorm


def check_ltx_transformer(model: nn.Module) -> None:
    """Raise ``TypeError`` unless ``model`` is a diffusers ``LTXVideoTransformer3DModel``."""
    cls = _ltx_classes()[0]
    if not isinstance(model, cls):
        raise TypeError(f"q8lib converts diffusers LTXVideoTransformer3DModel only, got {type(model).__name__}")


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Q8Linear) for m in model.modules())


def _kept(name: str, config: Q8Config) -> bool:
    parts = name.split(".")
    return any(k in parts for k in config.keep_high_precision)


def _targets(model: nn.Module, config: Q8Config):
    """``(dotted name, module, kind)`` for every module inside the blocks that becomes Q8."""
    _, GELU, RMSNorm = _ltx_classes()
    out = []
    for name, m in model.named_modules():
        if not name.startswith("transformer_blocks.") or _kept(name, config):
            continue
        if isinstance(m, GELU):
            out.append((name, m, "gelu"))
        elif isinstance(m, nn.Linear) and not name.endswith(".proj"):  # GELU's proj goes with its GELU
            out.append((name, m, "linear"))
        elif isinstance(m, RMSNorm):
            out.append((name, m, "norm"))
    return out


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def _skeleton(m: nn.Module, kind: str, config: Q8Config) -> nn.Module:
    """An empty Q8 module (meta device) with the right shapes for ``m``."""
    q = dict(qdtype=config.qdtype, hadamard_block=config.hadamard_block, backend=config.backend, device="meta")
    if kind == "linear":
        return Q8Linear(m.in_features, m.out_features, m.bias is not None, **q)
    if kind == "gelu":
        if m.approximate != "tanh":
            raise Q8CheckpointError(f"only tanh-GELU feed-forwards are supported, got approximate={m.approximate!r}")
        return Q8GELU(Q8Linear(m.proj.in_features, m.proj.out_features, m.proj.bias is not None,
                               activation="gelu_tanh", **q))
    return Q8RMSNorm.from_norm(m, backend=config.backend)


def _skeleton_named(name, m, kind, config):
    try:
        return _skeleton(m, kind, config)
    except ValueError as e:
        raise ValueError(f"cannot convert {name} ({type(m).__name__}): {e}") from e


def _quantize_linear_state(prefix: str, linear: nn.Linear, config: Q8Config, out: dict) -> None:
    w_q, w_s = quantize_weight(linear.weight.detach(), config.qdtype, config.hadamard_block)
    out[prefix + "weight"], out[prefix + "scales"] = w_q, w_s
    if linear.bias is not None:
        out[prefix + "bias"] = linear.bias.detach().float()


@torch.no_grad()
def quantize_(model: nn.Module, config: Q8Config | None = None, progress: bool = True) -> nn.Module:
    """Quantize a loaded LTX transformer in place (block by block, so the extra memory is one block).

    Linears and the GELU projection of every block become :class:`Q8Linear` (8-bit, Hadamard-rotated),
    ``norm1``/``norm2`` become :class:`Q8RMSNorm`, and the attention processors are swapped for
    :class:`~q8lib.attention.Q8AttnProcessor` (unless ``config.attention == "keep"``). Modules in
    ``config.keep_high_precision`` are left alone. Returns ``model``.
    """
    check_ltx_transformer(model)
    if is_quantized(model):
        raise ValueError("model is already quantized")
    config = config or Q8Config()
    targets = _targets(model, config)
    from tqdm.auto import tqdm

    # Build every (meta-device) skeleton first: an unsupported shape fails before anything changes.
    targets = [(name, m, kind, _skeleton_named(name, m, kind, config)) for name, m, kind in targets]
    for name, m, kind, new in tqdm(targets, desc="q8lib quantize", disable=not progress, leave=False):
        state = {}
        if kind == "linear":
            _quantize_linear_state("", m, config, state)
        elif kind == "gelu":
            _quantize_linear_state("proj.", m.proj, config, state)
        else:
            state = {k: v.detach().clone() for k, v in m.state_dict().items()}
        new.load_state_dict(state, strict=True, assign=True)
        _set_submodule(model, name, new)
    activate_q8(model, config)
    return model


def build_q8_skeleton(transformer_config: dict, config: Q8Config | None = None) -> nn.Module:
    """An LTX transformer on the meta device (no memory) whose blocks already hold empty Q8 modules.

    Fill it with ``load_state_dict(state, assign=True)`` (or assign tensors yourself), then call
    :func:`activate_q8` to install the Q8 attention and, where a fast backend runs, the fused blocks.
    """
    config = config or Q8Config()
    with torch.device("meta"):
        model = _ltx_classes()[0].from_config(_plain_config(transformer_config))
        for name, m, kind in _targets(model, config):
            _set_submodule(model, name, _skeleton_named(name, m, kind, config))
    return model


def activate_q8(model: nn.Module, config: Q8Config) -> None:
    """Record ``config`` on a filled Q8 model and install its runtime pieces (attention, fused blocks)."""
    model._q8_config = config
    if config.attention != "keep":
        set_q8_attention(model, fp8=config.attention == "fp8", backend=config.backend)
    from .fused import install_if_fast  # fused block forward where the triton backend runs

    install_if_fast(model, config)


@torch.no_grad()
def convert_state_dict(state_dict: dict, transformer_config: dict, config: Q8Config | None = None) -> dict:
    """Convert a bf16/fp32 LTX transformer state dict to the q8lib layout (no model weights materialised twice).

    ``transformer_config`` is the model's ``config.json`` dict. Raises :class:`Q8CheckpointError`
    naming missing or unexpected keys.
    """
    config = config or Q8Config()
    LTX = _ltx_classes()[0]
    with torch.device("meta"):
        model = LTX.from_config(_plain_config(transformer_config))
    _check_keys(set(model.state_dict()), set(state_dict), "bf16 LTX state dict")
    out = dict(state_dict)
    for name, m, kind in _targets(model, config):
        if kind == "norm":
            continue
        lin_name = name + ".proj" if kind == "gelu" else name
        w = state_dict[lin_name + ".weight"]
        b = state_dict.get(lin_name + ".bias")
        lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
        lin.weight = nn.Parameter(w, requires_grad=False)
        if b is not None:
            lin.bias = nn.Parameter(b, requires_grad=False)
        _quantize_linear_state(lin_name + ".", lin, config, out)
    return out


def _plain_config(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _check_keys(expected: set, found: set, what: str) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        def show(keys):
            return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        msg = [f"{what} does not match the LTX transformer layout."]
        if missing:
            msg.append(f"Missing {len(missing)} keys: {show(missing)}.")
        if unexpected:
            msg.append(f"Unexpected {len(unexpected)} keys: {show(unexpected)}.")
        raise Q8CheckpointError(" ".join(msg))


def save_q8(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``config.json``, ``diffusion_pytorch_model.safetensors`` and ``q8lib.json`` to ``path``."""
    from safetensors.torch import save_file

    check_ltx_transformer(model)
    config = getattr(model, "_q8_config", None)
    if config is None or not is_quantized(model):
        raise ValueError("save_q8 needs a model quantized by q8lib (quantize_ or load_q8)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_config(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, path / WEIGHTS_NAME, metadata={"format": "pt", "producer": "q8lib"})
    (path / META_NAME).write_text(json.dumps(config.to_metadata(), indent=2) + "\n")
    return path


def _resolve_dir(path_or_repo: str | os.PathLike, subfolder: str | None, local_files_only: bool | None) -> Path:
    local = Path(path_or_repo)
    if local.is_dir():
        d = local / subfolder if subfolder else local
        if not d.is_dir():
            raise Q8CheckpointError(f"{d} does not exist")
        return d
    repo = str(path_or_repo)
    if repo.count("/") != 1 or repo.startswith((".", "/")):
        raise Q8CheckpointError(f"{repo!r} is neither a local directory nor a hub repo id like 'owner/name'")
    from huggingface_hub import snapshot_download

    prefix = f"{subfolder}/" if subfolder else ""
    patterns = [prefix + p for p in (CONFIG_NAME, META_NAME, "*.safetensors", "*.safetensors.index.json")]
    try:
        root = snapshot_download(repo, allow_patterns=patterns, local_files_only=bool(local_files_only))
    except Exception as e:  # offline, not found, gated ...
        raise Q8CheckpointError(
            f"Could not fetch {repo!r} from the Hugging Face Hub ({type(e).__name__}: {e}). "
            "Check the repo id and your network (HF_HUB_OFFLINE must be unset to download), or pass a "
            "local directory. Offline, use the embedded tiny default (q8lib.tiny)."
        ) from e
    return Path(root) / subfolder if subfolder else Path(root)


def _read_safetensors(d: Path) -> dict:
    from safetensors.torch import load_file

    if (d / WEIGHTS_NAME).exists():
        return load_file(d / WEIGHTS_NAME)
    if (d / INDEX_NAME).exists():
        files = sorted(set(json.loads((d / INDEX_NAME).read_text())["weight_map"].values()))
        state = {}
        for f in files:
            state.update(load_file(d / f))
        return state
    raise Q8CheckpointError(f"no {WEIGHTS_NAME} (or sharded index) in {d}")


def _read_q8_config(d: Path, state: dict, **runtime) -> tuple[Q8Config, bool]:
    """The checkpoint's Q8Config and whether it is the earlier public (legacy) layout."""
    if (d / META_NAME).exists():
        try:
            return Q8Config.from_metadata(json.loads((d / META_NAME).read_text()), **runtime), False
        except ValueError as e:
            raise Q8CheckpointError(f"{d / META_NAME}: {e}") from e
    if any(k.endswith(".scales") for k in state):
        return Q8Config(**LEGACY_CONFIG, **runtime), True
    raise Q8CheckpointError(
        f"{d} holds no q8lib.json and no '.scales' tensors: it is not a Q8 checkpoint. "
        "To quantize a bf16 checkpoint use q8lib.quantize_pretrained(...)."
    )


@torch.no_grad()
def load_q8(
    path_or_repo: str | os.PathLike,
    subfolder: str | None = None,
    device: str | torch.device = "cpu",
    torch_dtype: torch.dtype = torch.bfloat16,
    backend: str = "auto",
    attention: str = "fp8",
    local_files_only: bool | None = None,
):
    """Load a Q8 LTX transformer from a q8lib checkpoint or the earlier public layout.

    ``path_or_repo`` is a local directory or a hub repo id (e.g. ``"sayakpaul/q8-ltx-video"``).
    The model is built on the meta device, swapped to Q8 modules and filled with
    ``load_state_dict(assign=True)``. High-precision tensors are cast to ``torch_dtype``; 8-bit
    weights, scales and biases keep their dtypes. Raises :class:`Q8CheckpointError` on any mismatch.
    """
    d = _resolve_dir(path_or_repo, subfolder, local_files_only)
    if not (d / CONFIG_NAME).exists():
        raise Q8CheckpointError(f"no {CONFIG_NAME} in {d}")
    cfg = json.loads((d / CONFIG_NAME).read_text())
    if cfg.get("_class_name", "LTXVideoTransformer3DModel") != "LTXVideoTransformer3DModel":
        raise Q8CheckpointError(f"{d} holds a {cfg['_class_name']}, not an LTXVideoTransformer3DModel")
    state = _read_safetensors(d)
    config, _legacy = _read_q8_config(d, state, backend=backend, attention=attention)
    model = build_q8_skeleton(cfg, config)
    expected = model.state_dict()
    _check_keys(set(expected), set(state), f"checkpoint {d}")
    q8_keys = _q8_buffer_keys(model)
    for k, want in expected.items():
        got = state[k]
        if tuple(got.shape) != tuple(want.shape):
            raise Q8CheckpointError(f"{k}: checkpoint shape {tuple(got.shape)} != model shape {tuple(want.shape)}")
        if k in q8_keys:
            if got.dtype != want.dtype:
                raise Q8CheckpointError(f"{k}: checkpoint dtype {got.dtype}, expected {want.dtype} for {config.weight_dtype}")
        elif got.is_floating_point():
            state[k] = got.to(torch_dtype)
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise Q8CheckpointError(f"tensors left uninitialised after loading: {left[:8]}")
    model.to(device)
    model.eval()
    activate_q8(model, config)
    return model


def _q8_buffer_keys(model: nn.Module) -> set:
    keys = set()
    for name, m in model.named_modules():
        if isinstance(m, Q8Linear):
            keys.update(f"{name}.{b}" for b, t in m._buffers.items() if t is not None)
    return keys


def quantize_pretrained(
    repo_or_path: str = "Lightricks/LTX-Video",
    subfolder: str | None = "transformer",
    config: Q8Config | None = None,
    device: str | torch.device = "cpu",
    torch_dtype: torch.dtype = torch.bfloat16,
    **from_pretrained_kwargs,
):
    """Load a bf16 diffusers LTX transformer (hub id or local dir) and quantize it on the fly.

    The conversion runs on ``device`` (a GPU converts the 2B model in seconds).
    """
    LTX = _ltx_classes()[0]
    try:
        model = LTX.from_pretrained(repo_or_path, subfolder=subfolder, torch_dtype=torch_dtype, **from_pretrained_kwargs)
    except OSError as e:
        raise Q8CheckpointError(
            f"Could not load the LTX transformer from {repo_or_path!r} (subfolder={subfolder!r}): {e}. "
            "Download needs network access (HF_HUB_OFFLINE unset); offline, use the tiny default (q8lib.tiny)."
        ) from e
    return quantize_(model.to(device).eval(), config)


# ------------------------------------------------------------------------------------------------
@dataclass
class InspectReport:
    """What :func:`inspect_transformer` found: parameters and forward FLOPs per module type."""

    params: dict = field(default_factory=dict)  # module type -> parameter count
    flops: dict = field(default_factory=dict)  # module type -> FLOPs per forward
    converted: list = field(default_factory=list)  # dotted names that become Q8
    kept: list = field(default_factory=list)  # dotted names of linears kept in high precision
    shape: dict = field(default_factory=dict)

    @property
    def total_params(self):
        return sum(self.params.values())

    @property
    def total_flops(self):
        return sum(self.flops.values())

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
    config = config or Q8Config()
    rep = InspectReport(shape=dict(num_tokens=num_tokens, text_tokens=text_tokens, batch=batch))
    converted = {n for n, _, _ in _targets(model, config)}
    converted |= {n for n, m in model.named_modules() if isinstance(m, (Q8Linear, Q8GELU, Q8RMSNorm))}
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
        elif name in converted and not isinstance(m, Q8GELU):
            rep.converted.append(name)  # norms
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
