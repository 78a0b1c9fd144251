"""`statemesh bench storage`: durable write rate against raw pycrdt, and recovery speed.

Three measurements, in one run on one machine so they can be compared:

* raw: the rate at which pycrdt makes the writes (one transaction each, the update
  captured by an observer) when nothing is persisted;
* durable: the same writes by many concurrent trio writers through an `AsyncStore`
  (group commit, WAL, `synchronous=FULL`). The store is opened as the mesh runtime opens
  it, with `check_updates=False`: its updates come out of a pycrdt transaction, so decoding
  them again proves nothing (`--check-updates` measures the checking mode, about 2 us more
  per write, which tools and untrusted callers get by default). A
  write counts once its writer has seen it acknowledged as durable; each writer keeps at
  most `--window` writes waiting for that acknowledgement (1 = wait after every write,
  reported separately as `durable_ack_each_ops_per_s`). Raw and durable phases alternate
  over `--rounds` so that load from elsewhere on the machine hits both alike; each rate is
  total writes over total time;
* recovery: a log of `--updates` small updates to one document, stored as records of
  `--record-updates` updates (what group commit produces when writers commit that often),
  is reopened and rebuilt from the log alone (no checkpoint): `recovery_s` covers opening
  the store, reading and verifying every record and applying every update. The rebuilt
  content is checked against the writer's.

Progress goes to stderr; the result dict is what `statemesh bench storage` prints.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import pycrdt
import trio

from mesh.storage import AsyncStore, Store

HELP = "durable writes/s (group commit, fsync on) vs raw pycrdt, and log recovery speed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the storage benchmark."""
    parser.add_argument("--updates", type=int, default=1_000_000, help="recovery log size")
    parser.add_argument("--writes", type=int, default=30_000, help="writes per phase and round")
    parser.add_argument("--writers", type=int, default=200, help="concurrent writer tasks")
    parser.add_argument("--window", type=int, default=32, help="unacknowledged writes per writer")
    parser.add_argument("--record-updates", type=int, default=4, help="updates per log record")
    parser.add_argument("--rounds", type=int, default=10, help="alternating raw/durable rounds")
    parser.add_argument(
        "--check-updates", action="store_true", help="decode every update before accepting it"
    )
    parser.add_argument("--dir", default=None, help="parent of the scratch data directory")
    parser.add_argument("--seed", type=int, default=1, help="seed for the written values")


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark and return its figures."""
    for name in ("updates", "writes", "writers", "window", "record_updates", "rounds"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="statemesh-bench-", dir=args.dir) as scratch:
        root = Path(scratch)
        per_writer = max(1, args.writes // args.writers)
        writes = per_writer * args.writers
        raw_time = durable_time = 0.0
        transactions = batches = 0
        for r in range(args.rounds):
            raw_time += _raw_phase(args.writers, per_writer, rng.randrange(1 << 30))
            dt, tx, nb = trio.run(
                _durable_phase,
                root / f"durable{r}",
                args.writers,
                per_writer,
                args.window,
                args.check_updates,
            )
            durable_time += dt
            transactions += tx
            batches += nb
            _progress(
                f"round {r + 1}/{args.rounds}: raw {writes / raw_time * (r + 1):,.0f}/s,"
                f" durable {writes / durable_time * (r + 1):,.0f}/s"
            )
        raw_rate = writes * args.rounds / raw_time
        durable_rate = writes * args.rounds / durable_time
        # Waiting after every write is bounded by trio's wake-up cost, not the disk: a
        # smaller run is enough to show it.
        each_per_writer = max(1, per_writer // 4)
        each_time, _, _ = trio.run(
            _durable_phase, root / "ack-each", args.writers, each_per_writer, 1, args.check_updates
        )
        ack_each_rate = each_per_writer * args.writers / each_time
        recovery_s, recovery_cpu_s, records = _recovery(
            root / "recovery", args.updates, args.record_updates
        )
    return {
        "durable_ops_per_s": round(durable_rate, 1),
        "raw_ops_per_s": round(raw_rate, 1),
        "ratio": round(durable_rate / raw_rate, 3),
        "recovery_s": round(recovery_s, 3),
        "recovery_updates_per_s": round(args.updates / recovery_s, 1),
        "durable_ack_each_ops_per_s": round(ack_each_rate, 1),
        "writers": args.writers,
        "window": args.window,
        "check_updates": args.check_updates,
        "durable_writes": writes * args.rounds,
        "transactions": transactions,
        "mean_writes_per_transaction": round(writes * args.rounds / max(1, transactions), 1),
        # Context for the rates: other work on the machine slows every phase.
        "load_average_1m": round(os.getloadavg()[0], 2),
        "recovery_cpu_s": round(recovery_cpu_s, 3),
        "recovery_updates": args.updates,
        "recovery_records": records,
    }


def _progress(message: str) -> None:
    print(f"[bench storage] {message}", file=sys.stderr, flush=True)


def _writer_doc() -> tuple[pycrdt.Doc, pycrdt.Map, list[bytes]]:
    # The session shape: memory writes into the `memory` map of a session document.
    doc = pycrdt.Doc()
    memory = doc.get("memory", type=pycrdt.Map)
    box: list[bytes] = []
    doc.observe(lambda event: box.append(event.update))
    return doc, memory, box


def _raw_phase(writers: int, per_writer: int, seed: int) -> float:
    """Seconds pycrdt takes to make the writes with nothing persisted."""
    docs = [_writer_doc() for _ in range(writers)]
    start = time.perf_counter()
    for doc, memory, box in docs:
        for i in range(per_writer):
            with doc.transaction():
                memory[f"k{i % 16}"] = i + seed
            box.pop()
    return time.perf_counter() - start


async def _durable_phase(
    data_dir: Path, writers: int, per_writer: int, window: int, check_updates: bool
) -> tuple[float, int, int]:
    """Seconds for the same writes made durable through AsyncStore; transactions; batches."""
    async with AsyncStore.open(data_dir, check_updates=check_updates) as store:
        docs = [_writer_doc() for _ in range(writers)]

        async def writer(k: int) -> None:
            doc, memory, box = docs[k]
            doc_id = f"session/w{k}"
            pending: collections.deque = collections.deque()
            for i in range(per_writer):
                with doc.transaction():
                    memory[f"k{i % 16}"] = i
                pending.append(store.submit(doc_id, box.pop()))
                if len(pending) >= window:
                    await pending.popleft().wait()
            while pending:
                await pending.popleft().wait()

        tx0 = store.store.stats.transactions
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for k in range(writers):
                nursery.start_soon(writer, k)
        elapsed = time.perf_counter() - start
        return elapsed, store.store.stats.transactions - tx0, store.batches


def _recovery(data_dir: Path, updates: int, record_updates: int) -> tuple[float, float, int]:
    """Write a log of `updates` updates to one document, then time reopening and rebuilding it."""
    doc, memory, box = _writer_doc()
    doc_id = "session/recovery"
    chunk = 10_000
    with Store.open(data_dir) as store:
        made = 0
        while made < updates:
            n = min(chunk, updates - made)
            for i in range(made, made + n):
                with doc.transaction():
                    memory[f"k{i % 100}"] = i
            store.append_many([(doc_id, u) for u in box], max_record_updates=record_updates)
            box.clear()
            made += n
            if made % 200_000 < chunk or made == updates:
                _progress(f"recovery log: {made:,}/{updates:,} updates written")
        records = store.info(doc_id).records
    expected = memory.to_py()
    _progress("recovery: reopening and rebuilding from the log")
    start, cpu = time.perf_counter(), time.process_time()
    with Store.open(data_dir) as store:
        rebuilt = store.load(doc_id)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    if rebuilt.get("memory", type=pycrdt.Map).to_py() != expected:
        raise RuntimeError("recovered document differs from what was written")
    return elapsed, cpu, records
