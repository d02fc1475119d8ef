"""LTX integration: quantize in place, module swap counts, save/load, the earlier public layout, errors."""
import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import q8lib
from q8lib import Q8CheckpointError, Q8Config, Q8GELU, Q8Linear, Q8RMSNorm, hadamard_transform, quantize_rowwise
from q8lib.attention import Q8AttnProcessor
from q8lib.tiny import TINY_TRANSFORMER_CONFIG, make_tiny_transformer
from helpers import rel_err

F_, H_, W_, T_ = 3, 4, 4, 16


def _inputs(batch=2, dtype=torch.bfloat16):
    cfg = TINY_TRANSFORMER_CONFIG
    x = torch.randn(batch, F_ * H_ * W_, cfg["in_channels"], dtype=dtype)
    enc = torch.randn(batch, T_, cfg["caption_channels"], dtype=dtype)
    mask = torch.ones(batch, T_)
    mask[-1, T_ // 2:] = 0
    return x, enc, torch.full((batch,), 500), mask


def _run(model, inputs):
    with torch.no_grad():
        return model(*inputs, num_frames=F_, height=H_, width=W_).sample


@pytest.fixture
def model(seed):
    return make_tiny_transformer(seed=seed)


@pytest.mark.parametrize("dtype,attention,max_rel", [
    ("int8", "sdpa", 0.02), ("int8", "fp8", 0.02),  # measured 0.005-0.008 vs the bf16 model
    ("fp8_e4m3", "fp8", 0.03),  # measured 0.009-0.012
])
def test_tiny_transformer_q8_vs_bf16(model, dtype, attention, max_rel):
    inputs = _inputs()
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    ref = _run(bf16, inputs)
    q8 = q8lib.quantize_(bf16, Q8Config(weight_dtype=dtype, attention=attention), progress=False)
    out = _run(q8, inputs)
    assert torch.isfinite(out).all()
    assert rel_err(ref, out) < max_rel
    assert torch.nn.functional.cosine_similarity(ref.double().flatten(), out.double().flatten(), dim=0) > 0.9995


def test_swap_counts_and_kept_modules(model):
    layers = TINY_TRANSFORMER_CONFIG["num_layers"]
    q8lib.quantize_(model, progress=False)
    types = [type(m) for m in model.modules()]
    assert types.count(Q8Linear) == layers * 10  # 8 attention linears + GELU proj + down proj
    assert types.count(Q8GELU) == layers
    assert types.count(Q8RMSNorm) == layers * 2  # norm1, norm2
    assert sum(isinstance(p, Q8AttnProcessor) for p in model.attn_processors.values()) == 2 * layers
    for kept in ("proj_in", "proj_out", "caption_projection.linear_1", "time_embed.linear"):
        assert type(model.get_submodule(kept)) is torch.nn.Linear
    assert model.scale_shift_table.dtype == torch.float32
    rep = q8lib.inspect_transformer(model)
    assert len(rep.converted) == layers * 12 and "proj_in" in rep.kept


def test_inspect_counts_flops_of_2b_on_meta():
    from diffusers import LTXVideoTransformer3DModel
    from q8lib.tiny import LTX_2B_CONFIG

    with torch.device("meta"):
        big = LTXVideoTransformer3DModel(**LTX_2B_CONFIG)
    rep = q8lib.inspect_transformer(big, num_tokens=3630, text_tokens=128, batch=2)
    block_linears = sum(v for k, v in rep.flops.items() if "linear" in k)
    assert abs(block_linears / 1e12 - 23.9) < 0.2  # the 23.9 TFLOP of block linears per forward
    assert 1.8e9 < rep.total_params < 2.1e9


def test_save_load_roundtrip_bit_exact(model, tmp_path):
    inputs = _inputs()
    q8 = q8lib.quantize_(model.to(torch.bfloat16), progress=False)
    out = _run(q8, inputs)
    path = q8lib.save_q8(q8, tmp_path / "ckpt")
    meta = json.loads((path / "q8lib.json").read_text())
    assert meta["format_version"] == 1 and meta["hadamard_block"] is None
    assert meta["weight_dtype"] == q8._q8_config.weight_dtype  # int8 on CPU, fp8_e4m3 on sm_90+ by default
    loaded = q8lib.load_q8(path)
    sd_a, sd_b = q8.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) and sd_a[k].dtype == sd_b[k].dtype for k in sd_a)
    assert torch.equal(_run(loaded, inputs), out)


def test_fp8_block_checkpoint_roundtrip(model, tmp_path):
    cfg = Q8Config(weight_dtype="fp8_e4m3", hadamard_block=64)
    q8 = q8lib.quantize_(model, cfg, progress=False)
    loaded = q8lib.load_q8(q8lib.save_q8(q8, tmp_path), torch_dtype=torch.float32)
    assert loaded.transformer_blocks[0].ff.net[2].weight.dtype == torch.float8_e4m3fn
    assert loaded.transformer_blocks[0].ff.net[2].hadamard_block == 64
    inputs = _inputs(dtype=torch.float32)
    assert torch.equal(_run(loaded, inputs), _run(q8, inputs))


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
    inputs = _inputs(dtype=torch.float32)
    ref = _run(model, inputs)
    loaded = q8lib.load_q8(path, torch_dtype=torch.float32, attention="sdpa")
    assert loaded._q8_config.weight_dtype == "int8" and loaded._q8_config.hadamard_block is None
    assert rel_err(ref, _run(loaded, inputs)) < 0.02  # measured ~0.006


def test_convert_state_dict_matches_quantize_(model):
    sd = q8lib.convert_state_dict(model.state_dict(), dict(model.config))
    q8 = q8lib.quantize_(copy.deepcopy(model), progress=False)
    ref = q8.state_dict()
    assert sd.keys() == ref.keys()
    assert all(torch.equal(sd[k], ref[k]) for k in sd)


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
    inputs = _inputs(dtype=torch.float32)
    assert torch.equal(_run(q8, inputs), _run(ref, inputs))


def test_hub_repo_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Q8CheckpointError, match="Hugging Face Hub.*tiny default"):
        q8lib.load_q8("sayakpaul/q8-ltx-video-does-not-exist-here")


def test_non_ltx_model_and_bad_dims():
    with pytest.raises(TypeError, match="LTXVideoTransformer3DModel"):
        q8lib.quantize_(torch.nn.Linear(4, 4))
    odd = make_tiny_transformer(attention_head_dim=48, cross_attention_dim=96)
    with pytest.raises(ValueError, match=r"FP8 attention rotates q/k over the head size"):  # checked first
        q8lib.quantize_(odd, progress=False)
    with pytest.raises(ValueError, match=r"transformer_blocks\.0\..*power-of-two"):
        q8lib.quantize_(odd, Q8Config(attention="sdpa"), progress=False)


def test_already_quantized_and_not_quantized_errors(model, tmp_path):
    with pytest.raises(ValueError, match="quantized by q8lib"):
        q8lib.save_q8(model, tmp_path)
    q8lib.quantize_(model, progress=False)
    with pytest.raises(ValueError, match="already quantized"):
        q8lib.quantize_(model, progress=False)
