"""Notebook 07's helpers: the LTX-2 block layout (:func:`q8lib.inspection.ltx2_layout`) and the LTX-2 benchmark
figures and tables (:mod:`q8lib.tutorial.ltx2_plots`), on tiny models and a synthetic results file."""
import json

import pytest
import torch

import q8lib
from q8lib.errors import UnsupportedModelError
from q8lib.inspection import LTX2_BLOCK_PARTS, ltx2_layout
from q8lib.models import LTX2_TINY_CONFIG

GATED = dict(gated_attn=True, audio_gated_attn=True)


def _meta(config):
    from q8lib.bench.build import meta_transformer

    return meta_transformer(config)


def test_layout_of_a_tiny_ltx2_block():
    layout = ltx2_layout(_meta(LTX2_TINY_CONFIG))
    layers = LTX2_TINY_CONFIG["num_layers"]
    assert layout.num_layers == layers
    assert layout.converted_by_kind() == {"attention linears": 24 * layers,
                                          "FFN up-projections (GELU fused in)": 2 * layers,
                                          "FFN down-projections": 2 * layers, "block norms": 8 * layers}
    rows = {r["part"]: r for r in layout.rows}
    assert list(rows)[:8] == list(LTX2_BLOCK_PARTS)
    for part in list(LTX2_BLOCK_PARTS)[:6]:
        assert rows[part]["q8"] == ["to_q", "to_k", "to_v", "to_out.0"] and rows[part]["kept"] == ["norm_q", "norm_k"]
    assert rows["ff"]["q8"] == ["net.0", "net.2"] and rows["8 block norms"]["q8"] == ["all 8"]
    assert rows["block tables"]["kept"] == ["4 tables"]
    assert not any(k.startswith("transformer_blocks.") for k in layout.kept_linears)
    assert {"proj_in", "audio_proj_in", "proj_out", "audio_proj_out"} <= set(layout.kept_linears)
    model = _meta(LTX2_TINY_CONFIG)
    assert sum(layout.params.values()) == sum(p.numel() for p in model.parameters())
    text = layout.block_table() + "\n" + layout.summary()
    assert f"{len(layout.converted)} modules = {layers} blocks x 36" in text and "0 inside them" in text


def test_layout_keeps_the_gates_and_follows_the_config():
    layout = ltx2_layout(_meta(dict(LTX2_TINY_CONFIG, **GATED)))
    gates = [k for k in layout.kept_linears if k.startswith("transformer_blocks.")]
    assert len(gates) == 6 * LTX2_TINY_CONFIG["num_layers"] and all(k.endswith("to_gate_logits") for k in gates)
    assert "(to_gate_logits)" in layout.summary()
    assert rows_kept(layout, "attn1") == ["to_gate_logits", "norm_q", "norm_k"]
    # a keep list of one's own: the FFNs stay too
    own = q8lib.Q8Config(keep_high_precision=q8lib.KEEP_HIGH_PRECISION_LTX2 + ("ff", "audio_ff"))
    layout = ltx2_layout(_meta(LTX2_TINY_CONFIG), own)
    assert "FFN down-projections" not in layout.converted_by_kind()
    assert rows_kept(layout, "ff") == ["net.0.proj", "net.2"]


def rows_kept(layout, part):
    return next(r["kept"] for r in layout.rows if r["part"] == part)


def test_layout_of_a_converted_model_is_the_layout_before():
    from q8lib.bench.build import build_transformer

    model = build_transformer(LTX2_TINY_CONFIG, "cpu", torch.float32)
    before = ltx2_layout(model)
    after = ltx2_layout(q8lib.quantize_(model, progress=False))
    assert (after.converted, after.kept_linears, after.params, after.rows) == (
        before.converted, before.kept_linears, before.params, before.rows)


def test_layout_refuses_ltx1():
    from q8lib.tiny.components import TINY_TRANSFORMER_CONFIG

    with pytest.raises(UnsupportedModelError, match="inspect_transformer"):
        ltx2_layout(_meta(TINY_TRANSFORMER_CONFIG))


# ---- q8lib.tutorial.ltx2_plots ------------------------------------------------------------------
def _run(ms, peak, weights=1000.0, err=0.02):
    return {"fwd_ms": ms, "peak_mb": peak, "weights_mb": weights, "rel_err_vs_bf16": err, "audio_rel_err_vs_bf16": err}


@pytest.fixture
def results(tmp_path):
    from q8lib.tutorial import ltx2_plots as lp

    res = {"device": "GPU", "shape": {"tokens": 6, "audio_tokens": 2, "text_tokens": 4, "batch": 2},
           "results": {"bf16": _run(900.0, 3000.0, 2000.0, 0.0), "bf16_compile": _run(600.0, 2900.0, 2000.0),
                       "q8lib_compile": _run(400.0, 1500.0), "q8lib_compile_graph": _run(390.0, 1100.0),
                       "skipped": {"skipped": "why"}}}
    split = {"gemm_ms": 60.0, "attention_ms": 20.0, "glue_ms": 15.0, "host_gap_ms": 5.0, "fwd_ms": 100.0,
             "gemm_launches": 10.0, "attention_launches": 2.0, "glue_launches": 30.0,
             "top_kernels": [{"name": "gemm_kernel", "ms": 60.0, "family": "gemm"},
                             {"name": "g" * 80, "ms": 9.0, "family": "glue"},
                             {"name": "quant", "ms": 6.0, "family": "glue"}]}
    prof = {"results": {"bf16_compile": {"profile": split},
                        "q8lib_compile_graph": {"profile": dict(split, gemm_ms=30.0)}}}
    (tmp_path / lp.LTX2_RESULTS).write_text(json.dumps(res))
    (tmp_path / lp.LTX2_PROFILE).write_text(json.dumps(prof))
    return lp.load_ltx2_results(tmp_path)


def test_rows_and_tables(results, tmp_path):
    from q8lib.tutorial import ltx2_plots as lp

    res, prof = results
    rows = lp.time_rows(res)
    assert [r["variant"] for r in rows] == ["bf16", "bf16_compile", "q8lib_compile", "q8lib_compile_graph"]
    assert rows[2]["speedup"] == pytest.approx(1.5) and rows[1]["label"] == "bf16 + compile"
    mem = lp.memory_rows(res)
    assert [r["variant"] for r in mem] == ["bf16", "bf16_compile", "q8lib_compile"]  # no *_graph: under-reported
    assert mem[2]["peak_gib"] == pytest.approx(1500 / 1024)
    table = lp.format_time_table(res)
    assert "1.1*" in table and "not counted" in table and "1.50x" in table
    res["results"]["q8lib_compile_graph"]["reserved_peak_mb"] = 1200  # session 8 on: peak taken before the capture
    table = lp.format_time_table(res)
    assert "*" not in table and "not counted" not in table
    ptable = lp.format_profile_table(prof).splitlines()
    assert ptable[1].split()[:3] == ["GEMM", "60", "ms"] and "30 ms ( 30%)" in ptable[1]
    assert "42 (30 glue)" in ptable[-1]
    assert lp.profile_split(prof, "bf16_compile")["host gap"] == 5.0
    top = lp.top_kernels(prof, "bf16_compile", "glue", n=1)
    assert top.endswith("g" * 70 + "...") and "quant" not in top
    (tmp_path / lp.LTX2_PROFILE).unlink()
    assert lp.load_ltx2_results(tmp_path)[1] is None


def test_figures(results):
    import matplotlib

    matplotlib.use("Agg")
    from q8lib.tutorial import ltx2_plots as lp
    from q8lib.tutorial.viz import DPI

    res, _ = results
    fig = lp.plot_forward_time(res)
    ax = fig.axes[0]
    assert len(ax.patches) == 4 and fig.dpi >= DPI and ax.get_xscale() == "linear"
    assert "lower is better" in ax.get_xlabel() and any("600 ms" in t.get_text() for t in ax.get_legend().get_texts())
    assert [t.get_text() for t in ax.texts][2] == "400 ms, 1.50x"
    fig = lp.plot_peak_memory(res, gpu_gb=24)
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * 3  # weights + activations for the three variants without a graph
    assert any("24 GB GPU (22.4 GiB)" in t.get_text() for t in ax.get_legend().get_texts())
    assert all(t.get_fontsize() >= 8 for t in ax.texts)
