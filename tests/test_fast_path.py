"""Notebook 08's helpers (:mod:`q8lib.tutorial.fast_path`) on synthetic results files and a tiny model."""
import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from q8lib.tutorial import fast_path as fp  # noqa: E402


def _profile(gemm, attn, glue, host, launches=(10, 2, 20)):
    return {"gemm_ms": gemm, "attention_ms": attn, "glue_ms": glue, "host_gap_ms": host, "kernel_ms": gemm + attn + glue,
            "gemm_launches": launches[0], "attention_launches": launches[1], "glue_launches": launches[2]}


def _run(name="transformer_a.json"):
    return {"_file": name, "device": "GPU", "results": {
        "bf16": {"fwd_ms": 90.0, "peak_mb": 4000.0, "weights_mb": 3600.0, "profile": _profile(30, 17, 40, 3)},
        "bf16_compile": {"fwd_ms": 60.0, "peak_mb": 3900.0, "weights_mb": 3600.0, "profile": _profile(31, 18, 10, 1)},
        "q8lib": {"fwd_ms": 95.0, "peak_mb": 2300.0, "weights_mb": 1900.0},
        "q8lib_compile": {"fwd_ms": 50.0, "peak_mb": 2200.0, "weights_mb": 1900.0, "profile": _profile(17, 18, 12, 3)},
        "q8lib_compile_graph": {"fwd_ms": 46.0, "peak_mb": 2000.0, "weights_mb": 1900.0, "reserved_peak_mb": 2800.0,
                                "profile": _profile(17, 18, 12, -0.2)},
        "torchao_fp8_compile": {"error": "trace"}}}


def test_labels():
    assert fp.label("q8lib") == "q8lib, eager" and fp.label("bf16") == "bf16, eager"
    assert fp.label("q8lib_compile_graph") == "q8lib + compile + CUDA graph"


def test_ladder_takes_each_step_from_the_first_file_that_has_it():
    later = {"_file": "later.json", "results": {"q8lib_fp8attn_compile_graph": {"fwd_ms": 44.0},
                                                 "q8lib_compile": {"fwd_ms": 1.0}}}
    q8 = fp.ladder([_run(), later], "q8lib")
    assert [p and p["ms"] for p in q8] == [95.0, 50.0, 46.0, 44.0]
    assert q8[1]["file"] == "transformer_a.json" and q8[3]["file"] == "later.json"
    assert [p and p["ms"] for p in fp.ladder(_run(), "bf16")] == [90.0, 60.0, None, None]
    table = fp.format_ladders([_run(), later])
    assert "44.0 ms*" in table and "* from later.json" in table and "95.0 ms" in table


def test_plot_steps_draws_one_panel_per_entry():
    fig = fp.plot_steps({"one": _run(), "two": [_run("b.json"), _run("c.json")]}, title="t")
    assert len(fig.axes) == 2 and fig.axes[0].get_ylim()[0] == 0
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "95.0" in texts and "60.0" in texts


def test_milestones_use_the_same_runs_bf16_compile():
    rows = fp.milestones({"a.json": _run("a.json")}, rows=[("a.json", "q8lib_compile_graph", "1", "graph"),
                                                          ("a.json", "q8lib_fp8attn", "1", "absent"),
                                                          ("missing.json", "q8lib", "1", "no file")])
    assert len(rows) == 1 and rows[0]["ratio"] == pytest.approx(46 / 60) and rows[0]["bf16_compile_ms"] == 60.0
    assert "0.77x" in fp.format_milestones(rows)
    files = {f for f, *_ in fp.MILESTONES}
    assert all(f.startswith("transformer_h") for f in files)


def test_profile_rows_and_figure():
    rows = fp.profile_rows(_run(), ["bf16", "q8lib", "q8lib_compile_graph"])
    assert [r["variant"] for r in rows] == ["bf16", "q8lib_compile_graph"]  # q8lib eager has no profile
    assert rows[1]["host_gap_ms"] == 0.0 and rows[0]["launches"] == 32 and rows[0]["fwd_ms"] == 90.0
    table = fp.format_profile(rows)
    assert "bf16, eager" in table and "40.0" in table
    fig = fp.plot_profile_split({"a": rows, "b": fp.profile_rows(_run())})
    assert len(fig.axes) == 2
    assert any("launches" in t.get_text() for t in fig.axes[0].texts)


def test_memory_rows_mark_graph_peaks_taken_after_the_capture():
    old = fp.memory_rows(_run(), peak_after_capture=True)
    assert [r["variant"] for r in old] == ["bf16", "bf16_compile", "q8lib", "q8lib_compile", "q8lib_compile_graph"]
    assert [r["under_reports"] for r in old] == [False] * 4 + [True]
    new = fp.memory_rows(_run(), ["q8lib_compile_graph", "bf16"])
    assert [r["variant"] for r in new] == ["q8lib_compile_graph", "bf16"] and not new[0]["under_reports"]
    assert new[0]["reserved_mb"] == 2800.0 and new[1]["reserved_mb"] is None
    fig = fp.plot_memory({"old": old, "new": new})
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(" *" in t for t in texts) and any("reserved 2.73" in t for t in texts)


def test_load_names_a_missing_file(tmp_path):
    (tmp_path / "x.json").write_text('{"results": {}}')
    assert fp.load(tmp_path, ["x.json"])["x.json"]["_file"] == "x.json"
    with pytest.raises(FileNotFoundError, match="y.json"):
        fp.load(tmp_path, ["y.json"])


def test_live_timing_and_weights():
    lin = torch.nn.Linear(8, 4).to(torch.bfloat16)
    assert fp.weights_mb(lin) == pytest.approx((8 * 4 + 4) * 2 / 2**20)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    t = fp.time_forward(lambda: lin(x), iters=3, warmup=1)
    assert t["min_ms"] <= t["ms"] <= t["max_ms"]
    assert (t["extra_peak_mb"] is None) == (not torch.cuda.is_available())
    live = fp.live_result({"bf16": t, "q8lib_compile": None}, "cpu")
    assert live["_file"] == "this run (cpu)" and list(live["results"]) == ["bf16"]
    assert fp.ladder(live, "bf16")[0]["ms"] == t["ms"]


def test_format_times():
    t = {"ms": 2.0, "min_ms": 1.5, "max_ms": 3.0, "extra_peak_mb": None}
    text = fp.format_times({"bf16_compile": t, "q8lib": dict(t, ms=1.0), "q8lib_compile_graph": None})
    assert "0.50x" in text and "not run on this device" in text and "q8lib, eager" in text
