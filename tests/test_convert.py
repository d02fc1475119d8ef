"""q8lib.convert: quantize in place (filter_fn, runtime choices), module swap counts, state-dict conversion, errors."""
import copy

import pytest
import torch

import q8lib
from q8lib import Q8Config, Q8GELU, Q8Linear, Q8RMSNorm
from q8lib.attention import Q8AttnProcessor
from q8lib.tiny import TINY_TRANSFORMER_CONFIG, make_tiny_transformer
from helpers import forward, rel_err, tiny_inputs


@pytest.fixture
def model(seed):
    return make_tiny_transformer(seed=seed)


@pytest.mark.parametrize("dtype,attention,max_rel", [
    ("int8", "sdpa", 0.02), ("int8", "fp8", 0.02),  # measured 0.005-0.008 vs the bf16 model
    ("fp8_e4m3", "fp8", 0.03),  # measured 0.009-0.012
])
def test_tiny_transformer_q8_vs_bf16(model, dtype, attention, max_rel):
    inputs = tiny_inputs()
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    ref = forward(bf16, inputs)
    q8 = q8lib.quantize_(bf16, Q8Config(weight_dtype=dtype), attention=attention, progress=False)
    out = forward(q8, inputs)
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


def test_convert_state_dict_matches_quantize_(model):
    sd = q8lib.convert_state_dict(model.state_dict(), dict(model.config))
    q8 = q8lib.quantize_(copy.deepcopy(model), progress=False)
    ref = q8.state_dict()
    assert sd.keys() == ref.keys()
    assert all(torch.equal(sd[k], ref[k]) for k in sd)


def test_quantize_block_by_block_matches_quantize_(model):
    """quantize_block_ on every block, then activate_q8: the model quantize_ makes (same tensors, same processors)."""
    from q8lib.convert import activate_q8, quantize_block_

    ref = q8lib.quantize_(copy.deepcopy(model), progress=False)
    for i in range(len(model.transformer_blocks)):
        quantize_block_(model, i, Q8Config())
    activate_q8(model, Q8Config())
    a, b = ref.state_dict(), model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert {type(p) for p in model.attn_processors.values()} == {Q8AttnProcessor}
    with pytest.raises(q8lib.SettingsError, match="out of range"):
        quantize_block_(model, len(model.transformer_blocks), Q8Config())


def test_non_ltx_model_and_bad_dims():
    with pytest.raises(TypeError, match="LTXVideoTransformer3DModel"):
        q8lib.quantize_(torch.nn.Linear(4, 4))
    odd = make_tiny_transformer(attention_head_dim=48, cross_attention_dim=96)
    with pytest.raises(ValueError, match=r"FP8 attention rotates q/k over the head size"):  # checked first
        q8lib.quantize_(odd, progress=False)
    with pytest.raises(ValueError, match=r"transformer_blocks\.0\..*power-of-two"):
        q8lib.quantize_(odd, Q8Config(), attention="sdpa", progress=False)
