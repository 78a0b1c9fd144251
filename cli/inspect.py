"""`statemesh inspect DATA_DIR`: what a node's store holds, and whether it is sound.

Read-only: the store is opened with SQLite's read-only mode, so inspecting a data
directory (even one whose node is running) changes nothing in it. Every document is
rebuilt from its checkpoint and log, which verifies each record's checksum on the way;
`--verify` adds SQLite's integrity check, every older checkpoint and the schema of every
document. Exit codes follow `cli.main`: 0 sound, 1 corruption found (the message names the
document and the record), 2 no usable store in DATA_DIR.

A running peer serves a damaged document from the records before the damage and refills it
from its peers (`/readyz` says so meanwhile); once refilled, a checkpoint supersedes the
damaged records and inspect finds the store sound again.
"""

from __future__ import annotations

import argparse
import json
import sys

from cli._parser import add_command
from crdt_types.errors import StorageError
from mesh.storage import DB_NAME, Report, Store


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `inspect` subcommand."""
    summary = "list and verify the documents in a data directory"
    parser = add_command(sub, "inspect", summary, __doc__, run, wrap=True)
    parser.add_argument("data_dir", metavar="DATA_DIR", help="the node's data directory")
    parser.add_argument(
        "--verify", action="store_true", help="also run integrity, checkpoint and schema checks"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Inspect the store and return the exit code."""
    try:
        store = Store.open(args.data_dir, readonly=True, create=False)
    except StorageError as exc:
        _emit(args, None, [str(exc)])
        return 2
    try:
        report = store.verify(schema=args.verify, deep=args.verify)
    except StorageError as exc:
        # The file opened but reading it failed part-way: damage, not an unusable dir.
        report = Report(documents=(), errors=(str(exc),))
    finally:
        store.close()
    errors = list(report.errors) + [d.error for d in report.documents if d.error]
    _emit(args, report, errors)
    return 0 if report.ok else 1


def report_json(report: Report | None, errors: list[str]) -> dict:
    """The `--json` object: `ok`, `documents` and `errors`."""
    documents = []
    if report is not None:
        documents = [
            {
                "id": d.id,
                "records": d.records,
                "checkpoints": d.checkpoints,
                "last_seq": d.last_seq,
                "fingerprint": d.fingerprint,
                "ok": d.error is None,
                "error": d.error,
            }
            for d in report.documents
        ]
    return {"ok": report is not None and report.ok, "documents": documents, "errors": errors}


def _emit(args: argparse.Namespace, report: Report | None, errors: list[str]) -> None:
    if args.json:
        print(json.dumps(report_json(report, errors)))
        return
    if report is not None:
        print(f"store {args.data_dir.rstrip('/')}/{DB_NAME}: {len(report.documents)} documents")
        rows = [("document", "records", "checkpoints", "last_seq", "fingerprint")]
        for d in report.documents:
            fp = (d.fingerprint or "-")[:16]
            rows.append((d.id, str(d.records), str(d.checkpoints), str(d.last_seq), fp))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if report is not None:
        print("sound" if report.ok else f"NOT sound: {len(errors)} problem(s)")
