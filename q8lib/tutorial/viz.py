"""Plots, videos and benchmark tables for the tutorial notebooks (matplotlib, imageio, ipywidgets).

Nothing here computes Q8 math; it draws what the rest of q8lib measured. Every figure is drawn in one
readable style (:data:`STYLE`: :data:`DPI` dots per inch, text of at least 9 pt, legends rather than text
inside bars), which :func:`use_style` installs and :func:`small_figure` applies. Notebook 06's benchmark
figures are in :mod:`q8lib.tutorial.results_plots`.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from ..bench.results import is_pipeline_run, load_results, provenance, result_tables

__all__ = [
    "DPI",
    "FONT_SIZE",
    "STYLE",
    "use_style",
    "small_figure",
    "plot_shares",
    "plot_layer_sqnr",
    "plot_layer_scatter",
    "to_uint8",
    "videos_html",
    "frame_strip",
    "frame_scrubber",
    "load_results",  # q8lib.bench.results, re-exported for the notebooks
    "provenance",
    "describe_result",
    "is_pipeline_run",
    "pipeline_run_summary",
    "judge_summary",
    "result_tables",
    "format_table",
    "versus",
]

DPI = 110  # figure resolution: sharp enough to read at the notebook's width, small enough to commit
FONT_SIZE = 9  # the smallest text in a figure (ticks, legends); titles and labels are one or two points larger
STYLE = {
    "figure.dpi": DPI,
    "font.size": FONT_SIZE + 1,
    "axes.titlesize": FONT_SIZE + 2,
    "axes.labelsize": FONT_SIZE + 1,
    "xtick.labelsize": FONT_SIZE,
    "ytick.labelsize": FONT_SIZE,
    "legend.fontsize": FONT_SIZE,
    "figure.titlesize": FONT_SIZE + 2,
}


def use_style() -> None:
    """Install :data:`STYLE` in matplotlib's ``rcParams`` (every later figure and text of the session uses it)."""
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)


def small_figure(ncols: int = 1, nrows: int = 1, width: float = 4.0, height: float = 2.6, dpi: int = DPI, **kw):
    """``plt.subplots`` in :data:`STYLE` with a given size per panel (inches) at ``dpi`` (default :data:`DPI`)."""
    import matplotlib.pyplot as plt

    use_style()
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), dpi=dpi, **kw)
    return fig, axes


def plot_shares(report, ax=None, title: str | None = None):
    """Horizontal bars: share of parameters and of forward FLOPs per module type (an ``InspectReport``)."""
    if ax is None:
        _, ax = small_figure(width=6.0, height=3.0)
    kinds = sorted(set(report.params) | set(report.flops), key=lambda k: (report.flops.get(k, 0), k))
    y = np.arange(len(kinds))
    p = [100 * report.params.get(k, 0) / max(report.total_params, 1) for k in kinds]
    f = [100 * report.flops.get(k, 0) / max(report.total_flops, 1) for k in kinds]
    ax.barh(y - 0.2, p, height=0.4, label="parameters")
    ax.barh(y + 0.2, f, height=0.4, label="forward FLOPs")
    ax.set_yticks(y, kinds)
    ax.set_xlabel("share of the transformer (%)")
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    return ax


_LAYER_KINDS = (  # (suffix of a converted layer's name, legend label, colour)
    (("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0"), "self-attention linear", "tab:blue"),
    (("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"), "cross-attention linear", "tab:purple"),
    (("ff.net.0", "ff.net.0.proj", "ff.net.2"), "feed-forward linear", "tab:orange"),
    (("norm1", "norm2"), "block norm", "tab:green"),
)


def _layer_kind(name: str) -> tuple[str, str]:
    for suffixes, label, color in _LAYER_KINDS:
        if name.endswith(suffixes):
            return label, color
    return "other", "tab:brown"


def plot_layer_sqnr(sqnr: dict, ax=None, highlight: str | None = None, title: str | None = None):
    """One bar per converted layer (dB), coloured by kind (legend), blocks separated and labelled on the
    x axis; infinite values (bit-exact layers) are drawn hatched at the top of the axis; ``highlight``
    outlines one layer in black."""
    from matplotlib.patches import Patch

    if ax is None:
        _, ax = small_figure(width=7.0, height=2.8)
    names = list(sqnr)
    vals = np.array([sqnr[n] for n in names], dtype=float)
    finite = vals[np.isfinite(vals)]
    top = (finite.max() if finite.size else 0.0) + 5
    kinds = [_layer_kind(n) for n in names]
    x = np.arange(len(names))
    bars = ax.bar(x, np.where(np.isfinite(vals), vals, top), color=[c for _, c in kinds], width=0.8)
    for bar, v in zip(bars, vals):
        if not np.isfinite(v):
            bar.set_hatch("///")
            bar.set_alpha(0.45)
    if highlight in sqnr:
        bars[names.index(highlight)].set_edgecolor("black")
        bars[names.index(highlight)].set_linewidth(1.5)
    blocks = [n.split(".")[1] if n.startswith("transformer_blocks.") else "" for n in names]
    starts = [i for i, b in enumerate(blocks) if i == 0 or b != blocks[i - 1]]
    for i in starts[1:]:
        ax.axvline(i - 0.5, color="0.6", lw=0.8)
    ends = starts[1:] + [len(names)]
    ax.set_xticks([(s + e - 1) / 2 for s, e in zip(starts, ends)],
                  [f"block {blocks[s]}" if blocks[s] else "" for s in starts])
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("SQNR (dB)")
    legend = [Patch(color=c, label=l) for l, c in dict(kinds).items()]
    if not np.all(np.isfinite(vals)):
        legend.append(Patch(facecolor="white", edgecolor="0.4", hatch="///", label="bit-exact (∞ dB)"))
    if highlight in sqnr:
        legend.append(Patch(facecolor="white", edgecolor="black", linewidth=1.5,
                            label=highlight.replace("transformer_blocks.", "block ")))
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    if title:
        ax.set_title(title)
    return ax


def plot_layer_scatter(ref, q8, ax=None, title: str | None = None, max_points: int = 1500):
    """Scatter of Q8 output values against the reference output values of one layer (evenly
    subsampled to ``max_points``), with the identity line."""
    if ax is None:
        _, ax = small_figure(width=3.2, height=3.0)
    r = ref.detach().float().flatten().cpu().numpy()
    q = q8.detach().float().flatten().cpu().numpy()
    step = max(1, r.size // max_points)
    r, q = r[::step], q[::step]
    lo, hi = float(min(r.min(), q.min())), float(max(r.max(), q.max()))
    ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8)
    ax.scatter(r, q, s=2, alpha=0.5)
    ax.set_xlabel("reference output")
    ax.set_ylabel("Q8 output")
    if title:
        ax.set_title(title)
    return ax


def to_uint8(frames) -> np.ndarray:
    """Video frames as uint8 ``[T, H, W, C]``: accepts q8lib's ``[T, C, H, W]`` float tensors in ``[0, 1]``
    (what ``LTXPipeline`` returns with ``output_type="pt"``), float ``[T, H, W, C]`` arrays, or uint8."""
    a = frames.detach().float().cpu().numpy() if hasattr(frames, "detach") else np.asarray(frames)
    if a.ndim == 4 and a.shape[1] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(0, 2, 3, 1)
    if a.dtype == np.uint8:
        return a
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def videos_html(videos: dict, width: int = 192, max_mb: float = 4.0):
    """Side-by-side looping HTML5 videos from mp4 files ``{label: path}`` (e.g. written by
    :func:`q8lib.app.video.write_video`), embedded inline.

    Returns an ``IPython.display.HTML``. The bytes go into the notebook (base64: a third more), so at most ``max_mb``
    MiB of files are embedded, in order; a clip that would pass that (full-size clips, and random-weight videos:
    noise does not compress) is named with its size instead. (Notebook 05's GPU run embedded three clips of ~5 MiB
    each as one 20 MB output, which the executor then dropped whole.)
    """
    from IPython.display import HTML

    cells, embedded = [], 0
    for label, path in videos.items():
        size = Path(path).stat().st_size
        if embedded + size > max_mb * 2**20:
            cells.append(f'<figure style="display:inline-block;margin:4px;text-align:center"><code>{Path(path).name}'
                         f"</code> ({size / 2**20:.0f} MiB, past the {max_mb:g} MiB embedded inline: open the file)"
                         f"<figcaption>{label}</figcaption></figure>")
            continue
        embedded += size
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        cells.append(
            f'<figure style="display:inline-block;margin:4px;text-align:center">'
            f'<video width="{width}" autoplay loop muted playsinline controls style="image-rendering:pixelated">'
            f'<source src="data:video/mp4;base64,{data}" type="video/mp4"></video>'
            f"<figcaption>{label}</figcaption></figure>"
        )
    return HTML("<div>" + "".join(cells) + "</div>")


def frame_strip(videos: dict, n: int = 5, title: str | None = None):
    """A grid: one row per video ``{label: frames}``, ``n`` evenly spaced frames per row."""
    import matplotlib.pyplot as plt

    use_style()
    first = next(iter(videos.values()))
    T = len(first)
    idx = np.linspace(0, T - 1, min(n, T)).round().astype(int)
    fig, axes = plt.subplots(len(videos), len(idx), figsize=(1.3 * len(idx), 1.4 * len(videos)), dpi=DPI,
                             squeeze=False)
    for r, (label, frames) in enumerate(videos.items()):
        frames = to_uint8(frames)
        for c, t in enumerate(idx):
            ax = axes[r, c]
            ax.imshow(frames[t], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label)
            if r == len(videos) - 1:
                ax.set_xlabel(f"frame {t}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _display_size(frames: np.ndarray, max_side: int = 256) -> np.ndarray:
    """``[T, H, W, C]`` uint8 frames every ``k``-th pixel so the longer side is at most ``max_side``: what a
    2.2-inch panel at :data:`DPI` shows anyway."""
    k = -(-max(frames.shape[1:3]) // max_side)
    return frames[:, ::k, ::k] if k > 1 else frames


def frame_scrubber(videos: dict):
    """An ipywidgets slider that shows frame ``t`` of every video ``{label: frames}`` side by side."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    use_style()
    vids = {k: _display_size(to_uint8(v)) for k, v in videos.items()}
    T = min(len(v) for v in vids.values())

    def show(frame=0):
        fig, axes = plt.subplots(1, len(vids), figsize=(2.2 * len(vids), 2.4), dpi=DPI, squeeze=False)
        for ax, (label, v) in zip(axes[0], vids.items()):
            ax.imshow(v[frame], interpolation="nearest")
            ax.set_title(f"{label}, frame {frame}")
            ax.axis("off")
        plt.show()

    return widgets.interactive(show, frame=widgets.IntSlider(min=0, max=T - 1, step=1, value=0,
                                                               description="frame"))


# ------------------------------------------------------------------------------------------------
# Benchmarks (notebook 06's figures are in q8lib.tutorial.results_plots)
def describe_result(result: dict) -> str:
    """A header per results file: file, device, date, main versions and the benchmarked shape."""
    if "_error" in result:
        return f"{result.get('_file', '?')}: unreadable ({result['_error']})"
    prov = provenance(result)
    versions = prov["versions"] or {}
    vers = ", ".join(f"{k} {versions[k]}" for k in ("torch", "triton", "diffusers", "cuda") if versions.get(k))
    shape = result.get("shape")
    lines = [f"{result.get('_file', '?')}: {prov['device'] or 'unknown device'}"
             + (f" ({result['capability']})" if result.get("capability") else "")
             + f", {prov['date'] or 'undated'}"]
    if vers:
        lines.append(f"  versions: {vers}")
    if shape:
        lines.append(f"  shape: {json.dumps(shape)}")
    if isinstance(result.get("timing"), str):
        lines.append(f"  timing: {result['timing']}")
    return "\n".join(lines)


def judge_summary(result: dict) -> str:
    """Plain-text summary of a ``judge_*.json`` file: per Q8 variant, how often the judge's reading of the Q8
    video agrees with the caption and with the bf16 video, and PSNR/SSIM against the bf16 video."""
    s = result.get("summary") or {}
    gen = (result.get("meta") or {}).get("generation") or {}
    lines = []
    if gen:
        lines.append("generation: " + ", ".join(f"{k}={v}" for k, v in gen.items()))
    if "num_clips" in s:
        lines.append(f"{s['num_clips']} clips ({s.get('num_prompts', '?')} prompts x {s.get('seeds_per_prompt', '?')} seeds)")
    ref = s.get("reference_vs_caption")
    if isinstance(ref, dict):
        lines.append(f"{'reference (bf16)':<18} agrees with caption {ref.get('all', float('nan')):.1%}")
    variants = [k for k, v in s.items() if isinstance(v, dict) and "vs_reference" in v]
    if variants:
        lines.append(f"{'variant':<18}{'vs caption':>11}{'vs bf16':>9}{'PSNR mean/min (dB)':>21}{'SSIM mean/min':>16}")
    for k in variants:
        v = s[k]
        lines.append(f"{k:<18}{v['vs_caption'].get('all', float('nan')):>11.1%}{v['vs_reference'].get('all', float('nan')):>9.1%}"
                     f"{v.get('psnr_db_mean', float('nan')):>12.1f} / {v.get('psnr_db_min', float('nan')):<6.1f}"
                     f"{v.get('ssim_mean', float('nan')):>9.3f} / {v.get('ssim_min', float('nan')):.3f}")
    return "\n".join(lines) if lines else "(no summary in this file)"


def _run_line(label: str, run: dict) -> str:
    t, m = run.get("timings") or {}, run.get("memory") or {}

    def g(d, k, fmt):
        return format(d[k], fmt) if isinstance(d.get(k), (int, float)) else "-"

    return (f"{label:<8}{g(t, 'end_to_end_s', '.2f'):>11}{g(t, 'transformer_s', '.2f'):>17}"
            f"{g(t, 'transformer_forward_ms', '.1f'):>14}{g(m, 'peak_gib', '.2f'):>10}{g(m, 'transformer_weights_gib', '.2f'):>13}")


def pipeline_run_summary(result: dict) -> str:
    """Plain-text summary of a pipeline-run file (see :func:`is_pipeline_run`): model, settings, time and
    memory per run; for ``compare`` files both runs, the speed-up and PSNR/SSIM between the two videos."""
    kind = str(result.get("kind", ""))
    pipe, settings, r = result.get("pipeline") or {}, result.get("settings") or {}, result.get("results") or {}
    lines = []
    if pipe:
        lines.append("pipeline: " + ", ".join(f"{k}={pipe[k]}" for k in ("model", "precision", "backend", "weight_dtype",
                                                                         "attention", "dtype") if k in pipe))
    if settings:
        lines.append("settings: " + ", ".join(f"{k}={settings[k]}" for k in ("num_frames", "height", "width",
                                                                         "num_inference_steps", "guidance_scale")
                                              if k in settings))
    header = f"{'run':<8}{'total (s)':>11}{'transformer (s)':>17}{'forward (ms)':>14}{'peak GiB':>10}{'weights GiB':>13}"
    if kind.endswith("compare"):
        lines += [header, _run_line("bf16", r.get("reference") or {}), _run_line("Q8", r.get("q8") or {})]
        sp, mt = r.get("speedup") or {}, r.get("metrics") or {}
        if sp:
            lines.append("Q8 speed vs bf16: " + ", ".join(f"{k} {v:.2f}x" for k, v in sp.items()))
        if mt:
            lines.append(f"Q8 vs bf16 video: PSNR mean {mt.get('psnr_db_mean', float('nan')):.1f} dB "
                         f"(min {mt.get('psnr_db_min', float('nan')):.1f}), SSIM mean {mt.get('ssim_mean', float('nan')):.4f}")
    elif kind.endswith("generate"):
        lines += [header, _run_line(str(pipe.get("precision", "run")), r)]
    elif kind.endswith("memory"):
        keys = ("model", "precision", "weight_dtype", "params", "weights_gib", "peak_gib", "limit_gib", "fits",
                "forward_ms_median")
        lines.append(", ".join(f"{k}={r[k]:.4g}" if isinstance(r.get(k), float) else f"{k}={r[k]}" for k in keys if k in r))
    return "\n".join(lines) if lines else "(nothing to summarise)"


def _fmt(v, kind: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if kind == "cos":
            return f"{v:.5f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.3g}"
    return str(v)


def format_table(rows: list[dict]) -> str:
    """Plain-text table of :func:`result_tables` rows (3 significant digits, cosine to 5 decimals)."""
    out = [f"{'variant':<28}{'time':>12}{'peak MB':>10}{'TFLOP/s':>9}{'rel err':>9}{'cos':>9}"]
    for r in rows:
        if r["error"] and r["time"] is None:
            out.append(f"{r['variant']:<28}{'(failed: see the file)':>49}")
            continue
        t = "-" if r["time"] is None else f"{r['time']:.3g} {r['time_unit']}"
        out.append(f"{r['variant']:<28}{t:>12}{_fmt(r['peak_mb']):>10}{_fmt(r['tflops']):>9}"
                   f"{_fmt(r['rel_err']):>9}{_fmt(r['cos'], 'cos'):>9}")
    return "\n".join(out)


def versus(rows: list[dict], time_baseline: str, memory_baseline: str | None = None) -> str:
    """One line per variant: its speed relative to ``time_baseline`` (>1 is faster) and its peak memory as
    a share of ``memory_baseline``'s (default: the same baseline). '' if the baseline has no time."""
    by = {r["variant"]: r for r in rows}
    base_t = (by.get(time_baseline) or {}).get("time")
    base_m = (by.get(memory_baseline or time_baseline) or {}).get("peak_mb")
    if not base_t:
        return ""
    out = []
    for r in rows:
        if r["time"] is None:
            continue
        line = f"{r['variant']:<28}{base_t / r['time']:>6.2f}x the speed of {time_baseline}"
        if base_m and r["peak_mb"]:
            line += f", {r['peak_mb'] / base_m:>4.0%} of the peak memory of {memory_baseline or time_baseline}"
        out.append(line)
    return "\n".join(out)
