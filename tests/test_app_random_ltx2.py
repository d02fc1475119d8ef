"""``random-ltx2``: the full-size LTX-2 pipeline with random weights (issue #17's end-to-end memory target), offline.

The catalogue entry (``q8lib.models.CATALOGUE["ltx2"]``) holds the released configs; a full-size build is a GPU
job (19B parameters), so these tests swap the entry's configs for the tiny LTX-2 pipeline's (tests/pipeline_folders)
and run the real loading, prompt and generation code.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from q8lib import Q8Config, is_quantized
from q8lib.app import GenerationSettings, encode_prompts, load_pipeline
from q8lib.app.cli import main
from q8lib.app.pipelines import model_family
from q8lib.app.prompts import PromptCache
from q8lib.app.settings import MODEL_ALIASES, RANDOM_MODELS
from q8lib.errors import SettingsError
from q8lib.models import CATALOGUE, LTX2_CONFIG, LTX2_TINY_CONFIG
from pipeline_folders import ltx2_components

SMALL = ["--frames", "9", "--height", "64", "--width", "64", "--steps", "2", "--quiet", "--device", "cpu", "--dtype",
         "fp32", "--negative-prompt", "", "--no-prompt-cache"]


@pytest.fixture
def tiny_entry(monkeypatch):
    """``random-ltx2`` at the tiny LTX-2 pipeline's widths (same classes, same code paths)."""
    comps = ltx2_components()
    configs = {k: {n: v for n, v in dict(comps[k].config).items() if not n.startswith("_")}
               for k in ("vae", "audio_vae", "vocoder", "connectors")}
    entry = dataclasses.replace(RANDOM_MODELS["random-ltx2"], transformer_config=dict(LTX2_TINY_CONFIG),
                                components=configs)
    monkeypatch.setitem(RANDOM_MODELS, "random-ltx2", entry)
    return entry


def test_catalogue_entry_is_the_released_ltx2():
    entry = RANDOM_MODELS["random-ltx2"]
    assert entry is CATALOGUE["ltx2"] and entry.hub_id == "Lightricks/LTX-2" and entry.q8_directly
    assert entry.transformer_config == LTX2_CONFIG and set(entry.components) == {"vae", "audio_vae", "vocoder",
                                                                                   "connectors"}
    assert model_family("random-ltx2").name == "ltx2" and model_family("random-2b").name == "ltx"
    assert "ltx-ltx2" not in MODEL_ALIASES  # LTX-2 is named by its hub id


def test_load_pipeline_builds_every_component(tiny_entry):
    pipe = load_pipeline("random-ltx2", precision="q8", device="cpu", dtype="fp32",
                         q8_config=Q8Config(weight_dtype="int8"))
    assert type(pipe).__name__ == "LTX2Pipeline" and is_quantized(pipe.transformer)
    for name, cls in (("vae", "AutoencoderKLLTX2Video"), ("audio_vae", "AutoencoderKLLTX2Audio"),
                      ("vocoder", "LTX2Vocoder"), ("connectors", "LTX2TextConnectors")):
        assert type(getattr(pipe, name)).__name__ == cls
    assert pipe.text_encoder is None and pipe.tokenizer is None
    bf16 = load_pipeline("random-ltx2", precision="bf16", device="cpu", dtype="fp32")
    assert type(bf16.transformer).__name__ == "LTX2VideoTransformer3DModel" and not is_quantized(bf16.transformer)


def test_random_prompt_embeddings_have_gemma_width_and_skip_the_cache(tiny_entry, tmp_path):
    pipe = load_pipeline("random-ltx2", precision="q8", device="cpu", dtype="fp32",
                         q8_config=Q8Config(weight_dtype="int8"))
    s = GenerationSettings(prompt="a red circle moving right", negative_prompt="blurry", num_frames=9, height=64,
                           width=64, num_inference_steps=2, max_sequence_length=16).validate()
    embeds, info = encode_prompts(pipe, s, "random-ltx2", PromptCache(tmp_path / "cache"))
    c = pipe.connectors.config
    assert embeds["prompt_embeds"].shape == (1, 16, c.caption_channels * c.text_proj_in_factor)
    assert embeds["negative_prompt_embeds"].shape == embeds["prompt_embeds"].shape
    assert info["prompt_cache"] == "off" and not (tmp_path / "cache").exists()


def test_cli_generate_random_ltx2(tiny_entry, tmp_path):
    out = tmp_path / "v.mp4"
    assert main(["generate", "--model", "random-ltx2", "--prompt", "a red circle moving right", *SMALL,
                 "--output", str(out), "--no-video"]) == 0
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["results"]["audio"]["channels"] == 2
    assert rep["settings"]["num_frames"] == 9 and rep["settings"]["max_sequence_length"] == 1024  # LTX-2's default


def test_no_text_encoder_stand_in_for_ltx2():
    with pytest.raises(SettingsError, match="no stand-in"):
        load_pipeline("random-ltx2", precision="q8", device="cpu", dtype="fp32", full_size_text_encoder=True)


def test_q8_transformer_built_directly_in_8_bits(tiny_entry):
    """The Q8 transformer is allocated in 8 bits (q8_directly), never as a float copy first."""
    pipe = load_pipeline("random-ltx2", precision="q8", device="cpu", dtype="fp32",
                         q8_config=Q8Config(weight_dtype="int8"))
    codes = [m.weight for m in pipe.transformer.modules() if type(m).__name__ == "Q8Linear"]
    assert codes and all(w.dtype == torch.int8 for w in codes)
