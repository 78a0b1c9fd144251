"""`statemesh peer`: run one mesh node until SIGTERM or SIGINT, then leave gracefully.

The peer prints exactly one line on stdout once it serves, a JSON object that scripts
and tests wait for::

    {"event": "ready", "node": "a", "cluster": "statemesh", "address": "198.18.0.2:7946",
     "http": "198.18.0.2:8080", "documents": 0, "damaged": [], "pid": 1234}

`damaged` lists the documents loaded from a damaged log: the peer serves what came before
the damage, logs one line per document, answers 503 on `/readyz` and refuses durable
commits on them until peers refill them. A database file SQLite cannot open at all
(truncated, not a database) stops the peer with exit 2 and one line naming the file and
what to do: move it (with its -wal and -shm files) aside and restart; the peer starts
empty and refills from its peers.

and, after a graceful leave, one more: `{"event": "stopped", "node": "a"}`. Diagnostics
go to stderr. Exit codes (see `cli.main`): 0 after a graceful leave; 2 for bad flags, a
missing key (neither `--key-file` nor `--insecure`: security is the default), an unusable
data directory or an address that cannot be bound, each reported as one line on stderr.

mDNS: `--interface IP` (repeatable) names the IPv4 addresses to announce and browse on;
without it the peer uses every interface of the machine, which is what a user wants on a
LAN. Tests and the demo always pass `--interface`. `--no-mdns` turns discovery off
(static `--join` seeds only).

Settings: `--config FILE` reads the same settings from a TOML file (keys are the flag
names: ``node = "a"``, ``key_file = "cluster.key"``, ``join = ["10.0.0.2:7946"]``);
``STATEMESH_<FLAG>`` environment variables override the file and flags override both
(`mesh.settings`). Logs go to stderr, human-readable or JSON lines (`--log-format json`),
with secrets and tokens redacted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

import trio

from cli._parser import add_command
from crdt_types.errors import LocalError, StatemeshError, StorageError
from gossip.config import PROFILES
from gossip.quorum import POLICIES
from mesh.config import UNREADABLE_POLICIES
from mesh.settings import LOG_FORMATS, LOG_LEVELS

DEFAULT_PORT = 7946


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `peer` subcommand."""
    p = add_command(sub, "peer", "run a mesh peer until SIGTERM/SIGINT", __doc__, run)
    p.add_argument("--config", default=None, metavar="FILE", help="TOML file of settings")
    p.add_argument("--node", default=None, help="this node's unique name (required)")
    p.add_argument("--data", default=None, metavar="DIR", help="data directory (required)")
    p.add_argument(
        "--listen",
        default=None,
        metavar="HOST:PORT",
        help="gossip address (default: port 7946 on the first non-loopback mDNS interface)",
    )
    p.add_argument(
        "--advertise", default=None, metavar="HOST:PORT", help="address peers should use"
    )
    p.add_argument(
        "--join", action="append", default=[], metavar="HOST:PORT", help="static seed (repeat)"
    )
    p.add_argument(
        "--interface",
        action="append",
        default=[],
        metavar="IP",
        help="IPv4 address for mDNS (repeat; default: all interfaces)",
    )
    p.add_argument("--no-mdns", action="store_true", help="no mDNS; use --join seeds only")
    p.add_argument("--cluster", default=None, help="cluster name (default: statemesh)")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--key-file", metavar="FILE", help="cluster key file (statemesh keygen)")
    key.add_argument("--insecure", action="store_true", help="no encryption (debugging only)")
    p.add_argument(
        "--http",
        default=None,
        metavar="HOST:PORT",
        help="serve /status, /livez, /readyz, /healthz, /metrics, /config, /secrets here "
        "(a bare PORT binds to 127.0.0.1)",
    )
    p.add_argument(
        "--profile", default=None, choices=sorted(PROFILES), help="gossip timing (default: lan)"
    )
    p.add_argument(
        "--split-brain",
        default=None,
        choices=POLICIES,
        help="who may take over in a partition: majority (default) or availability",
    )
    p.add_argument(
        "--ready-lag",
        type=float,
        default=None,
        metavar="SECONDS",
        help="/readyz: how long being behind peers still counts as ready (default 2)",
    )
    p.add_argument(
        "--on-unreadable-store",
        default=None,
        choices=UNREADABLE_POLICIES,
        help="a database file SQLite cannot read: refill (default: move it into"
        " DATA/unreadable-*/, start empty, refill from peers) or stop (exit 2)",
    )
    p.add_argument(
        "--log-format", default=None, choices=LOG_FORMATS, help="human (default) or json lines"
    )
    p.add_argument("--log-level", default=None, choices=LOG_LEVELS, help="default: info")

    def one_line_error(message: str) -> None:
        # Bad flags: one line on stderr and exit 2, as for every other usage error.
        print(f"statemesh peer: error: {message}", file=sys.stderr)
        sys.exit(2)

    p.error = one_line_error  # type: ignore[method-assign]


def _config(settings):
    from mesh.config import MeshConfig
    from mesh.discovery import all_interface_addresses

    kwargs = settings.mesh_kwargs()
    interfaces = list(settings.interface)
    if settings.mdns and not interfaces:
        interfaces = [ip for ip in all_interface_addresses() if ":" not in ip]
    kwargs["interfaces"] = interfaces if settings.mdns else []
    if settings.listen is None:
        outward = [ip for ip in interfaces if not ip.startswith("127.")] or interfaces
        kwargs["listen"] = f"{outward[0] if outward else '127.0.0.1'}:{DEFAULT_PORT}"
    return MeshConfig(**kwargs)


def _say(obj: dict) -> None:
    print(json.dumps(obj, sort_keys=False), flush=True)


async def _main(config) -> None:
    from mesh.runtime import open_mesh

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with open_mesh(config) as mesh:
            _say(
                {
                    "event": "ready",
                    "node": mesh.node_id,
                    "cluster": config.cluster,
                    "address": mesh.address,
                    "http": mesh.http_address,
                    "documents": len(mesh.replica),
                    "damaged": sorted(mesh.replica.damaged),
                    "pid": os.getpid(),
                }
            )
            logging.getLogger("statemesh.peer").info(
                "serving",
                extra={"node": mesh.node_id, "address": mesh.address, "http": mesh.http_address},
            )
            async for signum in signals:
                print(f"statemesh peer: {signal.Signals(signum).name}: leaving", file=sys.stderr)
                break
    _say({"event": "stopped", "node": config.node})


def run(args: argparse.Namespace) -> int:
    """Run the peer; returns the exit code."""
    from mesh.settings import configure_logging, resolve_settings

    try:
        settings = resolve_settings(vars(args), os.environ, args.config)
        config = _config(settings)
        configure_logging(settings.log_format, settings.log_level)
    except LocalError as exc:
        print(f"statemesh peer: error: {exc}", file=sys.stderr)
        return 2
    data = settings.data
    if os.path.exists(data) and not os.path.isdir(data):
        print(f"statemesh peer: error: {data} is not a directory", file=sys.stderr)
        return 2
    try:
        trio.run(_main, config)
    except (StorageError, LocalError) as exc:
        # Unusable data dir, address in use, bad key file: the environment, not a crash.
        print(f"statemesh peer: error: {exc}", file=sys.stderr)
        return 2
    except StatemeshError as exc:
        print(f"statemesh peer: error: {exc}", file=sys.stderr)
        return 1
    return 0
