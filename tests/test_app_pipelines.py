"""Issue #17 part 2: LTX-2 and LTX-Video 0.9.7/0.9.8 models through the app layer and the command line, offline.

Tiny repos in the hub layout (tests/pipeline_folders.py) go through the real loading code: the pipeline class is read
from ``model_index.json`` and ``transformer/config.json``, the transformer converted with ``q8lib.quantize_``, LTX-2's
audio written into the mp4. CPU, reference backend, fp32.
"""
from __future__ import annotations

import json
import re
import sys

import pytest
import torch

import q8lib.app.run as runmod
from q8lib import Q8Config, quantize_, save_q8
from q8lib.app import GenerationSettings, encode_prompts, load_pipeline, run_pipeline
from q8lib.app.cli import main
from q8lib.app.pipelines import model_family, pipeline_class
from q8lib.errors import MissingPackageError, ModelUnavailableError, SettingsError
from helpers import rel_err
from pipeline_folders import ltx097_folder, ltx2_folder

pytestmark = pytest.mark.filterwarnings("ignore::q8lib.errors.Q8FallbackWarning")  # CPU: the reference math on purpose
SMALL = ["--frames", "9", "--height", "32", "--width", "32", "--steps", "2", "--quiet", "--device", "cpu",
         "--dtype", "fp32", "--negative-prompt", ""]


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("repos")
    return dict(ltx2=str(ltx2_folder(root / "LTX-2")), ltx097=str(ltx097_folder(root / "LTX-Video-0.9.7-dev")),
                ltx2_condition=str(ltx2_folder(root / "LTX-2-condition", pipeline="LTX2ConditionPipeline")))


def _settings(seed, **kw):
    kw = {**dict(negative_prompt="", num_frames=9, height=32, width=32, num_inference_steps=2, max_sequence_length=16,
                 seed=seed % 2**31), **kw}
    return GenerationSettings(prompt="a red circle moving right", **kw).validate()


def test_pipeline_class_comes_from_the_model_files(repos, tmp_path):
    """The pipeline follows model_index.json and the transformer's config.json, whatever the folder is called."""
    import diffusers

    want = {("ltx2", False): diffusers.LTX2Pipeline, ("ltx2", True): diffusers.LTX2ImageToVideoPipeline,
            ("ltx097", False): diffusers.LTXConditionPipeline, ("ltx097", True): diffusers.LTXConditionPipeline,
            ("ltx2_condition", False): diffusers.LTX2ConditionPipeline,
            ("ltx2_condition", True): diffusers.LTX2ConditionPipeline}
    for (name, image), cls in want.items():
        assert pipeline_class(model_family(repos[name]), image) is cls, (name, image)
    assert model_family(repos["ltx2"]).audio and not model_family(repos["ltx097"]).audio
    assert model_family("tiny").name == "ltx" and pipeline_class(model_family("tiny"), True).__name__ == \
        "LTXImageToVideoPipeline"
    # an LTX-2 pipeline around an LTX-1 transformer, and a pipeline q8lib does not run: refused, naming what was found
    bad = tmp_path / "mixed"
    bad.mkdir()
    (bad / "model_index.json").write_text(json.dumps({"_class_name": "LTX2Pipeline"}))
    (bad / "transformer").mkdir()
    (bad / "transformer" / "config.json").write_text(json.dumps({"_class_name": "LTXVideoTransformer3DModel"}))
    with pytest.raises(SettingsError, match="names LTX2Pipeline, which runs a LTX2VideoTransformer3DModel.*describes "
                                            "a LTXVideoTransformer3DModel"):
        load_pipeline(str(bad), device="cpu")
    (bad / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(SettingsError, match="holds a FluxPipeline; q8lib runs LTXPipeline"):
        load_pipeline(str(bad), device="cpu")


def test_hub_ids_offline_say_how_to_get_them(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for repo in ("Lightricks/LTX-2", "Lightricks/LTX-Video-0.9.8-13B-distilled"):
        with pytest.raises(ModelUnavailableError, match=f"huggingface-cli download {repo}"):
            load_pipeline(repo, device="cpu")


# fp32 vs Q8 (int8, FP8 attention, reference backend), 2 steps, CFG 3, decoded outputs, seeds 0-5 (random weights):
#   LTX-2 frames 0.0098-0.0151, audio waveform 0.0004-0.0006; 0.9.7-style frames 0.0016-0.0018. Bounds: max + ~40%.
@pytest.mark.parametrize("name,frames_bound,audio_bound", [("ltx2", 0.021, 0.0009), ("ltx097", 0.0025, None)])
def test_q8_pipeline_matches_unquantized(repos, seed, name, frames_bound, audio_bound):
    ref = load_pipeline(repos[name], precision="bf16", device="cpu", dtype="fp32")
    q8 = load_pipeline(repos[name], precision="q8", device="cpu", dtype="fp32", q8_config=Q8Config(weight_dtype="int8"))
    assert type(q8.transformer).__name__ == model_family(repos[name]).transformer
    assert q8.q8lib_info["family"] == model_family(repos[name]).name and q8.q8lib_info["pipeline"] == type(q8).__name__
    s = _settings(seed, guidance_scale=3.0)
    embeds, _ = encode_prompts(ref, s, repos[name], None)
    a, b = run_pipeline(ref, s, embeds, progress=False), run_pipeline(q8, s, embeds, progress=False)
    assert a["frames"].shape == b["frames"].shape == (1, 9, 3, 32, 32)
    assert 1e-4 < rel_err(a["frames"], b["frames"]) < frames_bound
    if audio_bound is None:
        assert a["audio"] is None
    else:  # [videos, channels, samples] at the vocoder's rate
        assert a["audio"].shape[:2] == (1, 2) and a["audio_sample_rate"] == 16000
        assert 1e-5 < rel_err(a["audio"], b["audio"]) < audio_bound


def test_image_conditions_each_family(repos, seed):
    """--image: LTX2ImageToVideoPipeline, LTXConditionPipeline (image=), LTX2ConditionPipeline (conditions=)."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed % 2**31)
    img = Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy())
    s = _settings(seed, guidance_scale=1.0)
    for name in ("ltx097", "ltx2_condition") + (("ltx2",) if _has_av() else ()):
        pipe = load_pipeline(repos[name], precision="q8", device="cpu", dtype="fp32", image_to_video=True)
        embeds, _ = encode_prompts(pipe, s, repos[name], None)
        out = run_pipeline(pipe, s, embeds, image=img, progress=False)
        assert out["frames"].shape == (1, 9, 3, 32, 32) and torch.isfinite(out["frames"]).all(), name


def test_checkpoint_of_another_family_is_refused(repos, tmp_path):
    ck = save_q8(quantize_(load_pipeline("tiny", precision="bf16", device="cpu").transformer, Q8Config(),
                           progress=False), tmp_path / "ck")
    with pytest.raises(SettingsError, match="holds a LTXVideoTransformer3DModel, but .* runs a "
                                            "LTX2VideoTransformer3DModel"):
        load_pipeline(repos["ltx2"], device="cpu", checkpoint=str(ck))
    with pytest.raises(SettingsError, match="--cuda-graph needs --device cuda"):  # LTX-2 takes CUDA graphs on GPUs
        load_pipeline(repos["ltx2"], device="cpu", cuda_graph=True)


@pytest.mark.parametrize("name,image,guidance,steps", [("ltx2", False, 3.0, 3), ("ltx2_condition", True, 1.0, 2),
                                                        ("ltx2", True, 3.0, 2)])
def test_ltx2_calls_keep_one_cuda_graph_key_per_call_site(repos, seed, name, image, guidance, steps):
    """--cuda-graph on LTX-2: ``CUDAGraphForward`` captures a graph per call key (``q8lib.cudagraph.graph_key``:
    tensor shapes/dtypes/strides, every other argument's repr). diffusers' LTX-2 pipelines call the transformer
    from three sites a step (CFG batch, STG pass, modality-isolation pass); each site must keep its key at every
    step (timesteps as tensors, not floats), or each step would capture anew and soon exceed ``max_graphs``. The
    weights stay where they are (a graph replays fixed addresses) and the outputs are the (video, audio) pair that
    ``CUDAGraphForward`` clones out of the graph's memory."""
    import inspect

    from PIL import Image
    from torch.utils import _pytree as pytree

    from q8lib.cudagraph import CUDAGraphForward, graph_key

    if image and name == "ltx2" and not _has_av():
        pytest.skip("LTX2ImageToVideoPipeline re-encodes the image with PyAV")
    pipe = load_pipeline(repos[name], precision="q8", device="cpu", dtype="fp32", image_to_video=image)
    keys, outs = [], []
    pipe.transformer.register_forward_pre_hook(lambda m, a, k: keys.append(graph_key(a, k)[0]), with_kwargs=True)
    pipe.transformer.register_forward_hook(lambda m, a, o: outs.append(o))
    addresses = [t.data_ptr() for t in pipe.transformer.state_dict().values()]
    s = _settings(seed, guidance_scale=guidance, num_inference_steps=steps)
    embeds, _ = encode_prompts(pipe, s, repos[name], None)
    img = Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()) if image else None
    run_pipeline(pipe, s, embeds, image=img, progress=False)
    per_step = len(keys) // steps
    assert per_step == 3 and len(keys) == steps * per_step, len(keys)
    assert all(keys[i * per_step:(i + 1) * per_step] == keys[:per_step] for i in range(steps))
    max_graphs = inspect.signature(CUDAGraphForward).parameters["max_graphs"].default
    assert len(set(keys)) == per_step <= max_graphs
    assert [t.data_ptr() for t in pipe.transformer.state_dict().values()] == addresses
    assert all(isinstance(o, tuple) and len(pytree.tree_leaves(o)) == 2 and
               all(isinstance(t, torch.Tensor) for t in pytree.tree_leaves(o)) for o in outs)


def _has_av():
    import importlib.util

    return importlib.util.find_spec("av") is not None


@pytest.mark.skipif(not _has_av(), reason="PyAV (the ltx2 extra) writes LTX-2's audio")
def test_cli_generate_ltx2_writes_video_with_audio(repos, tmp_path, capsys):
    import av

    out = tmp_path / "v.mp4"
    assert main(["generate", "--model", repos["ltx2"], "--prompt", "a red circle moving right", *SMALL,
                 "--guidance", "3", "--no-prompt-cache", "--output", str(out)]) == 0
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["pipeline"]["pipeline"] == "LTX2Pipeline" and rep["pipeline"]["precision"] == "q8"
    assert rep["results"]["audio"]["sample_rate"] == 16000 and rep["results"]["audio"]["channels"] == 2
    with av.open(str(out)) as f:
        assert [s.type for s in f.streams] == ["video", "audio"]
        assert f.streams.video[0].frames == 9 and f.streams.audio[0].rate == 16000
    assert "wrote" in capsys.readouterr().out


def test_cli_convert_ltx2_then_generate_from_checkpoint(repos, tmp_path, capsys):
    """``q8lib convert`` on an LTX-2 repo writes a Q8 LTX-2 checkpoint; ``generate --checkpoint`` runs the repo's
    pipeline with it (no on-the-fly conversion); an LTX-1 model refuses it, naming both transformers."""
    from q8lib import load_q8

    ck = tmp_path / "ck"
    assert main(["convert", repos["ltx2"], str(ck), "--weight-dtype", "fp8_e4m3", "--report",
                 str(tmp_path / "size.json")]) == 0
    assert "q8lib weights" in capsys.readouterr().out
    rep = json.loads((tmp_path / "size.json").read_text())
    # tiny LTX-2 (LTX2_TINY_CONFIG): 753,664 of its 1,237,280 parameters in 8 bits, 2.47 -> 1.79 MB (int8: ratio 0.72)
    assert rep["params_8bit"] == 753_664 and 0.65 < rep["ratio"] < 0.8
    assert type(load_q8(ck)).__name__ == "LTX2VideoTransformer3DModel"
    out = tmp_path / "v.mp4"
    assert main(["generate", "--model", repos["ltx2"], "--checkpoint", str(ck), "--prompt", "a red circle moving right",
                 *SMALL, "--no-video", "--no-prompt-cache", "--output", str(out)]) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["pipeline"]["checkpoint"] == str(ck) and side["pipeline"]["pipeline"] == "LTX2Pipeline"
    # the checkpoint's format is reported, not --weight-dtype's default (int8 on a CPU)
    assert side["pipeline"]["weight_dtype"] == "fp8_e4m3" and side["results"]["timings"]["transformer_forwards"] == 6
    assert main(["generate", "--checkpoint", str(ck), "--prompt", "x", *SMALL, "--no-video",
                 "--output", str(tmp_path / "t.mp4")]) == 2
    assert "holds a LTX2VideoTransformer3DModel, but tiny runs a LTXVideoTransformer3DModel" in capsys.readouterr().err


def test_cli_compare_ltx097(repos, tmp_path, capsys):
    out = tmp_path / "c.mp4"
    assert main(["compare", "--model", repos["ltx097"], "--prompt", "a red circle moving right", *SMALL,
                 "--no-prompt-cache", "--output", str(out)]) == 0
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["pipeline"]["pipeline"] == "LTXConditionPipeline"
    # random weights, 2 steps, seeds 0-5: per-frame PSNR min 58.7-60.3 dB, SSIM min 0.99995-0.99997
    assert rep["results"]["metrics"]["psnr_db_min"] > 50 and rep["results"]["metrics"]["ssim_min"] > 0.999


def test_missing_pyav_fails_before_loading(repos, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "av" else real(n, *a))
    monkeypatch.setattr(runmod, "load_pipeline", lambda *a, **k: pytest.fail("loaded before the PyAV check"))
    assert main(["generate", "--model", repos["ltx2"], "--prompt", "x", *SMALL, "--output", str(tmp_path / "v.mp4")]) == 2
    assert "LTX-2 needs PyAV for writing the video with its audio track: pip install 'q8lib[ltx2]'" in \
        capsys.readouterr().err
    with pytest.raises(MissingPackageError, match="re-encoding the conditioning image"):
        runmod.generate("x", model=repos["ltx2"], image=str(tmp_path / "missing.png"), no_video=True, device="cpu")


def test_ltx2_defaults_follow_the_model_card(repos, monkeypatch):
    """Without --frames/--height/--width/--steps/--guidance an LTX-2 run takes LTX-2's card values (and 1024 prompt
    tokens), checked before any loading."""
    seen = {}

    def stop(o, run, *a, **k):
        seen.update(run["settings"].__dict__)
        raise SettingsError("stop")

    monkeypatch.setattr(runmod, "_load", stop)
    with pytest.raises(SettingsError, match="stop"):
        runmod.generate("x", model=repos["ltx2"], no_video=True, device="cpu")
    assert (seen["num_frames"], seen["height"], seen["width"], seen["num_inference_steps"], seen["guidance_scale"],
            seen["max_sequence_length"]) == (121, 512, 768, 40, 4.0, 1024)


def test_cli_memory_measures_ltx2(repos, tmp_path, capsys, monkeypatch):
    """``q8lib memory`` on an LTX-2 repo: video and audio tokens as the benchmark builds them (latent grid of the
    config's vae_scale_factors (8, 32, 32): 9 frames of 32x32 -> 2x1x1; audio of 9 frames at 24 fps: round(9.375) = 9
    tokens), 1024 text tokens by default (LTX2Pipeline's max_sequence_length); bad shapes fail before loading."""
    from q8lib.app import measure

    out = tmp_path / "m.json"
    args = ["memory", "--model", repos["ltx2"], "--device", "cpu", "--frames", "9", "--height", "32", "--width", "32",
            "--repeats", "1"]
    assert main([*args, "--output", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["shape"]["latent"] == [2, 1, 1] and rep["shape"]["video_tokens"] == 2
    assert rep["shape"]["audio_tokens"] == 9 and rep["shape"]["text_tokens"] == 1024
    assert rep["results"]["output_finite"] and rep["results"]["precision"] == "q8"
    assert rep["results"]["params"] > 1_000_000 and len(rep["results"]["forward_ms"]) == 1
    assert "2 + 9 audio tokens, 1024 text tokens x batch 2" in capsys.readouterr().out
    assert main([*args, "--batch", "1", "--text-tokens", "8", "--precision", "bf16", "--output", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["shape"]["text_tokens"] == 8 and rep["shape"]["transformer_batch"] == 1
    assert rep["results"]["precision"] == "bf16" and rep["results"]["output_finite"]
    monkeypatch.setattr(measure, "load_transformer", lambda *a, **k: pytest.fail("loaded weights"))
    for flags, message in ((["--frames", "10"], "8k\\+1"), (["--height", "48"], "height must be a positive multiple"),
                           (["--text-tokens", "0"], "text_tokens must be a whole number >= 1")):
        assert main([*args, *flags]) == 2
        assert re.search(message, capsys.readouterr().err), flags


def test_cli_generate_ltx2_with_q8_text_encoder(repos, tmp_path, capsys, monkeypatch):
    """--text-encoder-precision q8: Gemma's layer linears in 8 bits before the prompt is encoded, recorded in the
    report, and the prompt cache keys its embeddings apart from the unquantized encoder's."""
    import q8lib.app.loading as loading

    seen = []
    real = loading.quantize_text_encoder_
    monkeypatch.setattr(loading, "quantize_text_encoder_", lambda enc, **kw: seen.append(type(enc).__name__) or real(enc, **kw))
    cache = str(tmp_path / "cache")

    def gen(precision):
        out = tmp_path / f"{precision}.mp4"
        assert main(["generate", "--model", repos["ltx2"], "--prompt", "a red circle moving right", *SMALL, "--no-video",
                     "--weight-dtype", "int8", "--text-encoder-precision", precision, "--prompt-cache", cache,
                     "--output", str(out)]) == 0
        return json.loads(out.with_suffix(".json").read_text())

    q8 = gen("q8")
    assert seen == ["Gemma3ForConditionalGeneration"]
    assert q8["pipeline"]["text_encoder_precision"] == "q8" and q8["pipeline"]["text_encoder_weight_dtype"] == "int8"
    assert q8["results"]["prompt_cache"] == "miss"
    bf16 = gen("bf16")  # a bf16 run never gets the Q8 encoder's embeddings
    assert bf16["results"]["prompt_cache"] == "miss" and bf16["pipeline"]["text_encoder_precision"] == "bf16"
    assert bf16["results"]["prompt_cache_key"] != q8["results"]["prompt_cache_key"]
    again = gen("q8")  # cached: the text encoder is not even loaded
    assert again["results"]["prompt_cache"] == "hit" and seen == ["Gemma3ForConditionalGeneration"]
    assert again["results"]["prompt_cache_key"] == q8["results"]["prompt_cache_key"]
    with pytest.raises(SettingsError, match="no text encoder"):
        load_pipeline("random-2b", device="cpu", text_encoder_precision="q8")
