"""`statemesh keygen --out FILE`: write a new random cluster key file.

The key is 32 bytes from the operating system's CSPRNG, written in the format that
`gossip.keyring.load_key_file` reads (one ``statemesh-key-v1:<64 hex>`` line, with
comments) with mode 0600. An existing file is never replaced unless ``--force`` is given,
and then atomically. The key id (public, 8 hex digits) is printed; the key never is.
Exit codes: 0 written, 2 refused (file exists, directory missing, no permission).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys

from cli._parser import add_command
from crdt_types.errors import LocalError
from gossip.keyring import KEY_BYTES, key_id, write_key_file


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `keygen` subcommand."""
    parser = add_command(sub, "keygen", "write a new random cluster key file", __doc__, run)
    parser.add_argument("--out", required=True, metavar="FILE", help="key file to create")
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Generate and write the key; return the exit code."""
    material = secrets.token_bytes(KEY_BYTES)
    try:
        write_key_file(args.out, material, force=args.force)
    except LocalError as exc:
        print(f"statemesh keygen: {exc}", file=sys.stderr)
        return 2
    kid = key_id(material).hex()
    if args.json:
        print(json.dumps({"path": args.out, "key_id": kid}))
    else:
        print(f"wrote cluster key {kid} to {args.out} (mode 0600)")
    return 0
