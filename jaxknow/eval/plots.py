"""PNG plots for reports: curves over layers (probe accuracy, layer-delta ablation) and loss
curves with marked steps.

Figures are drawn with matplotlib's object API on an Agg canvas, never through pyplot, so no
global backend is set and nothing needs a display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_loss_curve", "plot_per_layer"]


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_per_layer(
    result: Mapping[str, Sequence[float]],
    path: str | Path,
    title: str = "",
    ylabel: str = "accuracy",
    *,
    xlabel: str = "layer",
    x: Sequence[int] | None = None,
    reference: Mapping[str, float] | None = None,
    ylim: tuple[float, float] | None = None,
    bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    log_x: bool = False,
) -> Path:
    """Writes one line per series (values over layers, or over k for ablations) as a PNG and
    returns its path.

    `bands` gives, per series name, (lower, upper) values drawn as a shaded band around the
    line (e.g. a confidence interval).

    `x` gives the abscissae (default 0..n-1). `reference` draws dashed horizontal lines (e.g.
    chance level per attribute), in the colour of the series of the same name when there is one.
    `log_x` puts the abscissa on a log scale (ticks still at the x values, labelled plainly).
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    colours: dict[str, str] = {}
    for name, values in result.items():
        xs = list(x) if x is not None else list(range(len(values)))
        if len(xs) != len(values):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(xs)} x positions")
        (line,) = ax.plot(xs, list(values), marker="o", label=name)
        colours[name] = line.get_color()
        if bands and name in bands:
            low, high = (list(b) for b in bands[name])
            if not len(low) == len(high) == len(values):
                raise ValueError(
                    f"band of {name!r} has {len(low)} / {len(high)} values for {len(values)}"
                )
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    for name, level in (reference or {}).items():
        ax.axhline(
            level,
            linestyle="--",
            linewidth=1,
            color=colours.get(name, "grey"),
            label=f"{name} (chance)" if name in colours else name,
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    n = max((len(v) for v in result.values()), default=0)
    ticks = list(x) if x is not None else list(range(n))
    if log_x:
        ax.set_xscale("log")
        ax.minorticks_off()
    if 0 < len(ticks) <= 40:  # integer ticks: layers and k are discrete
        if len(ticks) > 16 and not log_x:  # every k of a deep model: label every other one
            ticks = ticks[::2] if ticks[-1] in ticks[::2] else [*ticks[::2], ticks[-1]]
        ax.set_xticks(ticks)
        if log_x:
            ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.grid(True, alpha=0.3)
    if result or reference:
        ax.legend(fontsize="small", ncol=2 if len(result) + len(reference or {}) > 8 else 1)
    return _save(fig, path)


def plot_loss_curve(
    steps: Sequence[int],
    losses: Sequence[float],
    path: str | Path,
    markers: Sequence[int] = (),
    title: str = "training loss",
    *,
    ylabel: str = "loss",
    marker_label: str = "reset",
    log_y: bool = False,
) -> Path:
    """Writes the loss curve (loss against step) as a PNG, with a dotted vertical line at each
    step in `markers` (e.g. parameter resets); returns the path."""
    if len(steps) != len(losses):
        raise ValueError(f"{len(steps)} steps but {len(losses)} losses")
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    ax.plot(list(steps), list(losses), linewidth=1.2, label=ylabel)
    for i, m in enumerate(markers):
        ax.axvline(
            m, color="tab:red", linestyle=":", linewidth=1, label=marker_label if i == 0 else None
        )
    if log_y and all(v > 0 for v in losses if not math.isnan(v)):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)
