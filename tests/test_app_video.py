"""q8lib.app.video: mp4 files round-trip, through each writer of the order imageio-ffmpeg, PyAV, OpenCV."""
from __future__ import annotations

import logging
import sys
import types

import pytest
import torch

from q8lib.errors import MissingPackageError

pytestmark = pytest.mark.filterwarnings("ignore::q8lib.errors.Q8FallbackWarning")  # CPU runs use the reference math on purpose


def _block(monkeypatch, *modules):
    """Make ``modules`` unimportable (``import`` raises ImportError), as if they were not installed."""
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


def test_write_video_roundtrip(tmp_path, seed):
    import imageio.v2 as imageio

    from q8lib.app.video import write_video

    v = torch.rand(9, 3, 40, 36)
    p = write_video(v, tmp_path / "v.mp4", fps=8)
    frames = imageio.mimread(p)
    assert len(frames) == 9 and frames[0].shape == (48, 48, 3)  # padded to multiples of 16


@pytest.mark.parametrize("installed, expected", [
    ({"imageio", "imageio_ffmpeg", "av", "cv2"}, "imageio-ffmpeg"),
    ({"imageio", "av", "cv2"}, "pyav"),
    ({"imageio_ffmpeg", "av"}, "pyav"),  # imageio-ffmpeg needs imageio too
    ({"imageio", "cv2"}, "opencv"),
    ({"cv2"}, "opencv"),
])
def test_the_writer_is_the_first_installed(monkeypatch, installed, expected):
    from q8lib.app import video

    monkeypatch.setattr(video, "_importable", lambda m: m in installed)
    assert video.video_writer() == expected


def test_no_writer_installed_names_what_to_install(monkeypatch):
    from q8lib.app import video

    monkeypatch.setattr(video, "_importable", lambda m: m == "imageio")
    with pytest.raises(MissingPackageError, match="pip install imageio-ffmpeg, or pip install av, or pip install "
                                                  "opencv-python-headless"):
        video.video_writer()
    with pytest.raises(MissingPackageError, match="audio track needs PyAV: pip install av"):
        video.video_writer(audio=True)
    with pytest.raises(MissingPackageError):
        video.write_video(torch.rand(9, 3, 32, 32), "never.mp4")


def test_pyav_writes_when_imageio_ffmpeg_is_missing(tmp_path, monkeypatch, caplog):
    av = pytest.importorskip("av")
    from q8lib.app.video import video_writer, write_video

    _block(monkeypatch, "imageio_ffmpeg")
    assert video_writer() == "pyav"
    with caplog.at_level(logging.INFO, logger="q8lib.app.video"):
        p = write_video(torch.rand(9, 3, 40, 36), tmp_path / "v.mp4", fps=8)
    assert "with pyav" in caplog.text
    with av.open(str(p)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 9 and frames[0].shape == (48, 48, 3)


def test_opencv_writes_when_imageio_ffmpeg_and_pyav_are_missing(tmp_path, monkeypatch, caplog):
    cv2 = pytest.importorskip("cv2")  # pip install opencv-python-headless; the fake-module test below always runs
    from q8lib.app.video import video_writer, write_video

    _block(monkeypatch, "imageio_ffmpeg", "av")
    assert video_writer() == "opencv"
    v = torch.rand(9, 3, 40, 36)
    with caplog.at_level(logging.INFO, logger="q8lib.app.video"):
        p = write_video(v, tmp_path / "v.mp4", fps=8)
    assert "with opencv (" in caplog.text
    cap = cv2.VideoCapture(str(p))
    frames = []
    while (ok_frame := cap.read())[0]:
        frames.append(ok_frame[1])
    cap.release()
    assert len(frames) == 9 and frames[0].shape == (48, 48, 3)


class _FakeWriter:
    """Stands in for ``cv2.VideoWriter``: only ``mp4v`` opens (like pip's OpenCV wheels, which lack H.264)."""

    calls: list = []

    def __init__(self, path, fourcc, fps, size):
        self.path, self.fourcc = path, fourcc
        self.calls.append(("open", fourcc, fps, size))

    def isOpened(self):
        return self.fourcc == "mp4v"

    def write(self, frame):
        self.calls.append(("write", frame.shape, str(frame.dtype)))

    def release(self):
        self.calls.append(("release", self.fourcc))
        if self.isOpened():
            with open(self.path, "wb") as f:
                f.write(b"fake mp4")


def test_opencv_branch_with_a_fake_cv2(tmp_path, monkeypatch, caplog):
    from q8lib.app.video import write_video

    _FakeWriter.calls = []
    fake = types.SimpleNamespace(VideoWriter=_FakeWriter, VideoWriter_fourcc=lambda *c: "".join(c),
                                 cvtColor=lambda frame, code: frame[..., ::-1], COLOR_RGB2BGR=4, __version__="fake")
    _block(monkeypatch, "imageio_ffmpeg", "av")
    monkeypatch.setitem(sys.modules, "cv2", fake)
    with caplog.at_level(logging.INFO, logger="q8lib.app.video"):
        p = write_video(torch.rand(5, 3, 40, 36), tmp_path / "v.mp4", fps=8)
    assert p.read_bytes() == b"fake mp4" and "with opencv (mp4v)" in caplog.text
    assert _FakeWriter.calls[:3] == [("open", "avc1", 8.0, (48, 48)), ("release", "avc1"),
                                     ("open", "mp4v", 8.0, (48, 48))]
    assert _FakeWriter.calls[3:] == [("write", (48, 48, 3), "uint8")] * 5 + [("release", "mp4v")]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["v.mp4"]  # no partial file left


def test_opencv_that_cannot_open_mp4_raises(tmp_path, monkeypatch):
    from q8lib.app.video import write_video

    class Never(_FakeWriter):
        def isOpened(self):
            return False

    fake = types.SimpleNamespace(VideoWriter=Never, VideoWriter_fourcc=lambda *c: "".join(c), __version__="fake")
    _block(monkeypatch, "imageio_ffmpeg", "av")
    monkeypatch.setitem(sys.modules, "cv2", fake)
    with pytest.raises(MissingPackageError, match="neither avc1 nor mp4v"):
        write_video(torch.rand(5, 3, 32, 32), tmp_path / "v.mp4")
    assert list(tmp_path.iterdir()) == []
