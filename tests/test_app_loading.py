"""q8lib.app.loading (+ measure): the end-to-end pipeline on the tiny default, equivalence, hub/legacy loading offline."""
from __future__ import annotations

import math
import re

import pytest
import torch

from q8lib import Q8CheckpointError, Q8Config, load_q8, quantize_, save_q8
from q8lib.app import (GenerationSettings, encode_prompts, load_pipeline, random_q8_transformer, run_pipeline,
                       transformer_memory)
from q8lib.errors import ModelUnavailableError, SettingsError
from q8lib.tiny import default_pipeline
from q8lib.metrics import psnr, ssim

pytestmark = pytest.mark.filterwarnings("ignore::q8lib.errors.Q8FallbackWarning")  # CPU runs use the reference math on purpose

SMALL = dict(num_frames=9, height=32, width=32, num_inference_steps=2)


def _settings(seed, **kw):
    kw = {"negative_prompt": "", **SMALL, **kw}  # the tiny default's vocabulary has no negative-prompt words
    return GenerationSettings(prompt="a red circle moving right", seed=seed % 2**31, **kw).validate()


@pytest.fixture(scope="module")
def pipes():
    return load_pipeline("tiny", precision="bf16", device="cpu"), load_pipeline("tiny", precision="q8", device="cpu")


def _latents(pipe, embeds, seed, steps=2):
    out = pipe(**embeds, num_frames=9, height=32, width=32, num_inference_steps=steps, output_type="latent",
               generator=torch.Generator().manual_seed(seed))
    return out.frames


def test_q8_pipeline_matches_unquantized(pipes, seed):
    ref, q8 = pipes
    s = _settings(seed)
    embeds, _ = encode_prompts(ref, s, "tiny", None)
    a, b = _latents(ref, embeds, seed), _latents(q8, embeds, seed)
    rel = ((a - b).norm() / a.norm()).item()
    assert 1e-4 < rel < 0.15, rel
    # trained tiny default, fp32 vs Q8 reference, 2 steps, 11 seeds: latent relative error 0.055-0.094,
    # per-frame PSNR min 34.4-45.0 dB (mean 35.6-47.2), SSIM min 0.973-0.997
    va = run_pipeline(ref, s, embeds, progress=False)
    vb = run_pipeline(q8, s, embeds, progress=False)
    fa, fb = va["frames"][0], vb["frames"][0]
    assert fa.shape == (9, 3, 32, 32) and fa.std() > 0.01
    assert psnr(fa, fb).min() > 30 and ssim(fa, fb).min() > 0.95
    t = vb["timings"]
    assert t["transformer_forwards"] == 2 * 1 and 0 < t["transformer_s"] <= t["end_to_end_s"]
    assert t["vae_decode_s"] > 0


def test_pipeline_is_deterministic_per_seed(pipes, seed):
    _, q8 = pipes
    embeds, _ = encode_prompts(q8, _settings(seed), "tiny", None)
    assert torch.equal(_latents(q8, embeds, seed), _latents(q8, embeds, seed))
    assert not torch.equal(_latents(q8, embeds, seed), _latents(q8, embeds, seed + 1))


def _fake_hub(tmp_path, monkeypatch, repo: str, writer):
    """Write files with ``writer(folder)`` where the hub cache would hold ``repo`` and point the cache there."""
    cache = tmp_path / "hub"
    base = cache / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / ("0" * 40)
    writer(snap)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    return snap


def test_hub_model_offline_converts_on_the_fly(tmp_path, monkeypatch):
    """``Lightricks/LTX-Video`` through the real hub code path, served from a local cache with the tiny model."""
    tiny = default_pipeline()
    _fake_hub(tmp_path, monkeypatch, "Lightricks/LTX-Video", tiny.save_pretrained)
    pipe = load_pipeline(device="cpu", model="ltx-2b", precision="q8", dtype="fp32")  # alias -> Lightricks/LTX-Video
    assert pipe.q8lib_info["model"] == "Lightricks/LTX-Video"
    want = quantize_(default_pipeline().transformer, Q8Config(), progress=False).state_dict()
    got = pipe.transformer.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k].float(), want[k].float()), k
    embeds, _ = encode_prompts(pipe, _settings(0), pipe.q8lib_info["model"], None)
    assert run_pipeline(pipe, _settings(0), embeds, progress=False)["frames"].shape == (1, 9, 3, 32, 32)


def test_hub_model_missing_offline_says_how_to_get_it(tmp_path, monkeypatch):
    _fake_hub(tmp_path, monkeypatch, "someone/else", lambda d: d.mkdir(parents=True))
    with pytest.raises(ModelUnavailableError) as e:
        load_pipeline("Lightricks/LTX-Video", precision="bf16")
    msg = str(e.value)
    assert "HF_HUB_OFFLINE" in msg and "huggingface-cli download Lightricks/LTX-Video" in msg and "--model tiny" in msg


def test_legacy_q8_checkpoint_from_hub_layout(tmp_path, monkeypatch):
    """The earlier public layout (no q8lib.json) loads from a hub id into the pipeline."""
    q8 = quantize_(default_pipeline().transformer, Q8Config(), progress=False)

    def write(d):  # the earlier layout: the same tensors, without q8lib.json, quantization_config or producer mark
        import json

        from safetensors.torch import load_file, save_file

        save_q8(q8, d)
        (d / "q8lib.json").unlink()
        cfg = json.loads((d / "config.json").read_text())
        del cfg["quantization_config"]
        (d / "config.json").write_text(json.dumps(cfg))
        f = d / "diffusion_pytorch_model.safetensors"
        save_file(load_file(f), f, metadata={"format": "pt"})

    _fake_hub(tmp_path, monkeypatch, "sayakpaul/q8-ltx-video", write)
    pipe = load_pipeline(device="cpu", model="tiny", checkpoint="sayakpaul/q8-ltx-video", dtype="fp32")
    for k, v in q8.state_dict().items():
        assert torch.equal(pipe.transformer.state_dict()[k], v), k
    with pytest.raises(SettingsError, match="precision"):
        load_pipeline("tiny", precision="bf16", checkpoint="sayakpaul/q8-ltx-video")


def test_checkpoint_with_wrong_keys_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    q8 = quantize_(default_pipeline().transformer, Q8Config(), progress=False)
    save_q8(q8, tmp_path / "ck")
    f = tmp_path / "ck" / "diffusion_pytorch_model.safetensors"
    state = load_file(f)
    state.pop("transformer_blocks.0.attn1.to_q.scales")
    state["transformer_blocks.0.extra"] = torch.zeros(1)
    save_file(state, f)
    with pytest.raises(Q8CheckpointError, match=r"transformer_blocks\.0\.attn1\.to_q\.scales.*transformer_blocks\.0\.extra"):
        load_pipeline(device="cpu", model="tiny", checkpoint=str(tmp_path / "ck"))


def test_a_pipeline_saved_after_quantize_is_a_checkpoint_not_a_model(tmp_path):
    """pipe.save_pretrained after q8lib.quantize_ (issue #16.1): as --model it is refused before any loading, with
    the --checkpoint form that runs it; load_pipeline takes it that way."""
    pipe = default_pipeline()
    quantize_(pipe.transformer, Q8Config(), progress=False)
    pipe.save_pretrained(tmp_path / "p")
    folder = str(tmp_path / "p")
    how = re.escape(f"--checkpoint {folder} --checkpoint-subfolder transformer")
    with pytest.raises(SettingsError, match="already quantized .*" + how):
        load_pipeline(folder, device="cpu")
    loaded = load_pipeline(folder, device="cpu", dtype="fp32", checkpoint=folder, checkpoint_subfolder="transformer")
    for k, v in pipe.transformer.state_dict().items():
        assert torch.equal(loaded.transformer.state_dict()[k], v), k


def test_image_to_video(tmp_path, seed):
    from PIL import Image

    pipe = load_pipeline(device="cpu", model="tiny", image_to_video=True)
    assert type(pipe).__name__ == "LTXImageToVideoPipeline"
    g = torch.Generator().manual_seed(seed % 2**31)
    img = Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy())
    s = _settings(seed)
    embeds, _ = encode_prompts(pipe, s, "tiny", None)
    out = run_pipeline(pipe, s, embeds, image=img, progress=False)
    assert out["frames"].shape == (1, 9, 3, 32, 32)


def test_random_q8_transformer_has_the_checkpoint_layout(tmp_path, seed):
    """Built directly in 8 bits: same keys/dtypes/shapes as a converted model, loads back, runs."""
    cfg = Q8Config(weight_dtype="fp8_e4m3")
    converted = quantize_(default_pipeline().transformer, cfg, progress=False)
    arch = {k: v for k, v in converted.config.items() if not k.startswith("_")}
    direct = random_q8_transformer(arch, cfg, dtype=torch.float32, seed=seed)
    a, b = direct.state_dict(), converted.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert not a[k].is_meta
    # dequantized random weights have std 1/sqrt(K) (uniform codes * sqrt(3)/(qmax sqrt(K)))
    lin = direct.transformer_blocks[0].attn1.to_q
    std = lin.dequantized_weight().std().item() * math.sqrt(lin.in_features)
    assert 0.8 < std < 1.2, std
    save_q8(direct, tmp_path / "r")
    back = load_q8(tmp_path / "r", torch_dtype=torch.float32)
    for k, v in a.items():
        assert torch.equal(back.state_dict()[k], v), k
    rep = transformer_memory("tiny", num_frames=9, height=32, width=32, batch=2, repeats=1, device="cpu")
    assert rep["output_finite"] and rep["shape"]["video_tokens"] == 3 * 8 * 8 and "peak_gib" not in rep


@pytest.mark.gpu
def test_q8_pipeline_on_gpu_matches_bf16(seed):
    """Tiny default on CUDA: bf16 pipeline vs Q8 (fast backend where it runs) from the same noise."""
    ref = load_pipeline("tiny", precision="bf16", device="cuda")
    q8 = load_pipeline("tiny", precision="q8", device="cuda")
    embeds, _ = encode_prompts(ref, _settings(seed), "tiny", None)
    a, b = _latents(ref, embeds, seed).float(), _latents(q8, embeds, seed).float()
    rel = ((a - b).norm() / a.norm()).item()
    print(f"backend={q8.q8lib_info['backend']} latent relative error {rel:.5f}")
    # CPU fp32 vs Q8 reference gives 0.055-0.094 on these settings; bf16 adds its own rounding
    assert torch.isfinite(b).all() and rel < 0.2


@pytest.mark.gpu
def test_q8_pipeline_cuda_graph_matches_eager(seed):
    """``cuda_graph=True`` replays exactly what the pipeline computes without it, eager and compiled.

    Compiled vs eager is not compared: compile moves bf16 roundings, and in 8 bits any upstream
    rounding change re-draws the quantization noise (tiny model, H100: compiled vs eager Q8 0.057
    after one step, eager Q8 vs bf16 0.062; bf16 eager vs compiled 0.017).
    """
    ref = load_pipeline("tiny", precision="bf16", device="cuda")
    embeds, _ = encode_prompts(ref, _settings(seed), "tiny", None)
    bf16 = _latents(ref, embeds, seed, steps=3).float()
    for compile_ in (False, True):
        torch._dynamo.reset()
        plain = load_pipeline("tiny", precision="q8", device="cuda", compile=compile_)
        graph = load_pipeline("tiny", precision="q8", device="cuda", compile=compile_, cuda_graph=True)
        a = _latents(plain, embeds, seed, steps=3).float()
        b = _latents(graph, embeds, seed, steps=3).float()
        sigs = list(graph.transformer._q8_cuda_graph.graphs)
        assert len(sigs) == 1 and graph.q8lib_info["cuda_graph"], sigs
        assert torch.isfinite(b).all()
        assert ((a - b).norm() / a.norm()).item() < 1e-6  # measured: identical
        assert ((b - bf16).norm() / bf16.norm()).item() < 0.2  # the Q8 bound of the test above


def test_13b_q8_weights_leave_room_on_a_24gb_gpu():
    """The 13B Q8 transformer built on the meta device (no memory): 13.05B parameters in 12.31 GiB
    (bf16 would be 24.3 GiB), leaving ~3.6 GiB of a 16 GiB budget for activations."""
    from q8lib.models import module_bytes
    from q8lib.models import LTX_13B_CONFIG

    m = random_q8_transformer(dict(LTX_13B_CONFIG), Q8Config(weight_dtype="int8"), device="meta")
    n = sum(t.numel() for t in list(m.parameters()) + list(m.buffers()))
    assert 13.0e9 < n < 13.1e9
    assert module_bytes(m) / 2**30 < 12.5
    assert m.transformer_blocks[47].attn1.to_q.weight.dtype == torch.int8 and m.config.attention_head_dim == 128
