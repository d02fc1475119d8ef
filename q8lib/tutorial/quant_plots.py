"""Notebook 03's pictures: the Hadamard matrix, activations before and after the rotation, the measured
8-bit errors, and the INT8 / e4m3 value grids. All in :data:`q8lib.tutorial.viz.STYLE` (legends, not text
inside bars); the numbers come from :mod:`q8lib.tutorial.activations`.
"""
from __future__ import annotations

import numpy as np
import torch

from ..hadamard import hadamard_matrix, hadamard_transform
from .activations import e4m3_values, int8_values, short_name
from .viz import small_figure

__all__ = ["plot_hadamard", "plot_channel_max", "plot_value_histogram", "plot_rotation_effect", "plot_error_bars",
           "plot_value_grids"]

PLAIN, ROTATED = "tab:blue", "tab:orange"


def plot_hadamard(n: int = 16, ax=None):
    """The ``n x n`` Sylvester Hadamard matrix as an image: entries times ``√n`` (so ±1) in a diverging
    colormap, with a colorbar and row/column labels. Returns the axes."""
    if ax is None:
        _, ax = small_figure(width=3.6, height=3.1)
    h = (hadamard_matrix(n) * n ** 0.5).numpy()
    im = ax.imshow(h, cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
    ticks = np.arange(0, n, max(1, n // 8))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel("column j (output channel)")
    ax.set_ylabel("row i (input channel)")
    ax.set_title(f"H_{n} · √{n}")
    cbar = ax.figure.colorbar(im, ax=ax, ticks=[-1, 0, 1], fraction=0.046, pad=0.04)
    cbar.set_label("entry · √n")
    return ax


def _np(x) -> np.ndarray:
    return x.detach().float().reshape(-1, x.shape[-1]).cpu().numpy()


def plot_channel_max(x: torch.Tensor, ax=None, title: str | None = None, legend: bool = True):
    """Per-channel ``max |x|`` over the tokens of ``x [tokens, K]``, before and after the Hadamard rotation
    (log y axis; a legend unless ``legend=False``)."""
    if ax is None:
        _, ax = small_figure(width=4.0, height=2.6)
    plain, rotated = _np(x), _np(hadamard_transform(x.float()))
    ax.semilogy(np.abs(plain).max(0), lw=0.8, color=PLAIN, label="plain")
    ax.semilogy(np.abs(rotated).max(0), lw=0.8, color=ROTATED, label="Hadamard-rotated")
    return _label(ax, "channel", "max |x| over tokens", legend, title)


def plot_value_histogram(x: torch.Tensor, ax=None, bins: int = 81, title: str | None = None, legend: bool = True):
    """Histogram of all values of ``x`` before and after the rotation, log count (the tails are what set
    the per-token scale; a legend unless ``legend=False``)."""
    if ax is None:
        _, ax = small_figure(width=4.0, height=2.6)
    plain, rotated = _np(x).ravel(), _np(hadamard_transform(x.float())).ravel()
    lim = float(max(np.abs(plain).max(), np.abs(rotated).max()))
    edges = np.linspace(-lim, lim, bins + 1)
    ax.hist(plain, bins=edges, histtype="step", lw=1.0, color=PLAIN, label="plain")
    ax.hist(rotated, bins=edges, histtype="step", lw=1.0, color=ROTATED, label="Hadamard-rotated")
    ax.set_yscale("log")
    return _label(ax, "value", "count (log)", legend, title)


def _label(ax, xlabel: str, ylabel: str, legend: bool, title: str | None):
    """Axis labels, the legend (unless ``legend=False``) and the title (if any) of one panel."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend:
        ax.legend(loc="best")
    if title:
        ax.set_title(title)
    return ax


def plot_rotation_effect(acts: dict, names=None, width: float = 4.0, height: float = 2.5):
    """One row per activation ``{name: x}`` (or the chosen ``names``): per-channel max |x| (left) and the value
    histogram (right), plain and rotated; one legend for the figure, above the panels. Returns the figure."""
    names = list(acts) if names is None else list(names)
    fig, axes = small_figure(ncols=2, nrows=len(names), width=width, height=height, squeeze=False)
    for row, name in zip(axes, names):
        plot_channel_max(acts[name], ax=row[0], title=f"{short_name(name)}: per-channel max", legend=False)
        plot_value_histogram(acts[name], ax=row[1], title=f"{short_name(name)}: values", legend=False)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (height * len(names))))
    return fig


def plot_error_bars(rows: list[dict], ax=None, title: str | None = None):
    """Grouped bars of :func:`q8lib.tutorial.activations.quantization_errors` rows: relative error (%) plain
    and rotated per (layer, format), each bar labelled with its value above it; legend for the two colours."""
    if ax is None:
        _, ax = small_figure(width=max(5.0, 1.1 * len(rows)), height=3.0)
    pos = np.arange(len(rows))
    labels = ["\n".join(short_name(r["name"]).split(".", 1)) + f"\n{r['format']}" for r in rows]
    for offset, key, color, label in ((-0.2, "plain", PLAIN, "plain"), (0.2, "rotated", ROTATED, "Hadamard-rotated")):
        bars = ax.bar(pos + offset, [100 * r[key] for r in rows], width=0.4, color=color, label=label)
        ax.bar_label(bars, fmt="{:#.3g}", fontsize=8, padding=1)  # as in format_error_table
    ax.set_xticks(pos, labels, fontsize=8)
    ax.set_ylabel("relative error (%)")
    ax.set_ylim(0, 1.18 * max(100 * max(r["plain"], r["rotated"]) for r in rows))
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    if title:
        ax.set_title(title)
    return ax


def plot_value_grids(axes=None):
    """The representable positive values of both formats, each scaled so its largest value is 1 (what a
    per-row scale does). Left: the values as ticks on a log axis (e4m3: 126 values over 2**-9/448 .. 1, eight per
    power of two; INT8: 127 evenly spaced, crowded at the top). Right: the gap to the next value against the value
    (log-log): constant for INT8, doubling each power of two for e4m3. Returns the two axes."""
    if axes is None:
        _, axes = small_figure(ncols=2, width=3.9, height=2.6)
    grids = {"fp8_e4m3": (e4m3_values() / 448.0).numpy(), "int8": (int8_values() / 127.0).numpy()}
    colors = {"fp8_e4m3": "tab:red", "int8": "tab:green"}
    for i, (name, v) in enumerate(grids.items()):
        axes[0].vlines(v, i - 0.35, i + 0.35, lw=0.6, color=colors[name], label=f"{name} ({v.size} values)")
        axes[1].loglog(v[:-1], np.diff(v), marker=".", ms=3, lw=0.8, color=colors[name], label=name)
    axes[0].set_xscale("log")
    axes[0].set_yticks([0, 1], list(grids))
    axes[0].set_ylim(-0.6, 1.6)
    axes[0].set_xlabel("value / largest value")
    axes[0].set_title("positive values (log axis)")
    axes[1].set_xlabel("value / largest value")
    axes[1].set_ylabel("gap to the next value")
    axes[1].set_title("step size")
    axes[1].legend(loc="upper left")
    axes[0].figure.tight_layout()
    return axes
