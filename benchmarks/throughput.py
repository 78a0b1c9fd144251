"""`statemesh bench throughput`: committed session writes per second on a 3-peer mesh.

Three real mesh nodes (`mesh.open_mesh`) on 127.0.0.1, sealed like production
(ChaCha20-Poly1305 under a freshly generated cluster key), each with its own SQLite
store (WAL, `synchronous=FULL`, group commit) in a scratch directory, joined by static
seeds; no mDNS. With `--processes 3` (the default) each peer is its own OS process, as
on real machines: the writer runs here, and the two others are child processes
(`python -m benchmarks.throughput`) driven over a pipe, which report their counters and
CPU time on request and exit when the pipe closes (so a crashed benchmark leaves no
peer behind). With `--processes 1` the three nodes share this process's event loop and
one core. The gossip profile is `local` (memberlist's loopback timings): under full
write load the `lan` profile's 100 ms probe deadline is missed often enough to declare
the writer dead and fail its sessions over mid-run, which measures scheduling, not the
mesh. The first node is the writer: `--writers` concurrent trio tasks,
each on its own session, each doing "write one memory key, then `await commit(level)`"
in a loop. One write per commit by default: every write counted was committed at its
level before the next was made (`--writes-per-commit K` makes K writes, each its own
transaction, before each commit, like an agent turn; `ops_per_s` then counts writes and
`commits_per_s` commits; the issue's goal is stated for K = 1). Concurrency is what lets group commit (one fsync for many writers)
and frame batching work; a single writer would measure latency, not throughput.

Levels: `local` (`commit()`: fsync'd here), `replicas=1` (one other peer reported a
durable vector covering it), `all` (every live member did). Per level: `ops_per_s`
(commits over the phase's wall time), the latency of write+commit (`p50_ms`,
`p99_ms`), and `cpu_ms_per_commit`: the CPU time of all three peers' processes during
the phase over its commits (with one process, that process's CPU time; the raw phases
and start-up are outside it), which is what a commit costs whatever the core count, and
`cpu_ms_per_commit_by_process` (the writer's process first).

Baselines, same run, same machine: `raw_write_ops_per_s` is the same writes made by
pycrdt alone (one transaction each, the update captured by an observer, as the runtime
captures it; nothing persisted or sent), `raw_apply_ops_per_s` the rate at which
another document integrates those updates; both are measured before and after the mesh
phases and averaged. `ratio_replicated_vs_raw` is `replicas=1` ops/s over raw write
ops/s. `floor_cpu_us_per_commit` is the CPU cost of the work a replicated commit cannot
avoid, timed in a plain loop with no event loop and no protocol (see `_floor`), and
`ratio_floor_vs_raw` the ratio a commit costing only that would reach on one core.
`ceiling_local_commit_ops_per_s` is the rate of the least a commit awaited in trio can do
(write, queue, group-commit with fsync in a worker thread, wake the writer; local only, see
`_ceiling`) with the same writers, and `ratio_ceiling_vs_raw` its ratio: no commit of the
runtime, local or replicated, can beat it on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pycrdt
import trio

from benchmarks._plot import Bars, add_plot_argument, bar_plot, check_plot_path, usage
from benchmarks._progress import note, phase
from gossip.config import PROFILES
from gossip.replication import ReplicationConfig

HELP = "committed session writes/s on a 3-peer loopback mesh per commit level vs raw pycrdt"

SUITE = "throughput"
LEVELS = ("local", "replicas=1", "all")
# Issue 7's goal: replicas=1 commits/s at least this share of raw pycrdt writes/s.
REPLICATED_GOAL_RATIO = 0.25
_MEMBERSHIP_TIMEOUT = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the throughput benchmark."""
    parser.add_argument("--ops", type=int, default=4000, help="committed writes per level")
    parser.add_argument("--writers", type=int, default=64, help="concurrent writer sessions")
    parser.add_argument("--raw-ops", type=int, default=100_000, help="writes in the raw phases")
    parser.add_argument("--timeout", type=float, default=30.0, help="commit timeout (s)")
    parser.add_argument("--dir", default=None, help="parent of the scratch data directories")
    parser.add_argument("--seed", type=int, default=1, help="seed for protocol randomness")
    parser.add_argument(
        "--profile", default="local", choices=sorted(PROFILES), help="gossip timing profile"
    )
    parser.add_argument(
        "--retransmit-mult",
        type=int,
        default=ReplicationConfig().retransmit_mult,
        help="rumour rounds = this * ceil(log10(N + 1)); the default is the runtime's",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=3,
        help="3: one OS process per peer (default); 1: all three peers in this process",
    )
    parser.add_argument(
        "--writes-per-commit",
        type=int,
        default=1,
        help="writes each writer makes before one commit (an agent turn); the goal is at 1",
    )
    add_plot_argument(parser, "ops/s per commit level next to raw pycrdt rates")


def run(args: argparse.Namespace) -> dict:
    """Measure raw pycrdt, then each commit level on a live 3-peer mesh."""
    for name in ("ops", "writers", "raw_ops", "retransmit_mult", "writes_per_commit"):
        if getattr(args, name) < 1:
            raise usage(SUITE, f"--{name.replace('_', '-')} must be at least 1")
    if not args.timeout > 0:
        raise usage(SUITE, "--timeout must be positive")
    if args.processes not in (1, 3):
        raise usage(SUITE, "--processes must be 1 (one process) or 3 (one per peer)")
    if args.dir is not None and not Path(args.dir).is_dir():
        raise usage(SUITE, f"--dir {args.dir!r} is not a directory")
    plot = check_plot_path(SUITE, args.plot)
    # Raw rates are measured before and after the mesh and averaged: on a shared machine
    # load drifts during a run, and both sides of the ratio should see the same drift.
    before = _raw(args.raw_ops, args.writers)
    with tempfile.TemporaryDirectory(prefix="statemesh-throughput-", dir=args.dir) as scratch:
        levels, traffic = trio.run(_mesh_phases, Path(scratch), args)
        floor_us = _floor(Path(scratch), args.raw_ops, args.writers)
        ceiling = trio.run(_ceiling, Path(scratch), args.raw_ops, args.writers)
    after = _raw(args.raw_ops, args.writers)
    raw_write = (before[0] + after[0]) / 2
    raw_apply = (before[1] + after[1]) / 2
    note(SUITE, f"raw pycrdt: {raw_write:,.0f} writes/s, {raw_apply:,.0f} applies/s")
    replicated = levels["replicas=1"]["ops_per_s"]
    result = {
        "levels": levels,
        "raw_write_ops_per_s": round(raw_write, 1),
        "raw_apply_ops_per_s": round(raw_apply, 1),
        "ratio_replicated_vs_raw": float(f"{replicated / raw_write:.4g}"),
        "floor_cpu_us_per_commit": round(floor_us, 2),
        # The ratio a replicated commit could reach on one core if it cost only its floor.
        "ratio_floor_vs_raw": float(f"{1e6 / floor_us / raw_write:.4g}"),
        # The fastest any commit awaited in trio can be: local, unreplicated, no protocol.
        "ceiling_local_commit_ops_per_s": round(ceiling, 1),
        "ratio_ceiling_vs_raw": float(f"{ceiling / raw_write:.4g}"),
        "writers": args.writers,
        "writes_per_commit": args.writes_per_commit,
        "ops_per_level": _commits_per_writer(args) * args.writers * args.writes_per_commit,
        "peers": 3,
        "processes": args.processes,
        "sealed": True,
        "profile": args.profile,
        "retransmit_mult": args.retransmit_mult,
        **traffic,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    if plot is not None:
        names = ["raw write", "raw apply", "ceiling\n(bare local\ncommit)", *LEVELS]
        values = [raw_write, raw_apply, ceiling, *(levels[lv]["ops_per_s"] for lv in LEVELS)]
        bar_plot(
            plot,
            [
                Bars(
                    "",
                    names,
                    [("operations per second", values)],
                    "ops/s (log)",
                    log=True,
                    goal=(
                        f"goal: replicas=1 at {REPLICATED_GOAL_RATIO} x raw write"
                        f" = {REPLICATED_GOAL_RATIO * raw_write:,.0f}/s",
                        REPLICATED_GOAL_RATIO * raw_write,
                    ),
                )
            ],
            title=(
                "statemesh bench throughput: 3 sealed peers on loopback, "
                + ("one process" if args.processes == 1 else "one process each")
            ),
            note=(
                f"{args.writers} concurrent writers, {_per_commit(args)}; "
                f"replicas=1 / raw write = {result['ratio_replicated_vs_raw']:.3g}"
            ),
        )
        note(SUITE, f"plot written to {plot}")
    return result


# --- raw pycrdt ---------------------------------------------------------------------------


def _doc() -> tuple[pycrdt.Doc, pycrdt.Map, list[bytes]]:
    doc = pycrdt.Doc()
    memory = doc.get("memory", type=pycrdt.Map)
    box: list[bytes] = []
    doc.observe(lambda event: box.append(event.update))
    return doc, memory, box


def _raw(ops: int, writers: int) -> tuple[float, float]:
    """(writes/s, applies/s) of pycrdt alone, for the benchmark's write shape."""
    per = max(1, ops // writers)
    docs = [_doc() for _ in range(writers)]
    updates: list[list[bytes]] = []
    with phase(SUITE, "raw pycrdt writes", writers) as bar:
        start = time.perf_counter()
        for _, memory, box in docs:
            doc = memory.doc
            for i in range(per):
                with doc.transaction():
                    memory[f"k{i % 16}"] = i
            updates.append(box)
            bar.advance()
        write_s = time.perf_counter() - start
    with phase(SUITE, "raw pycrdt applies", writers) as bar:
        start = time.perf_counter()
        for log in updates:
            target = pycrdt.Doc()
            for update in log:
                target.apply_update(update)
            bar.advance()
        apply_s = time.perf_counter() - start
    n = per * writers
    return n / write_s, n / apply_s


# --- the floor: what a replicated commit cannot avoid -------------------------------------


def _floor(root: Path, ops: int, writers: int) -> float:
    """CPU µs per commit of the unavoidable work of a replicated commit, with no runtime.

    One pycrdt write and its captured update, three state-vector encodings (commit
    target, rumour, ack), two applies (the other peers), three SQLite appends in group
    commits of `writers` (WAL, synchronous=FULL, a blake3 checksum per record, as
    `mesh.storage`), two dedup hashes, each update msgpack-encoded and decoded twice in
    envelopes of `writers` messages, sealed and opened once per envelope.
    """
    import sqlite3

    import blake3
    import msgpack
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    per = max(1, min(ops, 20_000) // writers)
    docs = [_doc() for _ in range(writers)]
    peers = [[pycrdt.Doc() for _ in range(writers)] for _ in range(2)]
    aead = ChaCha20Poly1305(secrets.token_bytes(32))
    nonce = bytes(12)
    db = sqlite3.connect(root / "floor.sqlite", isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY, doc TEXT, data BLOB, sum BLOB)")
        with phase(SUITE, "floor of a replicated commit", per) as bar:
            cpu = time.process_time()
            for i in range(per):
                batch = []
                for k, (doc, memory, box) in enumerate(docs):
                    with doc.transaction():
                        memory[f"k{i % 16}"] = i
                    update = box[-1]
                    for _ in range(3):
                        doc.get_state()
                    for replicas in peers:
                        replicas[k].apply_update(update)
                    batch.append(["session/floor", update, "w0", b""])
                for _ in range(3):
                    db.execute("BEGIN")
                    db.executemany(
                        "INSERT INTO log (doc, data, sum) VALUES (?, ?, ?)",
                        [(d, u, blake3.blake3(u).digest(16)) for d, u, _, _ in batch],
                    )
                    db.execute("COMMIT")
                for _ in range(2):
                    for d, u, _, _ in batch:
                        blake3.blake3(d.encode() + u).digest(16)
                    frame = aead.encrypt(nonce, msgpack.packb([1, "w0", batch]), b"")
                    msgpack.unpackb(aead.decrypt(nonce, frame, b""))
                bar.advance()
            cpu = time.process_time() - cpu
    finally:
        db.close()
    return cpu * 1e6 / (per * writers)


# --- the ceiling: the bare local commit in trio --------------------------------------------


async def _ceiling(root: Path, ops: int, writers: int) -> float:
    """Commits/s of the least a commit awaited in trio can do, with `writers` writers.

    Each writer makes the benchmark's write (one pycrdt transaction, the update captured
    by an observer), queues it, wakes a flusher and waits on an event; the flusher writes
    everything queued in one SQLite transaction (WAL, synchronous=FULL) in a worker
    thread, as `mesh.storage`'s group commit does, and wakes the writers it covered. No
    checksum, no replication, no sealing, no ownership check, no metrics: a local commit
    of the runtime does all of this and more, and a replicated one more again, so neither
    can be faster than this on the same machine.
    """
    import sqlite3

    per = max(1, min(ops, 50_000) // writers)
    db = sqlite3.connect(root / "ceiling.sqlite", isolation_level=None, check_same_thread=False)
    queue: list[tuple[str, bytes]] = []
    waiting: list[trio.Event] = []
    wake = [trio.Event()]

    def write_batch(batch: list[tuple[str, bytes]]) -> None:
        db.execute("BEGIN")
        db.executemany("INSERT INTO log (doc, data) VALUES (?, ?)", batch)
        db.execute("COMMIT")

    async def flusher() -> None:
        while True:
            await wake[0].wait()
            wake[0] = trio.Event()
            batch, queue[:] = queue[:], []
            events, waiting[:] = waiting[:], []
            await trio.to_thread.run_sync(write_batch, batch)
            for event in events:
                event.set()

    async def writer(k: int, bar) -> None:
        doc, memory, box = _doc()
        for i in range(per):
            with doc.transaction():
                memory[f"k{i % 16}"] = i
            queue.append((f"session/{k}", box[-1]))
            done = trio.Event()
            waiting.append(done)
            wake[0].set()
            await done.wait()
        bar.advance()

    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY, doc TEXT, data BLOB)")
        with phase(SUITE, "ceiling: bare local commits in trio", writers) as bar:
            async with trio.open_nursery() as outer:
                outer.start_soon(flusher)
                start = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for k in range(writers):
                        nursery.start_soon(writer, k, bar)
                elapsed = time.perf_counter() - start
                outer.cancel_scope.cancel()
    finally:
        db.close()
    return per * writers / elapsed


# --- the mesh -----------------------------------------------------------------------------


def _config(name: str, root: Path, key: bytes, seed: int, seeds: list[str], opts: dict):
    from mesh import MeshConfig

    return MeshConfig(
        node=name, data_dir=root / name, key=key, seeds=seeds, seed=seed,
        commit_timeout=opts["timeout"], profile=opts["profile"],
        replication=ReplicationConfig(retransmit_mult=opts["retransmit_mult"]),
    )  # fmt: skip


def _counters(mesh) -> dict:
    """What one peer reports: its view of membership, traffic counters, CPU time."""
    stats = mesh.node.replicator.stats
    return {
        "alive": sorted(m["node"] for m in mesh.members() if m["state"] == "alive"),
        "received": stats.updates_received,
        "duplicates": stats.duplicates,
        "frames": mesh.transport.stats.frames_sent + mesh.transport.stats.datagrams_sent,
        "pending_rumours": mesh.node.replicator.pending_rumours,
    }


class _Local:
    """A peer in this process."""

    def __init__(self, mesh) -> None:
        self.mesh = mesh

    async def counters(self) -> dict:
        return _counters(self.mesh)


class _Child:
    """A peer in a child process: one JSON line per request over its stdin/stdout."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._buffer = b""

    async def _line(self) -> dict:
        with trio.fail_after(_MEMBERSHIP_TIMEOUT):
            while b"\n" not in self._buffer:
                chunk = await self.proc.stdout.receive_some(65536)
                if not chunk:
                    raise RuntimeError(f"benchmark peer {self.proc.pid} exited early")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    async def start(self, spec: dict) -> str:
        await self.proc.stdin.send_all(json.dumps(spec).encode() + b"\n")
        return (await self._line())["address"]

    async def counters(self) -> dict:
        await self.proc.stdin.send_all(b"counters\n")
        return await self._line()


async def _mesh_phases(root: Path, args: argparse.Namespace) -> tuple[dict, dict]:
    from mesh import open_mesh

    key = secrets.token_bytes(32)  # a generated cluster key, as `statemesh keygen` makes
    rng = random.Random(args.seed)
    opts = {"timeout": args.timeout, "profile": args.profile,
            "retransmit_mult": args.retransmit_mult}  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(
            open_mesh(_config("w0", root, key, rng.getrandbits(32), [], opts))
        )
        peers: list = [_Local(first)]
        if args.processes == 1:
            for i in (1, 2):
                cfg = _config(f"w{i}", root, key, rng.getrandbits(32), [first.address], opts)
                peers.append(_Local(await stack.enter_async_context(open_mesh(cfg))))
        else:
            for i in (1, 2):
                proc = await stack.enter_async_context(_child_process())
                child = _Child(proc)
                spec = {"name": f"w{i}", "root": str(root), "key": key.hex(),
                        "seed": rng.getrandbits(32), "seeds": [first.address], **opts}  # fmt: skip
                await child.start(spec)
                peers.append(child)
        await _await_membership(peers)
        levels = {}
        before = [await p.counters() for p in peers]
        commits = 0
        for level in LEVELS:
            levels[level] = await _level(first, peers, level, args)
            commits += _commits_per_writer(args) * args.writers
            await _settle(peers)
        after = [await p.counters() for p in peers]
        per = max(1, commits)

        def delta(name: str) -> int:
            return sum(a[name] - b[name] for a, b in zip(after, before, strict=True))

        traffic = {
            "frames_sent_per_commit": round(delta("frames") / per, 2),
            # Every peer needs one copy of each update; more is rumour redundancy.
            "updates_received_per_commit": round(delta("received") / per, 2),
            "duplicate_updates_per_commit": round(delta("duplicates") / per, 2),
        }
    return levels, traffic


async def _cpu(peers) -> list[float]:
    """CPU seconds used so far by each process running a peer, this one first."""
    return [time.process_time()] + [
        (await p.counters())["cpu_s"] for p in peers if isinstance(p, _Child)
    ]


@contextlib.asynccontextmanager
async def _child_process():
    """A benchmark peer process; closing its stdin makes it leave and exit."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "benchmarks.throughput"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await proc.stdin.aclose()
        with trio.move_on_after(10), trio.CancelScope(shield=True):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()  # this pid is ours: we started it
            with trio.CancelScope(shield=True):
                await proc.wait()


async def _await_membership(peers) -> None:
    names = {"w0", "w1", "w2"}
    with trio.move_on_after(_MEMBERSHIP_TIMEOUT):
        while True:
            views = [set((await p.counters())["alive"]) for p in peers]
            if all(view == names for view in views):
                return
            await trio.sleep(0.02)
    raise RuntimeError(
        f"the 3 loopback peers did not agree on membership in {_MEMBERSHIP_TIMEOUT} s"
    )


def _commits_per_writer(args: argparse.Namespace) -> int:
    """Commits each writer makes per level: `--ops` writes shared out, at least one."""
    return max(1, args.ops // (args.writers * args.writes_per_commit))


def _per_commit(args: argparse.Namespace) -> str:
    k = args.writes_per_commit
    return "one write per commit" if k == 1 else f"{k} writes per commit"


async def _level(mesh, peers, level: str, args: argparse.Namespace) -> dict:
    replicas: int | str | None = {"local": None, "replicas=1": 1, "all": "all"}[level]
    per = _commits_per_writer(args)
    k = args.writes_per_commit
    tag = level.replace("=", "")
    sessions = [await mesh.session(f"{tag}-{k}") for k in range(args.writers)]
    # Warm-up: every session exists everywhere before timing starts.
    async with trio.open_nursery() as nursery:
        for s in sessions:
            s.state.set_memory("warm", 0)
            nursery.start_soon(_commit, s, "all", args.timeout)
    latencies: list[float] = []
    with phase(SUITE, f"commit level {level}", per * args.writers) as bar:

        async def writer(session) -> None:
            for i in range(per):
                t = time.perf_counter()
                for j in range(k):  # each write its own transaction, as in the raw phase
                    session.state.set_memory(f"k{(i * k + j) % 16}", i)
                await session.commit(replicas=replicas, timeout=args.timeout)
                latencies.append(time.perf_counter() - t)
                bar.advance()

        cpu = await _cpu(peers)
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for s in sessions:
                nursery.start_soon(writer, s)
        elapsed = time.perf_counter() - start
        # Replication of the last commits may still be running on the other peers; it
        # is part of what these commits cost, but not of what the next level costs.
        cpu = [b - a for a, b in zip(cpu, await _cpu(peers), strict=True)]
    # Every session of this level on every peer before the next level starts.
    async with trio.open_nursery() as nursery:
        for s in sessions:
            nursery.start_soon(_commit, s, "all", args.timeout)
    latencies.sort()
    return {
        # ops are committed writes: with --writes-per-commit K, K per commit.
        "ops_per_s": round(len(latencies) * k / elapsed, 1),
        "commits_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 3),
        "cpu_ms_per_commit": round(sum(cpu) * 1000 / len(latencies), 3),
        # With one process per peer: the writer's share first, then each other peer's.
        "cpu_ms_per_commit_by_process": [round(c * 1000 / len(latencies), 3) for c in cpu],
    }


async def _settle(peers) -> None:
    """Let the previous level's replication traffic finish so it does not slow the next."""
    with trio.move_on_after(_MEMBERSHIP_TIMEOUT):
        while any([(await p.counters())["pending_rumours"] for p in peers]):
            await trio.sleep(0.05)


async def _commit(session, replicas, timeout: float) -> None:
    await session.commit(replicas=replicas, timeout=timeout)


# --- a peer in a child process -------------------------------------------------------------


async def _serve_peer() -> None:
    """Run one benchmark peer: a spec line in, its address out, then answer `counters`."""
    from mesh import open_mesh
    from mesh.agent_process import stdin_lines

    def reply(obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async with contextlib.aclosing(stdin_lines()) as lines:
        first = await anext(lines, None)
        if first is None:
            return
        spec = json.loads(first)
        cfg = _config(spec["name"], Path(spec["root"]), bytes.fromhex(spec["key"]), spec["seed"],
                      spec["seeds"], spec)  # fmt: skip
        async with open_mesh(cfg) as mesh:
            reply({"address": mesh.address})
            async for request in lines:
                if request != "counters":
                    raise RuntimeError(f"unknown request {request!r}")
                reply({**_counters(mesh), "cpu_s": time.process_time()})


if __name__ == "__main__":
    trio.run(_serve_peer)
