"""Discovery figures (PNG, matplotlib Agg): the sorted S_img curve with tau, selection frequencies, rank vs IoU."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from localize.headsfile import format_head

__all__ = ["plot_frequency_bars", "plot_rank_iou", "plot_sum_curve"]


def _labels(shape: tuple[int, ...], flat_index: np.ndarray) -> list[str]:
    """``"L14 H24"`` for ``[layers, heads]`` arrays, ``"#i"`` for 1-D ones."""
    if len(shape) == 2:
        return [format_head(np.unravel_index(int(i), shape)) for i in flat_index]
    return [f"#{int(i)}" for i in flat_index]


def _figure(size: tuple[float, float]):
    """A Figure on its own Agg canvas (no pyplot global state, no GUI backend)."""
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=150, format="png")
    return path


def draw_sum_curve(ax, mean_sums, tau: float, method: str = "chord") -> None:
    """Draw heads' mean ``S_img`` sorted ascending on ``ax``, ``tau`` marked with its ``method``."""
    y = np.sort(np.asarray(mean_sums, dtype=np.float64).ravel())
    y = y[np.isfinite(y)]
    kept = int((y >= tau).sum())
    ax.plot(np.arange(y.size), y, lw=1.8, color="tab:blue", label="mean $S_{img}$ per head")
    ax.axhline(
        tau, color="tab:red", ls="--", lw=1.2, label=f"$\\tau$ = {tau:.4g} ({method}): {kept} of {y.size} heads pass"
    )
    if kept:
        knee = y.size - kept
        ax.scatter([knee], [y[knee]], color="tab:red", zorder=3, s=30)
        ax.axvspan(knee, y.size - 1, color="tab:red", alpha=0.08)
    ax.set_title("Attention to the image per head, sorted (criterion 1)")
    ax.set_xlabel("head rank (ascending mean $S_{img}$)")
    ax.set_ylabel("mean attention sum over image tokens, $S_{img}$")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")


def plot_sum_curve(mean_sums, tau: float, path: str | os.PathLike, method: str = "chord") -> Path:
    """Heads' mean ``S_img`` sorted ascending, ``tau`` marked with its ``method`` and the heads passing it."""
    fig, ax = _figure((7, 4.5))
    draw_sum_curve(ax, mean_sums, tau, method)
    return _save(fig, path)


def draw_frequency_bars(ax, frequency, top: int = 20) -> None:
    """Draw bars of the ``top`` most frequently selected heads on ``ax``."""
    freq = np.asarray(frequency, dtype=np.float64)
    flat = freq.ravel()
    order = np.lexsort((np.arange(flat.size), -flat))
    order = order[flat[order] > 0][:top]
    x = np.arange(len(order))
    ax.bar(x, flat[order] * 100, color="tab:blue")
    ax.set_xticks(x, _labels(freq.shape, order), rotation=60, ha="right", fontsize=8)
    ax.set_title(f"Selection frequency, top {len(order)} heads (criterion 2)")
    ax.set_xlabel("head (0-based layer, head)")
    ax.set_ylabel("samples selecting the head (%)")
    ax.grid(axis="y", alpha=0.3)
    if not len(order):
        ax.text(0.5, 0.5, "no head was selected", ha="center", va="center", transform=ax.transAxes)


def plot_frequency_bars(frequency, path: str | os.PathLike, top: int = 20) -> Path:
    """Bars of the ``top`` most frequently selected heads (``[layers, heads]`` -> ``"L14 H24"`` labels)."""
    shown = min(top, int((np.asarray(frequency) > 0).sum()))
    fig, ax = _figure((max(6.0, 0.42 * max(shown, 1) + 2), 4.5))
    draw_frequency_bars(ax, frequency, top)
    return _save(fig, path)


def summary_png(mean_sums, tau: float, method: str, frequency, top: int = 20) -> bytes:
    """The S_img curve and the frequency bars side by side, as PNG bytes (a discovery result's picture)."""
    import io

    fig = Figure(figsize=(13, 4.5))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    draw_sum_curve(left, mean_sums, tau, method)
    draw_frequency_bars(right, frequency, top)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png")
    return buffer.getvalue()


def plot_rank_iou(frequency, mean_iou, rho: float, path: str | os.PathLike, min_frequency: float = 0.01) -> Path:
    """Mean pseudo-mask IoU against selection-frequency rank for heads chosen >= ``min_frequency``."""
    freq = np.asarray(frequency, dtype=np.float64)
    f, iou = freq.ravel(), np.asarray(mean_iou, dtype=np.float64).ravel()
    keep = np.flatnonzero((f >= min_frequency) & np.isfinite(iou))
    keep = keep[np.lexsort((keep, -f[keep]))]  # most frequent first
    rank = np.arange(1, keep.size + 1)
    fig, ax = _figure((7, 4.5))
    ax.scatter(rank, iou[keep], s=22, color="tab:blue")
    for r, i, label in zip(rank[:5], iou[keep][:5], _labels(freq.shape, keep[:5])):
        ax.annotate(label, (r, i), textcoords="offset points", xytext=(4, 4), fontsize=8)
    rho_text = "n/a" if rho is None or not np.isfinite(rho) else f"{rho:.3f}"
    ax.set_title(f"Frequency rank vs pseudo-mask IoU (Spearman $\\rho$ = {rho_text}, n = {keep.size})")
    ax.set_xlabel(f"selection-frequency rank (1 = most frequent; heads chosen for >= {min_frequency:.0%})")
    ax.set_ylabel("mean IoU of (map > mean) with the target")
    ax.grid(alpha=0.3)
    return _save(fig, path)
