"""Issue #17: the text encoders of LTX pipelines in 8 bits (q8lib.text_encoder), against fp32 on tiny random encoders.

What is compared is what the pipelines consume: for LTX-2 the hidden states of the embeddings and of every Gemma 3
layer, stacked and flattened by diffusers' ``LTX2Pipeline._get_gemma_prompt_embeds`` (on the prompt's tokens, not the
left padding); for LTX-Video T5's last hidden state. Random weights have no activation outliers: these bounds say
nothing about real Gemma 3 / T5-XXL weights.
"""
from __future__ import annotations

import copy
import types

import pytest
import torch
from torch import nn

from q8lib import Q8Config, Q8Linear
from q8lib.errors import SettingsError, UnsupportedModelError
from q8lib.text_encoder import Q8TextLinear, auto_hadamard_block, quantize_text_encoder_
from helpers import rel_err
from pipeline_folders import _gemma

pytestmark = pytest.mark.filterwarnings("ignore::q8lib.errors.Q8FallbackWarning")  # CPU: the reference math
PROMPTS = ["a red circle moving right", "a blue square"]


def _t5(seed):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=64, d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16,
                                   feed_forward_proj="gated-gelu")).eval()


def _gemma_embeds(tokenizer, encoder):
    from diffusers import LTX2Pipeline

    owner = types.SimpleNamespace(tokenizer=tokenizer, text_encoder=encoder)
    embeds, mask = LTX2Pipeline._get_gemma_prompt_embeds(owner, PROMPTS, max_sequence_length=16, device="cpu",
                                                         dtype=torch.float32)
    return embeds[mask.bool()]  # [valid tokens, 3 hidden states x 32]


# Measured, seeds 0-3: int8 0.0128-0.0200, fp8_e4m3 0.0613-0.0820 (the stack includes the exact embedding state).
@pytest.mark.parametrize("weight_dtype,bound", [("int8", 0.03), ("fp8_e4m3", 0.11)])
@pytest.mark.parametrize("seed", [0, 1])
def test_gemma_stacked_hidden_states_match_fp32(seed, weight_dtype, bound):
    tokenizer, encoder = _gemma(seed)
    ref = _gemma_embeds(tokenizer, encoder)
    q8 = quantize_text_encoder_(copy.deepcopy(encoder), weight_dtype=weight_dtype, progress=False)
    assert rel_err(_gemma_embeds(tokenizer, q8), ref) < bound


# Measured, seeds 0-3: int8 0.0139-0.0148, fp8_e4m3 0.0578-0.0632.
@pytest.mark.parametrize("weight_dtype,bound", [("int8", 0.025), ("fp8_e4m3", 0.09)])
@pytest.mark.parametrize("seed", [0, 1])
def test_t5_last_hidden_state_matches_fp32(seed, weight_dtype, bound):
    encoder = _t5(seed)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(seed))
    ref = encoder(ids).last_hidden_state
    q8 = quantize_text_encoder_(copy.deepcopy(encoder), weight_dtype=weight_dtype, progress=False)
    assert rel_err(q8(ids).last_hidden_state, ref) < bound


def test_only_the_text_layers_linears_become_8_bit():
    _, encoder = _gemma(0)
    quantize_text_encoder_(encoder, weight_dtype="int8", progress=False)
    q8 = sorted(n for n, m in encoder.named_modules() if isinstance(m, Q8Linear))
    assert len(q8) == 2 * 7 and all(n.startswith("model.language_model.layers.") for n in q8)
    kept = [n for n, m in encoder.named_modules() if type(m) is nn.Linear]
    assert "lm_head" in kept and any(n.startswith("model.vision_tower.") for n in kept)
    assert isinstance(encoder.model.language_model.embed_tokens.weight, nn.Parameter)
    assert encoder._q8_text_encoder == dict(weight_dtype="int8", converted=14, hadamard_block="auto")
    assert auto_hadamard_block(3840, "int8") == 256 and auto_hadamard_block(15360, "int8") == 1024
    assert auto_hadamard_block(4096, "int8") == 4096 and auto_hadamard_block(3840, "fp8_e4m3") == 1


@pytest.mark.parametrize("weight_dtype", ["int8", "fp8_e4m3"])
def test_each_linear_answers_in_the_dtype_it_replaced(weight_dtype):
    """A bf16 T5 whose wo stays float32 (transformers' _keep_in_fp32_modules): same output dtype module by module."""
    encoder = _t5(0).to(torch.bfloat16)
    for block in encoder.encoder.block:
        block.layer[1].DenseReluDense.wo.float()
    ids = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(0))

    def dtypes(model):
        seen, hooks = {}, []
        for name, m in model.named_modules():
            if isinstance(m, (nn.Linear, Q8Linear)) or name.endswith("DenseReluDense"):
                hooks.append(m.register_forward_hook(lambda mod, i, o, name=name: seen.__setitem__(name, o.dtype)))
        out = model(ids).last_hidden_state
        for h in hooks:
            h.remove()
        return seen, out

    ref, ref_out = dtypes(encoder)
    q8 = quantize_text_encoder_(copy.deepcopy(encoder), weight_dtype=weight_dtype, progress=False)
    got, out = dtypes(q8)
    assert got == ref and ref["encoder.block.0.layer.1.DenseReluDense.wo"] == torch.float32
    assert out.dtype == ref_out.dtype and torch.isfinite(out).all()
    assert rel_err(out.float(), ref_out.float()) < 0.1  # fp8 through T5's fp8-cast would give NaN or ~1
    q8.float()  # .to(dtype) moves output_dtype as it would have moved the layer's weight
    wo = q8.encoder.block[0].layer[1].DenseReluDense.wo
    assert isinstance(wo, Q8TextLinear) and wo.output_dtype == torch.float32 and wo.weight.dtype != torch.float32


def test_errors_come_before_any_change():
    with pytest.raises(UnsupportedModelError, match="got a Sequential"):
        quantize_text_encoder_(nn.Sequential(nn.Linear(4, 4)))
    _, encoder = _gemma(0)
    with pytest.raises(SettingsError, match="hadamard_block=64 cannot rotate 12 linears.*q_proj \\(input width 32\\)"):
        quantize_text_encoder_(encoder, Q8Config(weight_dtype="int8", hadamard_block=64), progress=False)
    with pytest.raises(SettingsError, match="not both"):
        quantize_text_encoder_(encoder, Q8Config(weight_dtype="int8"), weight_dtype="int8")
    assert not any(isinstance(m, Q8Linear) for m in encoder.modules())
    quantize_text_encoder_(encoder, Q8Config(weight_dtype="int8"),
                           filter_fn=lambda m, name: not name.endswith("down_proj"), progress=False)
    assert isinstance(encoder.model.language_model.layers[0].mlp.down_proj, nn.Linear)
    with pytest.raises(SettingsError, match="already quantized"):
        quantize_text_encoder_(encoder, weight_dtype="int8")


def test_readme_snippet(monkeypatch, tmp_path):
    """README's text-encoder-q8 snippet, with the tiny LTX-2 pipeline in place of the hub download."""
    from diffusers import LTX2Pipeline
    from pipeline_folders import ltx2_components
    from snippets import run_snippet

    monkeypatch.setattr(LTX2Pipeline, "from_pretrained", classmethod(lambda cls, *a, **k: cls(**ltx2_components(0))))
    ns = run_snippet("text-encoder-q8", tmp_path)
    assert ns["pipe"].text_encoder is None and ns["embeds"].shape == (1, 256, 3 * 32) and ns["mask"].shape == (1, 256)
