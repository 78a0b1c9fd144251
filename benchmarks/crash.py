"""`statemesh bench crash`: kill a writer process with SIGKILL and check every durable ack.

Each trial starts `benchmarks.crash_writer` on the same data directory, lets it write for a
random (seeded) time, kills it with SIGKILL, reads the acks it printed, reopens the store
and checks that every acknowledged write is there: for each (document, key) the stored
value must be at least the highest acknowledged one (values only grow, so a lower value
or a missing key is an acknowledged write lost), and the document's last sequence number
must cover the highest acknowledged seq. The store must also verify cleanly after each
crash (`crash_verify_failures`).

Between some trials the bench damages the database on purpose: it checkpoints the WAL
into the main file, keeps a copy, flips bytes (inside a stored record's data, or at random
offsets), then asks the store. The damage is *detected* if opening, `verify()` or loading
reports it; it is *harmless* if everything verifies and every document's fingerprint is
unchanged (the bytes were unused space); anything else, a store that verifies but holds
different content, is a *silent corruption*. The copy is then restored.
"""

from __future__ import annotations

import argparse
import os
import random
import selectors
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pycrdt

from crdt_types.errors import StorageError
from crdt_types.fingerprint import fingerprint_hex
from mesh.storage import DB_NAME, Store

HELP = "SIGKILL a writer process at random moments; check every durable ack survives"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the crash benchmark."""
    parser.add_argument("--trials", type=int, default=20, help="writer processes to kill")
    parser.add_argument("--seed", type=int, default=1, help="seed for timings and damage")
    parser.add_argument("--writers", type=int, default=8, help="writer tasks in the process")
    parser.add_argument("--docs", type=int, default=4, help="documents written")
    parser.add_argument(
        "--corrupt-every", type=int, default=3, help="damage the file after every Nth trial"
    )
    parser.add_argument("--min-run", type=float, default=0.05, help="shortest write time (s)")
    parser.add_argument("--max-run", type=float, default=0.5, help="longest write time (s)")
    parser.add_argument("--dir", default=None, help="parent of the scratch data directory")


def run(args: argparse.Namespace) -> dict:
    """Run the trials and return the counts."""
    if args.trials < 1:
        raise SystemExit("--trials must be at least 1")
    with tempfile.TemporaryDirectory(prefix="statemesh-crash-", dir=args.dir) as scratch:
        return run_trials(
            Path(scratch) / "node",
            trials=args.trials,
            seed=args.seed,
            writers=args.writers,
            docs=args.docs,
            corrupt_every=args.corrupt_every,
            run_range=(args.min_run, args.max_run),
        )


def run_trials(
    data_dir: Path,
    *,
    trials: int,
    seed: int,
    writers: int = 8,
    docs: int = 4,
    corrupt_every: int = 3,
    run_range: tuple[float, float] = (0.05, 0.5),
) -> dict:
    """Kill-and-check `trials` times in `data_dir`; return the result dict."""
    rng = random.Random(seed)
    expected: dict[tuple[str, str], int] = {}  # (doc, key) -> highest acked value
    max_seq: dict[str, int] = {}
    result = {
        "trials": trials,
        "seed": seed,
        "acked_writes": 0,
        "acked_lost": 0,
        "crash_verify_failures": 0,
        "corruption_trials": 0,
        "corruptions_detected": 0,
        "corruptions_harmless": 0,
        "silent_corruptions": 0,
        "errors": [],
    }
    for trial in range(trials):
        acks = _writer_trial(data_dir, trial, rng, writers, docs, run_range)
        result["acked_writes"] += len(acks)
        for doc_id, key, value, seq in acks:
            expected[(doc_id, key)] = max(expected.get((doc_id, key), 0), value)
            max_seq[doc_id] = max(max_seq.get(doc_id, 0), seq)
        lost, problems = _check_acks(data_dir, expected, max_seq)
        result["acked_lost"] += lost
        if problems:
            result["crash_verify_failures"] += 1
            result["errors"].extend(f"trial {trial}: {p}" for p in problems[:5])
        _progress(f"trial {trial + 1}/{trials}: {len(acks)} acks, {lost} lost")
        if corrupt_every and trial % corrupt_every == corrupt_every - 1:
            outcome, detail = _corruption_trial(data_dir, rng)
            result["corruption_trials"] += 1
            result[f"corruptions_{outcome}" if outcome != "silent" else "silent_corruptions"] += 1
            if outcome == "silent":
                result["errors"].append(f"trial {trial}: silent corruption: {detail}")
            _progress(f"  damaged the file ({detail}): {outcome}")
    result["errors"] = result["errors"][:50]
    return result


def _progress(message: str) -> None:
    print(f"[bench crash] {message}", file=sys.stderr, flush=True)


def _writer_trial(
    data_dir: Path,
    trial: int,
    rng: random.Random,
    writers: int,
    docs: int,
    run_range: tuple[float, float],
) -> list[tuple[str, str, int, int]]:
    """Start a writer, let it write for a random time, SIGKILL it; return its acks."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.crash_writer",
        str(data_dir),
        "--tag",
        f"t{trial}",
        "--seed",
        str(rng.randrange(1 << 30)),
        "--writers",
        str(writers),
        "--docs",
        str(docs),
        "--max-seconds",
        "30",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = bytearray()
    try:
        if rng.random() < 0.15:
            # Now and then kill it while it starts: opening, recovering, drawing client ids.
            _read_for(proc, out, rng.uniform(0.0, 0.3))
        else:
            _read_until(proc, out, b"ready\n", timeout=30.0)
            # Sleep a random time, then kill: the writer is mid-write, mid-commit or
            # mid-checkpoint with no warning.
            _read_for(proc, out, rng.uniform(*run_range))
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=30)
        out += rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    if proc.returncode not in (-signal.SIGKILL, 0):
        raise RuntimeError(f"writer failed with {proc.returncode}: {err.decode()[-2000:]}")
    acks = []
    # Only complete lines count: a line cut by the kill is not a promise.
    for line in bytes(out).split(b"\n")[:-1]:
        parts = line.split()
        if len(parts) == 5 and parts[0] == b"ack":
            acks.append((parts[1].decode(), parts[2].decode(), int(parts[3]), int(parts[4])))
    return acks


def _read_until(proc: subprocess.Popen, out: bytearray, marker: bytes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while marker not in out:
        if time.monotonic() > deadline or not _read_some(proc, out, deadline):
            raise RuntimeError(f"writer did not print {marker!r} (got {bytes(out[-200:])!r})")


def _read_for(proc: subprocess.Popen, out: bytearray, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _read_some(proc, out, deadline):
        pass


def _read_some(proc: subprocess.Popen, out: bytearray, deadline: float) -> bool:
    """Read what is available until `deadline`; False once the writer closed stdout."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(max(0.0, deadline - time.monotonic())):
            return True
    chunk = os.read(proc.stdout.fileno(), 1 << 16)
    out += chunk
    return bool(chunk)


def _check_acks(
    data_dir: Path, expected: dict[tuple[str, str], int], max_seq: dict[str, int]
) -> tuple[int, list[str]]:
    """Count acknowledged writes missing after reopening; list verification problems."""
    lost = 0
    problems: list[str] = []
    try:
        with Store.open(data_dir) as store:
            report = store.verify(deep=True)
            problems.extend(report.errors)
            problems.extend(d.error for d in report.documents if d.error)
            docs = store.load_all(salvage=True)
            for doc_id, seq in max_seq.items():
                if store.last_seq(doc_id) < seq:
                    problems.append(f"{doc_id}: last seq {store.last_seq(doc_id)} < acked {seq}")
    except StorageError as exc:
        return len(expected), [str(exc)]
    for (doc_id, key), value in expected.items():
        doc = docs.get(doc_id)
        stored = doc.get("memory", type=pycrdt.Map).get(key) if doc is not None else None
        if not isinstance(stored, int | float) or stored < value:
            lost += 1
    return lost, problems


def _corruption_trial(data_dir: Path, rng: random.Random) -> tuple[str, str]:
    """Damage the file, ask the store, restore the file; return (outcome, what was done)."""
    db = data_dir / DB_NAME
    with Store.open(data_dir) as store:
        reference = {d: fingerprint_hex(doc) for d, doc in store.load_all().items()}
    # Fold the WAL into the main file so the bytes we flip are the ones read back, and
    # drop stale copies in free pages so a flip aimed at a record hits the live one.
    conn = sqlite3.connect(db)
    try:
        conn.execute("VACUUM")  # goes through the WAL: checkpoint after it
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    backup = db.with_name(DB_NAME + ".bench-backup")
    shutil.copyfile(db, backup)
    try:
        detail = _flip(db, rng)
        outcome = _judge(data_dir, reference)
    finally:
        for suffix in ("-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
        os.replace(backup, db)
    return outcome, detail


def _flip(db: Path, rng: random.Random) -> str:
    data = bytearray(db.read_bytes())
    target = None
    if rng.random() < 0.6:
        # Aim inside a stored record's data: the case the checksums exist for.
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT data FROM log UNION ALL SELECT data FROM checkpoints")
            blobs = [bytes(r[0]) for r in rows if isinstance(r[0], bytes) and len(r[0]) >= 8]
        finally:
            conn.close()
        rng.shuffle(blobs)
        for blob in blobs[:20]:
            at = data.find(blob)
            if at >= 0:
                target = at + rng.randrange(len(blob))
                break
    if target is None:
        target = rng.randrange(len(data))
        how = "random offset"
    else:
        how = "inside a record"
    flips = rng.randint(1, 3)
    for i in range(flips):
        pos = min(len(data) - 1, target + i * rng.randint(0, 8))
        data[pos] ^= 1 << rng.randrange(8)
    db.write_bytes(data)
    return f"{flips} bit(s) {how} at byte {target}"


def _judge(data_dir: Path, reference: dict[str, str]) -> str:
    try:
        with Store.open(data_dir) as store:
            report = store.verify(deep=True)
            if not report.ok:
                return "detected"
            docs = store.load_all()
            found = {d: fingerprint_hex(doc) for d, doc in docs.items()}
    except StorageError:
        return "detected"  # CorruptRecord, or the file itself reported damaged
    return "harmless" if found == reference else "silent"
