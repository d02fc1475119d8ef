"""Q8 checkpoints: :func:`save_q8` writes, :func:`load_q8` reads (q8lib's layout or the earlier public one).

A q8lib checkpoint is a folder in diffusers' layout (``config.json``, safetensors weights) plus
``q8lib.json`` (:meth:`~q8lib.config.Q8Config.to_metadata`). The same weight format is also in
``config.json``'s ``quantization_config`` (:meth:`~q8lib.config.Q8Config.to_quantization_config`), which a
quantized model carries in its diffusers config: a folder that diffusers' own ``save_pretrained`` wrote
(single file or shards, any ``variant``, safetensors or ``.bin``) loads too. Loading builds the model on the
meta device and fills it with ``load_state_dict(assign=True)``, so no bf16 copy is ever materialised;
every mismatch raises :class:`~q8lib.errors.Q8CheckpointError` naming the file and the key.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .attention import check_attention_mode
from .config import Q8Config, Q8Runtime
from .convert import (activate_q8, build_q8_skeleton, check_ltx_transformer, check_state_keys, is_quantized, ltx_classes,
                      quantize_, transformer_class)
from .errors import Q8CheckpointError, SettingsError
from .lora import check_no_adapters
from .modules import Q8Linear
from .outputs import atomic_path, check_output_dir

__all__ = ["save_q8", "load_q8", "quantize_pretrained", "check_checkpoint_source", "Q8CheckpointError"]

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
BIN_NAME = "diffusion_pytorch_model.bin"  # what diffusers' save_pretrained(safe_serialization=False) writes
BIN_INDEX_NAME = "diffusion_pytorch_model.bin.index.json"
META_NAME = "q8lib.json"
CONFIG_NAME = "config.json"
# The earlier public Q8 checkpoint: int8 Q(W H) with H over the full input dim, fp32 `scales`.
LEGACY_CONFIG = dict(weight_dtype="int8", hadamard_block=None)


def save_q8(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``config.json`` (with the ``quantization_config`` entry), ``diffusion_pytorch_model.safetensors``
    and ``q8lib.json`` to ``path``. ``model.save_pretrained(path)`` (diffusers') writes the same folder
    without ``q8lib.json``; :func:`load_q8` reads both."""
    check_ltx_transformer(model)
    check_no_adapters(model, "save_q8")
    config = getattr(model, "_q8_config", None)
    if config is None or not is_quantized(model):
        raise SettingsError("save_q8 needs a model quantized by q8lib (quantize_ or load_q8)")
    path = check_output_dir(path, "save_q8 folder")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # Each file is written under a temporary name and renamed into place; q8lib.json goes last, so a
    # folder with it is complete, and the weights say who wrote them even without it (load_q8 checks).
    cfg = json.loads(model.to_json_string())  # what diffusers' save_config writes ...
    cfg["quantization_config"] = config.to_quantization_config()  # ... with the format of these weights
    with atomic_path(path / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    with atomic_path(path / WEIGHTS_NAME) as tmp:
        save_file(state, tmp, metadata={"format": "pt", "producer": "q8lib"})
    with atomic_path(path / META_NAME) as tmp:
        tmp.write_text(json.dumps(config.to_metadata(), indent=2) + "\n")
    return path


def _resolve_dir(path_or_repo: str | os.PathLike, subfolder: str | None, local_files_only: bool | None,
                 revision: str | None = None) -> Path:
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
    from huggingface_hub import snapshot_download  # only for hub ids

    prefix = f"{subfolder}/" if subfolder else ""
    patterns = [prefix + p for p in (CONFIG_NAME, META_NAME, "*.safetensors", "*.safetensors.index*.json")]
    try:
        root = snapshot_download(repo, allow_patterns=patterns, local_files_only=bool(local_files_only),
                                 revision=revision)
    except Exception as e:  # offline, not found, gated ...
        raise Q8CheckpointError(
            f"Could not fetch {repo!r} from the Hugging Face Hub ({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}). "
            "Check the repo id and your network (HF_HUB_OFFLINE must be unset to download), or pass a "
            "local directory. Offline, use the embedded tiny default (q8lib.tiny)."
        ) from None
    return Path(root) / subfolder if subfolder else Path(root)


def check_checkpoint_source(path_or_repo: str | os.PathLike, subfolder: str | None = None,
                            variant: str | None = None) -> None:
    """Cheap checks of a checkpoint argument before anything else loads: a local folder must exist and
    hold ``config.json``; anything else must look like a hub id (``owner/name``). Raises :class:`Q8CheckpointError`."""
    local = Path(path_or_repo).expanduser()
    if local.is_dir():  # read every header (not the tensors): a broken file fails here, not after other loading
        d = _resolve_dir(local, subfolder, True)
        _check_config_file(d)
        cfg = _read_json(d / CONFIG_NAME)
        if (d / META_NAME).exists() or Q8Config.is_quantization_config(cfg.get("quantization_config")):
            _read_q8_config(d, cfg, {}, {})
        for f in _weight_files(d, variant):
            _load_weights(f, tensors=False)
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


def _check_config_file(d: Path) -> None:
    if not (d / CONFIG_NAME).is_file():
        hint = "" if not (d / "model_index.json").is_file() else (
            f" ({d} holds model_index.json: a pipeline folder; load its transformer with subfolder='transformer' "
            "(command line: --checkpoint-subfolder transformer), or the whole pipeline with q8lib.load_pipeline_q8)")
        raise Q8CheckpointError(f"no {CONFIG_NAME} in {d}: not a Q8 checkpoint folder{hint}")


def _load_weights(f: Path, tensors: bool = True) -> tuple[dict, dict]:
    """Tensors (unless ``tensors=False``: the header alone) and header metadata of one weight file
    (safetensors, or a ``.bin`` read with ``torch.load(weights_only=True)``, which unpickles tensors only);
    :class:`Q8CheckpointError` naming it if unreadable."""
    if f.suffix == ".bin":
        try:  # with mmap (header only) nothing but the pickled index is read
            state = torch.load(f, map_location="cpu", weights_only=True, mmap=not tensors)
        except Exception as e:  # truncated, not a torch file, pickled objects other than tensors ...
            raise Q8CheckpointError(f"{f}: not a readable PyTorch weight file ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:300] if str(e) else ''})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise Q8CheckpointError(f"{f}: expected a dict of tensors (a state dict)")
        return (state if tensors else {}), {}
    try:
        with safe_open(f, framework="pt") as fh:
            meta = fh.metadata() or {}
            return ({k: fh.get_tensor(k) for k in fh.keys()} if tensors else {}), meta
    except Exception as e:  # truncated, not safetensors, unknown dtype ...: safetensors raises several types
        raise Q8CheckpointError(f"{f}: not a readable safetensors file ({type(e).__name__}: {e}); "
                                "the file may be truncated: download or convert it again") from None


def _read_weights(d: Path, variant: str | None = None) -> tuple[dict, dict, list[Path]]:
    """``(state, metadata of the first file, files)`` of a folder's single or sharded weights."""
    files = _weight_files(d, variant)
    state, first_meta = {}, None
    for f in files:
        tensors, meta = _load_weights(f)
        state.update(tensors)
        first_meta = meta if first_meta is None else first_meta
    return state, first_meta or {}, files


def _with_variant(name: str, variant: str | None) -> str:
    """diffusers' file name for a ``variant``: ``diffusion_pytorch_model.fp16.safetensors``, ``....index.fp16.json``."""
    if not variant:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def _weight_files(d: Path, variant: str | None = None) -> list[Path]:
    """The weight files of a folder, as diffusers' ``save_pretrained`` names them: the single file, or the
    shards its index names (checked to exist); safetensors first, then ``.bin``."""
    for single, index in ((WEIGHTS_NAME, INDEX_NAME), (BIN_NAME, BIN_INDEX_NAME)):
        single, index = d / _with_variant(single, variant), d / _with_variant(index, variant)
        if single.exists():
            return [single]
        if index.exists():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise Q8CheckpointError(f"{index}: key 'weight_map' must map tensor names to file names")
            files = [d / f for f in sorted(set(weight_map.values()))]
            for f in files:
                if not f.is_file():
                    raise Q8CheckpointError(f"{index} names {f.name}, which is not in {d}")
            return files
    found = sorted(p.name for p in d.glob("diffusion_pytorch_model*") if p.suffix in (".safetensors", ".bin"))
    hint = f"; it holds {', '.join(found[:3])}: pass the variant= they were saved with" if found else ""
    raise Q8CheckpointError(f"no {_with_variant(WEIGHTS_NAME, variant)} (or sharded index) in {d}{hint}")


def _read_q8_config(d: Path, cfg: dict, state: dict, header: dict) -> tuple[Q8Config, bool]:
    """The checkpoint's Q8Config (from ``q8lib.json`` and/or ``config.json``'s ``quantization_config``, which
    must agree) and whether it is the earlier public (legacy) layout."""
    found = {}
    if (d / META_NAME).exists():
        try:
            found[META_NAME] = Q8Config.from_metadata(_read_json(d / META_NAME))
        except SettingsError as e:
            raise Q8CheckpointError(f"{d / META_NAME}: {e}") from None
    entry = cfg.get("quantization_config")
    if entry is not None:
        if not Q8Config.is_quantization_config(entry):
            method = entry.get("quant_method") if isinstance(entry, dict) else entry
            raise Q8CheckpointError(f"{d / CONFIG_NAME}: quantization_config names {method!r}, not q8lib: a model "
                                    "quantized by another library; load it with diffusers' from_pretrained")
        try:
            found[CONFIG_NAME] = Q8Config.from_quantization_config(entry)
        except SettingsError as e:
            raise Q8CheckpointError(f"{d / CONFIG_NAME}: key 'quantization_config': {e}") from None
    if len(found) == 2 and found[META_NAME] != found[CONFIG_NAME]:
        a, b = found[META_NAME].to_metadata(), found[CONFIG_NAME].to_metadata()
        keys = ", ".join(f"{k}: {a[k]!r} against {b[k]!r}" for k in a if a[k] != b[k])
        raise Q8CheckpointError(f"{d / META_NAME} and the quantization_config of {d / CONFIG_NAME} disagree ({keys}): "
                                "one of them was edited or copied from another checkpoint")
    if found:
        return next(iter(found.values())), False
    if header.get("producer") == "q8lib":
        # Written by q8lib, whose layout (rotation block, 8-bit type) only q8lib.json and config.json's
        # quantization_config record: guessing the earlier public layout here would load silently wrong weights.
        raise Q8CheckpointError(
            f"{d} was written by q8lib but its {META_NAME} is missing and its {CONFIG_NAME} has no "
            "quantization_config (an interrupted copy?); copy them from the original folder, or convert the "
            "checkpoint again")
    if any(k.endswith(".scales") for k in state):
        return Q8Config(**LEGACY_CONFIG), True
    raise Q8CheckpointError(
        f"{d} holds no q8lib.json and no '.scales' tensors: it is not a Q8 checkpoint. "
        "To quantize a bf16 checkpoint use q8lib.quantize_pretrained(...)."
    )


@torch.no_grad()
def load_q8(
    path_or_repo: str | os.PathLike,
    subfolder: str | None = None,
    device: str | torch.device = "cpu",
    torch_dtype: torch.dtype | None = torch.bfloat16,
    backend: str = "auto",
    attention: str = "fp8",
    local_files_only: bool | None = None,
    variant: str | None = None,
    revision: str | None = None,
):
    """Load a Q8 LTX transformer (LTX-Video 0.9.x, or LTX-2: ``config.json``'s ``_class_name`` says which)
    from a q8lib checkpoint or the earlier public layout.

    ``path_or_repo`` is a local directory or a hub repo id (e.g. ``"sayakpaul/q8-ltx-video"``): a folder
    :func:`save_q8` wrote, or one that diffusers' ``save_pretrained`` wrote from a q8lib-quantized transformer
    (``subfolder="transformer"`` of a saved pipeline; ``variant`` as given to ``save_pretrained``).
    The model is built on the meta device, swapped to Q8 modules and filled with
    ``load_state_dict(assign=True)``. High-precision tensors are cast to ``torch_dtype`` (``None``: kept as
    stored); 8-bit weights, scales and biases keep their dtypes. Raises :class:`Q8CheckpointError` naming the
    file and the key on any mismatch (unreadable or truncated files, malformed JSON, wrong shapes
    or dtypes, non-finite scales). ``backend`` and ``attention`` are the runtime choices
    (:class:`~q8lib.config.Q8Runtime`); the weight format comes from the checkpoint.
    """
    runtime = Q8Runtime(backend=backend, attention=attention)
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise SettingsError(f"device {device!r} names no device; use 'cpu', 'cuda' or 'cuda:N'") from None
    if torch_dtype is not None and (not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point
                                    or torch_dtype.itemsize < 2):
        raise SettingsError("torch_dtype must be torch.bfloat16, torch.float16, torch.float32 or None (as stored), "
                            f"got {torch_dtype!r}")
    d = _resolve_dir(path_or_repo, subfolder, local_files_only, revision)
    _check_config_file(d)
    cfg = _read_json(d / CONFIG_NAME)
    try:  # LTXVideoTransformer3DModel or LTX2VideoTransformer3DModel (q8lib.ltx2); without _class_name, from the keys
        transformer_class(cfg)
    except SettingsError as e:
        raise Q8CheckpointError(f"{d / CONFIG_NAME}: {e}") from None
    state, header, files = _read_weights(d, variant)
    config, _ = _read_q8_config(d, cfg, state, header)
    try:  # what the files say must fit together; the attention is the caller's runtime choice, checked after
        model = build_q8_skeleton(cfg, config, Q8Runtime(backend=runtime.backend, attention="keep"))
    except SettingsError as e:
        raise Q8CheckpointError(f"{d / CONFIG_NAME} and {d / META_NAME} do not fit together: {e}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise Q8CheckpointError(f"{d / CONFIG_NAME}: not a valid LTX transformer config ({type(e).__name__}: {e})") from None
    check_attention_mode(model, runtime.attention)  # SettingsError: e.g. use attention="sdpa"
    where = files[0] if len(files) == 1 else d
    expected = model.state_dict()
    check_state_keys(set(expected), set(state), f"checkpoint {where}")
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
        elif torch_dtype is not None:
            state[k] = got = got.to(torch_dtype)
        if device.type == "cpu" and got.data_ptr() % 64:
            # safetensors' tensors need not be 64-byte aligned (seen: 56 mod 64), and CPU GEMMs round differently
            # on unaligned operands: without the copy a loaded fp32 model differed from the saved one by ~1e-7
            state[k] = got.clone()
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise Q8CheckpointError(f"tensors left uninitialised after loading: {left[:8]}")
    model.to(device)
    model.eval()
    activate_q8(model, config, runtime)
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
    *,
    backend: str | None = None,
    attention: str | None = None,
    **from_pretrained_kwargs,
):
    """Load a bf16 diffusers LTX transformer (hub id or local dir; LTX-Video 0.9.x or LTX-2, as its ``config.json``
    says) and quantize it on the fly (:func:`~q8lib.convert.quantize_` with ``config``, ``backend``, ``attention``).

    The conversion runs on ``device`` (a GPU converts the 2B model in seconds).
    """
    try:
        cfg_kwargs = {k: from_pretrained_kwargs[k] for k in ("cache_dir", "force_download", "proxies", "token",
                                                              "local_files_only", "revision") if k in from_pretrained_kwargs}
        # config.json first (diffusers' ConfigMixin.load_config): its _class_name picks LTX-Video or LTX-2
        cls = transformer_class(ltx_classes()[0].load_config(repo_or_path, subfolder=subfolder, **cfg_kwargs))
        model = cls.from_pretrained(repo_or_path, subfolder=subfolder, dtype=torch_dtype, **from_pretrained_kwargs)
    except OSError as e:
        raise Q8CheckpointError(
            f"Could not load the LTX transformer from {repo_or_path!r} (subfolder={subfolder!r}): {e}. "
            "Download needs network access (HF_HUB_OFFLINE unset); offline, use the tiny default (q8lib.tiny)."
        ) from e
    return quantize_(model.to(device).eval(), config, backend=backend, attention=attention)
