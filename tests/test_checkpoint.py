"""q8lib.checkpoint: save/load bit-exact, the earlier public layout, every malformed checkpoint named."""
import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import q8lib
from q8lib import Q8CheckpointError, Q8Config, hadamard_transform, quantize_rowwise
from q8lib.tiny import make_tiny_transformer
from helpers import forward, rel_err, tiny_inputs


@pytest.fixture
def model(seed):
    return make_tiny_transformer(seed=seed)


def test_save_load_roundtrip_bit_exact(model, tmp_path):
    inputs = tiny_inputs()
    q8 = q8lib.quantize_(model.to(torch.bfloat16), progress=False)
    out = forward(q8, inputs)
    path = q8lib.save_q8(q8, tmp_path / "ckpt")
    meta = json.loads((path / "q8lib.json").read_text())
    assert meta["format_version"] == 1 and meta["hadamard_block"] is None
    assert meta["weight_dtype"] == q8._q8_config.weight_dtype  # int8 on CPU, fp8_e4m3 on sm_90+ by default
    loaded = q8lib.load_q8(path)
    sd_a, sd_b = q8.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) and sd_a[k].dtype == sd_b[k].dtype for k in sd_a)
    assert torch.equal(forward(loaded, inputs), out)


def test_fp8_block_checkpoint_roundtrip(model, tmp_path):
    cfg = Q8Config(weight_dtype="fp8_e4m3", hadamard_block=64)
    q8 = q8lib.quantize_(model, cfg, progress=False)
    loaded = q8lib.load_q8(q8lib.save_q8(q8, tmp_path), torch_dtype=torch.float32)
    assert loaded.transformer_blocks[0].ff.net[2].weight.dtype == torch.float8_e4m3fn
    assert loaded.transformer_blocks[0].ff.net[2].hadamard_block == 64
    inputs = tiny_inputs(dtype=torch.float32)
    assert torch.equal(forward(loaded, inputs), forward(q8, inputs))


def _save_legacy(model, path):
    """Write the earlier public Q8 layout (as its converter did): diffusers keys, int8 Q(W H) over the full
    input dim, fp32 `scales` beside each block linear weight, fp32 biases and norm weights, no q8lib.json."""
    sd = {}
    for k, v in model.state_dict().items():
        in_blocks = k.startswith("transformer_blocks.") and ("attn" in k or ".ff." in k)
        if in_blocks and k.endswith(".weight") and "norm" not in k:
            q, s = quantize_rowwise(hadamard_transform(v.float()), torch.int8)
            sd[k], sd[k[: -len("weight")] + "scales"] = q, s
        elif in_blocks:
            sd[k] = v.float()
        else:
            sd[k] = v
    path.mkdir()
    model.save_config(path)
    save_file(sd, path / "diffusion_pytorch_model.safetensors")
    return path


def test_earlier_public_layout_loads(model, tmp_path):
    path = _save_legacy(model, tmp_path / "legacy")
    inputs = tiny_inputs(dtype=torch.float32)
    ref = forward(model, inputs)
    loaded = q8lib.load_q8(path, torch_dtype=torch.float32, attention="sdpa")
    assert loaded._q8_config.weight_dtype == "int8" and loaded._q8_config.hadamard_block is None
    assert rel_err(ref, forward(loaded, inputs)) < 0.02  # measured ~0.006


def test_missing_and_unexpected_keys_are_named(model, tmp_path):
    path = q8lib.save_q8(q8lib.quantize_(model, progress=False), tmp_path / "c")
    sd = load_file(path / "diffusion_pytorch_model.safetensors")
    del sd["transformer_blocks.1.attn2.to_k.scales"]
    sd["transformer_blocks.0.extra.weight"] = torch.zeros(1)
    save_file(sd, path / "diffusion_pytorch_model.safetensors")
    with pytest.raises(Q8CheckpointError, match=r"transformer_blocks\.1\.attn2\.to_k\.scales.*transformer_blocks\.0\.extra"):
        q8lib.load_q8(path)


def test_wrong_dtype_and_format_version(model, tmp_path):
    path = q8lib.save_q8(q8lib.quantize_(model, progress=False), tmp_path / "c")
    meta = json.loads((path / "q8lib.json").read_text())
    other = "fp8_e4m3" if meta["weight_dtype"] == "int8" else "int8"
    (path / "q8lib.json").write_text(json.dumps({**meta, "weight_dtype": other}))
    with pytest.raises(Q8CheckpointError, match="dtype"):
        q8lib.load_q8(path)
    (path / "q8lib.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(Q8CheckpointError, match="'format_version' is 99"):
        q8lib.load_q8(path)


def test_bf16_checkpoint_is_not_mistaken_for_q8(model, tmp_path):
    model.save_pretrained(tmp_path / "bf16")
    with pytest.raises(Q8CheckpointError, match="quantize_pretrained"):
        q8lib.load_q8(tmp_path / "bf16")
    # ... and quantize_pretrained takes it, with the same result as quantize_
    q8 = q8lib.quantize_pretrained(tmp_path / "bf16", subfolder=None, torch_dtype=torch.float32)
    ref = q8lib.quantize_(copy.deepcopy(model), progress=False)
    inputs = tiny_inputs(dtype=torch.float32)
    assert torch.equal(forward(q8, inputs), forward(ref, inputs))


def test_hub_repo_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Q8CheckpointError, match="Hugging Face Hub.*tiny default"):
        q8lib.load_q8("sayakpaul/q8-ltx-video-does-not-exist-here")


def test_already_quantized_and_not_quantized_errors(model, tmp_path):
    with pytest.raises(ValueError, match="quantized by q8lib"):
        q8lib.save_q8(model, tmp_path)
    q8lib.quantize_(model, progress=False)
    with pytest.raises(ValueError, match="already quantized"):
        q8lib.quantize_(model, progress=False)
