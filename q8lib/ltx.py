"""LTX-Video transformer helpers: inspect, quantize in place, convert state dicts, save and load.

The flow follows gpt-fast: build the quantized state dict, swap modules to Q8 skeletons, then
``load_state_dict(assign=True)``. Loading a checkpoint builds the model on the meta device, so
no bf16 copy is ever materialised.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .attention import check_fp8_attention, set_q8_attention
from .config import Q8Config
from .errors import Q8CheckpointError, SettingsError, UnsupportedModelError
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
    "check_q8_config",
    "check_checkpoint_source",
]

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
META_NAME = "q8lib.json"
CONFIG_NAME = "config.json"
# The earlier public Q8 checkpoint: int8 Q(W H) with H over the full input dim, fp32 `scales`.
LEGACY_CONFIG = dict(weight_dtype="int8", hadamard_block=None)


def _ltx_classes():
    from diffusers import LTXVideoTransformer3DModel
    from diffusers.models.activations import GELU
    from diffusers.models.normalization import RMSNorm

    return LTXVideoTransformer3DModel, GELU, RMSNorm


def check_ltx_transformer(model: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` (a ``TypeError``) unless ``model`` is a diffusers ``LTXVideoTransformer3DModel``."""
    cls = _ltx_classes()[0]
    if not isinstance(model, cls):
        raise UnsupportedModelError(f"q8lib converts diffusers LTXVideoTransformer3DModel only, got {type(model).__name__}; "
                                    "pass pipe.transformer of an LTXPipeline")


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
    except Q8CheckpointError:
        raise
    except ValueError as e:
        raise SettingsError(f"cannot convert {name} ({type(m).__name__}) with hadamard_block={config.hadamard_block}: "
                            f"{e}") from None


def check_q8_config(transformer_config: dict, config: Q8Config) -> None:
    """Raise :class:`SettingsError` if ``config`` cannot convert a transformer with ``transformer_config``
    (a rotation block that does not divide a width, a head size FP8 attention cannot rotate).

    Builds the model on the meta device only: no memory, no weights, milliseconds.
    """
    build_q8_skeleton(transformer_config, config)


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
        raise SettingsError("model is already quantized; quantize_ takes the unquantized transformer")
    config = config or Q8Config()
    if not isinstance(config, Q8Config):
        raise SettingsError(f"config must be a q8lib.Q8Config, got {type(config).__name__}")
    if config.attention == "fp8":
        check_fp8_attention(model)
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
        if config.attention == "fp8":
            check_fp8_attention(model)
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
        raise SettingsError("save_q8 needs a model quantized by q8lib (quantize_ or load_q8)")
    from .outputs import atomic_path, check_output_dir

    path = check_output_dir(path, "save_q8 folder")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # Each file is written under a temporary name and renamed into place; q8lib.json goes last, so a
    # folder with it is complete, and the weights say who wrote them even without it (load_q8 checks).
    with atomic_path(path / CONFIG_NAME) as tmp:
        tmp.write_text(model.to_json_string())  # what diffusers' save_config writes
    with atomic_path(path / WEIGHTS_NAME) as tmp:
        save_file(state, tmp, metadata={"format": "pt", "producer": "q8lib"})
    with atomic_path(path / META_NAME) as tmp:
        tmp.write_text(json.dumps(config.to_metadata(), indent=2) + "\n")
    return path


def _resolve_dir(path_or_repo: str | os.PathLike, subfolder: str | None, local_files_only: bool | None) -> Path:
    local = Path(path_or_repo).expanduser()
    if local.is_dir():
        d = local / subfolder if subfolder else local
        if not d.is_dir():
            raise Q8CheckpointError(f"{d} does not exist (checkpoint subfolder {subfolder!r})")
        return d
    repo = str(path_or_repo)
    if local.exists():
        raise Q8CheckpointError(f"{repo!r} is a file; a Q8 checkpoint is a folder (config.json, safetensors, q8lib.json)")
    if repo.count("/") != 1 or repo.startswith((".", "/", "~")):
        raise Q8CheckpointError(f"{repo!r} is neither a local directory nor a hub repo id like 'owner/name'")
    from huggingface_hub import snapshot_download

    prefix = f"{subfolder}/" if subfolder else ""
    patterns = [prefix + p for p in (CONFIG_NAME, META_NAME, "*.safetensors", "*.safetensors.index.json")]
    try:
        root = snapshot_download(repo, allow_patterns=patterns, local_files_only=bool(local_files_only))
    except Exception as e:  # offline, not found, gated ...
        raise Q8CheckpointError(
            f"Could not fetch {repo!r} from the Hugging Face Hub ({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}). "
            "Check the repo id and your network (HF_HUB_OFFLINE must be unset to download), or pass a "
            "local directory. Offline, use the embedded tiny default (q8lib.tiny)."
        ) from None
    return Path(root) / subfolder if subfolder else Path(root)


def check_checkpoint_source(path_or_repo: str | os.PathLike, subfolder: str | None = None) -> None:
    """Cheap checks of a checkpoint argument before anything else loads: a local folder must exist and
    hold ``config.json``; anything else must look like a hub id (``owner/name``). Raises :class:`Q8CheckpointError`."""
    local = Path(path_or_repo).expanduser()
    if local.is_dir():  # read every header (not the tensors): a broken file fails here, not after other loading
        d = _resolve_dir(local, subfolder, True)
        if not (d / CONFIG_NAME).is_file():
            raise Q8CheckpointError(f"no {CONFIG_NAME} in {d}: not a Q8 checkpoint folder")
        _read_json(d / CONFIG_NAME)
        if (d / META_NAME).exists():
            _read_q8_config(d, {}, {})
        for f in _safetensors_files(d):
            _load_safetensors(f, tensors=False)
        return
    repo = str(path_or_repo)
    if local.exists() or repo.count("/") != 1 or repo.startswith((".", "/", "~")):
        _resolve_dir(path_or_repo, subfolder, True)  # raises with the reason


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Q8CheckpointError(f"{path}: not readable JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise Q8CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _load_safetensors(f: Path, tensors: bool = True) -> tuple[dict, dict]:
    """Tensors (unless ``tensors=False``: the header alone) and header metadata of one safetensors file;
    :class:`Q8CheckpointError` naming it if unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(f, framework="pt") as fh:
            meta = fh.metadata() or {}
            return ({k: fh.get_tensor(k) for k in fh.keys()} if tensors else {}), meta
    except Exception as e:  # truncated, not safetensors, unknown dtype ...: safetensors raises several types
        raise Q8CheckpointError(f"{f}: not a readable safetensors file ({type(e).__name__}: {e}); "
                                "the file may be truncated: download or convert it again") from None


def _read_safetensors(d: Path) -> tuple[dict, dict, list[Path]]:
    """``(state, metadata of the first file, files)`` of a folder's single or sharded safetensors weights."""
    files = _safetensors_files(d)
    state, first_meta = {}, None
    for f in files:
        tensors, meta = _load_safetensors(f)
        state.update(tensors)
        first_meta = meta if first_meta is None else first_meta
    return state, first_meta or {}, files


def _safetensors_files(d: Path) -> list[Path]:
    """The weight files of a folder: the single file, or the shards its index names (checked to exist)."""
    if (d / WEIGHTS_NAME).exists():
        files = [d / WEIGHTS_NAME]
    elif (d / INDEX_NAME).exists():
        index = _read_json(d / INDEX_NAME)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise Q8CheckpointError(f"{d / INDEX_NAME}: key 'weight_map' must map tensor names to file names")
        files = [d / f for f in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise Q8CheckpointError(f"{d / INDEX_NAME} names {f.name}, which is not in {d}")
    else:
        raise Q8CheckpointError(f"no {WEIGHTS_NAME} (or sharded index) in {d}")
    return files


def _read_q8_config(d: Path, state: dict, header: dict, **runtime) -> tuple[Q8Config, bool]:
    """The checkpoint's Q8Config and whether it is the earlier public (legacy) layout."""
    if (d / META_NAME).exists():
        try:
            return Q8Config.from_metadata(_read_json(d / META_NAME), **runtime), False
        except SettingsError as e:
            raise Q8CheckpointError(f"{d / META_NAME}: {e}") from None
    if header.get("producer") == "q8lib":
        # Written by q8lib, whose layout (rotation block, 8-bit type) only q8lib.json records: guessing
        # the earlier public layout here would load silently wrong weights.
        raise Q8CheckpointError(
            f"{d} was written by q8lib but its {META_NAME} is missing (an interrupted copy?); copy it from the "
            "original folder, or convert the checkpoint again")
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
    weights, scales and biases keep their dtypes. Raises :class:`Q8CheckpointError` naming the
    file and the key on any mismatch (unreadable or truncated files, malformed JSON, wrong shapes
    or dtypes, non-finite scales).
    """
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise SettingsError(f"device {device!r} names no device; use 'cpu', 'cuda' or 'cuda:N'") from None
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point or torch_dtype.itemsize < 2:
        raise SettingsError(f"torch_dtype must be torch.bfloat16, torch.float16 or torch.float32, got {torch_dtype!r}")
    d = _resolve_dir(path_or_repo, subfolder, local_files_only)
    if not (d / CONFIG_NAME).exists():
        raise Q8CheckpointError(f"no {CONFIG_NAME} in {d}")
    cfg = _read_json(d / CONFIG_NAME)
    if cfg.get("_class_name", "LTXVideoTransformer3DModel") != "LTXVideoTransformer3DModel":
        raise Q8CheckpointError(f"{d / CONFIG_NAME}: holds a {cfg['_class_name']}, not an LTXVideoTransformer3DModel")
    state, header, files = _read_safetensors(d)
    config, _ = _read_q8_config(d, state, header, backend=backend, attention=attention)
    try:  # what the files say must fit together; the attention is the caller's runtime choice, checked after
        model = build_q8_skeleton(cfg, replace(config, attention="keep"))
    except SettingsError as e:
        raise Q8CheckpointError(f"{d / CONFIG_NAME} and {d / META_NAME} do not fit together: {e}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise Q8CheckpointError(f"{d / CONFIG_NAME}: not a valid LTX transformer config ({type(e).__name__}: {e})") from None
    if config.attention == "fp8":
        check_fp8_attention(model)  # SettingsError: use attention="sdpa"
    where = files[0] if len(files) == 1 else d
    expected = model.state_dict()
    _check_keys(set(expected), set(state), f"checkpoint {where}")
    q8_keys = _q8_buffer_keys(model)
    for k, want in expected.items():
        got = state[k]
        if tuple(got.shape) != tuple(want.shape):
            raise Q8CheckpointError(f"{where}: {k} has shape {tuple(got.shape)}, the model needs {tuple(want.shape)}")
        if k in q8_keys:
            if got.dtype != want.dtype:
                raise Q8CheckpointError(f"{where}: {k} is stored as {got.dtype}, expected {want.dtype} for "
                                        f"{config.weight_dtype}")
            if k.endswith(".scales") and not bool(torch.isfinite(got).all() and (got >= 0).all()):
                raise Q8CheckpointError(f"{where}: {k} holds negative, NaN or infinite scales")
        elif not got.is_floating_point():
            raise Q8CheckpointError(f"{where}: {k} is stored as {got.dtype}, but it is a high-precision tensor "
                                    "(floating point expected)")
        else:
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
