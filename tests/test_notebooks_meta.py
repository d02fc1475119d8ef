"""The tutorial notebooks' structure (the outputs themselves are checked by nbval), and the helpers they use."""
import copy
import json
import math
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")  # the notebooks extra; absent on bare GPU boxes
import torch

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NAMES = [
    "01_inspect_ltx_transformer",
    "02_diffusers_patch",
    "03_convert_quantize",
    "04_swap_layers",
    "05_q8_attention_inference",
    "06_benchmark_plots",
    "07_ltx2_in_8_bits",
    "08_making_it_fast",
]


def _read(name):
    return nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)


def test_the_notebooks_exist():
    assert sorted(p.stem for p in NB_DIR.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_notebook_structure(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    first, last = nb.cells[0], nb.cells[-1]
    assert first.cell_type == "markdown" and "What you'll learn" in first.source and "What you need" in first.source
    assert last.cell_type == "markdown" and "## Summary" in last.source
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0] is nb.cells[1], "cell 2 must be the (only) parameters cell"
    assert "read_params()" in params[0].source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any("q8lib" in c.source for c in code)
    # prose and code alternate: no two code cells without prose in between more than a few times
    kinds = "".join("m" if c.cell_type == "markdown" else "c" for c in nb.cells)
    assert "cccc" not in kinds, kinds


@pytest.mark.parametrize("name", NAMES)
def test_outputs_are_committed_and_clean(name):
    path = NB_DIR / f"{name}.ipynb"
    assert path.stat().st_size < 1_000_000, "keep committed notebooks under 1 MB"
    nb = _read(name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), "execute top to bottom once and commit (execution counts kept)"
    for c in code:
        for out in c.outputs:
            assert out.output_type != "error", f"error output in {name}: {c.source[:80]}"
            assert not (out.output_type == "stream" and out.name == "stderr"), f"stderr output in {name}: {out.text[:200]}"
    ignored = [c for c in code if "nbval-ignore-output" in c.metadata.get("tags", [])]
    compared_with_output = [c for c in code if c not in ignored and c.outputs]
    assert len(ignored) <= 2 * len(code) // 3, "mark only volatile cells nbval-ignore-output"
    assert len(compared_with_output) >= 3, "nbval must compare real outputs in every notebook"


@pytest.mark.parametrize("name", NAMES)
def test_no_images_in_markdown(name):
    for c in _read(name).cells:
        if c.cell_type == "markdown":
            assert "data:image" not in c.source and "attachment:" not in c.source and not c.get("attachments")


def test_pytest_runs_the_notebooks_with_strict_nbval():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    opts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "notebooks" in opts["testpaths"]
    assert "--nbval " in opts["addopts"] + " " and "--nbval-lax" not in opts["addopts"]
    assert "--nbval-sanitize-with=notebooks/sanitize.cfg" in opts["addopts"]
    assert (NB_DIR / "sanitize.cfg").is_file()


def test_sanitizers():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(NB_DIR / "sanitize.cfg")
    pats = [(cfg[s]["regex"], cfg[s]["replace"]) for s in cfg.sections()]

    def clean(s):
        for rx, rep in pats:
            s = re.sub(rx, rep, s)
        return s

    assert clean("<object at 0x7f0a60e7fa10>") == clean("<object at 0x7f0a61234560>")
    assert clean("SQNR 0.12345 dB") == clean("SQNR 0.12349 dB")
    assert clean("SQNR 0.123 dB") != clean("SQNR 0.124 dB")
    assert clean("/tmp/q8lib-nb03-abc123/q8") == clean("/tmp/q8lib-nb03-xyz789/q8")


# ---- helpers used by the notebooks -------------------------------------------------------------
def test_read_params(monkeypatch):
    from q8lib import tutorial

    p = tutorial.read_params({})
    assert p.model == "tiny" and p.tiny and p.seed == 0 and p.dtype == torch.bfloat16
    p = tutorial.read_params({"Q8_MODEL": "Lightricks/LTX-Video", "Q8_DEVICE": "cuda", "Q8_SEED": "3", "Q8_DTYPE": "fp32"})
    assert (p.model, p.device, p.seed, p.dtype, p.tiny) == ("Lightricks/LTX-Video", "cuda", 3, torch.float32, False)
    with pytest.raises(ValueError, match="Q8_DTYPE"):
        tutorial.read_params({"Q8_DTYPE": "int4"})


def test_hub_model_offline_gives_a_clear_message(monkeypatch, tmp_path):
    from q8lib import tutorial
    from q8lib.errors import ModelUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="Q8_MODEL=tiny"):
        tutorial.transformer_config("Lightricks/LTX-Video")


def test_example_inputs_run_the_tiny_transformer():
    from q8lib import tutorial

    model = tutorial.load_transformer("tiny")
    kw = tutorial.example_inputs(model.config, batch=2, frames=2, height=4, width=4, text_tokens=8)
    assert kw["encoder_attention_mask"].tolist()[-1] == [1] * 4 + [0] * 4
    with torch.no_grad():
        assert model(**kw).sample.shape == (2, 32, model.config.in_channels)


def test_layer_sqnr_on_the_tiny_transformer():
    import q8lib
    from q8lib import tutorial
    from q8lib.compare import converted_layers, layer_outputs, layer_sqnr, sqnr_db

    model = tutorial.load_transformer("tiny")
    q8 = q8lib.quantize_(copy.deepcopy(model), q8lib.Q8Config(), progress=False)
    kw = tutorial.example_inputs(model.config, frames=2, height=4, width=4)
    names = converted_layers(q8)
    assert not any(n.endswith("ff.net.0.proj") for n in names) and any(n.endswith("ff.net.0") for n in names)
    iso = layer_sqnr(model, q8, lambda m: m(**kw))
    assert list(iso) == names
    for n, db in iso.items():
        if n.endswith(("norm1", "norm2")):
            assert db == math.inf  # same float32 math as diffusers on the same input
        else:
            assert 25 < db < 60, (n, db)
    acc = layer_outputs(model, q8, lambda m: m(**kw), isolated=False)
    last = names[-1]
    assert sqnr_db(*acc[last]) < iso[last] + 1e-9 or math.isinf(iso[last])
    assert sqnr_db(torch.ones(3), torch.ones(3)) == math.inf
    with pytest.raises(ValueError, match="no Q8 modules"):
        layer_sqnr(model, model, lambda m: m(**kw))


def test_layer_outputs_in_the_model_sees_every_layer_of_fused_blocks():
    """On a GPU ``quantize_`` installs fused blocks, which call their kernels, not the modules: the in-model
    capture must still see every converted layer (found by notebook 04's GPU run), and leave the blocks fused."""
    import q8lib
    from q8lib import tutorial
    from q8lib.compare import converted_layers, layer_outputs
    from q8lib.fused import install_fused_blocks, is_fused

    model = tutorial.load_transformer("tiny")
    q8 = q8lib.quantize_(copy.deepcopy(model), q8lib.Q8Config(), progress=False)
    kw = tutorial.example_inputs(model.config, frames=2, height=4, width=4)
    unfused = layer_outputs(model, q8, lambda m: m(**kw), isolated=False)
    assert install_fused_blocks(q8, "sdpa") == len(q8.transformer_blocks)
    fused = layer_outputs(model, q8, lambda m: m(**kw), isolated=False)
    assert list(fused) == list(unfused) == converted_layers(q8)
    for n, (r, q) in fused.items():
        torch.testing.assert_close(q, unfused[n][1], rtol=0, atol=0)
        assert r is not q
    assert all(is_fused(b) for b in q8.transformer_blocks)


def test_load_results_and_tables(tmp_path):
    from q8lib.tutorial import viz

    (tmp_path / "transformer_x.json").write_text(json.dumps({
        "device": "GPU", "date": "d", "versions": {"torch": "2"}, "shape": {"tokens": 3},
        "results": {"bf16": {"fwd_ms": 10.0, "peak_mb": 100.0}, "q8": {"fwd_ms": 6.0, "peak_mb": 60.0,
                    "rel_err_vs_bf16": 0.01, "cos_vs_bf16": 0.999}, "broken": {"error": "trace"}}}))
    (tmp_path / "attention_x.json").write_text(json.dumps({
        "device": "GPU", "shapes": {"s1": {"results": {"sdpa": {"ms": 1.0, "tflops": 300.0, "rel_err": 0.002}}}}}))
    (tmp_path / "bad.json").write_text("{not json")
    results = viz.load_results(tmp_path)
    assert [r["_file"] for r in results] == ["attention_x.json", "bad.json", "transformer_x.json"]
    assert "_error" in results[1]
    t = viz.result_tables(results[2])[""]
    assert [r["variant"] for r in t] == ["bf16", "q8", "broken"]
    assert t[1]["time"] == 6.0 and t[1]["time_unit"] == "ms" and t[1]["rel_err"] == 0.01 and t[1]["cos"] == 0.999
    assert t[2]["error"] and t[2]["time"] is None
    table = viz.format_table(t)
    assert "failed" in table and "0.999" in table
    a = viz.result_tables(results[0])
    assert list(a) == ["s1"] and a["s1"][0]["tflops"] == 300.0
    assert "GPU" in viz.describe_result(results[2]) and "unreadable" in viz.describe_result(results[1])
    assert viz.load_results(tmp_path / "missing") == []


def test_video_helpers():
    from q8lib.tutorial import viz

    v = torch.rand(5, 3, 8, 12)
    u = viz.to_uint8(v)
    assert u.shape == (5, 8, 12, 3) and u.dtype.name == "uint8"
    assert viz.frame_strip({"a": v, "b": v}, n=3) is not None
    # the scrubber keeps frames at display size: full-size frames (81 x 480 x 704) made nbclient wait out the whole
    # cell timeout after the cell had run (480 s in notebook 05's GPU run; 30 -> 7 s locally with a 25 s timeout)
    big = viz._display_size(viz.to_uint8(torch.rand(2, 3, 480, 704)))
    assert big.shape == (2, 160, 235, 3) and viz._display_size(u).shape == u.shape


def test_videos_html_embeds_small_files_and_names_large_ones(tmp_path):
    from q8lib.tutorial import viz

    small, large = tmp_path / "small.mp4", tmp_path / "large.mp4"
    small.write_bytes(b"\x00" * 1000)
    large.write_bytes(b"\x00" * (3 * 2**20))
    html = viz.videos_html({"bf16": small, "Q8": large}, max_mb=2).data
    assert html.count("data:video/mp4;base64,") == 1 and "large.mp4</code> (3 MiB" in html
    assert "Q8</figcaption>" in html and "bf16</figcaption>" in html
    medium = tmp_path / "medium.mp4"
    medium.write_bytes(b"\x00" * (3 * 2**19))  # 1.5 MiB: two fit under 2 MiB one at a time, not together
    html = viz.videos_html({"a": medium, "b": medium}, max_mb=2).data
    assert html.count("data:video/mp4;base64,") == 1 and "past the 2 MiB" in html


def test_versus_baseline():
    from q8lib.tutorial import viz

    rows = viz.result_tables({"results": {"bf16": {"fwd_ms": 10.0, "peak_mb": 100.0},
                                          "bf16_compile": {"fwd_ms": 8.0, "peak_mb": 90.0},
                                          "q8": {"fwd_ms": 4.0, "peak_mb": 50.0}}})[""]
    lines = viz.versus(rows, "bf16_compile", "bf16").splitlines()
    assert lines[2].startswith("q8") and "2.00x the speed of bf16_compile" in lines[2] and "50% of the peak memory of bf16" in lines[2]
    assert viz.versus(rows, "missing") == ""


def test_pipeline_run_summary():
    from q8lib.tutorial import viz

    run = {"timings": {"end_to_end_s": 5.0, "transformer_s": 4.5, "transformer_forward_ms": 90.0},
           "memory": {"peak_gib": 7.0, "transformer_weights_gib": 3.5}}
    q8 = {"timings": {"end_to_end_s": 4.0, "transformer_s": 3.5, "transformer_forward_ms": 70.0},
          "memory": {"peak_gib": 5.0, "transformer_weights_gib": 1.8}}
    result = {"kind": "q8lib compare", "pipeline": {"model": "random-2b"}, "settings": {"num_frames": 81},
              "results": {"reference": run, "q8": q8, "speedup": {"transformer": 1.29},
                          "metrics": {"psnr_db_mean": 43.4, "psnr_db_min": 43.0, "ssim_mean": 0.999}}}
    assert viz.is_pipeline_run(result) and viz.result_tables(result) == {}
    text = viz.pipeline_run_summary(result)
    assert "random-2b" in text and "transformer 1.29x" in text and "PSNR mean 43.4 dB" in text
    assert "1.80" in text.splitlines()[-3]  # the Q8 row shows its weight GiB
