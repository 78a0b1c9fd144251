"""`statemesh secret`: store and read secrets in the cluster vault through a peer.

    statemesh secret set  --http HOST:PORT --key-file FILE NAME [--from-file PATH]
    statemesh secret get  --http HOST:PORT --key-file FILE NAME [--json]
    statemesh secret list --http HOST:PORT --key-file FILE [--json]

The value of `set` comes from standard input (typed without echo on a terminal) or from
``--from-file``, never from the command line, where other users and shell history could
read it. From standard input one trailing newline is dropped (``echo tok | ...`` stores
``tok``); a file's bytes are stored exactly. The peer seals the value with a key derived
from the cluster key before it enters the replicated cluster document, so data
directories, logs, ``/status``, ``/metrics`` and ``statemesh inspect`` never hold it in
clear. Every action needs the admin token (``--key-file``), listing names included.

Output: ``get`` writes the value's bytes to stdout as stored (``--json``: ``{"name",
"value"}`` with the value as text, or ``{"name", "value_base64"}`` when it is not UTF-8);
``list`` prints one name per line (``--json``: ``{NAME: sealing key id}``). Exit codes:
0 done; 1 the peer refused (401 no or wrong token, 400 bad name or value, 404 unknown
secret) with its message; 2 usage errors, an unreadable value source and an unreachable
peer.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import sys
from urllib.parse import quote

from cli._http_client import add_actions, add_peer_action, peer_client
from crdt_types.errors import LocalError
from mesh.vault import MAX_VALUE_BYTES

PROG = "statemesh secret"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `secret` subcommand and its actions."""
    actions = add_actions(sub, "secret", "store or read secrets in the cluster vault", __doc__)
    s = add_peer_action(actions, "set", "store NAME; the value is read from stdin", PROG, _set)
    s.add_argument("name", metavar="NAME")
    s.add_argument("--from-file", metavar="PATH", help="read the value from PATH, not stdin")
    g = add_peer_action(actions, "get", "write the value of NAME to stdout", PROG, _get)
    g.add_argument("name", metavar="NAME")
    add_peer_action(actions, "list", "print the names of the stored secrets", PROG, _list)


def read_value(args: argparse.Namespace) -> bytes:
    """The value to store: --from-file's bytes, or stdin minus one trailing newline."""
    if args.from_file is not None:
        try:
            with open(args.from_file, "rb") as f:
                data = f.read(MAX_VALUE_BYTES + 1)
        except OSError as exc:
            raise LocalError(f"--from-file {args.from_file}: {exc.strerror}") from None
    elif sys.stdin is not None and sys.stdin.isatty():
        data = getpass.getpass(f"value of secret {args.name}: ").encode()
    else:
        data = sys.stdin.buffer.read(MAX_VALUE_BYTES + 2) if sys.stdin is not None else b""
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
    if not data:
        raise LocalError("the secret value is empty (nothing on stdin or in the file)")
    if len(data) > MAX_VALUE_BYTES:
        raise LocalError(f"the secret value is larger than {MAX_VALUE_BYTES} bytes")
    return data


def _set(args: argparse.Namespace) -> int:
    value = read_value(args)
    client = peer_client(args)
    _, _, data = client.call(
        "PUT", "/secrets/" + quote(args.name, safe=""), value, "application/octet-stream"
    )
    answer = json.loads(data)
    if args.json:
        print(json.dumps(answer, sort_keys=True))
    else:
        print(f"stored secret {answer['name']} ({answer['bytes']} bytes, key {answer['key_id']})")
    return 0


def _get(args: argparse.Namespace) -> int:
    _, _, value = peer_client(args).call("GET", "/secrets/" + quote(args.name, safe=""))
    if args.json:
        try:
            obj = {"name": args.name, "value": value.decode("utf-8")}
        except UnicodeDecodeError:
            obj = {"name": args.name, "value_base64": base64.b64encode(value).decode()}
        print(json.dumps(obj, sort_keys=True))
        return 0
    sys.stdout.buffer.write(value)
    if sys.stdout.isatty():
        sys.stdout.buffer.write(b"\n")
    sys.stdout.buffer.flush()
    return 0


def _list(args: argparse.Namespace) -> int:
    secrets = peer_client(args).json("GET", "/secrets")["secrets"]
    if args.json:
        print(json.dumps(secrets, sort_keys=True))
        return 0
    for name in sorted(secrets):
        print(name)
    return 0
