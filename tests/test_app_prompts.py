"""q8lib.app.prompts: the prompt-embedding cache and freeing the text encoder."""
from __future__ import annotations


import pytest
import torch

from q8lib.app import GenerationSettings, PromptCache, encode_prompts, free_text_encoder, load_pipeline
from q8lib.errors import ModelUnavailableError

pytestmark = pytest.mark.filterwarnings("ignore::q8lib.errors.Q8FallbackWarning")  # CPU runs use the reference math on purpose

SMALL = dict(num_frames=9, height=32, width=32, num_inference_steps=2)


def _settings(seed, **kw):
    kw = {"negative_prompt": "", **SMALL, **kw}  # the tiny default's vocabulary has no negative-prompt words
    return GenerationSettings(prompt="a red circle moving right", seed=seed % 2**31, **kw).validate()


def test_prompt_cache_roundtrip_and_free_text_encoder(tmp_path, seed):
    pipe = load_pipeline(device="cpu", model="tiny", precision="bf16")
    cache = PromptCache(tmp_path)
    s = _settings(seed)
    fresh, info = encode_prompts(pipe, s, "tiny", cache)
    assert info["prompt_cache"] == "miss" and len(list(tmp_path.glob("*.safetensors"))) == 1
    again, info2 = encode_prompts(pipe, s, "tiny", cache)
    assert info2["prompt_cache"] == "hit" and info2["prompt_cache_key"] == info["prompt_cache_key"]
    assert set(again) == {"prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds",
                          "negative_prompt_attention_mask"}
    for k in fresh:
        assert torch.equal(fresh[k].cpu(), again[k]), k
    # a different prompt, negative prompt or CFG setting is a different entry
    keys = {PromptCache.key("tiny", s), PromptCache.key("tiny", _settings(seed, guidance_scale=1.0)),
            PromptCache.key("tiny", GenerationSettings(prompt="a blue square", negative_prompt="", **SMALL)),
            PromptCache.key("tiny", GenerationSettings(prompt=s.prompt, negative_prompt="blurry", **SMALL)),
            PromptCache.key("other/model", s)}
    assert len(keys) == 5
    # without CFG only the positive pair goes to the pipeline
    nocfg, _ = encode_prompts(pipe, _settings(seed, guidance_scale=1.0), "tiny", cache)
    assert set(nocfg) == {"prompt_embeds", "prompt_attention_mask"}
    free_text_encoder(pipe)
    assert pipe.text_encoder is None
    cached, info3 = encode_prompts(pipe, s, "tiny", cache)  # same key without the encoder
    assert info3["prompt_cache"] == "hit" and torch.equal(cached["prompt_embeds"], again["prompt_embeds"])
    with pytest.raises(ModelUnavailableError, match="not cached"):
        encode_prompts(pipe, s, "tiny", PromptCache(tmp_path / "empty"))


def test_cache_miss_without_text_encoder_fails(tmp_path):
    pipe = load_pipeline(device="cpu", model="tiny", precision="bf16", load_text_encoder=False)
    with pytest.raises(ModelUnavailableError, match="not cached"):
        encode_prompts(pipe, _settings(0), "hub/model", PromptCache(tmp_path))
