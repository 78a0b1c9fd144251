"""`statemesh config`: read and change the cluster's synchronized configuration.

    statemesh config set  --http HOST:PORT --key-file FILE KEY VALUE [--string] [--json]
    statemesh config get  --http HOST:PORT [KEY] [--json]
    statemesh config list --http HOST:PORT [--json]

Keys are dotted: ``flags.NAME`` (bool), ``model.NAME`` (JSON scalar), ``prompt.version``
(string), ``tools.NAME`` (URL), ``slo.NAME`` (number). VALUE is parsed as JSON when it
parses (``true``, ``0.7``, ``"3"``) and taken as a plain string otherwise (``v3``,
``https://x``); ``--string`` always takes it as a string (so ``--string 3`` is "3").
Setting needs the admin token, computed from the cluster key file (``--key-file``);
reading does not (configuration is not secret). The peer validates the value against the
schema and changes nothing if it is refused. Every peer converges on the new value.

Output: ``get KEY`` prints the value (strings as they are, anything else as JSON);
``list`` (and ``get`` without KEY) prints ``KEY VALUE`` lines. ``--json`` prints JSON:
``{"key", "value", "version", "by"}`` for one key, ``{KEY: {"value", "version", "by"}}``
for all. Exit codes: 0 done; 1 the peer refused (401 no or wrong token, 400 bad value,
404 not set) with its message; 2 usage errors and an unreachable peer.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import quote

from cli._http_client import add_actions, add_peer_action, peer_client

PROG = "statemesh config"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `config` subcommand and its actions."""
    actions = add_actions(sub, "config", "read or change the cluster configuration", __doc__)
    s = add_peer_action(actions, "set", "set KEY to VALUE (admin token needed)", PROG, _set)
    s.add_argument("key", metavar="KEY")
    s.add_argument("value", metavar="VALUE", help="JSON if it parses, else a string")
    s.add_argument("--string", action="store_true", help="take VALUE as a string, always")
    g = add_peer_action(
        actions, "get", "print the value of KEY (all settings without KEY)", PROG, _get
    )
    g.add_argument("key", metavar="KEY", nargs="?")
    add_peer_action(actions, "list", "print every setting", PROG, _list)


def parse_value(text: str, *, string: bool = False) -> Any:
    """VALUE as typed on the command line: JSON when it parses, else the text itself."""
    if string:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _set(args: argparse.Namespace) -> int:
    value = parse_value(args.value, string=args.string)
    entry = peer_client(args).json("PUT", "/config/" + quote(args.key, safe=""), {"value": value})
    if args.json:
        print(json.dumps(entry, sort_keys=True))
    else:
        print(f"{entry['key']} = {json.dumps(entry['value'])} (version {entry['version']})")
    return 0


def _get(args: argparse.Namespace) -> int:
    if args.key is None:
        return _list(args)
    entry = peer_client(args).json("GET", "/config/" + quote(args.key, safe=""))
    print(json.dumps(entry, sort_keys=True) if args.json else _show(entry["value"]))
    return 0


def _list(args: argparse.Namespace) -> int:
    config = peer_client(args).json("GET", "/config")["config"]
    if args.json:
        print(json.dumps(config, sort_keys=True))
        return 0
    for key, entry in sorted(config.items()):
        print(f"{key} {json.dumps(entry['value'])}")
    if not config and sys.stdout.isatty():
        print("(no settings)", file=sys.stderr)
    return 0
