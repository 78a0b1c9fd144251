"""The picture of a chaos campaign: its recorded history drawn as a timeline PNG.

`draw_campaign` takes the records the campaign already keeps (fault spans, the impaired
windows, ownership changes, fencings, acknowledgements) and draws two panels sharing one
x axis, seconds since the writers started: above, one row per host with every fault as a
span coloured by kind, every takeover as a marker on the new owner's row (labelled with
its RTO when a kill or freeze of the old owner explains it), false takeovers in red, and
fencings; below, acknowledged writes per second, stacked by commit level. It returns what
it drew (`Drawn`), so a caller or a test can check that nothing was left out.

Every fault, takeover and fencing is drawn, however dense the campaign; only the text
labels are thinned. A ten-minute run has more of them than a row has room for, so they
are placed left to right and one that would print over a placed label (or run past the
axes into the legend) is left out, except "FALSE takeover", which is always written. The
legend carries what the labels no longer can: the count of each fault kind, of takeovers
and fencings, and the median and largest RTO.

Invariants: the picture is a pure function of the records (no clock, no processes); the
Agg backend is selected before pyplot is imported, so no display is needed; the figure is
closed even when saving fails. Nothing here imports `cli` or `benchmarks` (they import us).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.chaos.checker import (
    Ack,
    FaultSpan,
    FaultWindow,
    Fencing,
    OwnerChange,
    level_name,
    takeover_rto_ms,
)
from mesh.chaos.schedule import FAULT_KINDS

__all__ = ["COLOURS", "LEVELS", "Drawn", "draw_campaign", "verdict_text"]

# One colour per fault kind; red is kept for false takeovers so they stand out.
COLOURS = {
    "kill": "#3b3b3b",
    "stop": "#1f77b4",
    "partition": "#ff7f0e",
    "oneway": "#e6b400",
    "loss": "#9467bd",
    "leave": "#2ca02c",
    "disk_full": "#8c564b",
}
LEVELS = ("local", "replicas=1", "replicas=2", "all")
LEVEL_COLOURS = ("#c6dbef", "#6baed6", "#2171b5", "#08306b")
TAKEOVER = "#006d2c"
FALSE = "#d62728"
FENCE = "#7a0177"
# Pixels kept clear between two labels, so that neighbours read as two words.
LABEL_PAD = 3.0


@dataclass(frozen=True)
class Drawn:
    """What `draw_campaign` put in the picture, counted."""

    faults: Mapping[str, int]  # fault spans per kind (a fault on two hosts counts once)
    takeovers: int
    false_takeovers: int
    rto_labels: int
    fencings: int
    acks: Mapping[str, int]  # acknowledged writes per level in the rate panel
    fault_labels: int = 0  # faults whose kind (and detail) is written next to them


def verdict_text(result: Mapping[str, Any]) -> str:
    """`ok`, or which promises the campaign's result says failed."""
    if result.get("ok"):
        return "ok"
    failed = []
    if result.get("acked_lost"):
        failed.append(f"{result['acked_lost']} acked writes lost")
    if not result.get("converged", True):
        failed.append("not converged")
    if result.get("split_brain_after_heal"):
        failed.append(f"{result['split_brain_after_heal']} split brain")
    if result.get("false_takeovers"):
        failed.append(f"{result['false_takeovers']} false takeovers")
    return "FAILED: " + (", ".join(failed) or "see the result")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs or opens a display
    import matplotlib.pyplot as plt

    return plt


class _Labels:
    """Labels on one axes that never print over each other: one with no room is removed."""

    def __init__(self, ax: Any, renderer: Any) -> None:
        self.renderer = renderer
        self.right = ax.get_window_extent(renderer).x1
        self.boxes: list[Any] = []

    def place(self, make: Callable[[], Any], *, always: bool = False) -> bool:
        """Draw the label `make()` returns if it has room (or `always`); whether it stayed."""
        text = make()
        box = text.get_window_extent(self.renderer).padded(LABEL_PAD)
        crowded = box.x1 > self.right + LABEL_PAD or any(box.overlaps(b) for b in self.boxes)
        if crowded and not always:
            text.remove()
            return False
        self.boxes.append(box)
        return True


def _rates(acks: Iterable[Ack], t0: float, seconds: int) -> dict[str, list[int]]:
    """Acknowledged writes per whole second since `t0`, per level, over `seconds` bins."""
    rates = {level: [0] * seconds for level in LEVELS}
    for a in acks:
        name = level_name(a.level)
        row = rates.setdefault(name, [0] * seconds)
        i = int(a.t - t0)
        if 0 <= i < seconds:
            row[i] += 1
    return rates


def draw_campaign(
    path: Path,
    *,
    nodes: Sequence[str],
    t0: float,
    seconds: float,
    spans: Sequence[FaultSpan],
    windows: Sequence[FaultWindow],
    changes: Sequence[OwnerChange],
    fencings: Sequence[Fencing],
    acks: Sequence[Ack],
    false: Collection[OwnerChange] = (),
    title: str = "statemesh chaos",
) -> Drawn:
    """Draw the campaign's history into a PNG at `path`; returns what was drawn."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    plt = _pyplot()
    row = {n: i for i, n in enumerate(nodes)}
    false = set(false)
    # Events before the writers started (setup) are left out; those after the campaign
    # (heal, convergence) stay in, so the end of the story is visible.
    last = max(
        [seconds]
        + [s.end - t0 for s in spans]
        + [c.t - t0 for c in changes]
        + [f.t - t0 for f in fencings]
        + [a.t - t0 for a in acks]
    )
    bins = max(1, math.ceil(last + 1.0))  # a second of margin: markers at the end show whole
    fig, (top, bottom) = plt.subplots(
        2,
        1,
        sharex=True,
        figsize=(12, 2.2 + 0.45 * len(nodes) + 2.6),
        dpi=110,
        gridspec_kw={"height_ratios": [max(2.0, 0.45 * len(nodes) + 0.8), 2.6]},
    )
    try:
        # Labels wait until the layout is final (their room is measured in pixels): each is
        # (x, always, draw, what), and they are placed false takeovers first, then by x.
        labels: list[tuple[float, bool, Callable[[], Any], str]] = []
        faults = dict.fromkeys(FAULT_KINDS, 0)
        for s in spans:
            faults[s.kind] = faults.get(s.kind, 0) + 1
            colour = COLOURS.get(s.kind, "#999999")
            rows = [row[n] for n in s.nodes if n in row]
            for r in rows:
                top.broken_barh(
                    [(s.start - t0, s.end - s.start)],
                    (r - 0.32, 0.64),
                    facecolors=colour,
                    alpha=0.75,
                    edgecolor="none",
                )
            if rows:
                label = s.kind + (f" {s.detail}" if s.detail else "")
                x, y = s.start - t0, min(rows) - 0.38
                labels.append((x, False, _text(top, x, y, label, colour), "fault"))

        taken = 0
        rtos: list[float] = []
        for c in sorted(changes, key=lambda c: c.t):
            if c.owner not in row:
                continue
            x, y = c.t - t0, row[c.owner]
            bad = c in false
            taken += 1
            if c.previous in row:
                # Where the session came from: a thin line from the old owner's row.
                top.plot(
                    [x, x],
                    [row[c.previous], y],
                    color=FALSE if bad else TAKEOVER,
                    linewidth=0.8,
                    linestyle=":",
                    alpha=0.8,
                )
            top.plot(
                x,
                y,
                marker="X" if bad else "^",
                markersize=11 if bad else 8,
                color=FALSE if bad else TAKEOVER,
                linestyle="none",
                zorder=5,
            )
            rto = takeover_rto_ms(c, windows)
            if bad:
                labels.append(
                    (x, True, _note(top, x, y, "FALSE takeover", FALSE, bold=True), "false")
                )
            elif rto is not None:
                rtos.append(rto / 1000.0)
                labels.append(
                    (x, False, _note(top, x, y, f"RTO {rto / 1000:.1f} s", TAKEOVER), "rto")
                )
        fenced = 0
        for f in fencings:
            if f.node in row:
                fenced += 1
                top.plot(
                    f.t - t0,
                    row[f.node],
                    marker="x",
                    markersize=8,
                    color=FENCE,
                    linestyle="none",
                    markeredgewidth=2,
                    zorder=5,
                )

        top.axvline(seconds, color="#777777", linewidth=1, linestyle="--")
        top.text(
            seconds,
            0.02,
            " heal, converge",
            fontsize=7,
            color="#555555",
            va="bottom",
            transform=top.get_xaxis_transform(),  # x in seconds, y a fraction of the panel
        )
        top.set_yticks(range(len(nodes)), nodes)
        top.set_ylim(len(nodes) - 0.5, -0.9)  # p0 on top; room above it for labels
        top.set_ylabel("host")
        top.grid(True, axis="x", alpha=0.3)
        falses = sum(1 for c in changes if c in false and c.owner in row)
        # Counts in the legend: with the labels thinned, it is where the totals are read.
        kinds = [*FAULT_KINDS, *sorted(set(faults) - set(FAULT_KINDS))]
        handles = [
            Patch(facecolor=COLOURS.get(k, "#999999"), alpha=0.75, label=f"{k} ({faults[k]})")
            for k in kinds
        ]
        handles += [
            Line2D(
                [], [], marker="^", color=TAKEOVER, linestyle="none", label=f"takeover ({taken})"
            ),
            Line2D(
                [],
                [],
                marker="X",
                color=FALSE,
                linestyle="none",
                markersize=9,
                label=f"false takeover ({falses})",
            ),
            Line2D(
                [],
                [],
                marker="x",
                color=FENCE,
                linestyle="none",
                markeredgewidth=2,
                label=f"fenced ({fenced})",
            ),
        ]
        if rtos:
            summary = f"RTO median {statistics.median(rtos):.1f} s\nmax {max(rtos):.1f} s"
            handles.append(Line2D([], [], linestyle="none", label=summary))
        top.legend(
            handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False
        )
        top.set_title(title, fontsize=10)

        rates = _rates(acks, t0, bins)
        names = [n for n in LEVELS if n in rates] + sorted(set(rates) - set(LEVELS))
        xs = list(range(bins + 1))
        # stackplot with step="post" needs one more point than bins to draw the last one.
        ys = [rates[n] + rates[n][-1:] for n in names]
        colours = [LEVEL_COLOURS[LEVELS.index(n)] if n in LEVELS else "#cccccc" for n in names]
        bottom.stackplot(xs, *ys, labels=names, colors=colours, step="post", alpha=0.9)
        bottom.axvline(seconds, color="#777777", linewidth=1, linestyle="--")
        for s in spans:
            bottom.axvspan(
                s.start - t0,
                s.end - t0,
                color=COLOURS.get(s.kind, "#999999"),
                alpha=0.08,
                linewidth=0,
            )
        bottom.set_xlim(0, bins)
        bottom.set_xlabel("seconds since the writers started")
        bottom.set_ylabel("acked writes / s")
        bottom.grid(True, alpha=0.3)
        bottom.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8,
            frameon=False,
            title="commit level",
            title_fontsize=8,
        )
        fig.tight_layout()
        # The layout is final (labels stay inside the axes), so pixels measured now are
        # the pixels saved.
        placed = _Labels(top, fig.canvas.get_renderer())
        drawn = {"fault": 0, "rto": 0, "false": 0}
        for _, always, draw, what in sorted(labels, key=lambda item: (not item[1], item[0])):
            drawn[what] += placed.place(draw, always=always)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return Drawn(
        faults=faults,
        takeovers=taken,
        false_takeovers=falses,
        rto_labels=drawn["rto"],
        fencings=fenced,
        acks={n: sum(v) for n, v in rates.items()},
        fault_labels=drawn["fault"],
    )


def _text(ax: Any, x: float, y: float, label: str, colour: str) -> Callable[[], Any]:
    """A fault's label, drawn on call: above its topmost row, starting at the fault."""
    return lambda: ax.text(x, y, label, fontsize=7, va="bottom", ha="left", color=colour)


def _note(
    ax: Any, x: float, y: float, label: str, colour: str, *, bold: bool = False
) -> Callable[[], Any]:
    """A takeover's label, drawn on call: just above and right of its marker."""
    weight = "bold" if bold else "normal"
    return lambda: ax.annotate(
        label,
        (x, y),
        xytext=(4, 6),
        textcoords="offset points",
        fontsize=8 if bold else 7,
        color=colour,
        fontweight=weight,
    )
