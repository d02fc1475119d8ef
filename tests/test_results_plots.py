"""Notebook 06's figures and tables (q8lib.tutorial.results_plots) on small synthetic results files."""
import pytest

pytest.importorskip("matplotlib")
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from q8lib.tutorial import results_plots as rp
from q8lib.tutorial import viz


def _prof(gemm, attn, glue, gap):
    return {"gemm_ms": gemm, "attention_ms": attn, "glue_ms": glue, "host_gap_ms": gap}


def _run(name="transformer_a.json", date="2026-12-01", baselines=("bf16", "bf16_compile", "torchao_fp8_compile"),
         profile=True, model="LTX-Video 2B"):
    res = {"bf16": {"fwd_ms": 90.0, "peak_mb": 4000.0}, "bf16_compile": {"fwd_ms": 60.0, "peak_mb": 3900.0},
           "torchao_fp8_compile": {"fwd_ms": 55.0, "peak_mb": 2200.0},
           "q8lib_compile_graph": {"fwd_ms": 45.0, "peak_mb": 2000.0, "rel_err_vs_bf16": 0.02},
           "q8lib_broken": {"error": "trace"}}
    res = {k: v for k, v in res.items() if k in baselines or k.startswith("q8lib")}
    if profile:
        for v in res.values():
            if "fwd_ms" in v:
                v["profile"] = _prof(v["fwd_ms"] / 2, 15.0, 8.0, 1.0)
    return {"_file": name, "device": "NVIDIA H200", "date": date, "versions": {"torch": "2"},
            "shape": {"model": model}, "results": res}


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_variant_labels_and_order():
    assert rp.variant_label("q8lib_fp8attn_compile_graph") == "q8lib, FP8 attention + compile + CUDA graph"
    assert rp.variant_label("torchao_fp8_compile") == "torchao fp8 + compile"
    assert rp.variant_label("bf16") == "bf16"
    var = rp.timed_variants(_run())
    assert "q8lib_broken" not in var and var["q8lib_compile_graph"]["time_ms"] == 45.0
    assert rp.ordered(var) == ["bf16", "bf16_compile", "torchao_fp8_compile", "q8lib_compile_graph"]


def test_rank_candidates_prefers_complete_profiled_runs():
    full = _run("transformer_full.json", date="2026-12-01T10")
    newer_partial = _run("transformer_new.json", date="2026-12-02", baselines=("bf16_compile",))
    unprofiled = _run("transformer_noprof.json", date="2026-12-03", profile=False)
    other = _run("transformer_13b.json", model="13B")
    ranked = rp.rank_candidates([newer_partial, unprofiled, full, other, {"_file": "attention_x.json"}],
                                "LTX-Video 2B", "H200")
    assert [c["file"] for c in ranked] == ["transformer_full.json", "transformer_noprof.json", "transformer_new.json"]
    top = ranked[0]
    assert top["baselines"] == list(rp.BASELINES) and top["timed"] == top["profiled"] == 4 and top["failed"] == 1
    assert rp.rank_candidates([full], "LTX-Video 2B", "H100") == []


def test_history_flag_and_table():
    assert rp.history_flag({}) is False and rp.history_flag({"Q8_SHOW_HISTORY": "0"}) is False
    assert rp.history_flag({"Q8_SHOW_HISTORY": "1"}) and rp.history_flag({"Q8_SHOW_HISTORY": "True"})
    runs = [_run("transformer_a.json"), _run("transformer_b.json"),
            {"_file": "generate_x.json", "kind": "q8lib generate"}]
    table = rp.history_table(runs, shown={"transformer_a.json"})
    assert "transformer_b.json" in table and "transformer_a.json" not in table and "generate_x" not in table
    assert "q8lib_compile_graph 45.0 ms (0.75x)" in table


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def _ref_lines(ax):
    return [ln.get_xdata()[0] for ln in ax.lines if ln.get_linestyle() == "--"]


def test_plot_variants_linear_labelled_with_reference():
    fig = rp.plot_variants(_run(), highlight="q8lib_compile_graph")
    ax_t, ax_m = fig.axes[:2]
    assert ax_t.get_xscale() == "linear" and ax_t.get_xlim()[0] == 0
    assert "lower is better" in ax_t.get_xlabel() and "lower is better" in ax_m.get_xlabel()
    assert "45.0 ms (0.75x)" in _texts(ax_t) and "60.0 ms (1.00x)" in _texts(ax_t)
    assert _ref_lines(ax_t) == [60.0]
    assert any("1.95 GiB (0.51x)" == t for t in _texts(ax_m))
    assert [t.get_text() for t in ax_t.get_yticklabels()][-1] == "q8lib + compile + CUDA graph"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "bf16 + compile (reference)" in labels and "q8lib" in labels
    assert fig.dpi >= 110 and min(t.get_fontsize() for t in ax_t.texts) >= 8


def test_scatter_profile_and_pipeline_plots():
    fig = rp.plot_time_memory(_run())
    ax = fig.axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "linear"
    assert any("45.0 ms, 1.95 GiB" in t.get_text() for t in ax.get_legend().get_texts())
    fig = rp.plot_profile(_run())
    ax = fig.axes[0]
    assert any(t.startswith("46.5 ms (GEMM 22.5") for t in _texts(ax)) and _ref_lines(ax) == [60.0]
    run = {"timings": {"end_to_end_s": 5.0, "transformer_s": 4.5}}
    q8 = {"timings": {"end_to_end_s": 4.0, "transformer_s": 3.5}}
    cmp = {"kind": "q8lib compare", "results": {"reference": run, "q8": q8}}
    runs = rp.pipeline_runs(cmp)
    assert list(runs) == ["bf16", "Q8"]
    assert list(rp.pipeline_runs({"kind": "q8lib generate", "pipeline": {"precision": "q8"}, "results": q8})) == ["Q8"]
    fig = rp.plot_end_to_end(runs, reference="bf16")
    assert "4.00 s (0.80x)" in _texts(fig.axes[0]) and _ref_lines(fig.axes[0]) == [5.0]


def test_attention_plot_relative_to_cudnn():
    res = {"shapes": {"self": {"shape": [2, 32, 100, 100, 64], "results": {
        "sdpa_cudnn_bf16": {"ms": 1.0}, "q8_fp8_op": {"ms": 0.8}, "q8_fp8_kernel": {"ms": 0.5}}},
        "core": {"shape": [2, 100, 2048], "results": {"sdpa_cudnn_bf16": {"ms": 1.0}}}}}
    fig = rp.plot_attention(res, variants=("q8_fp8_kernel", "q8_fp8_op"))
    ax = fig.axes[0]
    assert _texts(ax) == ["0.50x", "0.80x"] and _ref_lines(ax) == [1.0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["self, 100 tokens, d=64"]


def test_like_for_like_ratios():
    ours = rp.speedup_ratios({"bf16": 100.0, "bf16 + compile": 60.0, "Q8": None, "Q8 + compile": 45.0})
    assert ours == {"Q8, no compile vs bf16 eager": None, "Q8 + compile vs bf16 + compile": 0.75,
                    "best Q8 vs bf16 eager": 0.45}
    theirs = rp.earlier_work_ratios()
    assert theirs["Q8, no compile vs bf16 eager"] == pytest.approx(9.572 / 16.192)
    assert theirs["Q8 + compile vs bf16 + compile"] == pytest.approx(6.747 / 16.205)
    assert "5d8f310" in rp.EARLIER_WORK_RTX4090["source"]
    fig = rp.plot_ratios({k: {"earlier": theirs[k], "ours": v} for k, v in ours.items()})
    texts = _texts(fig.axes[0])
    assert "not measured" in texts and "0.75x" in texts and _ref_lines(fig.axes[0]) == [1.0]


def test_viz_no_longer_holds_the_old_charts():
    assert not hasattr(viz, "plot_result_tables") and not hasattr(viz, "EARLIER_WORK_RTX4090")
