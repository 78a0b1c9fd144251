"""Plots for `statemesh bench` suites: PNG files drawn headless with matplotlib's Agg backend.

Suites describe *what* to draw (named series of points, or grouped bars) and this module
draws it the same way for every suite: one figure, a title, labelled axes, a legend, a
note line under the title for the run's context (machine, sizes). The `--plot` path is
checked before a suite starts measuring (`check_plot_path`), so a typo costs nothing.

Invariants: the Agg backend is selected before pyplot is imported (no display is ever
needed, nothing opens a window); every figure is closed after saving, so a long run that
draws many plots does not accumulate memory.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Bars",
    "Series",
    "add_plot_argument",
    "bar_plot",
    "check_plot_path",
    "line_plot",
    "plot_path_problem",
    "usage",
]


@dataclass(frozen=True, slots=True)
class Series:
    """One named curve: x and y values of equal length."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]


def usage(suite: str, message: str) -> SystemExit:
    """A usage error for a suite: print one line to stderr, exit status 2."""
    print(f"statemesh bench {suite}: {message}", file=sys.stderr)
    return SystemExit(2)


def add_plot_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """Add `--plot FILE.png` to a suite's parser; `what` says what the picture shows."""
    parser.add_argument("--plot", metavar="FILE.png", default=None, help=f"write a PNG: {what}")


def check_plot_path(suite: str, path: str | None) -> Path | None:
    """Validate `--plot` before measuring: a .png in an existing directory, else exit 2."""
    if path is None:
        return None
    problem = plot_path_problem(path)
    if problem is not None:
        raise usage(suite, problem)
    return Path(path)


def plot_path_problem(path: str) -> str | None:
    """What is wrong with `path` as a `--plot` file (one line), or None if it will do."""
    p = Path(path)
    if p.suffix.lower() != ".png":
        return f"--plot {path!r}: the file name must end in .png"
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        return f"--plot {path!r}: directory {str(parent)!r} does not exist"
    if p.is_dir():
        return f"--plot {path!r} is a directory"
    return None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs or opens a display
    import matplotlib.pyplot as plt

    return plt


def line_plot(
    path: Path,
    series: Sequence[Series],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    note: str = "",
    step: bool = False,
    ylim: tuple[float, float] | None = None,
    logx: bool = False,
    integer_x: bool = False,
) -> None:
    """Draw named curves into one PNG at `path`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    try:
        for s in series:
            if step:
                ax.step(s.xs, s.ys, where="post", label=s.label, linewidth=1.8)
            else:
                ax.plot(s.xs, s.ys, label=s.label, linewidth=1.8, marker=".")
        _decorate(ax, title, xlabel, ylabel, note)
        if ylim is not None:
            ax.set_ylim(*ylim)
        if logx:
            ax.set_xscale("symlog", linthresh=1.0)
        if integer_x:  # counts such as trial numbers: no tick at 2.5
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="best")
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


@dataclass(frozen=True, slots=True)
class Bars:
    """One panel of grouped bars: a set of named bar series over the same group labels."""

    title: str
    groups: Sequence[str]
    bars: Sequence[tuple[str, Sequence[float]]]
    ylabel: str
    log: bool = False
    goal: tuple[str, float] | None = None  # (label, value): a dashed line across the panel


def bar_plot(path: Path, panels: Sequence[Bars], *, title: str, note: str = "") -> None:
    """Draw one or more panels of grouped bars side by side into a PNG at `path`."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 1, 5), dpi=110)
    axes = [axes] if len(panels) == 1 else list(axes)
    try:
        for ax, panel in zip(axes, panels, strict=True):
            n = max(1, len(panel.bars))
            width = 0.8 / n
            for i, (label, values) in enumerate(panel.bars):
                xs = [g + (i - (n - 1) / 2) * width for g in range(len(panel.groups))]
                rects = ax.bar(xs, values, width=width, label=label)
                ax.bar_label(rects, labels=[_short(v) for v in values], fontsize=8, padding=2)
            ax.set_xticks(range(len(panel.groups)), panel.groups, fontsize=8)
            if panel.log:
                ax.set_yscale("log")
            if panel.goal is not None:
                label, value = panel.goal
                ax.axhline(value, color="tab:red", linestyle="--", linewidth=1, label=label)
            ax.margins(y=0.15)
            _decorate(ax, panel.title, "", panel.ylabel, "")
            if len(panel.bars) > 1 or panel.goal is not None:
                ax.legend(loc="best", fontsize=8)
        fig.suptitle(_wrap(title + (f"\n{note}" if note else "")), fontsize=10)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def _decorate(ax, title: str, xlabel: str, ylabel: str, note: str) -> None:
    ax.set_title(_wrap(title + (f"\n{note}" if note else "")), fontsize=10)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def _wrap(text: str, width: int = 95) -> str:
    # Titles carry the run's context; wrap them rather than let the figure crop them.
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def _short(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:,.0f}k"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"
