"""`statemesh status`: what one peer sees of the mesh, once or as a live view.

    statemesh status --http HOST:PORT [--json] [--watch [--interval S] [--count N]]

Shows the peer's members and their SWIM state, its readiness (with the reasons when it
is not ready), documents damaged on its disk and not yet refilled from peers, liveness,
how far behind each peer it is, how many sessions each peer owns, and the last takeovers
this peer performed. Everything comes from the peer's
``GET /status``; no token is needed.

``--json`` prints that JSON object as it is (one line; with ``--watch``, one line per
refresh). ``--watch`` redraws a terminal view in place every ``--interval`` seconds
(default 1) until Ctrl-C, or ``--count`` refreshes. While watching, a peer that stops
answering is shown as unreachable and polled again. Exit codes: 0 done (also on Ctrl-C
while watching); 1 the peer answered with an error; 2 usage errors and a peer that cannot
be reached (before the first answer).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from cli._http_client import Client, Unreachable, run_guarded
from cli._parser import add_command

PROG = "statemesh status"
MAX_INTERVAL = 3600.0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `status` subcommand."""
    summary = "show a peer's members, readiness, lag, owners and takeovers"
    p = add_command(sub, "status", summary, __doc__, lambda a: run_guarded(PROG, run, a))
    p.add_argument("--http", required=True, metavar="HOST:PORT", help="a peer's --http")
    p.add_argument("--json", action="store_true", help="print the /status JSON")
    p.add_argument("--watch", action="store_true", help="refresh a live view in place")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    p.add_argument("--count", type=int, default=None, help="stop after N refreshes")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per request")


def _yes(flag: Any) -> str:
    return "yes" if flag else "NO"


def render(status: dict[str, Any]) -> Any:
    """A rich renderable of one /status answer."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    health = status.get("health", {})
    me = status.get("node", "?")
    head = Text()
    head.append(f"node {me}", style="bold")
    head.append(f"  cluster {status.get('cluster', '?')}  address {status.get('address')}\n")
    ready = health.get("ready")
    head.append("ready ", style="bold")
    head.append(_yes(ready), style="green" if ready else "bold red")
    head.append("  live ", style="bold")
    live = health.get("live", True)
    head.append(_yes(live), style="green" if live else "bold red")
    head.append(
        f"  loop lag {health.get('loop_lag_seconds', 0):.3f} s"
        f"  replication lag {health.get('lag_seconds', 0):.3f} s"
        f"  documents {status.get('documents', 0)}"
    )
    for reason in health.get("reasons", []):
        head.append(f"\n  not ready: {reason}", style="yellow")
    for damage in health.get("damaged_documents", []):
        record = damage.get("record")
        head.append(
            f"\n  damaged document {damage.get('document')}"
            + (f" from record {record}" if record is not None else "")
            + f": {damage.get('reason')} (refilling from peers)",
            style="bold red",
        )
    owned = status.get("sessions_owned", {})
    lag = status.get("lag", {})
    members = Table(title="members", title_justify="left", expand=False)
    for column in ("node", "state", "address", "sessions owned", "lag (s)"):
        members.add_column(column)
    styles = {"alive": "green", "suspect": "yellow", "dead": "red", "left": "dim"}
    for m in status.get("members", []):
        node = m.get("node", "?")
        members.add_row(
            node + (" (this peer)" if node == me else ""),
            Text(m.get("state", "?"), style=styles.get(m.get("state"), "")),
            str(m.get("address", "")),
            str(owned.get(node, 0)),
            "-" if node == me else f"{lag.get(node, 0.0):.3f}",
        )
    parts: list[Any] = [head, members]
    takeovers = status.get("last_takeovers", [])
    if takeovers:
        table = Table(title="last takeovers", title_justify="left")
        for column in ("at (UTC)", "session", "from", "epoch", "pending tool calls"):
            table.add_column(column)
        for t in reversed(takeovers[-10:]):
            at = t.get("at", 0.0)
            stamp = time.strftime("%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}"
            table.add_row(
                stamp,
                str(t.get("session")),
                str(t.get("from")),
                str(t.get("epoch")),
                str(t.get("pending_tool_calls", 0)),
            )
        parts.append(table)
    else:
        parts.append(Text(f"takeovers by this peer: {status.get('takeovers', 0)}"))
    return Group(*parts)


def _check(args: argparse.Namespace) -> None:
    from crdt_types.errors import LocalError

    if not 0 < args.interval <= MAX_INTERVAL:
        raise LocalError(f"--interval must be in (0, {MAX_INTERVAL:g}] seconds")
    if args.count is not None and args.count < 1:
        raise LocalError("--count must be at least 1")
    if not 0 < args.timeout <= MAX_INTERVAL:
        raise LocalError("--timeout must be positive")


def run(args: argparse.Namespace) -> int:
    """Fetch and show the status (once, or until Ctrl-C / --count with --watch)."""
    _check(args)
    client = Client(args.http, timeout=args.timeout)
    status = client.json("GET", "/status")  # the first answer decides exit 2 vs a view
    if not args.watch:
        if args.json:
            print(json.dumps(status, sort_keys=True))
        else:
            from rich.console import Console

            Console().print(render(status))
        return 0
    try:
        return _watch(args, client, status)
    except KeyboardInterrupt:
        return 0


def _watch(args: argparse.Namespace, client: Client, status: dict[str, Any]) -> int:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    count = 0
    if args.json:
        while True:
            print(json.dumps(status, sort_keys=True), flush=True)
            count += 1
            if args.count is not None and count >= args.count:
                return 0
            time.sleep(args.interval)
            status = _poll(client) or {"error": f"cannot reach {args.http}"}
    console = Console()
    with Live(render(status), console=console, auto_refresh=False, transient=False) as live:
        while True:
            count += 1
            if args.count is not None and count >= args.count:
                return 0
            time.sleep(args.interval)
            polled = _poll(client)
            if polled is None:
                live.update(Text(f"{args.http}: unreachable; retrying", style="bold red"))
            else:
                live.update(render(polled))
            live.refresh()


def _poll(client: Client) -> dict[str, Any] | None:
    try:
        return client.json("GET", "/status")
    except Unreachable:
        return None
    except Exception as exc:  # an error answer while watching: show it, keep watching
        print(f"{PROG}: {exc}", file=sys.stderr)
        return None
