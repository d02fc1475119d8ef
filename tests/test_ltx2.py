"""Issue #17 (items 1 and 3): LTX-2 (``LTX2VideoTransformer3DModel``) in 8 bits, and LTX-Video 0.9.7-style configs,
offline on tiny models in the hub repos' on-disk layout (CPU, reference backend).

Two tiny LTX-2 layouts (``q8lib.models.LTX2_TINY_CONFIG``: 2 blocks, video 2 heads x 64, audio 2 heads x 32, split
RoPE as released): "plain" (LTX-2.0: FFN biases, caption projection) and "gated" (LTX-2.3's switches: gated
attention, cross-attention modulation, STG-ready processors, no caption projection; here also no FFN bias).
Inputs are what ``LTX2Pipeline`` passes (``ltx2_dummy_inputs`` + the RoPE coordinates the pipeline computes).
"""
import copy
import json

import pytest
import torch
from diffusers import LTX2VideoTransformer3DModel, LTXVideoTransformer3DModel
from diffusers.models.transformers.transformer_ltx2 import (LTX2Attention, LTX2AudioVideoAttnProcessor,
                                                             LTX2PerturbedAttnProcessor, apply_split_rotary_emb)

import q8lib
from q8lib import KEEP_HIGH_PRECISION_LTX2, Q8Config, Q8GELU, Q8Linear, Q8LTX2AttnProcessor, Q8RMSNorm
from q8lib.ltx2 import apply_split_rotary_emb as q8_split_rope, key_mask
from q8lib.models import LTX2_CONFIG, LTX2_TINY_CONFIG, LTX23_CONFIG, dummy_inputs, ltx2_dummy_inputs
from helpers import rel_err, sqnr_db

GATED = dict(gated_attn=True, cross_attn_mod=True, audio_gated_attn=True, audio_cross_attn_mod=True, ff_bias=False,
             audio_ff_bias=False, perturbed_attn=True, use_prompt_embeddings=False)
VARIANTS = {"plain": {}, "gated": GATED}


def tiny_ltx2(variant="plain", seed=0, **overrides):
    torch.manual_seed(seed)
    return LTX2VideoTransformer3DModel(**{**LTX2_TINY_CONFIG, **VARIANTS[variant], **overrides}).eval()


def pipeline_inputs(model, seed=0, **kw):
    """``ltx2_dummy_inputs`` plus the RoPE coordinates, computed as LTX2Pipeline does before its denoising loop."""
    inputs = ltx2_dummy_inputs(dict(model.config), seed=seed, **kw)
    b = inputs["hidden_states"].shape[0]
    inputs["video_coords"] = model.rope.prepare_video_coords(b, inputs["num_frames"], inputs["height"],
                                                             inputs["width"], "cpu", fps=inputs["fps"])
    inputs["audio_coords"] = model.audio_rope.prepare_audio_coords(b, inputs["audio_num_frames"], "cpu")
    return inputs


@torch.no_grad()
def run(model, inputs):
    return model(**inputs, return_dict=False)


# Relative error against the fp32 model, the worse of video and audio, seeds 0-9, text right-padded on the last sample
# (attention "fp8": q8lib's FP8 attention; "keep": diffusers' attention, so only the linears differ):
#   plain int8 0.014-0.018 (fp8) / 0.008-0.012 (keep);  plain fp8_e4m3 0.034-0.049 / 0.033-0.045
#   gated int8 0.014-0.023 / 0.008-0.012;               gated fp8_e4m3 0.031-0.056 / 0.028-0.051
# (the bf16 model itself is 0.007-0.009 from fp32). e4m3 rounds each GEMM operand to 3 mantissa bits: 3.5% relative
# error per 8-bit GEMM (int8 with the rotation: 0.9%), and the random LTX-2 init (unscaled randn cross-modal and
# prompt modulation tables) makes the blocks' outputs dominate the residual stream, so little of that error is
# diluted: the tiny LTX-1 and 0.9.7-style models give 0.006-0.008 for e4m3. Bounds: the measured max + ~30%.
BOUNDS = {("plain", "int8", "fp8"): 0.025, ("plain", "int8", "keep"): 0.016, ("plain", "fp8_e4m3", "fp8"): 0.065,
          ("plain", "fp8_e4m3", "keep"): 0.06, ("gated", "int8", "fp8"): 0.03, ("gated", "int8", "keep"): 0.016,
          ("gated", "fp8_e4m3", "fp8"): 0.075, ("gated", "fp8_e4m3", "keep"): 0.07}


@pytest.mark.parametrize("variant,weight_dtype,attention", sorted(BOUNDS))
def test_q8_vs_fp32(seed, variant, weight_dtype, attention):
    model = tiny_ltx2(variant, seed % 1000)
    inputs = pipeline_inputs(model, seed % 1000, text_kept=None)
    inputs["encoder_attention_mask"][-1, 10:] = 0  # right padding on the last sample: masks become key lengths
    ref = run(model, inputs)
    q8 = q8lib.quantize_(model, Q8Config(weight_dtype=weight_dtype), attention=attention, progress=False)
    out = run(q8, inputs)
    for r, o in zip(ref, out):
        assert torch.isfinite(o).all()
        assert rel_err(r, o) < BOUNDS[variant, weight_dtype, attention]


@pytest.mark.parametrize("variant", VARIANTS)
def test_what_converts_and_what_stays(variant):
    model = q8lib.quantize_(tiny_ltx2(variant), progress=False)
    layers, names = model.config.num_layers, dict(model.named_modules())
    types = [type(m) for m in model.modules()]
    # per block: 6 attentions x (q, k, v, out) + 2 FFN down-projections, 2 Q8GELU up-projections, 8 RMSNorms
    assert types.count(Q8Linear) == layers * (6 * 4 + 2 * 2) and types.count(Q8GELU) == layers * 2
    assert types.count(Q8RMSNorm) == layers * 8
    gates = [n for n in names if n.endswith("to_gate_logits")]
    assert len(gates) == (layers * 6 if variant == "gated" else 0)
    assert all(type(names[n]) is torch.nn.Linear for n in gates)  # kept: measured (q8lib/config.py)
    for kept in ("proj_in", "audio_proj_in", "proj_out", "audio_proj_out", "time_embed.linear",
                 "audio_time_embed.linear", "av_cross_attn_video_a2v_gate.linear"):
        assert type(model.get_submodule(kept)) is torch.nn.Linear
    bias = model.transformer_blocks[0].ff.net[2].bias
    assert (bias is None) == (variant == "gated")
    assert model._q8_config.keep_high_precision == KEEP_HIGH_PRECISION_LTX2
    assert all(type(p) is Q8LTX2AttnProcessor for p in model.attn_processors.values())
    assert len(model.attn_processors) == layers * 6
    assert not any("_q8_fused" in b.__dict__ for b in model.transformer_blocks)  # diffusers' block forward
    q8lib.restore_attention(model)
    want = LTX2PerturbedAttnProcessor if variant == "gated" else LTX2AudioVideoAttnProcessor
    assert all(type(p) is want for p in model.attn_processors.values())


def _attention(rope_type, gated, cross=None, query_dim=64, perturbed=False):
    attn = LTX2Attention(query_dim=query_dim, heads=2, kv_heads=2, dim_head=32, cross_attention_dim=cross,
                         rope_type=rope_type, apply_gated_attention=gated,
                         processor=LTX2PerturbedAttnProcessor() if perturbed else None)
    for p in attn.parameters():  # non-trivial norm weights, biases and gates
        torch.nn.init.normal_(p, std=0.1 if p.ndim == 2 else 0.5)
    return attn.eval()


def _rope(rope_type, batch, seq, heads=2, head_dim=32):
    ang = torch.randn(batch, seq, heads * head_dim // 2)
    if rope_type == "interleaved":  # (cos, sin) [B, S, H*D]
        ang = ang.repeat_interleave(2, dim=-1)
    else:  # "split": [B, H, S, D/2]
        ang = ang.reshape(batch, seq, heads, head_dim // 2).transpose(1, 2)
    return ang.cos(), ang.sin()


def _bias(keep):
    return ((1 - keep.float()) * -10000.0).unsqueeze(1)


@pytest.mark.parametrize("rope_type", ["interleaved", "split"])
@pytest.mark.parametrize("gated", [False, True])
def test_processor_matches_diffusers(seed, rope_type, gated):
    """Every attention of the block, SDPA exactly as diffusers' processor and FP8 within its measured error."""
    b = 2
    x, audio, text = torch.randn(b, 20, 64), torch.randn(b, 12, 48), torch.randn(b, 16, 48)
    right, left = torch.ones(b, 16), torch.ones(b, 16)
    right[-1, 5:] = 0
    left[-1, :5] = 0
    per_query = (torch.rand(b, 20, 20) > 0.3).float()
    per_query[..., 0] = 1
    rq, rk = _rope(rope_type, b, 20), _rope(rope_type, b, 12)
    self_attn, cross = _attention(rope_type, gated), _attention(rope_type, gated, cross=48)
    a2v = _attention(rope_type, gated, cross=48, query_dim=96)
    xv = torch.randn(b, 20, 96)
    cases = {  # name: (module, args as LTX2Attention.forward passes them to its processor)
        "self + RoPE": (self_attn, (x, None, None, rq)),
        "text, right-padded": (cross, (x, text, _bias(right), None)),
        "text, left-padded (bias)": (cross, (x, text, _bias(left), None)),
        "per-query mask (bias)": (self_attn, (x, None, (1 - per_query) * -10000.0, rq)),
        "a2v, separate q/k RoPE": (a2v, (xv, audio, None, rq, rk)),
    }
    with torch.no_grad():
        for name, (attn, args) in cases.items():
            ref = attn(*args[:2], attention_mask=args[2], query_rotary_emb=args[3],
                       key_rotary_emb=args[4] if len(args) > 4 else None)
            sdpa = Q8LTX2AttnProcessor(fp8=False)(attn, *args)
            fp8 = Q8LTX2AttnProcessor(fp8=True)(attn, *args)
            torch.testing.assert_close(sdpa, ref, rtol=1e-5, atol=1e-5, msg=name)
            # bias: SDPA in fp32, as diffusers; FP8 attention: 36-42 dB over seeds 0-9 (e4m3 q/k/v/P)
            assert sqnr_db(ref, fp8) > (60 if "bias" in name else 30), name


def test_perturbed_attention_matches_diffusers(seed):
    attn = _attention("split", True, perturbed=True)
    x, rope = torch.randn(2, 20, 64), _rope("split", 2, 20)
    with torch.no_grad():
        for kw in (dict(perturbation_mask=torch.tensor([0.0, 1.0])[:, None, None]), dict(all_perturbed=True),
                   dict(perturbation_mask=torch.zeros(2, 1, 1))):
            ref = attn(x, query_rotary_emb=rope, **kw)
            got = Q8LTX2AttnProcessor(fp8=False)(attn, x, None, None, rope, None, **kw)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_split_rope_and_key_masks():
    x, freqs = torch.randn(2, 10, 64), _rope("split", 2, 10)
    torch.testing.assert_close(q8_split_rope(x, freqs), apply_split_rotary_emb(x, freqs))
    keep = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    lengths, bias = key_mask(_bias(keep), 2)
    assert lengths.tolist() == [3, 4] and bias is None
    lengths, bias = key_mask(_bias(torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])), 2)  # left padding: an SDPA bias
    assert lengths is None and bias.shape == (2, 1, 1, 4)
    lengths, bias = key_mask(torch.zeros(2, 5, 4), 2)  # one row per query
    assert lengths is None and bias.shape == (2, 1, 5, 4)


@pytest.mark.parametrize("weight_dtype", ["int8", "fp8_e4m3"])
def test_save_load_roundtrip_bit_exact(tmp_path, weight_dtype):
    model = tiny_ltx2("gated")
    inputs = pipeline_inputs(model)
    q8 = q8lib.quantize_(model, Q8Config(weight_dtype=weight_dtype), progress=False)
    out = run(q8, inputs)
    path = q8lib.save_q8(q8, tmp_path / "ltx2-q8")
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["_class_name"] == "LTX2VideoTransformer3DModel" and cfg["quantization_config"]["format"] == "q8lib"
    assert json.loads((path / "q8lib.json").read_text())["keep_high_precision"] == list(KEEP_HIGH_PRECISION_LTX2)
    loaded = q8lib.load_q8(path, torch_dtype=None)
    assert type(loaded) is LTX2VideoTransformer3DModel
    sa, sb = q8.state_dict(), loaded.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype for k in sa)
    for a, b in zip(out, run(loaded, inputs)):
        assert torch.equal(a, b)


def test_diffusers_save_pretrained_roundtrip_and_refusal(tmp_path):
    q8 = q8lib.quantize_(tiny_ltx2("plain"), Q8Config(weight_dtype="int8"), attention="sdpa", progress=False)
    q8.save_pretrained(tmp_path / "transformer", max_shard_size="200KB")  # sharded, as the hub repo is
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors.index.json").exists()
    loaded = q8lib.load_q8(tmp_path, subfolder="transformer", torch_dtype=None, attention="sdpa")
    inputs = pipeline_inputs(q8)
    for a, b in zip(run(q8, inputs), run(loaded, inputs)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"got q8lib \(.*q8lib\.load_q8\(transformer_folder\)"):
        LTX2VideoTransformer3DModel.from_pretrained(tmp_path / "transformer")


def test_meta_skeleton_and_state_dict_conversion():
    model = tiny_ltx2("gated")
    q8 = q8lib.quantize_(copy.deepcopy(model), Q8Config(weight_dtype="int8"), progress=False)
    cfg = dict(model.config)  # no _class_name: the LTX-2 keys say which class
    skeleton = q8lib.build_q8_skeleton(cfg, Q8Config(weight_dtype="int8"))
    assert type(skeleton) is LTX2VideoTransformer3DModel and all(t.is_meta for t in skeleton.state_dict().values())
    sd = q8lib.convert_state_dict(model.state_dict(), cfg, Q8Config(weight_dtype="int8"))
    ref = q8.state_dict()
    assert sd.keys() == ref.keys() == skeleton.state_dict().keys()
    assert all(torch.equal(sd[k], ref[k]) for k in sd)
    skeleton.load_state_dict(sd, strict=True, assign=True)
    q8lib.activate_q8(skeleton, Q8Config(weight_dtype="int8"))
    assert skeleton._q8_config == q8._q8_config  # the default keep list means LTX-2's here too
    inputs = pipeline_inputs(model)
    for a, b in zip(run(q8, inputs), run(skeleton, inputs)):
        assert torch.equal(a, b)


def test_filter_fn_left_out_modules_round_trip(tmp_path):
    q8 = q8lib.quantize_(tiny_ltx2("plain"), Q8Config(weight_dtype="int8"), lambda m, n: ".audio_ff." not in n,
                         progress=False)
    assert type(q8.transformer_blocks[0].audio_ff.net[2]) is torch.nn.Linear
    loaded = q8lib.load_q8(q8lib.save_q8(q8, tmp_path / "c"), torch_dtype=None)
    assert type(loaded.transformer_blocks[1].audio_ff.net[2]) is torch.nn.Linear
    assert loaded._q8_config == q8._q8_config


def test_one_block_compiles_fullgraph(seed):
    """diffusers' LTX-2 block on Q8 modules and the Q8 LTX-2 processor trace into one graph (compile_repeated_blocks).

    As LTX-1's CPU compile test: e4m3 weights (no rotation) and SDPA attention, because the reference backend's
    Hadamard rotation does not trace (on a GPU the triton backend's ops do)."""
    model = tiny_ltx2("gated", seed % 1000)
    inputs = pipeline_inputs(model, seed % 1000)
    inputs["encoder_attention_mask"][-1, 10:] = 0  # key lengths inside the graph (no host check while tracing)
    q8 = q8lib.quantize_(model, Q8Config(weight_dtype="fp8_e4m3"), attention="sdpa", progress=False)
    eager = run(q8, inputs)
    torch._dynamo.reset()
    try:
        q8.compile_repeated_blocks(fullgraph=True, backend="aot_eager")
        for a, b in zip(eager, run(q8, inputs)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    finally:
        torch._dynamo.reset()


def _save_layout(model, root, **kwargs):
    """A hub repo's transformer as diffusers lays it out: ``transformer/config.json`` + sharded safetensors."""
    model.save_pretrained(root / "transformer", max_shard_size="300KB", **kwargs)
    return root


def test_quantize_pretrained_picks_ltx2_from_config_json(tmp_path):
    model = tiny_ltx2("plain")
    root = _save_layout(model, tmp_path / "LTX-2")
    q8 = q8lib.quantize_pretrained(root, config=Q8Config(weight_dtype="int8"), torch_dtype=torch.float32)
    assert type(q8) is LTX2VideoTransformer3DModel and q8lib.is_quantized(q8)
    ref = q8lib.quantize_(copy.deepcopy(model), Q8Config(weight_dtype="int8"), progress=False)
    inputs = pipeline_inputs(model)
    for a, b in zip(run(ref, inputs), run(q8, inputs)):
        assert torch.equal(a, b)


# LTX-Video 0.9.7 / 0.9.8 (13B, "Lightricks/LTX-Video-0.9.7-dev"): the same class as 0.9.1's 2B, with the keys of
# the 0.9.7 transformer config of diffusers' scripts/convert_ltx_to_diffusers.py (get_transformer_config("0.9.7"),
# q8lib.models.LTX_13B_CONFIG's widths), here at toy widths.
LTX097_TINY = dict(in_channels=16, out_channels=16, patch_size=1, patch_size_t=1, num_attention_heads=2,
                   attention_head_dim=128, cross_attention_dim=256, num_layers=2, activation_fn="gelu-approximate",
                   qk_norm="rms_norm_across_heads", norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=32,
                   attention_bias=True, attention_out_bias=True)


# seeds 0-9: 0.003-0.004 (int8) / 0.006-0.008 (fp8_e4m3); bounds + ~40%
@pytest.mark.parametrize("weight_dtype,bound", [("int8", 0.006), ("fp8_e4m3", 0.011)])
def test_ltx_097_style_transformer_converts(tmp_path, seed, weight_dtype, bound):
    torch.manual_seed(seed % 1000)
    model = LTXVideoTransformer3DModel(**LTX097_TINY).eval()
    root = _save_layout(model, tmp_path / "LTX-Video-0.9.7-dev")
    q8 = q8lib.quantize_pretrained(root, config=Q8Config(weight_dtype=weight_dtype), torch_dtype=torch.float32)
    assert type(q8) is LTXVideoTransformer3DModel and q8._q8_config.keep_high_precision == q8lib.KEEP_HIGH_PRECISION
    inputs = dummy_inputs(LTX097_TINY, 2, 2, 4, 4, 16, seed=seed % 1000)
    with torch.no_grad():
        ref, out = model(**inputs).sample, q8(**inputs).sample
    assert rel_err(ref, out) < bound
    loaded = q8lib.load_q8(q8lib.save_q8(q8, tmp_path / "q8"), torch_dtype=None)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).sample, out)


def test_full_size_configs_build_on_meta():
    """The catalogue's LTX-2 and LTX-2.3 configs (not run: no weights here) build, convert on the meta device and
    have the released sizes (LTX-2: 19B parameters)."""
    for cfg, gates in ((LTX2_CONFIG, 0), (LTX23_CONFIG, 48 * 6)):
        skeleton = q8lib.build_q8_skeleton(cfg, Q8Config(weight_dtype="fp8_e4m3"))
        n = sum(t.numel() for t in skeleton.state_dict().values())
        assert 18.5e9 < n < 22e9, n
        kept = [m for name, m in skeleton.named_modules() if name.endswith("to_gate_logits")]
        assert len(kept) == gates and all(type(m) is torch.nn.Linear for m in kept)


def test_unsupported_inputs_fail_clearly(tmp_path):
    with pytest.raises(q8lib.UnsupportedModelError, match="LTX2VideoTransformer3DModel"):
        q8lib.quantize_(torch.nn.Linear(4, 4))
    odd = tiny_ltx2("plain", audio_attention_head_dim=24, audio_cross_attention_dim=48)
    with pytest.raises(q8lib.SettingsError, match=r"FP8 attention rotates.*attention='sdpa'"):
        q8lib.quantize_(odd, progress=False)
    with pytest.raises(q8lib.SettingsError, match=r"transformer_blocks\.0\..*power-of-two"):
        q8lib.quantize_(odd, Q8Config(weight_dtype="int8"), attention="sdpa", progress=False)
    cfg = json.loads(json.dumps(dict(tiny_ltx2("plain").config), default=list))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({**cfg, "_class_name": "FluxTransformer2DModel"}))
    with pytest.raises(q8lib.Q8CheckpointError, match="FluxTransformer2DModel.*LTX2VideoTransformer3DModel"):
        q8lib.load_q8(tmp_path / "other")
    q8 = q8lib.quantize_(tiny_ltx2("plain"), Q8Config(weight_dtype="int8"), progress=False)
    q8.transformer_blocks[0].attn1.processor._parallel_config = object()  # what enable_parallelism would set
    with pytest.raises(q8lib.SettingsError, match="context parallelism.*attention='keep'"):
        run(q8, pipeline_inputs(q8))


def test_app_reads_and_loads_an_ltx2_transformer_from_its_config(tmp_path):
    """The app layer takes the transformer class from config.json: an LTX-2 repo's transformer loads (and converts)
    as an LTX2VideoTransformer3DModel (tests/test_app_pipelines.py runs whole LTX-2 pipelines)."""
    from q8lib.app.loading import load_transformer, transformer_config

    _save_layout(tiny_ltx2("plain"), tmp_path / "LTX-2")
    (tmp_path / "LTX-2" / "model_index.json").write_text(json.dumps({"_class_name": "LTX2Pipeline"}))
    assert transformer_config(str(tmp_path / "LTX-2"))["_class_name"] == "LTX2VideoTransformer3DModel"
    q8 = load_transformer(str(tmp_path / "LTX-2"), "q8", q8_config=Q8Config(weight_dtype="int8"), dtype=torch.float32)
    assert type(q8) is LTX2VideoTransformer3DModel and q8lib.is_quantized(q8)


def test_fused_blocks_take_ltx2_blocks_through_their_own_forward():
    """LTX-1's fused forward refuses LTX-2's blocks; install_fused_blocks gives them q8lib.fused_ltx2's forward
    (tests/test_fused_ltx2.py checks it against diffusers')."""
    from q8lib.fused import _eligible, install_fused_blocks, is_fused
    from q8lib.fused_ltx2 import fused_ltx2_block_forward

    model = q8lib.quantize_(tiny_ltx2(), q8lib.Q8Config(weight_dtype="int8"), progress=False)
    assert "LTXVideoTransformerBlock" in _eligible(model.transformer_blocks[0])
    assert install_fused_blocks(model) == model.config.num_layers
    assert all(is_fused(b) and b.forward.__func__ is fused_ltx2_block_forward for b in model.transformer_blocks)


def test_int8_attention_is_refused_for_ltx2_before_anything_changes():
    model = tiny_ltx2()
    with pytest.raises(q8lib.SettingsError, match="INT8 attention"):
        q8lib.quantize_(model, q8lib.Q8Config(weight_dtype="int8"), attention="int8", progress=False)
    assert not q8lib.is_quantized(model)
    with pytest.raises(q8lib.SettingsError, match="INT8 attention"):
        q8lib.set_q8_attention(model, "int8")
    assert not hasattr(model, "_q8_original_processors")


def test_int8_attention_is_refused_when_loading_an_ltx2_checkpoint(tmp_path):
    model = q8lib.quantize_(tiny_ltx2(), q8lib.Q8Config(weight_dtype="int8"), progress=False)
    q8lib.save_q8(model, tmp_path / "q8")
    with pytest.raises(q8lib.SettingsError, match="INT8 attention"):
        q8lib.load_q8(tmp_path / "q8", attention="int8")


def _count_quantizations(monkeypatch):
    from q8lib.backends import get_backend

    be, calls = get_backend("reference"), []
    orig = type(be).quantize_activation
    monkeypatch.setattr(type(be), "quantize_activation", lambda self, x, *a, **k: calls.append(x.shape) or
                        orig(self, x, *a, **k))
    return calls


@pytest.mark.parametrize("variant", VARIANTS)
def test_qkv_share_one_quantization_per_input(variant, monkeypatch):
    """Q8 projections of one format quantize each input once: self-attention's q/k/v one row pass, cross-attention's
    k/v one pass of the context (and q one of the hidden states); the outputs are the ones each projection gives on
    its own (same codes, bit-identical)."""
    from q8lib.attention import project_qkv

    model = q8lib.quantize_(tiny_ltx2(variant), Q8Config(weight_dtype="int8", backend="reference"), progress=False)
    blk = model.transformer_blocks[0]
    torch.manual_seed(0)
    x, ctx = torch.randn(2, 12, model.config.num_attention_heads * 64), torch.randn(2, 5, blk.attn2.to_k.in_features)
    calls = _count_quantizations(monkeypatch)
    with torch.no_grad():
        for attn, h, c, passes in ((blk.attn1, x, x, 1), (blk.attn2, x, ctx, 2)):
            calls.clear()
            shared = project_qkv(attn, h, c)
            assert len(calls) == passes
            for a, b in zip(shared, (attn.to_q(h), attn.to_k(c), attn.to_v(c))):
                assert torch.equal(a, b)
            calls.clear()
            q, k, v = project_qkv(attn, h, c, need_qk=False)  # STG, all perturbed: only the values
            assert q is None and k is None and torch.equal(v, attn.to_v(c)) and len(calls) == 2


# Fused FFN vs diffusers' FFN on the same Q8 modules (tiny LTX-2, float32): the same math, so the same outputs,
# whether the backend's GEMM applies the GELU (the reference backend) or the down-projection's quantizer does (cuBLAS
# fp8 on a GPU, emulated by ``gemm_fuses_gelu`` returning False). In bf16 the two paths round at different points
# (the GELU output vs the GEMM output): 0.9-1.5% (int8) / 1.4-2.7% (fp8_e4m3) apart on this tiny random model, seeds
# 0-9, where the bf16 model itself is 0.7-0.9% from fp32; the GPU benchmark records the full-size error vs bf16.
@pytest.mark.parametrize("weight_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("gemm_gelu", [True, False])
def test_fused_ffns_match_diffusers_ffn(seed, weight_dtype, gemm_gelu, monkeypatch):
    from q8lib.backends import get_backend
    from q8lib.fused import install_fused_ffns, uninstall_fused_ffns

    model = tiny_ltx2("gated" if seed % 2 else "plain", seed % 1000)
    inputs = pipeline_inputs(model, seed % 1000)
    q8 = q8lib.quantize_(model, Q8Config(weight_dtype=weight_dtype, backend="reference"), progress=False)
    ref = run(q8, inputs)
    monkeypatch.setattr(type(get_backend("reference")), "gemm_fuses_gelu", lambda self, qdtype, device: gemm_gelu)
    assert install_fused_ffns(q8, "reference") == 2 * q8.config.num_layers  # ff and audio_ff of every block
    assert install_fused_ffns(q8, "reference") == 0  # idempotent
    for r, o in zip(ref, run(q8, inputs)):
        assert torch.equal(r, o)
    assert uninstall_fused_ffns(q8) == 2 * q8.config.num_layers
    assert not any("forward" in m.__dict__ for m in q8.modules())


def test_fused_ffns_installed_where_the_fast_backend_runs(monkeypatch):
    """``install_if_fast`` gives LTX-2's FFNs the fused forward when the backend's fused ops are single kernels
    (also with diffusers' attention kept), and leaves them alone on the reference backend."""
    from q8lib.backends import get_backend
    from q8lib.fused import install_if_fast

    q8 = q8lib.quantize_(tiny_ltx2(), Q8Config(weight_dtype="int8", backend="reference"), progress=False)
    ffns = [m for m in q8.modules() if type(m).__name__ == "FeedForward"]
    assert len(ffns) == 2 * q8.config.num_layers and not any("_q8_ffn" in m.__dict__ for m in ffns)
    monkeypatch.setattr(type(get_backend("reference")), "fused_blocks", True)
    assert install_if_fast(q8, q8lib.Q8Runtime(backend="reference", attention="keep")) == 0  # no fused blocks
    assert all("_q8_ffn" in m.__dict__ for m in ffns)


def test_full_size_ltx2_component_configs_build():
    """The released LTX-2 pipeline's other components (q8lib.models, from diffusers' conversion script) build with
    diffusers 0.42.1's classes at the sizes the module notes (meta device: no memory)."""
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    from q8lib import models as M

    sizes = {}
    for cls, cfg in ((AutoencoderKLLTX2Video, M.LTX2_VIDEO_VAE_CONFIG), (AutoencoderKLLTX2Audio, M.LTX2_AUDIO_VAE_CONFIG),
                     (LTX2Vocoder, M.LTX2_VOCODER_CONFIG), (LTX2TextConnectors, M.LTX2_CONNECTORS_CONFIG)):
        with torch.device("meta"):
            sizes[cls.__name__] = sum(p.numel() for p in cls(**cfg).parameters())
    assert round(sizes["AutoencoderKLLTX2Video"] / 1e9, 2) == 1.22 and round(sizes["LTX2TextConnectors"] / 1e9, 2) == 1.43
    assert 50e6 < sizes["AutoencoderKLLTX2Audio"] < 60e6 and 50e6 < sizes["LTX2Vocoder"] < 60e6
    # the audio VAE's latent (channels x mel bins / 4) is the transformer's audio input, the VAE's the video one
    assert M.LTX2_AUDIO_VAE_CONFIG["latent_channels"] * M.LTX2_AUDIO_VAE_CONFIG["mel_bins"] // 4 == \
        M.LTX2_CONFIG["audio_in_channels"]
    assert M.LTX2_VIDEO_VAE_CONFIG["latent_channels"] == M.LTX2_CONFIG["in_channels"]
    assert M.LTX2_CONNECTORS_CONFIG["caption_channels"] == M.LTX2_CONFIG["caption_channels"]


def test_processor_checks_each_mask_once_per_forward(monkeypatch):
    """The key-mask check (a host sync on a GPU) runs once per mask tensor, not once per attention of every block:
    diffusers hands the same mask to all blocks."""
    import q8lib.attention as qa

    model = tiny_ltx2()
    inputs = pipeline_inputs(model, 0, text_kept=None)
    inputs["encoder_attention_mask"][-1, 10:] = 0
    q8 = q8lib.quantize_(model, Q8Config(weight_dtype="int8"), backend="reference", progress=False)
    calls, real = [], qa.key_mask
    monkeypatch.setattr(qa, "key_mask", lambda m, b: calls.append(m.data_ptr()) or real(m, b))
    run(q8, inputs)
    assert 0 < len(calls) == len(set(calls)) <= 2  # the video and the audio text masks
