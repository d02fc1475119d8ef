"""Notebook 08's helpers: the fast path of an 8-bit LTX transformer, eager -> regional compile -> CUDA graph ->
fused kernels, measured live on any device and read from the committed H200 results.

Two halves. **Live** (:func:`time_forward`, :func:`weights_mb`, :func:`live_result`): time a forward on the device
the notebook runs on (CUDA events with warm-up and a median on a GPU, the wall clock on a CPU:
:func:`q8lib.timing.time_ms`) and the GPU memory it adds at its peak, and shape the timings like a benchmark file so
the same figure draws them.
**Committed** (:func:`load`, :func:`ladder`, :func:`milestones`, :func:`profile_rows`, :func:`memory_rows` and the
``plot_*`` functions): the JSON that ``python -m q8lib.bench`` wrote on the H200 (``benchmarks/results/``), drawn in
:data:`q8lib.tutorial.viz.STYLE`: linear axes from zero, the value written on each mark, the bf16 + compile time as
the dashed reference, "lower is better" on the value axis. Nothing in the committed half measures anything.
"""
from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import torch

from ..bench.results import load_result
from ..timing import time_ms
from .results_plots import PROFILE_PARTS, family, step_label, timed_variants
from .viz import FONT_SIZE, small_figure

__all__ = ["STEPS", "LADDERS", "MILESTONES", "PARTS", "label", "load", "weights_mb", "time_forward", "format_times",
           "live_result",
           "ladder", "format_ladders", "plot_steps", "milestones", "format_milestones", "profile_rows",
           "format_profile", "plot_profile_split", "memory_rows", "plot_memory"]

#: The steps of the fast path, left to right in :func:`plot_steps`.
STEPS = ("eager", "+ regional compile", "+ CUDA graph", "+ FP8 attention")
#: The benchmark variant measured at each of :data:`STEPS`, per family (``None``: no such variant).
LADDERS = {
    "bf16": ("bf16", "bf16_compile", "bf16_compile_graph", None),
    "q8lib": ("q8lib", "q8lib_compile", "q8lib_compile_graph", "q8lib_fp8attn_compile_graph"),
}
_LINE = {"bf16": "0.45", "q8lib": "tab:blue"}
PARTS = PROFILE_PARTS  #: the profile split's parts, as notebook 06 draws them
#: What got the milliseconds back, session by session: (results file, variant, session, what changed).
MILESTONES = (
    ("transformer_h100.json", "q8lib", "2 (H100)", "eager: every q8lib kernel launched from Python"),
    ("transformer_h100.json", "q8lib_compile", "2 (H100)", "regional compile; q8lib's kernels opaque to inductor"),
    ("transformer_h100.json", "q8lib_compile_graph", "2 (H100)", "+ the whole forward as one CUDA graph"),
    ("transformer_h200.json", "q8lib", "3 (H200)", "eager, on the H200"),
    ("transformer_h200.json", "q8lib_compile", "3 (H200)", "row kernels as triton_op: inductor launches them"),
    ("transformer_h200.json", "q8lib_compile_graph", "3 (H200)", "+ CUDA graph"),
    ("transformer_h200_s5.json", "q8lib_compile_graph", "5 (H200)", "every kernel a triton_op (GEMM, attention)"),
    ("transformer_h200_s5.json", "q8lib_norot_compile_graph", "5 (H200)", "no Hadamard rotation for e4m3"),
    ("transformer_h200_s7.json", "q8lib_fp8attn_compile_graph", "7 (H200)", "+ q8lib's FP8 attention"),
    ("transformer_h200_s8.json", "q8lib_compile", "8 (H200)", "newest: compile, no graph"),
    ("transformer_h200_s8.json", "q8lib_compile_graph", "8 (H200)", "newest: + CUDA graph"),
)


def label(variant: str) -> str:
    """:func:`~q8lib.tutorial.results_plots.step_label` (kept here for the notebook's calls)."""
    return step_label(variant)


def load(results_dir, names) -> dict[str, dict]:
    """``{file name: results}`` of the files ``names`` in ``results_dir`` (each with ``_file`` set); a missing
    file raises ``FileNotFoundError`` naming it."""
    out = {}
    for name in names:
        result = load_result(Path(results_dir) / name)
        if result is None:
            raise FileNotFoundError(f"{Path(results_dir) / name}: not found (Q8_RESULTS_DIR points elsewhere?)")
        out[name] = dict(result, _file=name)
    return out


# ---- live ------------------------------------------------------------------------------------------------------
def weights_mb(model: torch.nn.Module) -> float:
    """MiB held by ``model``'s parameters and buffers (any device: counted from the tensors, not the allocator)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}.values()
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def time_forward(fn, iters: int = 10, warmup: int = 3) -> dict:
    """Time ``fn()``: ``{"ms": median, "min_ms", "max_ms", "extra_peak_mb"}``. Times come from
    :func:`q8lib.timing.time_ms` (CUDA events after ``warmup`` calls on a GPU, the wall clock on a CPU);
    ``extra_peak_mb`` is the most GPU memory the calls (warm-up included, so a CUDA graph's capture and pool count)
    held above what was allocated before them, ``None`` without a GPU."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    times = time_ms(fn, iters, warmup)
    extra = (torch.cuda.max_memory_allocated() - before) / 2**20 if cuda else None
    return {"ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "extra_peak_mb": extra}


def format_times(times: dict, baseline: str = "bf16_compile") -> str:
    """Timings ``{variant: time_forward(...) or None}`` as a table: median (min-max) ms, the multiple of ``baseline``'s
    time, the extra peak MiB (``-`` without a GPU); ``None`` entries (not run here) say so."""
    base = (times.get(baseline) or {}).get("ms")
    w = max(18, len(baseline) + 4)
    lines = [f"{'variant':<32}{'median ms':>11}{'min-max':>17}{'x ' + baseline:>{w}}{'extra peak MiB':>16}"]
    for v, t in times.items():
        if not t:
            lines.append(f"{label(v):<32}{'not run on this device':>34}")
            continue
        ratio = f"{t['ms'] / base:.2f}x" if base else "-"
        peak = "-" if t["extra_peak_mb"] is None else f"{t['extra_peak_mb']:.0f}"
        lines.append(f"{label(v):<32}{t['ms']:>11.1f}{t['min_ms']:>8.1f} - {t['max_ms']:<6.1f}{ratio:>{w}}{peak:>16}")
    return "\n".join(lines)


def live_result(times: dict, device: str = "") -> dict:
    """Timings ``{variant: time_forward(...)}`` shaped like a benchmark results file (``fwd_ms`` per variant), so
    :func:`ladder` and :func:`plot_steps` draw them like the committed ones."""
    return {"_file": f"this run ({device})" if device else "this run", "device": device,
            "results": {v: {"fwd_ms": t["ms"]} for v, t in times.items() if t}}


# ---- the steps -------------------------------------------------------------------------------------------------
def ladder(results, fam: str) -> list[dict | None]:
    """One entry per step of :data:`STEPS` for family ``fam`` (``"bf16"`` or ``"q8lib"``): ``{"ms", "variant",
    "file"}`` from the first of ``results`` (a results dict or a list of them) that timed that step's variant,
    ``None`` where none did."""
    results = [results] if isinstance(results, dict) else list(results)
    out = []
    for variant in LADDERS[fam]:
        hit = None
        for r in results:
            v = timed_variants(r).get(variant) if variant else None
            if v is not None:
                hit = {"ms": v["time_ms"], "variant": variant, "file": r.get("_file", "")}
                break
        out.append(hit)
    return out


def format_ladders(results) -> str:
    """The two ladders of ``results`` as a table: ms per step, ``-`` where not measured, ``*`` where the time
    comes from another file than the first one."""
    results = [results] if isinstance(results, dict) else list(results)
    first = results[0].get("_file", "")
    lines = [f"{'':<8}" + "".join(f"{s:>22}" for s in STEPS)]
    for fam in LADDERS:
        cells = ["-" if p is None else f"{p['ms']:.1f} ms" + ("*" if p["file"] != first else "") for p in
                 ladder(results, fam)]
        lines.append(f"{fam:<8}" + "".join(f"{c:>22}" for c in cells))
    others = sorted({p["file"] for fam in LADDERS for p in ladder(results, fam) if p and p["file"] != first})
    if others:
        lines.append("* from " + ", ".join(others) + f" (not the same run as {first})")
    return "\n".join(lines)


def plot_steps(panels: dict, title: str | None = None, unit: str = "ms"):
    """The fast path as steps: one panel per ``{title: results or [results, ...]}``, forward time per step of
    :data:`STEPS` for q8lib and bf16 (lines with the value at each point), the panel's bf16 + compile time as the
    dashed line. A point from another file than the panel's first is drawn hollow. Returns the figure."""
    from matplotlib.lines import Line2D

    fig, axes = small_figure(ncols=len(panels), width=4.1, height=3.5, squeeze=False, sharey=True)
    x = np.arange(len(STEPS))
    lads = {name: {fam: ladder(results, fam) for fam in LADDERS} for name, results in panels.items()}
    top = max(p["ms"] for lad in lads.values() for pts in lad.values() for p in pts if p)
    for ax, (name, results) in zip(axes[0], panels.items()):
        lad = lads[name]
        first = (results if isinstance(results, dict) else results[0]).get("_file", "")
        for fam, pts in lad.items():
            xs = [i for i, p in enumerate(pts) if p]
            ax.plot(xs, [pts[i]["ms"] for i in xs], color=_LINE[fam], lw=1.6, zorder=2)
            for i in xs:
                p, own = pts[i], pts[i]["file"] == first
                ax.plot(i, p["ms"], "o", ms=7, color=_LINE[fam], mfc=_LINE[fam] if own else "white", mew=1.6, zorder=3)
                q8 = fam == "q8lib"  # q8lib's values below right of its points, bf16's above left
                ax.text(i + (0.08 if q8 else -0.08), p["ms"] + (-0.05 if q8 else 0.05) * top, f"{p['ms']:.1f}",
                        ha="left" if q8 else "right", va="center", fontsize=FONT_SIZE, color="navy" if q8 else "0.25")
        ref = lad["bf16"][1]
        if ref:
            ax.axhline(ref["ms"], color="black", ls="--", lw=1, zorder=1)
        ax.set_xticks(x, ["\n".join(s.rsplit(" ", 1)) if " " in s else s for s in STEPS])
        ax.set_xlim(-0.75, len(STEPS) - 0.4)
        ax.set_ylim(0, top * 1.12)
        ax.set_title(name)
        ax.grid(axis="y", color="0.9", lw=0.8, zorder=0)
    axes[0][0].set_ylabel(f"forward time ({unit}), lower is better")
    handles = [Line2D([], [], color=_LINE["q8lib"], marker="o", label="q8lib (8-bit)"),
               Line2D([], [], color=_LINE["bf16"], marker="o", label="bf16"),
               Line2D([], [], color="black", ls="--", lw=1, label="bf16 + compile (reference)"),
               Line2D([], [], color="0.3", marker="o", mfc="white", ls="", label="from a later run (see table)")]
    if title:
        fig.suptitle(title)
    fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def milestones(results: dict, rows=MILESTONES) -> list[dict]:
    """The rows of ``rows`` (default :data:`MILESTONES`) whose file is in ``results`` (``{file: results}``) and timed
    the variant: ``session``, ``change``, ``file``, ``variant``, ``ms``, ``bf16_compile_ms`` (the same run's) and
    ``ratio`` (``ms / bf16_compile_ms``; ``None`` without a same-run bf16 + compile)."""
    out = []
    for file, variant, session, change in rows:
        var = timed_variants(results[file]) if file in results else {}
        if variant not in var:
            continue
        base = var.get("bf16_compile", {}).get("time_ms")
        ms = var[variant]["time_ms"]
        out.append(dict(session=session, change=change, file=file, variant=variant, ms=ms, bf16_compile_ms=base,
                        ratio=ms / base if base else None))
    return out


def format_milestones(rows: list[dict]) -> str:
    """:func:`milestones` as a table: session, what changed, forward ms, the same run's bf16 + compile, the ratio."""
    lines = [f"{'session':<10}{'what changed':<52}{'q8lib ms':>9}{'bf16+c ms':>11}{'ratio':>7}  file"]
    for r in rows:
        base = "-" if r["bf16_compile_ms"] is None else f"{r['bf16_compile_ms']:.1f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"{r['session']:<10}{r['change']:<52}{r['ms']:>9.1f}{base:>11}{ratio:>7}  {r['file']}")
    return "\n".join(lines)


# ---- where the time goes ---------------------------------------------------------------------------------------
def profile_rows(result: dict, variants=None) -> list[dict]:
    """One dict per profiled variant of ``result`` (``variants``: these, in this order): ``variant``, ``label``,
    ``fwd_ms`` (the timed median), the :data:`PARTS` in ms (a negative host gap, timing noise, becomes 0),
    ``kernel_ms`` and ``launches`` (kernels per forward)."""
    var = {k: v for k, v in timed_variants(result).items() if v["profile"]}
    rows = []
    for n in (variants or list(var)):
        if n not in var:
            continue
        p = var[n]["profile"]
        row = dict(variant=n, label=label(n), fwd_ms=var[n]["time_ms"], kernel_ms=p.get("kernel_ms"),
                   launches=sum(p.get(f"{f}_launches", 0) for f in ("gemm", "attention", "glue")))
        row.update({key: max(float(p.get(key, 0.0)), 0.0) for key, _, _ in PARTS})
        rows.append(row)
    return rows


def format_profile(rows: list[dict]) -> str:
    """:func:`profile_rows` as a table (ms per part, kernel launches per forward, the forward's median)."""
    head = f"{'variant':<44}{'GEMM':>7}{'attn':>7}{'glue':>7}{'host':>7}{'launches':>10}{'forward':>10}"
    lines = [head]
    for r in rows:
        lines.append(f"{r['label']:<44}{r['gemm_ms']:>7.1f}{r['attention_ms']:>7.1f}{r['glue_ms']:>7.1f}"
                     f"{r['host_gap_ms']:>7.1f}{r['launches']:>10.0f}{r['fwd_ms']:>10.1f}")
    return "\n".join(lines)


def plot_profile_split(panels: dict, baseline: str = "bf16_compile"):
    """Where each forward's time goes: one panel per ``{title: profile_rows(...)}``, a stacked bar per variant
    (:data:`PARTS`, ms, each part's value written where it fits), the total and the kernel launches per forward at
    the end; the dashed line is the panel's ``baseline`` forward time when the panel has it. Returns the figure."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    sizes = [len(rows) for rows in panels.values()]
    fig, axes = small_figure(width=9.4, height=(0.42 * sum(sizes) + 0.75 * len(panels) + 0.9) / len(panels),
                             nrows=len(panels), squeeze=False, sharex=True,
                             gridspec_kw={"height_ratios": [s + 1.2 for s in sizes]})
    top = max(sum(r[k] for k, _, _ in PARTS) for rows in panels.values() for r in rows)
    for ax, (name, rows) in zip(axes[:, 0], panels.items()):
        y = np.arange(len(rows))
        left = np.zeros(len(rows))
        for key, _, color in PARTS:
            vals = np.array([r[key] for r in rows])
            ax.barh(y, vals, left=left, color=color, height=0.7)
            for yi, lo, v in zip(y, left, vals):
                if v >= 0.06 * top:
                    ax.text(lo + v / 2, yi, f"{v:.1f}", ha="center", va="center", fontsize=FONT_SIZE,
                            color="white" if color in ("tab:blue", "tab:purple") else "black")
            left += vals
        for yi, r, total in zip(y, rows, left):
            ax.text(total + top * 0.01, yi, f"{total:.1f} ms, {r['launches']:.0f} launches", va="center",
                    fontsize=FONT_SIZE)
        base = next((r["fwd_ms"] for r in rows if r["variant"] == baseline), None)
        if base:
            ax.axvline(base, color="black", ls="--", lw=1)
        ax.set_yticks(y, [r["label"] for r in rows])
        ax.invert_yaxis()
        ax.set_title(name, loc="left")
    axes[-1, 0].set_xlim(0, top * 1.5)
    axes[-1, 0].set_xlabel("time per forward (ms): kernel profile + host gap, lower is better")
    handles = [Patch(color=c, label=lab) for _, lab, c in PARTS]
    handles.append(Line2D([], [], color="black", ls="--", lw=1, label=f"{label(baseline)} forward (reference)"))
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.75 / fig.get_figheight(), 1, 1))
    return fig


# ---- memory ----------------------------------------------------------------------------------------------------
def memory_rows(result: dict, variants=None, peak_after_capture: bool = False) -> list[dict]:
    """One dict per variant of ``result`` with a peak (``variants``: these, in this order): ``variant``, ``label``,
    ``weights_mb`` (held after the build: weights, inputs, RoPE tables), ``peak_mb`` (the timed forwards' peak),
    ``reserved_mb`` (the allocator's most reserved, CUDA-graph pools included; ``None`` in older files) and
    ``under_reports``: ``True`` for a ``*_graph`` variant when ``peak_after_capture`` (files written before the
    benchmark reset the peak *before* the capture: their graph peaks leave out the activations in the graph's pool)."""
    raw = result.get("results") or {}
    rows = []
    for n in (variants or list(raw)):
        r = raw.get(n) or {}
        if not r.get("peak_mb") or not r.get("weights_mb"):
            continue
        rows.append(dict(variant=n, label=label(n), weights_mb=r["weights_mb"], peak_mb=r["peak_mb"],
                         reserved_mb=r.get("reserved_peak_mb"),
                         under_reports=peak_after_capture and n.endswith("_graph")))
    return rows


def plot_memory(panels: dict):
    """Peak GPU memory per variant, one panel per ``{title: memory_rows(...)}``: the weights (dark) and what the
    forward added at its peak (light), in GiB, the peak written at the end; an under-reporting peak is hatched and
    starred; a black tick marks the allocator's reserved peak where the file has it. Returns the figure."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    sizes = [len(rows) for rows in panels.values()]
    fig, axes = small_figure(width=9.0, height=(0.42 * sum(sizes) + 0.75 * len(panels) + 0.9) / len(panels),
                             nrows=len(panels), squeeze=False, sharex=True,
                             gridspec_kw={"height_ratios": [s + 1.2 for s in sizes]})
    top = max(max(r["peak_mb"], r["reserved_mb"] or 0) for rows in panels.values() for r in rows) / 1024
    for ax, (name, rows) in zip(axes[:, 0], panels.items()):
        y = np.arange(len(rows))
        w = np.array([r["weights_mb"] for r in rows]) / 1024
        extra = np.array([r["peak_mb"] - r["weights_mb"] for r in rows]) / 1024
        colors = [("tab:blue", "lightsteelblue") if family(r["variant"]) == "q8lib" else
                  ("tab:orange", "navajowhite") if family(r["variant"]) == "torchao" else ("0.45", "0.8") for r in rows]
        ax.barh(y, w, color=[c[0] for c in colors], height=0.7)
        bars = ax.barh(y, extra, left=w, color=[c[1] for c in colors], height=0.7)
        for yi, r, bar in zip(y, rows, bars):
            if r["under_reports"]:
                bar.set_hatch("///")
                bar.set_edgecolor("0.3")
            text = f"{r['peak_mb'] / 1024:.2f} GiB" + (" *" if r["under_reports"] else "") + (
                f" (reserved {r['reserved_mb'] / 1024:.2f})" if r["reserved_mb"] else "")
            ax.text(max(r["peak_mb"], r["reserved_mb"] or 0) / 1024 + top * 0.01, yi, text, va="center",
                    fontsize=FONT_SIZE)
            if r["reserved_mb"]:
                ax.plot(r["reserved_mb"] / 1024, yi, marker="|", ms=16, mew=2, color="black")
        ax.set_yticks(y, [r["label"] for r in rows])
        ax.invert_yaxis()
        ax.set_title(name, loc="left")
    axes[-1, 0].set_xlim(0, top * 1.45)
    axes[-1, 0].set_xlabel("GPU memory (GiB), lower is better")
    handles = [Patch(color="0.45", label="weights (+ inputs), held after the build"),
               Patch(color="0.8", label="added by the forward, at its peak"),
               Patch(facecolor="white", edgecolor="0.3", hatch="///", label="* measured after the graph capture: "
                     "under-reports"),
               Line2D([], [], color="black", marker="|", ls="", ms=12, mew=2, label="allocator's reserved peak")]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.75 / fig.get_figheight(), 1, 1))
    return fig
