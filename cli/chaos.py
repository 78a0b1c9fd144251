"""`statemesh chaos`: a Jepsen-style fault-injection campaign against real peers.

Starts one peer per network-namespace host (needs root), runs agents that write to the
sessions they own at mixed commit levels (local, replicas=1, replicas=2, all), and
injects seeded random faults one after another: SIGKILL and restart, SIGSTOP/SIGCONT,
partitions (two-way and one-way nftables drop rules), random packet loss, graceful
leaves (SIGTERM, restart) and a full disk on one host (its data dir is a small tmpfs).
Then it heals everything, waits (bounded) for convergence and checks the history:

  acked_lost              acknowledged writes missing on a survivor (a local-level ack
                          counts while its writer's disk survives, which it does here)
  converged               every replica of every session has the same fingerprint
  split_brain_after_heal  sessions without exactly one owner at the highest epoch
  false_takeovers         takeovers of an owner that was alive and reachable by a majority

`--plot FILE.png` draws the campaign as a timeline: one row per host with every fault,
takeover (with its RTO) and fencing, and acknowledged writes per second by commit level.

Exit 0 when all hold, 1 when one fails (the seed and the fault schedule are printed so
`--seed S` or `--schedule FILE` replays it), 2 on usage or environment errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from cli._parser import add_command
from crdt_types.errors import LocalError, StatemeshError

MAX_MINUTES = 24 * 60.0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `chaos` subcommand."""
    p = add_command(
        sub, "chaos", "fault-injection campaign on namespace hosts (root)", __doc__, run
    )
    p.add_argument("--hosts", type=int, default=5, help="namespace hosts, one peer each (3..16)")
    p.add_argument("--minutes", type=float, default=1.0, help="campaign length (float)")
    p.add_argument("--seed", type=int, default=None, help="seed of the fault schedule")
    p.add_argument("--schedule", metavar="FILE", help="replay a schedule written by a run")
    p.add_argument("--save-schedule", metavar="FILE", help="write this run's schedule here")
    p.add_argument("--max-faults", type=int, default=200, help="hard cap on faults")
    p.add_argument(
        "--converge-timeout", type=float, default=90.0, help="seconds to wait for agreement"
    )
    p.add_argument("--keep", metavar="DIR", help="copy agent logs and the timeline here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE.png", help="draw faults, takeovers and write rates here")


def _fail(message: str) -> int:
    print(f"statemesh chaos: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Run one campaign; exit 0 if every promise held, 1 if not, 2 on bad usage."""
    from mesh.chaos.campaign import Campaign
    from mesh.chaos.schedule import load_schedule
    from mesh.hosts import available

    if not 3 <= args.hosts <= 16:
        return _fail(f"--hosts must be in 3..16, got {args.hosts}")
    if not 0 < args.minutes <= MAX_MINUTES:
        return _fail(f"--minutes must be in (0, {MAX_MINUTES:g}], got {args.minutes}")
    if not 1 <= args.max_faults <= 10_000:
        return _fail(f"--max-faults must be in 1..10000, got {args.max_faults}")
    if not 1 <= args.converge_timeout <= 3600:
        return _fail(f"--converge-timeout must be in 1..3600, got {args.converge_timeout}")
    if args.plot is not None:
        from benchmarks._plot import plot_path_problem

        # Checked before anything is built: a typo must not cost a campaign.
        problem = plot_path_problem(args.plot)
        if problem is not None:
            return _fail(problem)
    schedule = None
    seed = args.seed
    if args.schedule:
        try:
            text = Path(args.schedule).read_text()
            schedule = load_schedule(text, args.hosts)
            if seed is None:
                seed = json.loads(text).get("seed")
        except (OSError, LocalError) as exc:
            return _fail(f"--schedule {args.schedule}: {exc}")
    if seed is None:
        import secrets

        seed = secrets.randbelow(2**31)
    reason = available()
    if reason is not None:
        return _fail(f"chaos needs namespace hosts: {reason}")
    try:
        campaign = Campaign(
            args.hosts,
            args.minutes * 60.0,
            seed,
            schedule=schedule,
            max_faults=args.max_faults,
            converge_timeout=args.converge_timeout,
            progress=lambda msg: print(f"[chaos] {msg}", file=sys.stderr, flush=True),
            tick=_ticker(args.minutes * 60.0),
            keep=Path(args.keep) if args.keep else None,
        )
    except LocalError as exc:
        return _fail(str(exc))
    print(f"[chaos] seed {seed}", file=sys.stderr, flush=True)
    if args.save_schedule:
        Path(args.save_schedule).write_text(campaign.schedule_json())
    # SIGTERM ends the run like Ctrl-C: the campaign's `finally` cleans up.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = campaign.run()
    except (StatemeshError, OSError, subprocess.SubprocessError) as exc:
        return _fail(f"{type(exc).__name__}: {exc} (seed {seed})")
    finally:
        signal.signal(signal.SIGTERM, previous)
        _ticker_done()
    _print(result, as_json=args.json)
    code = 0
    if not result["ok"]:
        print(
            f"[chaos] FAILED with seed {seed}; replay: statemesh chaos --hosts {args.hosts} "
            f"--minutes {args.minutes:g} --seed {seed}  (schedule: {json.dumps(result['schedule'])})",
            file=sys.stderr,
        )
        code = 1
    if args.plot is not None:
        # After the result is printed, so a plot that cannot be written loses nothing else.
        try:
            campaign.plot(Path(args.plot), result)
            print(f"[chaos] plot: {args.plot}", file=sys.stderr)
        except (OSError, ValueError) as exc:
            print(f"statemesh chaos: error: --plot {args.plot}: {exc}", file=sys.stderr)
            code = code or 2
    return code


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


_bar: Any = None


def _ticker(total: float) -> Any:
    """A progress callback: a rich bar on a terminal, nothing extra otherwise."""

    def tick(t: float) -> None:
        global _bar
        if not sys.stderr.isatty():
            return
        if _bar is None:
            from benchmarks._progress import phase

            cm = phase("chaos", "campaign (s)", int(total))
            _bar = (cm, cm.__enter__())
        p = _bar[1]
        p.advance(max(0, int(t) - p.done))

    return tick


def _ticker_done() -> None:
    global _bar
    if _bar is not None:
        with contextlib.suppress(Exception):
            _bar[0].__exit__(None, None, None)
        _bar = None


def _print(result: dict[str, Any], *, as_json: bool) -> None:
    from cli.bench import print_result

    print_result(result, as_json=as_json)
