"""q8lib.app.video: mp4 files round-trip."""
from __future__ import annotations


import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore::q8lib.errors.Q8FallbackWarning")  # CPU runs use the reference math on purpose


def test_write_video_roundtrip(tmp_path, seed):
    import imageio.v2 as imageio

    from q8lib.app.video import write_video

    v = torch.rand(9, 3, 40, 36)
    p = write_video(v, tmp_path / "v.mp4", fps=8)
    frames = imageio.mimread(p)
    assert len(frames) == 9 and frames[0].shape == (48, 48, 3)  # padded to multiples of 16
