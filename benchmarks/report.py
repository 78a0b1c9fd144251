"""`statemesh bench all`: every suite in one run, and one table of figures against goals.

The job: run each benchmark suite in turn in this process, record its result (or its
one-line error), and write `DIR/results.json` (every result plus the machine it ran on)
and `DIR/results.md` (one markdown table: a row per headline figure, next to the baseline
measured in the same run, the issue's goal, and whether it was met). The README's figures
come from that one table instead of being stitched from separate runs.

Invariants: each suite's arguments come from its own `add_arguments` and `parse_args`, so
its defaults live in one place and `--quick` only overrides sizes; a suite that fails
(exception or usage error) never stops the others and is recorded with its error; every
goal is defined once, in `GOALS`, and a missing figure is reported as missing, never met.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import io
import json
import math
import operator
import os
import platform
import re
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from benchmarks._progress import note
from benchmarks.throughput import REPLICATED_GOAL_RATIO

__all__ = [
    "GOALS",
    "QUICK",
    "Goal",
    "Row",
    "SuiteOutcome",
    "build_rows",
    "machine_info",
    "render_markdown",
    "run_all",
    "run_suite",
    "suite_argv",
]

SUITE = "all"

# Smaller sizes for a smoke run. Sizes a goal is stated for (50 peers, 10,000 documents)
# are kept, so even a quick table checks the real goal; convergence keeps its whole burst
# because its bytes ratio grows as the burst shrinks (fixed costs weigh more).
QUICK: dict[str, list[str]] = {
    "storage": ["--updates", "100000", "--writes", "4000", "--rounds", "2"],
    "crash": ["--trials", "4"],
    "throughput": ["--ops", "512", "--raw-ops", "20000"],
    "convergence": [],
    "failover": ["--trials", "3"],
    "wire": ["--updates", "40", "--idle-seconds", "10"],
}

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}


@dataclass(frozen=True, slots=True)
class Goal:
    """One headline figure of a suite and the goal it is held to.

    `value`, `baseline`, `ratio` and `target_key` are dotted keys into the suite's result.
    The goal is checked on the ratio when the goal names one, else on the value. The target is
    `target`, or the result's `target_key` when the suite computes it (it depends on size).
    """

    suite: str
    figure: str
    value: str
    op: str
    target: float | None = None
    target_key: str | None = None
    baseline: str | None = None
    baseline_label: str = ""
    ratio: str | None = None
    goal_text: str = ""
    context: str = ""


# Goals of issue 7 (benchmarks) and the foundation issue, each defined here and only here.
GOALS: tuple[Goal, ...] = (
    Goal("storage", "durable writes/s (fsync, group commit)", "durable_ops_per_s", ">=", 0.5,
         baseline="raw_ops_per_s", baseline_label="raw pycrdt writes/s", ratio="ratio",
         goal_text="ratio >= 0.5"),
    Goal("storage", "log recovery, updates/s", "recovery_updates_per_s", ">=", 100_000,
         goal_text=">= 100,000/s", context="{recovery_updates} updates"),
    Goal("crash", "acknowledged writes lost after SIGKILL", "acked_lost", "==", 0,
         goal_text="0", context="of {acked_writes} acknowledged writes, {trials} kills"),
    Goal("crash", "silent corruptions", "silent_corruptions", "==", 0, goal_text="0",
         context="{corruptions_detected} of {corruption_trials} byte-flip trials detected"),
    Goal("throughput", "replicated commits/s (replicas=1)", "levels.replicas=1.ops_per_s", ">=",
         REPLICATED_GOAL_RATIO, baseline="raw_write_ops_per_s",
         baseline_label="raw pycrdt writes/s",
         ratio="ratio_replicated_vs_raw", goal_text=f"ratio >= {REPLICATED_GOAL_RATIO}",
         context="{peers} peers, {processes} process(es); bare local commit in trio "
                 "(ceiling) {ceiling_local_commit_ops_per_s}/s, ratio {ratio_ceiling_vs_raw}"),
    Goal("convergence", "gossip rounds for a burst to reach every peer", "rounds", "<=",
         target_key="rounds_goal", goal_text="<= 2 log2(peers)",
         context="{peers} peers, {converge_ms} ms; full-state push {baseline_converge_ms} ms"),
    Goal("convergence", "bytes sent for the burst", "bytes_total", "<", 0.25,
         baseline="baseline_bytes_total", baseline_label="full state to every peer",
         ratio="bytes_ratio_vs_baseline", goal_text="ratio < 0.25",
         context="{peers} peers"),
    Goal("failover", "RTO p50, ms (kill to takeover)", "rto_ms_p50", "<", 1000,
         goal_text="< 1,000 ms",
         context="mode {mode}, {takeovers}/{trials} takeovers, detection p50 {detect_ms_p50} ms"),
    Goal("failover", "RTO p99, ms", "rto_ms_p99", "<", 2000, goal_text="< 2,000 ms",
         context="mode {mode}, detection p99 {detect_ms_p99} ms"),
    Goal("failover", "acknowledged writes lost at takeover", "acked_lost", "==", 0,
         goal_text="0", context="mode {mode}"),
    Goal("wire", "bytes per sealed, framed update (batched)", "bytes_per_update", "<", 1.5,
         baseline="raw_update_bytes", baseline_label="raw pycrdt update bytes",
         ratio="overhead_ratio", goal_text="ratio < 1.5",
         context="{batch_messages} messages per update"),
    Goal("wire", "idle gossip, bytes/peer/s", "idle_bytes_per_peer_per_s", "<", 2048,
         baseline="idle_bytes_per_peer_per_s_no_documents", baseline_label="with no documents",
         goal_text="< 2,048 with 10,000 documents", context="{documents} documents"),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SuiteOutcome:
    """What running one suite gave: its result, or why there is none."""

    status: str  # "ok", "failed" or "skipped"
    result: Mapping[str, Any] | None = None
    error: str = ""
    seconds: float = 0.0
    argv: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the results table, already formatted."""

    suite: str
    figure: str
    value: str
    baseline: str
    ratio: str
    goal: str
    met: str
    notes: str


def _lookup(result: Mapping[str, Any] | None, dotted: str | None) -> Any:
    """The value at a dotted key (`levels.replicas=1.ops_per_s`), or None if absent."""
    if result is None or dotted is None:
        return None
    if dotted in result:
        return result[dotted]
    head, _, rest = dotted.partition(".")
    inner = result.get(head)
    if rest and isinstance(inner, Mapping):
        return _lookup(inner, rest)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return float(value)


def fmt(value: Any) -> str:
    """A figure as the table shows it: thousands separated, three significant digits."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


class _Shown(dict):
    """Result fields formatted as the table shows numbers; a missing field shows `?`."""

    def __missing__(self, key: str) -> str:
        return "?"


def _context(template: str, result: Mapping[str, Any]) -> str:
    return template.format_map(_Shown({k: fmt(v) for k, v in result.items()}))


def goal_row(goal: Goal, outcome: SuiteOutcome | None) -> Row:
    """The table row for one goal given its suite's outcome (or None if it never ran)."""
    base = {"suite": goal.suite, "figure": goal.figure, "goal": goal.goal_text}
    if outcome is None or outcome.status == "skipped":
        return Row(**base, value="", baseline="", ratio="", met="skipped", notes=outcome.note
                   if outcome else "not run")  # fmt: skip
    if outcome.status != "ok":
        return Row(**base, value="", baseline="", ratio="", met="no (suite failed)",
                   notes=outcome.error)  # fmt: skip
    result = outcome.result or {}
    value = _lookup(result, goal.value)
    baseline = _lookup(result, goal.baseline)
    ratio = _lookup(result, goal.ratio)
    target = goal.target if goal.target_key is None else _lookup(result, goal.target_key)
    checked = _number(ratio if goal.ratio is not None else value)
    target_n = _number(target)
    goal_text = goal.goal_text
    if goal.target_key is not None and target_n is not None:
        goal_text = f"{goal.goal_text} = {fmt(target_n)}"
    missing = goal.ratio if goal.ratio is not None else goal.value
    if checked is None or target_n is None:
        met = "missing"
        notes = f"no `{missing}` in the result" if checked is None else "no target in the result"
    else:
        met = "yes" if _OPS[goal.op](checked, target_n) else "no"
        notes = _context(goal.context, result) if goal.context else ""
    if outcome.note:
        notes = f"{notes}; {outcome.note}" if notes else outcome.note
    shown_baseline = fmt(baseline)
    if shown_baseline and goal.baseline_label:
        shown_baseline = f"{shown_baseline} ({goal.baseline_label})"
    return Row(
        suite=goal.suite,
        figure=goal.figure,
        value=fmt(value),
        baseline=shown_baseline,
        ratio=fmt(ratio),
        goal=goal_text,
        met=met,
        notes=notes,
    )


def build_rows(outcomes: Mapping[str, SuiteOutcome], goals: Sequence[Goal] = GOALS) -> list[Row]:
    """One row per goal, in `goals` order, from the outcome of each suite."""
    return [goal_row(g, outcomes.get(g.suite)) for g in goals]


def _cell(text: str) -> str:
    # A `|` inside a cell would split it; newlines would end the row.
    return " ".join(text.replace("|", "\\|").split())


def render_markdown(rows: Sequence[Row], *, command: str, machine: Mapping[str, Any]) -> str:
    """results.md: the command line, the machine, and one table of every row."""
    load = machine.get("load_average_before"), machine.get("load_average_after")
    lines = [
        "# statemesh benchmarks",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine.get('nproc')} cores, load average (1/5/15 min) before "
        f"{_loads(load[0])}, after {_loads(load[1])}; Python {machine.get('python')}, "
        f"pycrdt {machine.get('pycrdt')}; {machine.get('date')}; "
        f"commit {machine.get('git_commit') or 'unknown'}.",
        "",
        "| suite | figure | value | baseline (same run) | ratio | goal | met | notes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        cells = (r.suite, r.figure, r.value, r.baseline, r.ratio, r.goal, r.met, r.notes)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _loads(values: Any) -> str:
    if not values:
        return "unknown"
    return "/".join(f"{v:.2f}" for v in values)


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """The machine and code a run measured: cores, Python, pycrdt, date, git commit."""
    from importlib import metadata

    try:
        pycrdt = metadata.version("pycrdt")
    except metadata.PackageNotFoundError:
        pycrdt = None
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "pycrdt": pycrdt,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:  # no git at all is an OSError too
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()[:12]
    return f"{commit} (uncommitted changes)" if dirty.stdout.strip() else commit


def suite_argv(
    name: str, module: Any, out: Path, *, quick: bool, loopback: bool = False
) -> list[str]:
    """The suite's own command line for this run: quick sizes, `--plot`, `--loopback`."""
    argv = list(QUICK.get(name, ())) if quick else []
    if _takes_plot(module):
        argv += ["--plot", str(out / f"{name}.png")]
    if loopback:
        argv.append("--loopback")
    return argv


def _suite_parser(name: str, module: Any) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"statemesh bench {name}", add_help=False)
    parser.add_argument("--json", action="store_true")
    module.add_arguments(parser)
    return parser


def _takes_plot(module: Any) -> bool:
    parser = _suite_parser("probe", module)
    return any("--plot" in a.option_strings for a in parser._actions)


class _Tee(io.TextIOBase):
    """stderr that still reaches the terminal, keeping the last lines for error reports."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner
        self._last = ""  # the last non-blank line ended
        self._partial = ""

    def write(self, text: str) -> int:
        self._inner.write(text)
        # A progress bar redraws with "\r" and never ends its line: split on both, or
        # the unended line grows with every redraw of a long phase.
        lines = re.split(r"[\r\n]", self._partial + text)
        self._partial = lines.pop()
        for line in reversed(lines):
            if line.strip():
                self._last = line
                break
        return len(text)

    def flush(self) -> None:
        self._inner.flush()

    def isatty(self) -> bool:
        return bool(getattr(self._inner, "isatty", lambda: False)())

    def last_line(self) -> str:
        return (self._partial if self._partial.strip() else self._last).strip()


@contextlib.contextmanager
def _teed_stderr() -> Iterator[_Tee]:
    tee = _Tee(sys.stderr)
    with contextlib.redirect_stderr(tee):
        yield tee


def run_suite(name: str, module: Any, argv: Sequence[str]) -> SuiteOutcome:
    """Parse `argv` with the suite's own parser and run it; failures become an outcome."""
    start = time.monotonic()
    with _teed_stderr() as tee:
        try:
            args = _suite_parser(name, module).parse_args(list(argv))
            result = module.run(args)
            if not isinstance(result, Mapping):
                raise TypeError(f"run() returned {type(result).__name__}, not a dict")
        except KeyboardInterrupt:
            raise
        except SystemExit as exc:
            # Suites and argparse print their usage error to stderr, then exit.
            error = tee.last_line() or f"exit status {exc.code}"
            return SuiteOutcome("failed", error=error, seconds=time.monotonic() - start,
                                argv=tuple(argv))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - one broken suite must not stop the rest
            traceback.print_exc(file=sys.stderr)
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return SuiteOutcome("failed", error=error, seconds=time.monotonic() - start,
                                argv=tuple(argv))  # fmt: skip
    return SuiteOutcome("ok", result=dict(result), seconds=time.monotonic() - start,
                        argv=tuple(argv))  # fmt: skip


def run_all(
    suites: Mapping[str, Any],
    out: Path,
    *,
    quick: bool = False,
    skip: Sequence[str] = (),
    command: str = "statemesh bench all",
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """Run every suite not skipped, write results.json and results.md, return the report."""
    stream = stream or sys.stderr
    machine = machine_info()
    machine["load_average_before"] = _load_average()
    todo = [n for n in suites if n not in skip]
    outcomes: dict[str, SuiteOutcome] = {
        n: SuiteOutcome("skipped", note="skipped with --skip") for n in suites if n in skip
    }
    for i, name in enumerate(todo, 1):
        module = suites[name]
        extra_note = ""
        loopback = False
        if name == "failover":
            # mesh.hosts alone says whether namespace hosts can run here (it tries for real).
            import mesh.hosts

            reason = mesh.hosts.available()
            if reason is not None:
                loopback = True
                extra_note = f"loopback, not namespace hosts ({reason})"
        try:
            argv = suite_argv(name, module, out, quick=quick, loopback=loopback)
        except Exception as exc:  # noqa: BLE001 - a broken add_arguments is that suite's failure
            outcomes[name] = SuiteOutcome("failed", error=f"{type(exc).__name__}: {exc}")
            note(SUITE, f"[{i}/{len(todo)}] {name}: FAILED: {outcomes[name].error}", stream=stream)
            continue
        line = shlex.join(["statemesh", "bench", name, *argv])
        note(SUITE, f"[{i}/{len(todo)}] {name}: {line}", stream=stream)
        # A picture left by an earlier run must not pass for this run's.
        (out / f"{name}.png").unlink(missing_ok=True)
        outcome = run_suite(name, module, argv)
        if extra_note:
            outcome = dataclasses.replace(outcome, note=extra_note)
        outcomes[name] = outcome
        verdict = "ok" if outcome.status == "ok" else f"FAILED: {outcome.error}"
        note(SUITE, f"[{i}/{len(todo)}] {name}: {verdict} ({outcome.seconds:.1f} s)",
             stream=stream)  # fmt: skip
    machine["load_average_after"] = _load_average()
    rows = build_rows(outcomes)
    report = {
        "command": command,
        "machine": machine,
        "suites": {
            name: {
                "status": o.status,
                "argv": list(o.argv),
                "seconds": round(o.seconds, 1),
                "error": o.error or None,
                "note": o.note or None,
                "plot": _plot_written(out, name, o),
                "result": o.result,
            }
            for name, o in outcomes.items()
        },
        "goals": [dataclasses.asdict(r) for r in rows],
        "failed": sorted(n for n, o in outcomes.items() if o.status == "failed"),
    }
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "results.md").write_text(render_markdown(rows, command=command, machine=machine))
    note(SUITE, f"wrote {out / 'results.md'} and {out / 'results.json'}", stream=stream)
    return report


def _plot_written(out: Path, name: str, outcome: SuiteOutcome) -> str | None:
    path = out / f"{name}.png"
    if "--plot" in outcome.argv and path.is_file():
        return str(path)
    return None
