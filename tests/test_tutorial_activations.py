"""Notebook 03's measured activations and pictures (q8lib.tutorial.activations / quant_plots) and notebook 05's
prompt box (q8lib.tutorial.prompt_box): fast, on small tensors and the embedded tiny transformer."""
import math

import pytest
import torch
from torch import nn

from q8lib.tutorial import activations as A

# ------------------------------------------------------------------------------------------------ activations


class _Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_capture_linear_inputs_records_inputs_and_leaves_the_forward_alone():
    torch.manual_seed(0)
    m, x = _Two(), torch.randn(2, 3, 8)
    before = m(x)
    got = A.capture_linear_inputs(m, {"x": x}, ["a", "b"])
    assert list(got) == ["a", "b"]
    assert got["a"].shape == (6, 8) and got["a"].dtype == torch.float32
    torch.testing.assert_close(got["a"], x.reshape(6, 8))
    torch.testing.assert_close(got["b"], torch.relu(m.a(x)).reshape(6, 16).detach())
    assert not m.a._forward_pre_hooks and not m.b._forward_pre_hooks  # hooks removed
    torch.testing.assert_close(m(x), before)


def test_capture_linear_inputs_unknown_name_and_hooks_removed_on_failure():
    m = _Two()
    with pytest.raises(KeyError, match="nope"):
        A.capture_linear_inputs(m, {"x": torch.randn(1, 8)}, ["nope"])
    with pytest.raises(RuntimeError):
        A.capture_linear_inputs(m, {"x": torch.randn(1, 5)}, ["a"])  # wrong width: the forward fails
    assert not m.a._forward_pre_hooks


def test_outlier_measures_and_the_most_outlying_layer():
    g = torch.Generator().manual_seed(0)
    plain = torch.randn(256, 512, generator=g)
    spiky = plain.clone()
    spiky[:, 7] *= 50
    assert A.outlier_ratio(plain) < 8 < A.outlier_ratio(spiky)
    assert A.channel_spread(spiky) > 20 > A.channel_spread(plain)
    assert A.most_outlying({"plain": plain, "spiky": spiky}) == "spiky"
    with pytest.raises(ValueError):
        A.most_outlying({})


def test_roundtrip_error_rotation_helps_int8_on_outliers():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 1024, generator=g)
    x[:, :4] *= 60
    plain, rotated = A.roundtrip_error(x, "int8"), A.roundtrip_error(x, "int8", rotate=True)
    assert rotated < plain / 4
    assert 0 < A.roundtrip_error(x, "fp8_e4m3") < 0.05
    rows = A.quantization_errors({"transformer_blocks.0.ff.net.2": x})
    assert [r["format"] for r in rows] == ["int8", "fp8_e4m3"]
    assert rows[0]["plain"] == pytest.approx(plain) and rows[0]["K"] == 1024 and rows[0]["tokens"] == 128
    table = A.format_error_table(rows)
    assert "block 0.ff.net.2" in table and f"{100 * plain:#.3g}" in table


def test_e4m3_values_and_fields():
    v = A.e4m3_values()
    assert v.numel() == 126 and v[0].item() == 2.0 ** -9 and v[-1].item() == 448.0
    assert torch.all(v[1:] > v[:-1])
    gaps = torch.diff(v[v >= 1])  # one binade [2**e, 2**(e+1)) has 8 values, gap 2**e / 8
    assert gaps[0].item() == 1 / 8 and gaps[-1].item() == 32.0
    assert torch.equal(A.int8_values(), torch.arange(1.0, 128.0))
    one = A.e4m3_fields(0x38)
    assert one == {"code": 56, "bits": "0 0111 000", "sign": 0, "exponent": 7, "mantissa": 0, "value": 1.0}
    assert A.e4m3_fields(0x7E)["value"] == 448.0 and A.e4m3_fields(0xC0)["value"] == -2.0
    assert math.isnan(A.e4m3_fields(0x7F)["value"])
    with pytest.raises(ValueError):
        A.e4m3_fields(256)


@pytest.mark.slow  # loads the tiny transformer: ~15 s on 2 cores
def test_tiny_model_activations():
    import q8lib.tutorial as tut

    model = tut.load_transformer("tiny")
    inputs = tut.example_inputs(model.config)
    names = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.3.ff.net.2"]
    acts = A.capture_linear_inputs(model, inputs, names)
    assert acts[names[0]].shape == (2 * 3 * 8 * 8, 256) and acts[names[1]].shape[-1] == 1024
    assert all(torch.isfinite(a).all() for a in acts.values())


# ------------------------------------------------------------------------------------------------ pictures


@pytest.fixture
def plt():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def test_pictures_draw_with_legends_and_labels(plt):
    from q8lib.tutorial import quant_plots as qp
    from q8lib.tutorial import viz

    ax = qp.plot_hadamard(16)
    assert ax.images[0].get_array().shape == (16, 16) and ax.get_xlabel() and ax.figure.dpi >= viz.DPI
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=g)
    x[:, 3] *= 30
    fig = qp.plot_rotation_effect({"transformer_blocks.0.attn1.to_q": x})
    assert len(fig.axes) == 2 and len(fig.legends) == 1 and qp.plot_channel_max(x).get_legend()
    rows = A.quantization_errors({"transformer_blocks.0.attn1.to_q": x})
    ax = qp.plot_error_bars(rows)
    assert ax.get_legend() is not None
    labels = [t.get_text() for t in ax.texts]
    assert len(labels) == 4 and f"{100 * rows[0]['plain']:#.3g}" in labels
    for t in ax.texts:  # value labels sit above their bars, not inside
        assert t.get_fontsize() >= 8
    axes = qp.plot_value_grids()
    assert axes[0].get_xscale() == "log" and axes[1].get_legend() is not None


# ------------------------------------------------------------------------------------------------ prompt box


def test_frame_counts():
    from q8lib.tutorial.prompt_box import frame_counts

    assert frame_counts(17) == (9, 33, 8)
    assert frame_counts(81) == (9, 161, 8)
    assert frame_counts(17, 40) == (9, 33, 8)
    with pytest.raises(ValueError):
        frame_counts(16)


def test_prompt_box_calls_generate_and_reports_errors(capsys):
    pytest.importorskip("ipywidgets")
    pytest.importorskip("matplotlib")
    from q8lib.tutorial.prompt_box import prompt_box

    calls = []

    def generate(prompt, frames):
        calls.append((prompt, frames))
        if prompt == "boom":
            raise RuntimeError("no memory")
        return {"Q8": torch.rand(frames, 3, 8, 8)}

    box = prompt_box(generate, prompt="a red circle", num_frames=17)
    assert box.text.value == "a red circle" and box.frames.value == 17 and box.frames.step == 8
    box.frames.value = 9
    box.button.click()
    assert calls == [("a red circle", 9)] and not box.button.disabled
    box.text.value = "boom"
    box.button.click()
    assert calls[-1] == ("boom", 9) and not box.button.disabled
    assert "generation failed: RuntimeError: no memory" in capsys.readouterr().out


def test_prompt_box_without_ipywidgets(monkeypatch, capsys):
    import builtins

    from q8lib.tutorial import prompt_box as pb

    real = builtins.__import__

    def no_widgets(name, *a, **k):
        if name == "ipywidgets":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_widgets)
    assert pb.prompt_box(lambda p, f: {}) is None
    assert "needs ipywidgets" in capsys.readouterr().out
