"""Careless and hostile input, everywhere: one clear line, exit status 2 (CLI) or a ``q8lib.errors.Q8Error``
(API), raised before any long work, with nothing written. The CLI cases run the real entry point
(``python -m q8lib``) in subprocesses, several at a time."""
from __future__ import annotations

import concurrent.futures
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import q8lib
import q8lib.tutorial
from q8lib import errors
from q8lib.errors import Q8CheckpointError, Q8Error, SettingsError

SMALL = ["--frames", "9", "--height", "32", "--width", "32", "--steps", "1", "--quiet", "--device", "cpu"]


def _cli_many(cases: dict[str, list[str]], cwd: Path) -> dict[str, subprocess.CompletedProcess]:
    """Run ``python -m q8lib ARGS`` for every case, two at a time (CI has two cores)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore::DeprecationWarning")

    def run(args):
        return subprocess.run([sys.executable, "-m", "q8lib", *args], capture_output=True, text=True, timeout=600,
                              cwd=cwd, env=env)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run, args) for name, args in cases.items()}
        return {name: f.result() for name, f in futures.items()}


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _saved_tiny_checkpoint(folder: Path) -> Path:
    model = q8lib.quantize_(q8lib.tutorial.load_transformer("tiny"), q8lib.Q8Config(weight_dtype="int8"), attention="sdpa",
                            progress=False)
    return q8lib.save_q8(model, folder)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-input")
    (d / "a_file").write_text("not a folder")
    (d / "not_an_image.png").write_text("this is text, not a PNG")
    (d / "folder.mp4").mkdir()
    ck = _saved_tiny_checkpoint(d / "ck")
    truncated = d / "truncated"
    truncated.mkdir()
    for f in ck.iterdir():
        (truncated / f.name).write_bytes(f.read_bytes())
    w = truncated / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return d


def test_cli_rejects_bad_input_before_any_work_and_writes_nothing(workdir):
    d = workdir
    gen = ["generate", "--prompt", "a red circle moving right", *SMALL, "--prompt-cache", str(d / "cache")]
    out = ["--output", str(d / "out" / "v.mp4")]
    cases = {
        # output paths
        "output parent is a file": (gen + ["--output", str(d / "a_file" / "v.mp4")], "because .*a_file is a file"),
        "output unsupported extension": (gen + ["--output", str(d / "out" / "v.avi")], "--output must end in .mp4"),
        "output is a folder": (gen + ["--output", str(d / "folder.mp4")], "is a folder"),
        # images
        "image not an image": (gen + out + ["--image", str(d / "not_an_image.png")], "is not an image Pillow can read"),
        "image url without network": (gen + out + ["--image", "http://127.0.0.1:9/first.png"], "could not load http://127.0.0.1:9"),
        "image unknown scheme": (gen + out + ["--image", "ftp://example.org/x.png"], "local file or an http\\(s\\) URL"),
        # devices and dtypes
        "device names nothing": (gen + ["--device", "gpu0"] + out, "--device 'gpu0' names no device"),
        "device q8lib does not run on": (gen + ["--device", "mps"] + out, "cpu and cuda devices only"),
        "device index out of range": (gen + ["--device", "cuda:64"] + out, "cuda:64"),
        "dtype unknown": (gen + out + ["--dtype", "int8"], "unknown dtype 'int8'"),
        # settings
        "seed negative": (gen + out + ["--seed", "-1"], "seed must be between 0 and 2\\*\\*63 - 1"),
        "warmup negative": (gen + out + ["--warmup", "-1"], "--warmup must be >= 0"),
        "fps zero": (gen + out + ["--fps", "0"], "frame rate must be >= 1"),
        "guidance nan": (gen + out + ["--guidance", "nan"], "guidance must be a finite number"),
        # checkpoints
        "checkpoint missing": (gen + out + ["--checkpoint", str(d / "nope")], "neither a local directory nor a hub repo id"),
        "checkpoint is a file": (gen + out + ["--checkpoint", str(d / "a_file")], "is a file; a Q8 checkpoint is a folder"),
        "checkpoint truncated": (gen + out + ["--checkpoint", str(d / "truncated")],
                                 "truncated.*diffusion_pytorch_model.safetensors: not a readable safetensors file"),
        # convert
        "convert block not a power of two": (["convert", "tiny", str(d / "conv1"), "--hadamard-block", "48"],
                                             "must be a power of two"),
        "convert block wider than the model": (["convert", "tiny", str(d / "conv2"), "--hadamard-block", "4096"],
                                               "hadamard_block=4096"),
        "convert output is a file": (["convert", "tiny", str(d / "a_file")], "is a file; give a folder"),
        "convert report extension": (["convert", "tiny", str(d / "conv3"), "--report", str(d / "r.txt")],
                                     "--report must end in .json"),
        # memory
        "memory batch zero": (["memory", "--model", "tiny", "--device", "cpu", "--batch", "0"], "batch must be a whole number >= 1"),
        "memory output extension": (["memory", "--model", "tiny", "--device", "cpu", "--output", str(d / "m.csv")],
                                    "--output must end in .json"),
        "demo batch zero": (["demo", "--batch", "0"], "--batch must be >= 1"),
        "memory limit negative": (["memory", "--model", "tiny", "--device", "cpu", "--limit-gib", "-3"],
                                  "--limit-gib must be a positive"),
    }
    if Path("/sys").is_dir():  # a folder even root cannot write into
        cases["output folder not writable"] = (gen + ["--output", "/sys/q8lib-test/v.mp4"], "not writable")
    before = _files(d)
    results = _cli_many({k: v[0] for k, v in cases.items()}, d)
    import re

    failures = []
    for name, (_, pattern) in cases.items():
        r = results[name]
        lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("q8lib: warning:")]
        ok = (r.returncode == 2 and len(lines) == 1 and lines[0].startswith("q8lib ") and ": error: " in lines[0]
              and re.search(pattern, lines[0]) and "Traceback" not in r.stderr)
        if not ok:
            failures.append(f"{name}: exit {r.returncode}, stderr:\n{r.stderr[-1500:]}")
    assert not failures, "\n\n".join(failures)
    assert _files(d) == before, f"written: {_files(d) - before}"


def test_cli_fp8_attention_head_size_is_refused_before_loading(tmp_path):
    """A pipeline whose heads are 48 wide: FP8 attention cannot rotate them; the CLI says so at once."""
    from diffusers import LTXPipeline

    from q8lib.tiny import make_shapes_components

    pipe = LTXPipeline(**make_shapes_components(transformer_overrides=dict(attention_head_dim=48, cross_attention_dim=192)))
    pipe.save_pretrained(tmp_path / "pipe")
    before = _files(tmp_path)
    r = _cli_many({"x": ["generate", "--prompt", "a red ball", "--model", str(tmp_path / "pipe"), *SMALL,
                         "--output", str(tmp_path / "o" / "v.mp4"), "--attention", "fp8"]}, tmp_path)["x"]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "FP8 attention rotates q/k over the head size" in r.stderr and "--attention sdpa" in r.stderr
    r = _cli_many({"x": ["compare", "--prompt", "a red ball", "--model", str(tmp_path / "pipe"), *SMALL,
                         "--output", str(tmp_path / "o" / "c.mp4"), "--attention", "fp8"]}, tmp_path)["x"]
    assert r.returncode == 2 and "FP8 attention rotates q/k" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert _files(tmp_path) == before


def test_unusable_prompt_cache_warns_and_the_run_goes_on(tmp_path):
    (tmp_path / "cache_file").write_text("a file where the cache folder should be")
    r = _cli_many({"x": ["generate", "--prompt", "a red circle moving right", *SMALL,
                         "--prompt-cache", str(tmp_path / "cache_file"), "--output", str(tmp_path / "v.mp4")]}, tmp_path)["x"]
    assert r.returncode == 0, r.stderr
    assert "q8lib: warning: --prompt-cache" in r.stderr and "running without the prompt cache" in r.stderr
    assert json.loads((tmp_path / "v.json").read_text())["results"]["prompt_cache"] == "off"
    assert (tmp_path / "cache_file").read_text().startswith("a file")


def test_corrupt_prompt_cache_file_is_a_miss(tmp_path):
    from q8lib.app import PromptCache

    cache = PromptCache(tmp_path)
    cache.path("k").write_bytes(b"\x00garbage")
    with pytest.warns(errors.Q8Warning, match="unreadable"):
        assert cache.load("k") is None
    assert cache.save("k", {"x": torch.ones(2)}) is not None and torch.equal(cache.load("k")["x"], torch.ones(2))


# ------------------------------------------------------------------------------------------------
# Checkpoints: every broken file is named, with the key where one is at fault.
def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("name, edit, pattern", [
    ("config not json", lambda d: (d / "config.json").write_text("{not json"), "config.json: not readable JSON"),
    ("config not an object", lambda d: (d / "config.json").write_text("[1, 2]"), "config.json: expected a JSON object"),
    ("config wrong types", lambda d: _edit_json(d / "config.json", num_attention_heads="four"),
     "config.json: not a valid LTX transformer config"),
    ("meta not json", lambda d: (d / "q8lib.json").write_text("q8lib"), "q8lib.json: not readable JSON"),
    ("meta unknown version", lambda d: _edit_json(d / "q8lib.json", format_version=99), "q8lib.json: key 'format_version' is 99"),
    ("meta wrong dtype name", lambda d: _edit_json(d / "q8lib.json", weight_dtype=5), "q8lib.json: key 'weight_dtype'"),
    ("meta wrong block", lambda d: _edit_json(d / "q8lib.json", hadamard_block="64"), "q8lib.json: key 'hadamard_block'"),
    ("meta wrong keep list", lambda d: _edit_json(d / "q8lib.json", keep_high_precision=3),
     "q8lib.json: key 'keep_high_precision'"),
    ("meta missing key", lambda d: _edit_json(d / "q8lib.json", drop="hadamard_block"), "keys \\['hadamard_block'\\] are missing"),
    ("meta missing", lambda d: _strip_marks(d, producer=False), "written by q8lib but its q8lib.json is missing"),
    ("meta and config disagree", lambda d: _edit_json(d / "q8lib.json", weight_dtype="fp8_e4m3"),
     "q8lib.json and the quantization_config of .*config.json disagree \\(weight_dtype: 'fp8_e4m3' against 'int8'\\)"),
    ("config entry broken", lambda d: _edit_quantization_config(d, format_version=99),
     "config.json: key 'quantization_config': key 'format_version' is 99"),
    ("config entry of another quantizer", lambda d: _edit_json(d / "config.json", quantization_config={
        "quant_method": "bitsandbytes_8bit"}), "quantization_config names 'bitsandbytes_8bit', not q8lib"),
    ("weights truncated", lambda d: _truncate(d / "diffusion_pytorch_model.safetensors"), "not a readable safetensors file"),
    ("bin weights truncated", lambda d: _truncate(_to_bin(d)), "model.bin: not a readable PyTorch weight file"),
    ("bin weights not tensors", lambda d: torch.save({"proj_in.weight": "text"}, _to_bin(d)),
     "model.bin: expected a dict of tensors"),
    ("high precision tensor as int8", lambda d: _edit_tensor(d, "proj_in.weight", lambda t: t.to(torch.int8)),
     "proj_in.weight is stored as torch.int8, but it is a high-precision tensor"),
    ("nan scales", lambda d: _edit_tensor(d, "transformer_blocks.0.attn1.to_q.scales", lambda t: t * float("nan")),
     "to_q.scales holds negative, NaN or infinite scales"),
    ("shard index broken", lambda d: _shard(d, '{"weight_map": 3}'), "key 'weight_map'"),
    ("shard missing", lambda d: _shard(d, '{"weight_map": {"proj_in.weight": "y.safetensors"}}'),
     "names y.safetensors, which is not in"),
])
def test_broken_checkpoints_name_the_file_and_key(tmp_path, name, edit, pattern):
    ck = _copy(_saved_tiny_checkpoint(tmp_path / "good"), tmp_path / "bad")
    edit(ck)
    with pytest.raises(Q8CheckpointError, match=pattern):
        q8lib.load_q8(ck)


def _edit_json(path: Path, drop=None, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    if drop:
        data.pop(drop)
    path.write_text(json.dumps(data))


def _edit_quantization_config(d: Path, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"].update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def _strip_marks(d: Path, producer: bool = True):
    """Make a saved checkpoint look like the earlier public layout: no q8lib.json, no quantization_config
    in config.json and (``producer=True``) no producer mark in the safetensors header."""
    from safetensors.torch import load_file, save_file

    (d / "q8lib.json").unlink()
    _edit_json(d / "config.json", drop="quantization_config")
    if producer:
        f = d / "diffusion_pytorch_model.safetensors"
        save_file(load_file(f), f, metadata={"format": "pt"})


def _shard(d: Path, index: str):
    (d / "diffusion_pytorch_model.safetensors").rename(d / "x.safetensors")
    (d / "diffusion_pytorch_model.safetensors.index.json").write_text(index)


def _to_bin(d: Path) -> Path:
    """The weights as diffusers' save_pretrained(safe_serialization=False) writes them."""
    from safetensors.torch import load_file

    f = d / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(f), d / "diffusion_pytorch_model.bin")
    f.unlink()
    return d / "diffusion_pytorch_model.bin"


def _truncate(path: Path):
    path.write_bytes(path.read_bytes()[:1000])


def _edit_tensor(d: Path, key: str, fn):
    from safetensors.torch import load_file, save_file

    f = d / "diffusion_pytorch_model.safetensors"
    state = load_file(f)
    state[key] = fn(state[key])
    save_file(state, f, metadata={"format": "pt", "producer": "q8lib"})


def test_earlier_public_layout_without_metadata_still_loads(tmp_path):
    """Without q8lib's marks the earlier public layout (int8, full rotation) is still recognised."""
    ck = _saved_tiny_checkpoint(tmp_path / "ck")  # int8, full-width rotation: the earlier layout
    _strip_marks(ck)
    assert q8lib.is_quantized(q8lib.load_q8(ck))


def test_save_q8_refuses_a_file_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    model = q8lib.quantize_(q8lib.tutorial.load_transformer("tiny"), q8lib.Q8Config(weight_dtype="int8"), progress=False)
    (tmp_path / "f").write_text("x")
    with pytest.raises(SettingsError, match="is a file; give a folder"):
        q8lib.save_q8(model, tmp_path / "f")
    from q8lib import checkpoint

    def broken(state, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", broken)
    with pytest.raises(OSError):
        q8lib.save_q8(model, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json"]  # no weights, no q8lib.json


def test_failed_video_write_leaves_no_file(tmp_path, monkeypatch):
    import diffusers.utils

    from q8lib.app.video import write_video

    def broken(frames, path, fps):
        Path(path).write_bytes(b"half an mp4")
        raise RuntimeError("ffmpeg died")

    monkeypatch.setattr(diffusers.utils, "export_to_video", broken)
    with pytest.raises(RuntimeError):
        write_video(torch.rand(9, 3, 32, 32), tmp_path / "v.mp4")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# The library API
@pytest.mark.parametrize("kwargs, pattern", [
    (dict(weight_dtype="int4"), "weight_dtype: Unknown 8-bit dtype 'int4'"),
    (dict(weight_dtype=torch.float16), "weight_dtype"),
    (dict(hadamard_block=48), "power of two"), (dict(hadamard_block=0), "power of two"),
    (dict(hadamard_block="64"), "power of two"), (dict(hadamard_block=True), "power of two"),
    (dict(hadamard_block=64.0), "power of two"), (dict(keep_high_precision="proj_in"), "list of module names"),
    (dict(keep_high_precision=[1, 2]), "list of module names"),
    (dict(attention="flash"), "attention must be"), (dict(backend=""), "backend must be a name"),  # earlier keywords
])
def test_q8config_rejects_bad_values(kwargs, pattern):
    with pytest.raises(SettingsError, match=pattern):
        q8lib.Q8Config(**kwargs)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(attention="flash"), "attention must be"), (dict(attention=None), "attention must be"),
    (dict(backend=""), "backend must be a name"), (dict(backend=3), "backend must be a name"),
    (dict(backend=None), "backend must be a name"),
])
def test_q8runtime_rejects_bad_values(kwargs, pattern):
    from q8lib.tiny import make_tiny_transformer

    with pytest.raises(SettingsError, match=pattern):
        q8lib.Q8Runtime(**kwargs)
    if None not in kwargs.values():  # None is "not given" to quantize_
        model = make_tiny_transformer()
        with pytest.raises(SettingsError, match=pattern):
            q8lib.quantize_(model, q8lib.Q8Config(), progress=False, **kwargs)
        assert not q8lib.is_quantized(model)


def test_quantize_checks_everything_before_changing_the_model():
    from q8lib.tiny import make_tiny_transformer

    model = make_tiny_transformer(attention_head_dim=48, cross_attention_dim=96)
    with pytest.raises(SettingsError, match="FP8 attention rotates q/k over the head size.*48.*attention='sdpa'"):
        q8lib.quantize_(model, q8lib.Q8Config(), attention="fp8", progress=False)
    assert not q8lib.is_quantized(model)
    with pytest.raises(SettingsError, match="hadamard_block=256"):
        q8lib.quantize_(make_tiny_transformer(), q8lib.Q8Config(hadamard_block=256), attention="sdpa", progress=False)
    q8lib.quantize_(model, q8lib.Q8Config(hadamard_block=32), attention="sdpa", progress=False)  # bf16 attention: fine
    with pytest.raises(SettingsError, match="already quantized"):
        q8lib.quantize_(model, q8lib.Q8Config(), attention="sdpa")
    with pytest.raises(errors.UnsupportedModelError, match="LTXVideoTransformer3DModel.*LTX2VideoTransformer3DModel.*only") as e:
        q8lib.quantize_(torch.nn.Linear(4, 4))
    assert isinstance(e.value, TypeError)
    with pytest.raises(SettingsError, match="must be a q8lib.Q8Config"):
        q8lib.quantize_(make_tiny_transformer(), {"weight_dtype": "int8"})


@pytest.mark.parametrize("amax", [1e-38, 1e-40, 1e-30, 3e-37])
@pytest.mark.parametrize("qdtype", ["int8", "fp8_e4m3"])
def test_tiny_rows_quantize_without_nan(amax, qdtype):
    from q8lib.quant import dequantize_rowwise, quantize_rowwise

    x = torch.randn(4, 256, dtype=torch.float64)
    x = (x / x.abs().amax(-1, keepdim=True) * amax).float()
    x[0, :100] = 0.0  # zeros inside a tiny row were 0 * inf = NaN
    q, s = quantize_rowwise(x, qdtype)
    assert torch.isfinite(q.float()).all() and torch.isfinite(s).all()
    back = dequantize_rowwise(q, s).double()
    err = ((back - x.double()).norm() / x.double().norm()).item()
    assert err < (0.01 if qdtype == "int8" else 0.04), err  # as for rows of ordinary size (int8 ~0.006, e4m3 ~0.025)


def test_tiny_rows_in_the_triton_row_kernel():
    pytest.importorskip("triton")
    from q8lib.kernels import linear as kl
    from q8lib.reference import quantize_activation_ref

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(8, 256, device=device) * 1e-38
    x[0, :64] = 0.0
    for qdtype in (torch.int8, torch.float8_e4m3fn):
        q, s = kl.quantize_activation(x, qdtype)
        q_ref, s_ref = quantize_activation_ref(x.cpu(), qdtype)
        assert torch.isfinite(q.float()).all() and torch.isfinite(s).all()
        assert (q.float().cpu() - q_ref.float()).abs().max() <= (1 if qdtype == torch.int8 else 32)


@pytest.mark.parametrize("device, pattern", [
    ("gpu0", "names no device"), ("mps", "cpu and cuda devices only"), ("meta", "cpu and cuda devices only"),
    ("cpu:3", "one CPU device"), ("", "names no device"), (3, "must be a string"),
])
def test_resolve_device_rejects(device, pattern):
    from q8lib.app import resolve_device

    with pytest.raises(SettingsError, match=pattern):
        resolve_device(device)


@pytest.mark.parametrize("change, pattern", [
    (dict(num_frames="17"), "must be numbers"), (dict(guidance_scale="3"), "must be numbers"),
    (dict(num_inference_steps=True), "must be numbers"), (dict(seed=2**64), "seed must be between"),
    (dict(negative_prompt=None), "negative prompt must be text"), (dict(max_sequence_length=0), "max_sequence_length"),
])
def test_generation_settings_reject_wrong_types(change, pattern):
    from q8lib.app import GenerationSettings

    with pytest.raises(SettingsError, match=pattern):
        GenerationSettings(prompt="a red ball", **change).validate()


def test_output_checks_create_nothing(tmp_path):
    from q8lib.outputs import check_output_dir, check_output_file

    assert check_output_file(tmp_path / "new" / "deeper" / "v.mp4", (".mp4",)) == tmp_path / "new" / "deeper" / "v.mp4"
    assert check_output_dir(tmp_path / "ck") == tmp_path / "ck"
    assert list(tmp_path.iterdir()) == []
    for bad in ("", None):
        with pytest.raises(SettingsError, match="empty"):
            check_output_file(bad, (".mp4",))


def test_every_library_error_is_a_q8error():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, Warning) or issubclass(cls, Q8Error), name


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch " + str(Path(os.environ.get("Q8LIB_EXPLOIT_MARKER", "/tmp/x"))),))


def test_trainer_resume_never_unpickles_code(tmp_path, monkeypatch):
    from q8lib.tiny.train import SMOKE, Trainer

    marker = tmp_path / "pwned"
    monkeypatch.setenv("Q8LIB_EXPLOIT_MARKER", str(marker))
    with open(tmp_path / "checkpoint.pt", "wb") as f:
        pickle.dump({"state": _Exploit()}, f)
    with pytest.raises(Q8CheckpointError, match="cannot resume from it"):
        Trainer(SMOKE, tmp_path, torch.device("cpu"), resume=True)
    assert not marker.exists()
    torch.save({"state": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(Q8CheckpointError, match="not a q8lib training checkpoint"):
        Trainer(SMOKE, tmp_path, torch.device("cpu"), resume=True)


@pytest.mark.parametrize("bad", [torch.ones(3, dtype=torch.int32), torch.ones(3, 0), torch.tensor(1.0), [1.0, 2.0]])
def test_quantize_rowwise_rejects_what_it_cannot_quantize(bad):
    with pytest.raises(SettingsError, match="needs a floating-point tensor"):
        q8lib.quantize_rowwise(bad)


def test_load_q8_checks_device_and_dtype_before_reading(tmp_path):
    with pytest.raises(SettingsError, match="names no device"):
        q8lib.load_q8(tmp_path / "nothing", device="gpu0")
    with pytest.raises(SettingsError, match="torch_dtype must be"):
        q8lib.load_q8(tmp_path / "nothing", torch_dtype=torch.int8)


def test_settings_for_names_unknown_settings():
    from q8lib.app import settings_for

    with pytest.raises(SettingsError, match="unknown generation settings \\['num_frame'\\]"):
        settings_for("tiny", "a red ball", num_frame=17)
