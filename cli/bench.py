"""`statemesh bench SUITE`: run one benchmark scenario from `benchmarks/`.

A suite is a module `benchmarks/<suite>.py` exposing `HELP` (one line),
`add_arguments(parser)`, and `run(args) -> dict`. The result dict is printed as one JSON
object with `--json`, otherwise as an aligned `name  value` table. Suites print progress
to stderr so stdout stays machine-readable.
"""

from __future__ import annotations

import argparse
import importlib
import json

SUITES = ("storage", "crash", "throughput", "convergence", "failover", "wire")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `bench` and one sub-parser per available suite."""
    parser = sub.add_parser("bench", help="run a benchmark suite", description=__doc__)
    suites = parser.add_subparsers(dest="suite", metavar="SUITE")
    suites.required = True
    for name in SUITES:
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"benchmarks.{name}":
                continue
            raise
        p = suites.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument("--json", action="store_true", help="print one JSON object")
        module.add_arguments(p)
        p.set_defaults(func=_runner(module))


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
