"""The ``q8lib`` command line on the tiny default (CPU, offline): every subcommand and every user error."""
from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest
import torch

import q8lib.app as qp
import q8lib.app.run as runmod
from q8lib.tiny import default_pipeline
from q8lib.app.cli import main
from q8lib.errors import Q8FallbackWarning

pytestmark = pytest.mark.filterwarnings("ignore::q8lib.errors.Q8FallbackWarning")  # CPU runs use the reference math on purpose
# CPU everywhere (also on GPU machines), so the measured bounds below hold as measured.
SMALL = ["--frames", "9", "--height", "32", "--width", "32", "--steps", "2", "--quiet", "--device", "cpu"]


def _gen(tmp_path, *extra, name="v.mp4", cmd="generate"):
    return main([cmd, "--prompt", "a red circle moving right", *SMALL, "--prompt-cache", str(tmp_path / "cache"),
                 "--output", str(tmp_path / name), *extra])


@pytest.fixture
def no_model(monkeypatch):
    """Any model loading fails the test: errors must come before it."""
    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(runmod, "load_pipeline", boom)
    for mod in ("loading", "prompts", "measure", "run"):
        monkeypatch.setattr(f"q8lib.app.{mod}.default_pipeline", boom)


def test_generate_writes_video_and_sidecar_and_caches_prompt(tmp_path, capsys, seed):
    import imageio.v2 as imageio

    s = str(seed % 1000)
    assert _gen(tmp_path, "--seed", s) == 0
    video, side = tmp_path / "v.mp4", tmp_path / "v.json"
    frames = imageio.mimread(video)
    assert len(frames) == 9 and frames[0].shape == (32, 32, 3)
    rep = json.loads(side.read_text())
    for key in ("device", "date", "versions", "shape", "settings", "pipeline", "results"):
        assert key in rep, key
    assert rep["versions"]["diffusers"] == "0.42.1" and rep["pipeline"]["precision"] == "q8"
    assert rep["pipeline"]["backend"] == "reference" and rep["results"]["prompt_cache"] == "miss"
    t = rep["results"]["timings"]
    assert 0 < t["transformer_s"] <= t["end_to_end_s"] and t["transformer_forwards"] == 2
    assert rep["shape"]["latent"] == [3, 8, 8] and rep["settings"]["seed"] == int(s)
    assert "wrote" in capsys.readouterr().out
    # second run: embeddings from the cache, same video
    assert _gen(tmp_path, "--seed", s, name="w.mp4") == 0
    assert json.loads((tmp_path / "w.json").read_text())["results"]["prompt_cache"] == "hit"
    a, b = imageio.mimread(video), imageio.mimread(tmp_path / "w.mp4")
    assert all((x == y).all() for x, y in zip(a, b))


def test_generate_bf16_image_to_video_and_repeats(tmp_path, seed):
    from PIL import Image

    img = tmp_path / "first.png"
    g = torch.Generator().manual_seed(seed % 2**31)
    Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy()).save(img)
    assert _gen(tmp_path, "--precision", "bf16", "--image", str(img), "--repeats", "2", "--warmup", "1") == 0
    rep = json.loads((tmp_path / "v.json").read_text())
    assert rep["pipeline"]["image_to_video"] and rep["pipeline"]["precision"] == "bf16"
    assert len(rep["results"]["runs"]) == 2 and rep["results"]["warmup_runs"] == 1
    assert rep["video_writer"] == "imageio-ffmpeg"  # the first of q8lib.app.video.VIDEO_WRITERS, installed here


@pytest.mark.parametrize("flags, message", [
    (["--frames", "10"], "8k\\+1"), (["--height", "33"], "height must be a positive multiple of 32"),
    (["--width", "100"], "width must be"), (["--steps", "0"], "steps must be >= 1"),
    (["--prompt", " "], "prompt is empty"), (["--output", "x.gif"], "must end in .mp4"),
    (["--image", "/nonexistent.png"], "is not a file"), (["--repeats", "0"], "--repeats"),
])
@pytest.mark.parametrize("cmd", ["generate", "compare"])
def test_bad_settings_fail_before_loading(tmp_path, capsys, no_model, flags, message, cmd):
    assert _gen(tmp_path, *flags, cmd=cmd) == 2
    err = capsys.readouterr().err
    assert f"q8lib {cmd}: error:" in err
    import re

    assert re.search(message, err), err


def test_no_video_and_missing_video_writer(tmp_path, capsys, monkeypatch):
    assert _gen(tmp_path, "--no-video", cmd="compare", name="c.mp4") == 0
    rep = json.loads((tmp_path / "c.json").read_text())
    assert rep["outputs"]["video"] is None and rep["video_writer"] is None and not (tmp_path / "c.mp4").exists()
    for writer_module in ("imageio_ffmpeg", "av", "cv2"):  # no mp4 writer at all
        monkeypatch.setitem(sys.modules, writer_module, None)
    monkeypatch.setattr(runmod, "load_pipeline", lambda *a, **k: pytest.fail("loaded before the mp4 writer check"))
    assert _gen(tmp_path) == 2
    assert "pip install imageio-ffmpeg, or pip install av, or pip install opencv-python-headless, or pass --no-video" \
        in capsys.readouterr().err


def test_hub_model_offline_message(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _gen(tmp_path, "--model", "Lightricks/LTX-Video") == 2
    err = capsys.readouterr().err
    assert "huggingface-cli download Lightricks/LTX-Video" in err and "--model tiny" in err and "HF_HUB_OFFLINE" in err
    assert main(["convert", "Lightricks/LTX-Video-0.9.7-dev", str(tmp_path / "o")]) == 2
    assert "huggingface-cli download Lightricks/LTX-Video-0.9.7-dev" in capsys.readouterr().err


def test_backend_errors_and_fallback_warning(tmp_path, capsys, no_model):
    if torch.cuda.is_available():
        pytest.skip("the CPU-only errors need a machine without CUDA")
    assert _gen(tmp_path, "--backend", "triton") == 2
    assert "'triton' is unavailable: no CUDA GPU is visible" in capsys.readouterr().err
    assert _gen(tmp_path, "--backend", "nope") == 2
    assert "Unknown q8lib backend 'nope'" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--device", "cuda"]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err
    assert _gen(tmp_path, "--cuda-graph") == 2
    assert "--cuda-graph needs --device cuda" in capsys.readouterr().err
    with pytest.warns(Q8FallbackWarning, match="triton: no CUDA GPU is visible"):
        qp.check_backend("q8", "auto", torch.device("cpu"))


def test_out_of_memory_suggests_memory_options(tmp_path, capsys, monkeypatch):
    from diffusers import LTXPipeline

    def oom(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(LTXPipeline, "__call__", oom)
    assert _gen(tmp_path) == 2
    err = capsys.readouterr().err
    assert "out of GPU memory" in err and "9 frames at 32x32" in err
    for option in ("--offload model", "--vae-tiling", "--precision q8", "--height/--width"):
        assert option in err


def test_convert_then_generate_and_compare_from_checkpoint(tmp_path, capsys):
    from q8lib import load_q8

    ck = tmp_path / "ck"
    assert main(["convert", "tiny", str(ck), "--report", str(tmp_path / "size.json")]) == 0
    out = capsys.readouterr().out
    assert "q8lib weights" in out and "bf16 weights" in out
    rep = json.loads((tmp_path / "size.json").read_text())
    # trained tiny default: 87% of its 4.83M parameters become 8-bit; measured ratio 0.576 (9.66 -> 5.56 MB)
    assert 0.5 < rep["ratio"] < 0.65 and rep["params_8bit"] == 4_194_304
    assert load_q8(ck).config.num_layers == default_pipeline().transformer.config.num_layers
    assert _gen(tmp_path, "--checkpoint", str(ck)) == 0
    assert json.loads((tmp_path / "v.json").read_text())["pipeline"]["checkpoint"] == str(ck)
    assert _gen(tmp_path, "--checkpoint", str(ck), cmd="compare", name="c.mp4") == 0
    # a local pipeline folder (diffusers layout, transformer/ subfolder) converts too
    default_pipeline().save_pretrained(tmp_path / "pipe")
    assert main(["convert", str(tmp_path / "pipe"), str(tmp_path / "ck2"), "--weight-dtype", "fp8_e4m3"]) == 0
    assert json.loads((tmp_path / "ck2" / "q8lib.json").read_text())["weight_dtype"] == "fp8_e4m3"
    assert _gen(tmp_path, "--model", str(tmp_path / "pipe"), "--checkpoint", str(tmp_path / "ck2")) == 0


def test_bad_checkpoints_are_named(tmp_path, capsys):
    ck = tmp_path / "ck"
    assert main(["convert", "tiny", str(ck)]) == 0
    meta = json.loads((ck / "q8lib.json").read_text())
    (ck / "q8lib.json").write_text(json.dumps(dict(meta, format_version=99)))
    assert _gen(tmp_path, "--checkpoint", str(ck)) == 2
    assert "key 'format_version' is 99" in capsys.readouterr().err
    (ck / "q8lib.json").write_text(json.dumps(meta))
    from safetensors.torch import load_file, save_file

    f = ck / "diffusion_pytorch_model.safetensors"
    state = load_file(f)
    state.pop("transformer_blocks.1.ff.net.2.scales")
    save_file(state, f)
    assert _gen(tmp_path, "--checkpoint", str(ck)) == 2
    assert "Missing 1 keys: transformer_blocks.1.ff.net.2.scales" in capsys.readouterr().err
    default_pipeline().transformer.save_pretrained(tmp_path / "bf16")  # not a Q8 checkpoint
    assert _gen(tmp_path, "--checkpoint", str(tmp_path / "bf16")) == 2
    assert "not a Q8 checkpoint" in capsys.readouterr().err


def test_compare_writes_side_by_side_metrics_and_plot(tmp_path, capsys, seed):
    assert _gen(tmp_path, "--seed", str(seed % 1000), cmd="compare", name="c.mp4") == 0
    rep = json.loads((tmp_path / "c.json").read_text())
    pf, m = rep["results"]["per_frame"], rep["results"]["metrics"]
    assert len(pf["psnr_db"]) == len(pf["ssim"]) == 9
    # trained tiny default, fp32 vs Q8 reference, 2 steps: measured per-frame PSNR min 34.4-45.0 dB,
    # SSIM min 0.973-0.997 over 11 seeds (tests/test_app_loading.py measures the same pair)
    assert m["psnr_db_min"] > 30 and m["ssim_min"] > 0.95
    assert (tmp_path / "c.png").stat().st_size > 1000 and (tmp_path / "c.mp4").exists()
    import imageio.v2 as imageio

    assert imageio.mimread(tmp_path / "c.mp4")[0].shape == (32, 80, 3)  # 32 + 4 + 32 padded to 80
    assert "PSNR mean" in capsys.readouterr().out


class _FakeWandb(types.ModuleType):
    def __init__(self):
        super().__init__("wandb")
        self.calls = []
        fake = self

        class Run:
            def log(self, d):
                fake.calls.append(("log", d))

            def finish(self):
                fake.calls.append(("finish",))

        self.Run = Run

    def init(self, **kw):
        self.calls.append(("init", kw))
        return self.Run()

    def Video(self, path, **kw):
        return ("video", path)


def test_wandb_logging_and_missing_package(tmp_path, capsys, monkeypatch):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert _gen(tmp_path, "--wandb", "--wandb-project", "p") == 0
    kinds = [c[0] for c in fake.calls]
    assert kinds == ["init", "log", "finish"] and fake.calls[0][1]["project"] == "p"
    logged = fake.calls[1][1]
    assert logged["video"] == ("video", str(tmp_path / "v.mp4")) and logged["timings/end_to_end_s"] > 0
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    monkeypatch.setattr(runmod, "load_pipeline", lambda *a, **k: pytest.fail("loaded before the wandb check"))
    assert _gen(tmp_path, "--wandb") == 2
    assert "pip install 'q8lib[wandb]'" in capsys.readouterr().err


def test_bench_forwards_arguments(monkeypatch):
    import q8lib.bench

    seen = []
    monkeypatch.setattr(q8lib.bench, "main", lambda argv: seen.append(argv) or 0)
    assert main(["bench", "--config", "tiny", "--iters", "1"]) == 0
    assert seen == [["--config", "tiny", "--iters", "1"]]


def test_bench_help_reaches_the_real_module(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0 and "q8lib.bench" in capsys.readouterr().out


def test_memory_and_demo(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["memory", "--model", "tiny", "--device", "cpu", "--frames", "9", "--height", "32", "--width", "32", "--repeats", "1",
                 "--output", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["shape"]["video_tokens"] == 192 and rep["results"]["output_finite"]
    assert "versions" in rep and "date" in rep
    assert main(["demo", "--batch", "1"]) == 0
    assert "relative error" in capsys.readouterr().out


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "q8lib", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for cmd in ("generate", "compare", "convert", "bench", "memory", "demo"):
        assert cmd in r.stdout
