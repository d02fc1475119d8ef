"""Figures and tables of notebook 06: one committed results file per figure, drawn around the current result.

Every figure here has linear axes that start at zero, the value written next to each bar, a dashed reference
line for the baseline (bf16 + ``torch.compile`` unless told otherwise) and "lower is better" on the value
axis; colours encode the family (bf16, torchao, q8lib) and legends explain them. The style is
:data:`q8lib.tutorial.viz.STYLE`. Nothing here picks files silently: :func:`rank_candidates` shows why a file
is the most complete run of a model, and the notebook names the file it uses.
"""
from __future__ import annotations

import os

import numpy as np

from ..bench.results import provenance, result_tables
from .viz import FONT_SIZE, small_figure

__all__ = [
    "EARLIER_WORK_RTX4090",
    "BASELINES",
    "PROFILE_PARTS",
    "variant_label",
    "step_label",
    "family",
    "timed_variants",
    "ordered",
    "completeness",
    "rank_candidates",
    "history_flag",
    "history_table",
    "plot_variants",
    "plot_time_memory",
    "plot_profile",
    "plot_attention",
    "pipeline_runs",
    "plot_end_to_end",
    "speedup_ratios",
    "earlier_work_ratios",
    "plot_ratios",
]

# The earlier public Q8 work, quoted from the newest revision of its README (not measured by q8lib).
EARLIER_WORK_RTX4090 = {
    "source": "sayakpaul/q8-ltx-video README, 'Performance' table, newest revision "
              "(commit 5d8f31042ab1a170a9374390e5114a586179c862, 'compile updates.', 2025-01-02)",
    "url": "https://github.com/sayakpaul/q8-ltx-video#performance",
    "device": "NVIDIA GeForce RTX 4090 (Ada, sm_89), CUDA 12.6, PyTorch 2.5.1, diffusers 0.33.0.dev0",
    "setting": ("LTXPipeline denoising loop only (benchmark.py: precomputed prompt embeddings, no text encoder, "
                "output_type='latent', so no VAE decode), 81 frames, 480x704, 50 steps, max_sequence_length=512 "
                "per the README; Q8 runs wrap the transformer in q8_kernels' CUDA-graph callable, '+ compile' adds "
                "pipe.transformer.compile()"),
    "memory_note": "memory as stated in the README table; benchmark.py does not record memory, so how it was "
                   "measured is not given; not stated for the compiled runs",
    "results": {
        "bf16": {"time_s": 16.192, "memory_mb": 7172.86},
        "bf16 + compile": {"time_s": 16.205, "memory_mb": None},
        "Q8": {"time_s": 9.572, "memory_mb": 5413.51},
        "Q8 + compile": {"time_s": 6.747, "memory_mb": None},
    },
    "older_revision": "commit 2558983 quoted only the bf16 and Q8 rows (16.192 s and 9.572 s)",
    "note": "quoted from the earlier work; not measured by q8lib",
}

BASELINES = ("bf16", "bf16_compile", "torchao_fp8_compile")  # what a complete run measures next to q8lib
_COLORS = {"bf16": ("0.55", "0.35"), "torchao": ("tab:orange", "tab:brown"), "q8lib": ("tab:blue", "navy")}
_WORDS = {"norot": "no rotation", "fp8attn": "FP8 attention", "fp8tensorattn": "cuDNN FP8 attention",
          "fp8tensorselfattn": "cuDNN FP8 self-attention only", "int8attn": "INT8 attention", "int8": "int8 weights",
          "hb128": "128-block rotation", "compile": "+ compile", "graph": "+ CUDA graph"}


def variant_label(name: str) -> str:
    """A readable label for a benchmark variant name: ``"q8lib_fp8attn_compile_graph"`` becomes
    ``"q8lib, FP8 attention + compile + CUDA graph"``."""
    head, *rest = name.split("_")
    if head == "torchao" and rest[:1] == ["fp8"]:
        head, rest = "torchao fp8", rest[1:]
    mods = [_WORDS.get(t, t) for t in rest if t not in ("compile", "graph")]
    tail = [_WORDS[t] for t in rest if t in ("compile", "graph")]
    return " ".join([head + (", " + ", ".join(mods) if mods else "")] + tail)


def step_label(variant: str) -> str:
    """:func:`variant_label` with ``", eager"`` on variants that are not compiled (tables that list eager and compiled
    variants side by side); a name with a space in it is already a label and comes back as it is."""
    if " " in variant:
        return variant
    text = variant_label(variant)
    return text if "compile" in variant else f"{text}, eager"


def family(name: str) -> str:
    """``"bf16"``, ``"torchao"`` or ``"q8lib"`` (anything else: its first word)."""
    return name.split("_")[0]


def timed_variants(result: dict) -> dict[str, dict]:
    """``{variant: {time_ms, peak_mb, rel_err, profile}}`` of the variants of one transformer results file that
    have a time (failed and skipped variants are left out), in the file's order."""
    raw = result.get("results") or {}
    out = {}
    for row in (result_tables(result).get("") or []):
        if row["time"] is None or row["error"]:
            continue
        scale = 1000.0 if row["time_unit"] == "s" else 1.0
        out[row["variant"]] = dict(time_ms=row["time"] * scale, peak_mb=row["peak_mb"], rel_err=row["rel_err"],
                                   profile=(raw.get(row["variant"]) or {}).get("profile"))
    return out


def ordered(variants: dict) -> list[str]:
    """Variant names for a figure, top to bottom: bf16, then torchao, then q8lib (then anything else), slowest
    first within each family, so the fastest q8lib variant is the last bar."""
    rank = {"bf16": 0, "torchao": 1, "q8lib": 2}
    return sorted(variants, key=lambda n: (rank.get(family(n), 3), -variants[n]["time_ms"]))


def completeness(result: dict) -> dict:
    """How complete one transformer run is: timed variants, profiled ones, failed ones, which of
    :data:`BASELINES` it measured, whether it has a q8lib variant, its date and model."""
    timed = timed_variants(result)
    rows = result_tables(result).get("") or []
    return dict(file=result.get("_file", "?"), date=provenance(result)["date"] or "",
                model=(result.get("shape") or {}).get("model"), device=provenance(result)["device"],
                timed=len(timed), profiled=sum(v["profile"] is not None for v in timed.values()),
                failed=sum(1 for r in rows if r["error"] or r["time"] is None),
                baselines=[b for b in BASELINES if b in timed], q8lib=any(family(v) == "q8lib" for v in timed))


def rank_candidates(results: list[dict], model: str, device: str | None = None) -> list[dict]:
    """:func:`completeness` of every transformer file of ``model`` (and ``device``, a substring), most complete
    first: the most baselines, then every variant profiled, then the most timed variants, then the newest."""
    cands = [completeness(r) for r in results if str(r.get("_file", "")).startswith("transformer_")
             and (r.get("shape") or {}).get("model") == model and (device is None or device in str(r.get("device")))]
    cands = [c for c in cands if c["q8lib"]]
    return sorted(cands, key=lambda c: (len(c["baselines"]), c["profiled"] == c["timed"], c["timed"], c["date"]),
                  reverse=True)


def history_flag(environ=None) -> bool:
    """Whether notebook 06 lists the older results files: ``Q8_SHOW_HISTORY`` set to 1, true or yes."""
    env = os.environ if environ is None else environ
    return str(env.get("Q8_SHOW_HISTORY", "")).strip().lower() in ("1", "true", "yes")


def history_table(results: list[dict], shown: set) -> str:
    """One line per transformer/attention file not in ``shown``: date, device, model or shapes, variants timed
    and failed, and the fastest q8lib variant against the same run's bf16 + compile where there is one."""
    lines = [f"{'file':<40}{'date':<12}{'device':<24}{'timed':>6}{'failed':>7}  fastest q8lib (x bf16 + compile)"]
    for r in results:
        name = str(r.get("_file", ""))
        if name in shown or not name.startswith(("transformer_", "attention_")):
            continue
        tables = result_tables(r)
        rows = [row for t in tables.values() for row in t]
        timed = sum(row["time"] is not None for row in rows)
        failed = sum(row["time"] is None for row in rows)
        best, var = "", timed_variants(r)
        q8 = {k: v for k, v in var.items() if family(k) == "q8lib"}
        if q8 and "bf16_compile" in var:
            k = min(q8, key=lambda n: q8[n]["time_ms"])
            best = f"{k} {q8[k]['time_ms']:.1f} ms ({q8[k]['time_ms'] / var['bf16_compile']['time_ms']:.2f}x)"
        elif name.startswith("attention_"):
            best = f"{len(tables)} attention shapes"
        prov = provenance(r)
        lines.append(f"{name:<40}{str(prov['date'] or '')[:10]:<12}{str(prov['device'] or '?')[:23]:<24}"
                     f"{timed:>6}{failed:>7}  {best}")
    return "\n".join(lines)


def _color(name: str, highlight: str | None) -> str:
    light, dark = _COLORS.get(family(name), ("tab:green", "darkgreen"))
    return dark if name == highlight else light


def _legend_below(fig, handles, ncol: int = 4) -> None:
    """The legend under the axes (never over the bars), then a tight layout that leaves room for it."""
    rows = -(-len(handles) // ncol)
    fig.legend(handles=handles, loc="lower center", ncol=ncol, frameon=False)
    fig.tight_layout(rect=(0, min(0.5, (0.27 * rows + 0.08) / fig.get_figheight()), 1, 1))


def _ref_handle(label: str):
    from matplotlib.lines import Line2D

    return Line2D([], [], color="black", ls="--", lw=1, label=label)


def _family_handles(names) -> list:
    from matplotlib.patches import Patch

    fams = list(dict.fromkeys(family(n) for n in names))
    return [Patch(color=_COLORS.get(f, ("tab:green",))[0], label=f) for f in fams]


def _bars(ax, names, values, fmt, ref_value, colors, xlabel, labels=None):
    y = np.arange(len(names))
    ax.barh(y, values, color=colors, height=0.7)
    top = max(v for v in values if v == v)
    for yi, v in zip(y, values):
        if v == v:
            ax.text(v + top * 0.01, yi, fmt(v), va="center", fontsize=FONT_SIZE)
    if ref_value:
        ax.axvline(ref_value, color="black", ls="--", lw=1)
    ax.set_yticks(y, [(labels or {}).get(n) or variant_label(n) for n in names])
    ax.set_xlim(0, top * 1.45)
    ax.set_xscale("linear")
    ax.set_xlabel(xlabel)


def plot_variants(result: dict, baseline: str = "bf16_compile", variants=None, highlight: str | None = None,
                  title: str | None = None, memory: bool = True, labels: dict | None = None):
    """Horizontal bars of forward time (and, with ``memory``, peak memory) per variant of one transformer
    file; each bar labelled with its value and its ratio to ``baseline``, whose value is the dashed line.
    ``highlight`` draws one variant darker; ``labels`` overrides :func:`variant_label` per variant."""
    var = timed_variants(result)
    names = [n for n in (variants or ordered(var)) if n in var]
    base = var.get(baseline)
    fig, axes = small_figure(ncols=2 if memory else 1, width=5.2, height=0.42 * len(names) + 1.6, sharey=True)
    axes = np.atleast_1d(axes)
    colors = [_color(n, highlight) for n in names]
    bt = base["time_ms"] if base else None

    def fmt_t(v):
        return f"{v:.1f} ms" + (f" ({v / bt:.2f}x)" if bt else "")

    _bars(axes[0], names, [var[n]["time_ms"] for n in names], fmt_t, bt, colors,
          "forward time (ms), lower is better", labels)
    if memory:
        bm = (base or {}).get("peak_mb")
        mems = [(var[n]["peak_mb"] or np.nan) / 1024 for n in names]
        _bars(axes[1], names, mems, lambda v: f"{v:.2f} GiB" + (f" ({v * 1024 / bm:.2f}x)" if bm else ""),
              bm / 1024 if bm else None, colors, "peak GPU memory (GiB), lower is better", labels)
    axes[0].invert_yaxis()  # once: the panels share the y axis
    ref = [_ref_handle(f"{variant_label(baseline)} (reference)")] if base else []
    fig.suptitle(title or result.get("_file", ""))
    _legend_below(fig, _family_handles(names) + ref)
    return fig


def plot_time_memory(result: dict, baseline: str = "bf16_compile", variants=None, title: str | None = None,
                     labels: dict | None = None):
    """Forward time against peak memory, one marker per variant (legend: label, time, memory); the dashed lines
    cross at ``baseline``; down and to the left is better."""
    var = timed_variants(result)
    names = [n for n in (variants or ordered(var)) if n in var and var[n]["peak_mb"]]
    fig, ax = small_figure(width=8.6, height=3.6)
    markers = "osD^vP*Xh<>"
    for i, n in enumerate(names):
        v = var[n]
        ax.scatter(v["peak_mb"] / 1024, v["time_ms"], s=55, marker=markers[i % len(markers)], color=_color(n, None),
                   edgecolor="black", linewidth=0.6,
                   label=f"{(labels or {}).get(n) or variant_label(n)}: {v['time_ms']:.1f} ms, "
                         f"{v['peak_mb'] / 1024:.2f} GiB")
    if baseline in var:
        ax.axvline(var[baseline]["peak_mb"] / 1024, color="black", ls="--", lw=1)
        ax.axhline(var[baseline]["time_ms"], color="black", ls="--", lw=1,
                   label=f"{variant_label(baseline)} (reference)")
    ax.set_xlim(0, max(var[n]["peak_mb"] for n in names) / 1024 * 1.1)
    ax.set_ylim(0, max(var[n]["time_ms"] for n in names) * 1.1)
    ax.set_xlabel("peak GPU memory (GiB), lower is better")
    ax.set_ylabel("forward time (ms), lower is better")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    ax.set_title(title or result.get("_file", ""))
    fig.tight_layout()
    return fig


#: The profile split's parts: (key in a ``profile`` record, legend label, colour).
PROFILE_PARTS = (("gemm_ms", "GEMMs (linears)", "tab:blue"), ("attention_ms", "attention", "tab:purple"),
                 ("glue_ms", "glue (norms, quantization, elementwise)", "tab:olive"),
                 ("host_gap_ms", "host gap (GPU idle, waiting for the host)", "0.8"))


def plot_profile(result: dict, variants=None, baseline: str = "bf16_compile", title: str | None = None):
    """Where the forward time goes: stacked bars of GEMM, attention, glue kernels and host gap (ms) per profiled
    variant, the total written at the end; the dashed line is ``baseline``'s forward time."""
    var = {k: v for k, v in timed_variants(result).items() if v["profile"]}
    names = [n for n in (variants or ordered(var)) if n in var]
    fig, ax = small_figure(width=9.0, height=0.5 * len(names) + 1.9)
    y = np.arange(len(names))
    left = np.zeros(len(names))
    for key, label, color in PROFILE_PARTS:
        vals = np.array([max(var[n]["profile"].get(key, 0.0), 0.0) for n in names])
        ax.barh(y, vals, left=left, color=color, height=0.7, label=label)
        left += vals
    for yi, n, total in zip(y, names, left):
        p = var[n]["profile"]
        ax.text(total + left.max() * 0.01, yi, f"{total:.1f} ms (GEMM {p['gemm_ms']:.1f}, attn {p['attention_ms']:.1f},"
                f" glue {p['glue_ms']:.1f})", va="center", fontsize=FONT_SIZE)
    if baseline in var:
        ax.axvline(var[baseline]["time_ms"], color="black", ls="--", lw=1,
                   label=f"{variant_label(baseline)} forward (reference)")
    ax.set_yticks(y, [variant_label(n) for n in names])
    ax.invert_yaxis()
    ax.set_xlim(0, left.max() * 2.0)
    ax.set_xlabel("GPU time per forward (ms, kernel profile), lower is better")
    ax.set_title(title or result.get("_file", ""))
    _legend_below(fig, ax.get_legend_handles_labels()[0], ncol=3)
    return fig


def _shape_label(name: str, shape) -> str:
    if isinstance(shape, list) and len(shape) == 5:
        b, h, sq, sk, d = shape
        return f"self, {sq} tokens, d={d}" if sq == sk else f"cross, {sq}x{sk} keys, d={d}"
    return name


_ATTN_LABELS = {"q8_fp8_kernel": "FP8 kernel (inputs already quantized)",
                "q8_fp8_op": "FP8 op (quantizes q, k, v too)",
                "q8_int8_kernel": "INT8 kernel (inputs already quantized)",
                "q8_int8_op": "INT8 op (quantizes q, k too)", "sdpa_flash_bf16": "flash SDPA, bf16"}


def plot_attention(result: dict, variants=("q8_fp8_kernel", "q8_fp8_op", "q8_int8_kernel", "q8_int8_op"),
                   baseline: str = "sdpa_cudnn_bf16", title: str | None = None):
    """Attention alone: time of each of ``variants`` as a multiple of ``baseline`` (cuDNN SDPA in bf16, the dashed
    line at 1), one group per attention shape of the file (those with a 5-entry shape), value written per bar."""
    shapes = {k: v for k, v in (result.get("shapes") or {}).items()
              if isinstance(v, dict) and len(v.get("shape") or []) == 5 and baseline in (v.get("results") or {})}
    fig, ax = small_figure(width=8.0, height=0.2 * len(shapes) * (len(variants) + 1) + 1.6)
    colors = {"q8_fp8_kernel": "lightsteelblue", "q8_fp8_op": "tab:blue", "q8_int8_kernel": "thistle",
              "q8_int8_op": "tab:purple", "sdpa_flash_bf16": "0.6"}
    h = 0.8 / len(variants)
    for i, name in enumerate(variants):
        ratios = []
        for s in shapes.values():
            r, b = s["results"].get(name) or {}, s["results"][baseline]
            ratios.append(r["ms"] / b["ms"] if isinstance(r.get("ms"), float) else np.nan)
        y = np.arange(len(shapes)) + i * h
        ax.barh(y, ratios, height=h, color=colors.get(name, f"C{i}"), label=_ATTN_LABELS.get(name, name))
        for yi, v in zip(y, ratios):
            if v == v:
                ax.text(v + 0.02, yi, f"{v:.2f}x", va="center", fontsize=FONT_SIZE)
    ax.axvline(1.0, color="black", ls="--", lw=1, label=f"{baseline} (reference = 1)")
    ax.set_yticks(np.arange(len(shapes)) + 0.4 - h / 2, [_shape_label(k, v["shape"]) for k, v in shapes.items()])
    ax.invert_yaxis()
    ax.set_xlim(0, max(2.0, ax.get_xlim()[1] * 1.15))
    ax.set_xlabel(f"time as a multiple of {baseline}, lower is better")
    ax.set_title(title or result.get("_file", ""))
    _legend_below(fig, ax.get_legend_handles_labels()[0], ncol=2)
    return fig


def pipeline_runs(result: dict) -> dict[str, dict]:
    """The runs of a pipeline-run file as ``{label: {timings, memory}}``: ``{"bf16": ..., "Q8": ...}`` for a
    ``q8lib compare`` file, ``{precision: ...}`` for a ``q8lib generate`` file, ``{}`` otherwise."""
    kind, r = str(result.get("kind", "")), result.get("results") or {}
    if kind.endswith("compare"):
        return {"bf16": r.get("reference") or {}, "Q8": r.get("q8") or {}}
    if kind.endswith("generate"):
        precision = str((result.get("pipeline") or {}).get("precision", "run"))
        return {"Q8" if precision == "q8" else precision: r}
    return {}


def plot_end_to_end(runs: dict, reference: str | None = None, title: str = ""):
    """Whole pipeline runs ``{label: run}`` (runs from :func:`pipeline_runs`): stacked bars of the transformer's
    seconds and the rest of the call (text encoding, VAE decode, scheduler), the total and its ratio to
    ``reference`` written at the end; ``reference``'s total is the dashed line."""
    names = list(runs)
    trans = np.array([runs[n]["timings"]["transformer_s"] for n in names])
    total = np.array([runs[n]["timings"]["end_to_end_s"] for n in names])
    ref = total[names.index(reference)] if reference in runs else None
    fig, ax = small_figure(width=8.0, height=0.5 * len(names) + 1.8)
    y = np.arange(len(names))
    colors = ["tab:blue" if "Q8" in n else "0.55" for n in names]
    ax.barh(y, trans, color=colors, height=0.7)
    ax.barh(y, total - trans, left=trans, color="0.85", height=0.7, hatch="//", edgecolor="0.6")
    for yi, t in zip(y, total):
        ax.text(t + total.max() * 0.01, yi, f"{t:.2f} s" + (f" ({t / ref:.2f}x)" if ref else ""), va="center",
                fontsize=FONT_SIZE)
    if ref:
        ax.axvline(ref, color="black", ls="--", lw=1)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, total.max() * 1.35)
    ax.set_xlabel("seconds per video (whole pipeline call), lower is better")
    from matplotlib.patches import Patch

    extra = [Patch(color="0.55", label="transformer, bf16"), Patch(color="tab:blue", label="transformer, Q8"),
             Patch(facecolor="0.85", hatch="//", edgecolor="0.6", label="rest of the call")]
    ax.set_title(title)
    _legend_below(fig, extra + ([_ref_handle(f"{reference} (reference)")] if ref else []), ncol=2)
    return fig


def speedup_ratios(times: dict) -> dict[str, float | None]:
    """Q8 time over the same project's bf16 time (below 1 is faster) from ``times`` with keys ``"bf16"``,
    ``"bf16 + compile"``, ``"Q8"`` (no torch.compile) and ``"Q8 + compile"`` (any unit, ``None`` when not
    measured): ``"Q8, no compile vs bf16 eager"``, ``"Q8 + compile vs bf16 + compile"`` and
    ``"best Q8 vs bf16 eager"``. The same function serves the earlier work and q8lib, so the ratios match."""
    def q(a, b):
        return times[a] / times[b] if times.get(a) and times.get(b) else None

    q8 = [times[k] for k in ("Q8", "Q8 + compile") if times.get(k)]
    return {"Q8, no compile vs bf16 eager": q("Q8", "bf16"),
            "Q8 + compile vs bf16 + compile": q("Q8 + compile", "bf16 + compile"),
            "best Q8 vs bf16 eager": min(q8) / times["bf16"] if q8 and times.get("bf16") else None}


def earlier_work_ratios(ref: dict | None = None) -> dict[str, float | None]:
    """:func:`speedup_ratios` of the earlier work's quoted times (:data:`EARLIER_WORK_RTX4090` by default)."""
    r = (ref or EARLIER_WORK_RTX4090)["results"]
    return speedup_ratios({k: (v or {}).get("time_s") for k, v in r.items()})


def plot_ratios(table: dict[str, dict[str, float | None]], title: str = ""):
    """Grouped horizontal bars ``{comparison: {source: Q8 time / own bf16 time}}``, the value written per bar,
    the dashed line at 1 (as fast as that source's own bf16); missing values are left out and said so."""
    comps = list(table)
    sources = list(dict.fromkeys(s for row in table.values() for s in row))
    fig, ax = small_figure(width=8.0, height=0.3 * len(comps) * (len(sources) + 1) + 1.6)
    h = 0.8 / max(len(sources), 1)
    for i, s in enumerate(sources):
        vals = [table[c].get(s) for c in comps]
        y = np.arange(len(comps)) + i * h
        ax.barh(y, [np.nan if v is None else v for v in vals], height=h, color=f"C{i}", label=s)
        for yi, v in zip(y, vals):
            ax.text((v or 0) + 0.01, yi, "not measured" if v is None else f"{v:.2f}x", va="center", fontsize=FONT_SIZE)
    ax.axvline(1.0, color="black", ls="--", lw=1, label="own bf16 baseline (= 1)")
    ax.set_yticks(np.arange(len(comps)) + 0.4 - h / 2, comps)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.45)
    ax.set_xlabel("Q8 time / the same project's bf16 time, lower is better")
    ax.set_title(title)
    _legend_below(fig, ax.get_legend_handles_labels()[0], ncol=3)
    return fig
