"""q8lib.app.settings: generation settings are validated, with the model's defaults."""
from __future__ import annotations


import pytest

from q8lib.app import GenerationSettings, settings_for
from q8lib.errors import SettingsError

pytestmark = pytest.mark.filterwarnings("ignore::q8lib.errors.Q8FallbackWarning")  # CPU runs use the reference math on purpose


@pytest.mark.parametrize("bad, match", [
    (dict(num_frames=10), "8k\\+1"), (dict(num_frames=0), "8k\\+1"), (dict(height=33), "height"),
    (dict(width=0), "width"), (dict(num_inference_steps=0), "steps"), (dict(guidance_scale=float("nan")), "guidance"),
])
def test_settings_validation(bad, match):
    with pytest.raises(SettingsError, match=match):
        GenerationSettings(prompt="x", **bad).validate()
    with pytest.raises(SettingsError, match="prompt is empty"):
        GenerationSettings(prompt="  ").validate()


def test_settings_defaults():
    tiny = settings_for("tiny", "a ball")
    full = settings_for("Lightricks/LTX-Video", "a ball", num_frames=121)
    assert "worst quality" in full.negative_prompt
    assert (tiny.num_frames, tiny.height, tiny.num_inference_steps, tiny.negative_prompt) == (17, 32, 8, "")
    assert (full.num_frames, full.height, full.width) == (121, 480, 704)
    assert full.shape() == dict(frames=121, height=480, width=704, transformer_batch=2, latent=[16, 15, 22],
                                video_tokens=5280, text_tokens=128)
    assert settings_for("x/y", "a").shape()["video_tokens"] == 3630  # the shape of record
