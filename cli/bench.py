"""`statemesh bench SUITE`: run one benchmark scenario from `benchmarks/`.

A suite is a module `benchmarks/<suite>.py` exposing `HELP` (one line),
`add_arguments(parser)`, and `run(args) -> dict`. The result dict is printed as one JSON
object with `--json`, otherwise as an aligned `name  value` table. Suites print progress
to stderr so stdout stays machine-readable. `statemesh bench all --out DIR` runs every
suite in turn and writes one table of figures against goals (`benchmarks/report.py`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys
from pathlib import Path

from cli._parser import add_command

SUITES = ("storage", "crash", "throughput", "convergence", "failover", "wire")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `bench` and one sub-parser per available suite."""
    parser = add_command(sub, "bench", "run a benchmark suite", __doc__, wrap=True)
    suites = parser.add_subparsers(dest="suite", metavar="SUITE")
    suites.required = True
    modules = available_suites()
    for name, module in modules.items():
        p = suites.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument("--json", action="store_true", help="print one JSON object")
        module.add_arguments(p)
        p.set_defaults(func=_runner(module))
    _register_all(suites, modules)


def available_suites() -> dict[str, object]:
    """Every suite module that exists, by name, in `SUITES` order."""
    modules = {}
    for name in SUITES:
        try:
            modules[name] = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"benchmarks.{name}":
                continue
            raise
    return modules


_ALL_HELP = "run every suite in turn; write DIR/results.json, DIR/results.md and the plots"


def _register_all(suites: argparse._SubParsersAction, modules: dict[str, object]) -> None:
    p = suites.add_parser("all", help=_ALL_HELP, description=_ALL_HELP)
    p.add_argument("--out", metavar="DIR", required=True, help="directory for the results")
    p.add_argument("--quick", action="store_true", help="smaller sizes for a smoke run")
    p.add_argument("--json", action="store_true", help="print results.json, not the table")
    p.add_argument(
        "--skip",
        metavar="SUITE",
        nargs="+",
        action="extend",
        default=[],
        choices=list(modules),
        help="suites not to run",
    )
    p.set_defaults(func=lambda args: run_all_command(args, modules))


def run_all_command(args: argparse.Namespace, modules: dict[str, object]) -> int:
    """`statemesh bench all`: 0 if every suite ran, 1 if any failed, 2 on a bad --out."""
    from benchmarks.report import run_all

    out = Path(args.out)
    problem = _out_problem(out)
    if problem is not None:
        print(f"statemesh bench all: --out {args.out!r}: {problem}", file=sys.stderr)
        return 2
    command = shlex.join(["statemesh", "bench", "all", *_all_argv(args)])
    report = run_all(modules, out, quick=args.quick, skip=args.skip, command=command)
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print((out / "results.md").read_text(), end="")
    return 1 if report["failed"] else 0


def _all_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--out", args.out]
    if args.quick:
        argv.append("--quick")
    if args.json:
        argv.append("--json")
    if args.skip:
        argv += ["--skip", *args.skip]
    return argv


def _out_problem(out: Path) -> str | None:
    """What is wrong with `out` as the results directory (created if missing), or None."""
    if out.exists() and not out.is_dir():
        return "exists and is not a directory"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create it ({exc.strerror or exc})"
    probe = out / ".statemesh-bench-write-test"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        return f"cannot write in it ({exc.strerror or exc})"
    return None


def _runner(module):
    def run(args: argparse.Namespace) -> int:
        result = module.run(args)
        print_result(result, as_json=args.json)
        return 0

    return run


def print_result(result: dict, *, as_json: bool) -> None:
    """Print a result dict as JSON or as an aligned table."""
    if as_json:
        print(json.dumps(result, sort_keys=False))
        return
    result = _flatten(result)
    width = max((len(k) for k in result), default=0)
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:,.3f}" if value < 1000 else f"{value:,.0f}"
        print(f"{key.ljust(width)}  {value}")


def _flatten(result: dict, prefix: str = "") -> dict:
    """Nested figures (e.g. per commit level) as dotted keys, one table row each."""
    out: dict = {}
    for key, value in result.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
