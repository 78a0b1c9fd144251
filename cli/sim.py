"""`statemesh sim`: run one deterministic simulation scenario of the gossip protocol.

The scenario (see `gossip.simulator.run_scenario`): N nodes that know one another (or
join through a seed with `--bootstrap join`), random writes on random nodes over ten
gossip rounds, optional message loss, K nodes killed as the writes start, and optionally
a partition into two halves that heals. Everything is derived from `--seed`: the same
seed prints the same JSON, except `wall_s`. Exit code 0 if the live replicas converged
with no live node declared dead by a peer that could reach it, 1 otherwise, 2 on bad flags.
"""

from __future__ import annotations

import argparse
import json
import sys

from cli._parser import add_command
from crdt_types.errors import LocalError

_CODEC_UP_TO = 200  # nodes; above this `--wire auto` sizes frames without the codec checks


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `sim` subcommand."""
    p = add_command(
        sub, "sim", "simulate a mesh on a virtual network (deterministic)", __doc__, run
    )
    p.add_argument("--nodes", type=int, required=True, help="number of nodes")
    p.add_argument("--seed", type=int, default=1, help="seed for everything (default 1)")
    p.add_argument("--loss", type=float, default=0.0, help="message loss probability")
    p.add_argument("--duplicate", type=float, default=0.0, help="duplication probability")
    p.add_argument("--reorder", type=float, default=0.0, help="probability of extra delay")
    p.add_argument(
        "--partition-at",
        type=float,
        default=None,
        metavar="ROUND",
        help="split the nodes in two halves this many gossip rounds after the first write",
    )
    p.add_argument(
        "--partition-rounds",
        type=int,
        default=30,
        metavar="ROUNDS",
        help="rounds until the partition heals (default 30)",
    )
    p.add_argument("--kill", type=int, default=0, metavar="K", help="nodes killed (SIGKILL)")
    p.add_argument(
        "--writes", type=int, default=None, help="writes on random live nodes (default 20)"
    )
    p.add_argument("--docs", type=int, default=8, help="documents written to (default 8)")
    p.add_argument("--bootstrap", choices=("static", "join"), default="static")
    p.add_argument(
        "--profile", choices=("lan", "wan", "local"), default="lan", help="timing profile"
    )
    p.add_argument(
        "--wire",
        choices=("auto", "codec", "fast"),
        default="auto",
        help="encode and decode every frame with gossip.codec, or only size it (auto: "
        f"codec up to {_CODEC_UP_TO} nodes); byte counts are equal either way",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Run the scenario, print the result, return the exit code."""
    from cli.bench import print_result
    from gossip.config import profile
    from gossip.simulator import run_scenario

    wire = args.wire == "codec" or (args.wire == "auto" and args.nodes <= _CODEC_UP_TO)
    try:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(args, name)
            if not 0.0 <= value <= 1.0:
                raise LocalError(f"--{name} must be a probability in [0, 1], not {value}")
        if args.writes is not None and args.writes < 0:
            raise LocalError("--writes must not be negative")
        if args.docs < 1:
            raise LocalError("--docs must be at least 1")
        if args.partition_at is not None and args.partition_at < 0:
            raise LocalError("--partition-at must not be negative")
        if args.partition_rounds < 1:
            raise LocalError("--partition-rounds must be at least 1")
        result = run_scenario(
            args.nodes,
            args.seed,
            loss=args.loss,
            duplicate=args.duplicate,
            reorder=args.reorder,
            partition_at=args.partition_at,
            partition_rounds=args.partition_rounds,
            kill=args.kill,
            writes=args.writes,
            docs=args.docs,
            bootstrap=args.bootstrap,
            config=profile(args.profile),
            wire=wire,
        )
    except LocalError as exc:
        print(f"statemesh sim: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print_result(result, as_json=False)
    ok = result["converged"] and result["false_dead"] == 0
    return 0 if ok else 1
