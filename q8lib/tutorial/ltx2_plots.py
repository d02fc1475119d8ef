"""Figures and tables of the full-size LTX-2 transformer benchmark for notebook 07 (matplotlib).

Reads the JSON that ``python -m q8lib.bench --config ltx2`` writes (``benchmarks/results/transformer_ltx2_h200.json``
and its ``--profile`` run, ``transformer_ltx2_h200_profile.json``): per variant ``fwd_ms``, ``peak_mb`` and
``weights_mb`` (MiB), ``rel_err_vs_bf16`` and ``audio_rel_err_vs_bf16``, and in the profile file a ``profile`` split
of the forward into GEMM, attention and glue kernels and the host gap between them. Nothing here measures; it draws
what those runs recorded, in :data:`q8lib.tutorial.viz.STYLE`.

A separate module from :mod:`q8lib.tutorial.viz` (which draws notebook 06's generic results files) because these
figures know LTX-2's variants and one caveat of its memory numbers: the ``*_graph`` variants reset the peak after
the CUDA graph capture, so their ``peak_mb`` leaves out the activations held in the graph's memory pool and
under-reports. Memory figures and claims use the variants without a graph (:func:`memory_rows`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .results_plots import step_label
from .viz import small_figure

__all__ = ["LTX2_RESULTS", "LTX2_PROFILE", "GIB", "load_ltx2_results", "label", "time_rows",
           "memory_rows", "format_time_table", "plot_forward_time", "plot_peak_memory", "profile_split",
           "format_profile_table", "top_kernels"]

LTX2_RESULTS = "transformer_ltx2_h200.json"
LTX2_PROFILE = "transformer_ltx2_h200_profile.json"
GIB = 2**30
_COLOURS = {"bf16": "tab:gray", "q8lib": "tab:purple", "torchao": "tab:orange"}


def load_ltx2_results(results_dir) -> tuple[dict, dict | None]:
    """``(results, profile)``: the two JSON files in ``results_dir`` (``profile`` is ``None`` when absent)."""
    d = Path(results_dir)
    results = json.loads((d / LTX2_RESULTS).read_text())
    profile = json.loads((d / LTX2_PROFILE).read_text()) if (d / LTX2_PROFILE).is_file() else None
    return results, profile


def label(variant: str) -> str:
    """A readable name for a benchmark variant (:func:`~q8lib.tutorial.results_plots.step_label`)."""
    return step_label(variant)


def _colour(variant: str) -> str:
    return _COLOURS.get(variant.split("_")[0], "tab:blue")


def time_rows(result: dict, baseline: str = "bf16_compile") -> list[dict]:
    """One dict per variant that has a time, in the file's order: ``variant``, ``label``, ``fwd_ms``, ``speedup``
    (``baseline``'s time / this time), ``rel_err`` and ``audio_rel_err`` (against the bf16 eager forward)."""
    res = result["results"]
    base = res.get(baseline, {}).get("fwd_ms")
    return [dict(variant=v, label=label(v), fwd_ms=r["fwd_ms"], speedup=base / r["fwd_ms"] if base else None,
                 rel_err=r.get("rel_err_vs_bf16"), audio_rel_err=r.get("audio_rel_err_vs_bf16"))
            for v, r in res.items() if r.get("fwd_ms")]


def memory_rows(result: dict) -> list[dict]:
    """One dict per variant without a CUDA graph (module docs: a ``*_graph`` peak under-reports): ``variant``,
    ``label``, ``weights_gib`` (memory held after the build: the weights, plus the inputs) and ``peak_gib`` (the
    peak during the timed forwards), in GiB."""
    return [dict(variant=v, label=label(v), weights_gib=r["weights_mb"] * 2**20 / GIB,
                 peak_gib=r["peak_mb"] * 2**20 / GIB)
            for v, r in result["results"].items() if r.get("peak_mb") and not v.endswith("_graph")]


def format_time_table(result: dict, baseline: str = "bf16_compile") -> str:
    """Time, speed against ``baseline``, peak memory and error per variant. A ``*_graph`` peak from a run before session
    8 (no ``reserved_peak_mb`` recorded) was taken after the graph's capture and is marked as under-reported."""
    res, rows = result["results"], time_rows(result, baseline)
    w = max([len(r["label"]) for r in rows] + [7]) + 2
    lines = [f"{'variant':<{w}}{'fwd ms':>8}{'x ' + baseline:>18}{'peak GiB':>10}{'video err':>11}{'audio err':>11}"]
    starred = False
    for r in rows:
        peak = res[r["variant"]].get("peak_mb")
        star = "*" if r["variant"].endswith("_graph") and "reserved_peak_mb" not in res[r["variant"]] else ""
        starred |= bool(star)
        peak_s = "-" if peak is None else f"{peak * 2**20 / GIB:.1f}" + star
        err = "-" if r["rel_err"] is None else f"{r['rel_err']:.4f}"
        aerr = "-" if r["audio_rel_err"] is None else f"{r['audio_rel_err']:.4f}"
        lines.append(f"{r['label']:<{w}}{r['fwd_ms']:>8.0f}{r['speedup']:>17.2f}x{peak_s:>10}{err:>11}{aerr:>11}")
    if starred:
        lines.append("* peak measured after the CUDA graph capture: the graph pool's activations are not counted")
    return "\n".join(lines)


def _legend_below(ax, handles=None, ncol: int = 2) -> None:
    """The legend under the x-axis label, out of the bars' way."""
    kw = dict(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=ncol, frameon=False)
    ax.legend(handles=handles, **kw) if handles else ax.legend(**kw)


def plot_forward_time(result: dict, baseline: str = "bf16_compile", title: str | None = None):
    """Horizontal bars of one forward's time (ms, linear axis) per variant, each labelled inside with its time and
    its speed against ``baseline``, whose time is drawn as a dashed reference line. Returns the figure."""
    rows = time_rows(result, baseline)
    fig, ax = small_figure(width=7.0, height=0.4 * len(rows) + 1.9)
    y = np.arange(len(rows))[::-1]
    ax.barh(y, [r["fwd_ms"] for r in rows], color=[_colour(r["variant"]) for r in rows], height=0.7)
    for yi, r in zip(y, rows):
        ax.text(r["fwd_ms"] - 10, yi, f"{r['fwd_ms']:.0f} ms, {r['speedup']:.2f}x", va="center", ha="right",
                color="white", fontsize=9, fontweight="bold")
    base = result["results"][baseline]["fwd_ms"]
    ax.axvline(base, color="black", linestyle="--", linewidth=1.2, zorder=0.5,  # behind the bars
               label=f"{label(baseline)} ({base:.0f} ms = 1.00x)")
    ax.set_yticks(y, [r["label"] for r in rows])
    ax.set_xlim(0, max(r["fwd_ms"] for r in rows) * 1.05)
    ax.set_xlabel("one transformer forward (ms), lower is better")
    _legend_below(ax)
    shape = result.get("shape", {})
    ax.set_title(title or f"LTX-2 19B transformer, one {result.get('device', 'GPU')}, random weights\n"
                          f"{shape.get('tokens')} video + {shape.get('audio_tokens')} audio + "
                          f"{shape.get('text_tokens')} text tokens, batch {shape.get('batch')}")
    fig.tight_layout()
    return fig


def plot_peak_memory(result: dict, gpu_gb: float = 24.0, title: str | None = None):
    """Horizontal stacked bars per variant without a CUDA graph (:func:`memory_rows`): the memory held after the
    build (weights) and the rest of the forward's peak (activations), in GiB, with a line at a ``gpu_gb`` GB
    (decimal) GPU's capacity. Returns the figure."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = memory_rows(result)
    fig, ax = small_figure(width=7.0, height=0.4 * len(rows) + 1.9)
    y = np.arange(len(rows))[::-1]
    w = [r["weights_gib"] for r in rows]
    extra = [r["peak_gib"] - r["weights_gib"] for r in rows]
    colours = [_colour(r["variant"]) for r in rows]
    ax.barh(y, w, color=colours, height=0.7)
    ax.barh(y, extra, left=w, color=colours, alpha=0.4, height=0.7)
    for yi, r in zip(y, rows):
        ax.text(0.5, yi, f"{r['weights_gib']:.1f} + {r['peak_gib'] - r['weights_gib']:.1f} = {r['peak_gib']:.1f} GiB",
                va="center", color="white", fontsize=9, fontweight="bold")
    cap = gpu_gb * 1e9 / GIB
    ax.axvline(cap, color="tab:red", linestyle="--", linewidth=1.4, zorder=0.5)
    ax.set_yticks(y, [r["label"] for r in rows])
    ax.set_xlim(0, max(r["peak_gib"] for r in rows) * 1.05)
    ax.set_xlabel("peak GPU memory of one forward (GiB), lower is better")
    _legend_below(ax, [Patch(color="dimgray", label="weights (held after the build)"),
                       Patch(color="dimgray", alpha=0.4, label="activations at the peak"),
                       Line2D([], [], color="tab:red", linestyle="--", label=f"a {gpu_gb:g} GB GPU ({cap:.1f} GiB)")],
                  ncol=2)
    ax.set_title(title or "LTX-2 transformer memory (the variants without a CUDA graph)")
    fig.tight_layout()
    return fig


def profile_split(profile: dict, variant: str) -> dict:
    """``{part: ms}`` of one profiled forward: GEMM, attention and glue kernels, host gap, and the forward."""
    p = profile["results"][variant]["profile"]
    return {"GEMM": p["gemm_ms"], "attention": p["attention_ms"], "glue": p["glue_ms"], "host gap": p["host_gap_ms"],
            "forward": p["fwd_ms"]}


def format_profile_table(profile: dict, variants=("bf16_compile", "q8lib_compile_graph")) -> str:
    """The forward split of ``variants`` side by side: ms and share of the forward per part, kernel launches."""
    splits = {v: profile_split(profile, v) for v in variants}
    res = profile["results"]
    w = max(len(label(v)) for v in variants) + 4
    lines = [f"{'':<12}" + "".join(f"{label(v):>{w}}" for v in variants)]
    for part in ("GEMM", "attention", "glue", "host gap", "forward"):
        cells = []
        for v in variants:
            ms, share = splits[v][part], splits[v][part] / splits[v]["forward"]
            cells.append(f"{ms:>9.0f} ms" + (f" ({share:4.0%})" if part != "forward" else " " * 7))
        lines.append((f"{part:<12}" + "".join(f"{c:>{w}}" for c in cells)).rstrip())
    launches = [sum(res[v]["profile"][f"{k}_launches"] for k in ("gemm", "attention", "glue")) for v in variants]
    glue = [res[v]["profile"]["glue_launches"] for v in variants]
    lines.append(f"{'launches':<12}" + "".join(f"{f'{n:.0f} ({g:.0f} glue)':>{w}}" for n, g in zip(launches, glue)))
    return "\n".join(lines)


def top_kernels(profile: dict, variant: str, family: str | None = None, n: int = 5) -> str:
    """The ``n`` longest kernels of ``variant``'s profiled forward (of one ``family``: ``"gemm"``, ``"attention"``,
    ``"glue"``; default all), one per line with its ms. Names longer than 70 characters are cut."""
    ks = [k for k in profile["results"][variant]["profile"]["top_kernels"] if family in (None, k["family"])]
    return "\n".join(f"{k['ms']:7.1f} ms  {k['family']:<9} {k['name'][:70] + ('...' if len(k['name']) > 70 else '')}"
                     for k in ks[:n])
