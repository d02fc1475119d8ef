"""Issue #17: two-stage generation with a latent upsampler (q8lib.app.upsample), offline on tiny hub-layout repos.

A 0.9.7-style ``LTXConditionPipeline`` repo and a ``Lightricks/ltxv-spatial-upscaler-0.9.7``-style upsampler repo
(tests/pipeline_folders.py) go through the real loading code; CPU, reference backend, fp32.
"""
from __future__ import annotations

import contextlib
import json

import pytest

import q8lib.app.run as runmod
import q8lib.app.upsample as upsample_module
from q8lib import Q8Config
from q8lib.app import GenerationSettings, encode_prompts, load_pipeline
from q8lib.app.cli import main
from q8lib.app.loading import transformer_config
from q8lib.app.pipelines import model_family
from q8lib.app.upsample import RECIPE, load_upsampler, ltx2_distilled_recipe, plan_upsample, run_two_stage
from q8lib.errors import SettingsError
from helpers import rel_err
from pipeline_folders import ltx097_folder, ltx2_folder, ltx2_lora_file, ltx_upsampler_folder

pytestmark = pytest.mark.filterwarnings("ignore::q8lib.errors.Q8FallbackWarning")  # CPU: the reference math on purpose
# 64x96 requested: stage 1 at 2/3 rounded down to multiples of 32 (32x64), stage 2 at 64x128, resized to 64x96.
SMALL = ["--frames", "9", "--height", "64", "--width", "96", "--steps", "2", "--quiet", "--device", "cpu",
         "--dtype", "fp32", "--negative-prompt", "", "--no-prompt-cache"]


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("repos")
    return dict(ltx097=str(ltx097_folder(root / "LTX-Video-0.9.7-dev")),
                upsampler=str(ltx_upsampler_folder(root / "ltxv-spatial-upscaler-0.9.7")))


def test_cli_generate_two_stages(repos, tmp_path):
    out = tmp_path / "v.mp4"
    assert main(["generate", "--model", repos["ltx097"], "--upsampler", repos["upsampler"],
                 "--prompt", "a red circle moving right", *SMALL, "--output", str(out)]) == 0
    assert out.stat().st_size > 0
    rep = json.loads(out.with_suffix(".json").read_text())
    up = rep["upsample"]
    assert up["upsampler"] == repos["upsampler"] and up["subfolder"] == "latent_upsampler"
    assert (up["stage1"], up["stage2"], up["resized_to"]) == (dict(height=32, width=64), dict(height=64, width=128),
                                                               dict(height=64, width=96))
    # [batch, channels, latent frames, height / 4, width / 4] (the tiny VAE compresses 4x), then 2x height and width
    assert up["latents"] == dict(stage1=[1, 8, 3, 8, 16], upsampled=[1, 8, 3, 16, 32])
    assert up["recipe"]["stage2_denoise_strength"] == 0.4 and up["recipe"]["stage2_steps"] == 10
    t = rep["results"]["timings"]
    # stage 1: the 2 steps asked for; stage 2: 0.4 of 10 steps
    assert (t["stage1_transformer_forwards"], t["stage2_transformer_forwards"], t["transformer_forwards"]) == (2, 4, 6)
    assert t["upsample_s"] > 0 and t["end_to_end_s"] >= t["stage1_end_to_end_s"] + t["stage2_end_to_end_s"]
    assert rep["shape"]["height"] == 64 and rep["shape"]["width"] == 96


# fp32 vs Q8 (int8, FP8 attention, reference backend) through both stages, 2 + 4 steps, CFG 3, 64x96, seeds 0-5
# (random weights): frames relative error 0.00094-0.00101. Bound: max + ~30%.
def test_q8_two_stages_match_unquantized(repos, seed):
    m = repos["ltx097"]
    s = GenerationSettings(prompt="a red circle moving right", negative_prompt="", num_frames=9, height=64, width=96,
                           num_inference_steps=2, guidance_scale=3.0, max_sequence_length=16,
                           seed=seed % 2**31).validate()
    plan = plan_upsample(repos["upsampler"], model_family(m), m, s, transformer_config(m))
    ref = load_pipeline(m, precision="bf16", device="cpu", dtype="fp32")
    q8 = load_pipeline(m, precision="q8", device="cpu", dtype="fp32", q8_config=Q8Config(weight_dtype="int8"))
    embeds, _ = encode_prompts(ref, s, m, None)
    a = run_two_stage(ref, load_upsampler(plan, ref), plan, s, embeds, progress=False)
    b = run_two_stage(q8, load_upsampler(plan, q8), plan, s, embeds, progress=False)
    assert a["latents"] == b["latents"] == dict(stage1=[1, 8, 3, 8, 16], upsampled=[1, 8, 3, 16, 32])
    assert a["stage2_frames_shape"] == [1, 9, 3, 64, 128]
    assert a["frames"].shape == b["frames"].shape == (1, 9, 3, 64, 96)
    assert 1e-4 < rel_err(a["frames"], b["frames"]) < 0.0013


def test_refusals_before_anything_loads(repos, tmp_path, capsys, monkeypatch):
    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(runmod, "load_pipeline", no_loading)
    out = str(tmp_path / "v.mp4")
    cases = [
        (["--model", "tiny", "--upsampler", repos["upsampler"]], "has no latent upsampler"),
        (["--model", repos["ltx097"], "--upsampler", repos["upsampler"], "--height", "32"],
         "--height and --width must be at least 64"),
        (["--model", repos["ltx097"], "--upsampler", str(tmp_path / "nothing")], "no latent upsampler config found"),
    ]
    for flags, message in cases:
        args = ["generate", "--prompt", "x", *SMALL, "--output", out, *flags]
        assert main(args) == 2, flags
        assert message in capsys.readouterr().err, flags
    ltx2 = ltx2_folder(tmp_path / "LTX-2", upsampler=True)
    assert main(["generate", "--prompt", "x", *SMALL, "--output", out, "--model", str(ltx2),
                 "--upsampler", str(ltx2 / "latent_upsampler")]) == 2
    err = capsys.readouterr().err
    assert "--stage2-lora Lightricks/LTX-2" in err and "ltx-2-19b-distilled-lora-384" in err and "--distilled" in err
    distilled_cases = [
        (["--model", str(ltx2), "--distilled"], "drop --steps"),  # SMALL passes --steps
        (["--model", repos["ltx097"], "--distilled", "--upsampler", repos["upsampler"]], "LTX-2's distilled"),
        (["--model", str(ltx2), "--distilled", "--upsampler", repos["upsampler"]], "not an LTX2LatentUpsamplerModel"),
    ]
    for flags, message in distilled_cases:
        args = ["generate", "--prompt", "x", *SMALL, "--output", out, *flags]
        if "drop --steps" not in message:
            args.remove("--steps"), args.remove("2")
        assert main(args) == 2, flags
        assert message in capsys.readouterr().err, flags
    with pytest.raises(SettingsError, match="generate only"):
        runmod.compare("x", model=str(ltx2), distilled=True, device="cpu", no_video=True)
    lora = ltx2_lora_file(tmp_path / "lora" / "distilled-lora.safetensors", ltx2)
    up2 = ["--model", str(ltx2), "--upsampler", str(ltx2 / "latent_upsampler")]
    lora_cases = [
        (up2 + ["--stage2-lora", str(tmp_path / "none.safetensors")], "no such file or folder"),
        (up2 + ["--stage2-lora", str(lora.parent), "--stage2-lora-weight", "other.safetensors"], "no such file in"),
        (up2 + ["--stage2-lora-weight", lora.name], "give --stage2-lora too"),
        (up2 + ["--stage2-lora", str(lora), "--compile"], "not supported"),
        (up2 + ["--stage2-lora", str(lora), "--offload", "model"], "not supported yet"),
        (["--model", str(ltx2), "--stage2-lora", str(lora)], "it needs --upsampler"),
        (["--model", repos["ltx097"], "--upsampler", repos["upsampler"], "--stage2-lora", str(lora)],
         "LTX-2's two-stage recipe"),
    ]
    for flags, message in lora_cases:
        assert main(["generate", "--prompt", "x", *SMALL, "--output", out, *flags]) == 2, flags
        assert message in capsys.readouterr().err, flags
    with pytest.raises(SettingsError, match="generate only"):
        runmod.compare("x", model=repos["ltx097"], upsampler=repos["upsampler"], device="cpu", no_video=True)
    assert RECIPE["downscale_factor"] == 2 / 3


# LTX-2 distilled checkpoints (--distilled): diffusers' "Distilled checkpoint generation" recipe on a tiny LTX-2 repo
LTX2_SMALL = ["--frames", "9", "--height", "64", "--width", "64", "--quiet", "--device", "cpu", "--dtype", "fp32",
              "--negative-prompt", "", "--no-prompt-cache", "--distilled"]


@pytest.fixture(scope="module")
def ltx2_repo(tmp_path_factory):
    return ltx2_folder(tmp_path_factory.mktemp("repos") / "LTX-2-distilled", upsampler=True)


def test_cli_ltx2_distilled_two_stages(ltx2_repo, tmp_path):
    out = tmp_path / "v.mp4"
    assert main(["generate", "--model", str(ltx2_repo), "--upsampler", str(ltx2_repo / "latent_upsampler"),
                 "--prompt", "a red circle moving right", *LTX2_SMALL, "--output", str(out)]) == 0
    assert out.stat().st_size > 0
    rep = json.loads(out.with_suffix(".json").read_text())
    up = rep["upsample"]
    assert (up["stage1"], up["stage2"], up["resized_to"]) == (dict(height=32, width=32), dict(height=64, width=64),
                                                               dict(height=64, width=64))
    # [batch, 16 channels, latent frames, height / 4, width / 4] (the tiny LTX-2 VAE compresses 4x), then 2x
    assert up["latents"] == dict(stage1=[1, 16, 3, 8, 8], upsampled=[1, 16, 3, 16, 16])
    recipe = up["recipe"]
    assert len(recipe["stage1_sigmas"]) == 8 and len(recipe["stage2_sigmas"]) == 3
    assert recipe["stage2_noise_scale"] == recipe["stage2_sigmas"][0] and recipe["guides"]["stg_scale"] == 0.0
    t = rep["results"]["timings"]
    # every guide off: one transformer call a step (diffusers' defaults would make it three: CFG off, STG, modality)
    assert (t["stage1_transformer_forwards"], t["stage2_transformer_forwards"]) == (8, 3)
    assert rep["settings"]["num_inference_steps"] == 8 and rep["settings"]["guidance_scale"] == 1.0
    assert rep["results"]["audio"]["channels"] == 2


def test_cli_ltx2_distilled_one_stage(ltx2_repo, tmp_path):
    out = tmp_path / "v.mp4"
    assert main(["generate", "--model", str(ltx2_repo), "--prompt", "a red circle moving right", *LTX2_SMALL,
                 "--output", str(out), "--no-video"]) == 0
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["results"]["timings"]["transformer_forwards"] == 8 and "upsample" not in rep
    assert rep["distilled"]["recipe"]["stage1_sigmas"] == ltx2_distilled_recipe()["stage1_sigmas"]


# fp32 vs Q8 (int8, FP8 attention, reference backend) through both distilled stages, 8 + 3 steps, 64x64, seeds 0-5
# (random weights): frames relative error 0.0022-0.0034, audio 5.8e-5-1.5e-4. Bounds: max + ~30%.
def test_q8_ltx2_distilled_two_stages_match_unquantized(ltx2_repo, seed):
    m = str(ltx2_repo)
    s = GenerationSettings(prompt="a red circle moving right", negative_prompt="", num_frames=9, height=64, width=64,
                           num_inference_steps=8, guidance_scale=1.0, max_sequence_length=16,
                           seed=seed % 2**31).validate()
    plan = plan_upsample(m + "/latent_upsampler", model_family(m), m, s, transformer_config(m), distilled=True)
    ref = load_pipeline(m, precision="bf16", device="cpu", dtype="fp32")
    q8 = load_pipeline(m, precision="q8", device="cpu", dtype="fp32", q8_config=Q8Config(weight_dtype="int8"))
    embeds, _ = encode_prompts(ref, s, m, None)
    a = run_two_stage(ref, load_upsampler(plan, ref), plan, s, embeds, progress=False)
    b = run_two_stage(q8, load_upsampler(plan, q8), plan, s, embeds, progress=False)
    assert a["frames"].shape == b["frames"].shape == (1, 9, 3, 64, 64)
    assert 1e-4 < rel_err(a["frames"], b["frames"]) < 0.0045
    assert 0 < rel_err(a["audio"], b["audio"]) < 2e-4


# LTX-2 dev checkpoints: the distilled LoRA in stage 2 (--stage2-lora; a random stand-in LoRA here)
@pytest.fixture(scope="module")
def ltx2_lora(ltx2_repo, tmp_path_factory):
    return ltx2_lora_file(tmp_path_factory.mktemp("lora") / "distilled-lora.safetensors", ltx2_repo)


def test_cli_ltx2_dev_two_stages_with_the_stage2_lora(ltx2_repo, ltx2_lora, tmp_path):
    out = tmp_path / "v.mp4"
    assert main(["generate", "--model", str(ltx2_repo), "--upsampler", str(ltx2_repo / "latent_upsampler"),
                 "--stage2-lora", str(ltx2_lora.parent), "--stage2-lora-weight", ltx2_lora.name,
                 "--prompt", "a red circle moving right", *LTX2_SMALL[:-1], "--steps", "2", "--output", str(out),
                 "--repeats", "2"]) == 0
    rep = json.loads(out.with_suffix(".json").read_text())
    recipe = rep["upsample"]["recipe"]
    assert "Two-stages Generation" in recipe["source"] and recipe["stage2_adapter"] == "stage_2_distilled"
    assert recipe["stage2_scheduler"] == dict(use_dynamic_shifting=False, shift_terminal=None)
    t = rep["results"]["timings"]
    # stage 1: the dev settings (guidance 4 with STG and modality guidance: three calls a step); stage 2: one a step
    assert (t["stage1_transformer_forwards"], t["stage2_transformer_forwards"]) == (6, 3)


# fp32 vs Q8 (int8, FP8 attention, reference backend) through the dev recipe with the stand-in LoRA, 3 + 3 steps,
# guidance 4, 64x64, seeds 0-3: frames relative error 0.0023-0.0025, audio 7.8e-5-1.3e-4; the LoRA itself moves the
# frames by 1.1%. Bounds: max + ~30%.
def test_q8_ltx2_dev_two_stages_apply_the_lora_in_stage2_only(ltx2_repo, ltx2_lora, seed, monkeypatch):
    m = str(ltx2_repo)
    s = GenerationSettings(prompt="a red circle moving right", negative_prompt="", num_frames=9, height=64, width=64,
                           num_inference_steps=3, guidance_scale=4.0, max_sequence_length=16,
                           seed=seed % 2**31).validate()
    plan = plan_upsample(m + "/latent_upsampler", model_family(m), m, s, transformer_config(m),
                         stage2_lora=str(ltx2_lora))
    ref = load_pipeline(m, precision="bf16", device="cpu", dtype="fp32")
    q8 = load_pipeline(m, precision="q8", device="cpu", dtype="fp32", q8_config=Q8Config(weight_dtype="int8"))
    embeds, _ = encode_prompts(ref, s, m, None)
    shifting = ref.scheduler.config.use_dynamic_shifting
    up_ref = load_upsampler(plan, ref)
    a = run_two_stage(ref, up_ref, plan, s, embeds, progress=False)
    b = run_two_stage(q8, load_upsampler(plan, q8), plan, s, embeds, progress=False)
    assert 1e-4 < rel_err(a["frames"], b["frames"]) < 0.0033
    assert 0 < rel_err(a["audio"], b["audio"]) < 1.7e-4
    # after a run: the adapter is loaded but disabled, the pipeline's own scheduler is back
    assert ref.scheduler.config.use_dynamic_shifting == shifting and shifting
    lora_layers = [mod for mod in q8.transformer.modules() if hasattr(mod, "runs_adapter")]
    assert lora_layers and not any(mod.runs_adapter() for mod in lora_layers)
    # the same run with the adapter left off in stage 2 differs by the LoRA's effect, far above the Q8 error
    stage2_model = upsample_module._stage2_model

    @contextlib.contextmanager
    def without_lora(pipe, p):
        with stage2_model(pipe, p):
            pipe.disable_lora()
            yield

    monkeypatch.setattr(upsample_module, "_stage2_model", without_lora)
    c = run_two_stage(ref, up_ref, plan, s, embeds, progress=False)
    assert rel_err(a["frames"], c["frames"]) > 0.005
