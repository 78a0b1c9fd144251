"""`statemesh bench throughput`: committed session writes per second on a 3-peer mesh.

Three real mesh nodes (`mesh.open_mesh`) in this process, on 127.0.0.1, sealed like
production (ChaCha20-Poly1305 under a freshly generated cluster key), each with its own
SQLite store (WAL, `synchronous=FULL`, group commit) in a scratch directory, joined by
static seeds; no mDNS. The gossip profile is `local` (memberlist's loopback timings):
the three nodes share one event loop, and under full write load the `lan` profile's
100 ms probe deadline is missed often enough to declare the writer dead and fail its
sessions over mid-run, which measures this process's scheduling, not the mesh. The first
node is the writer: `--writers` concurrent trio tasks,
each on its own session, each doing "write one memory key, then `await commit(level)`"
in a loop. One write per commit: every write counted was committed at its level before
the next was made. Concurrency is what lets group commit (one fsync for many writers)
and frame batching work; a single writer would measure latency, not throughput.

Levels: `local` (`commit()`: fsync'd here), `replicas=1` (one other peer reported a
durable vector covering it), `all` (every live member did). Per level: `ops_per_s`
(commits over the phase's wall time) and the latency of write+commit (`p50_ms`,
`p99_ms`).

Baselines, same run, same machine: `raw_write_ops_per_s` is the same writes made by
pycrdt alone (one transaction each, the update captured by an observer, as the runtime
captures it; nothing persisted or sent), `raw_apply_ops_per_s` the rate at which
another document integrates those updates; both are measured before and after the mesh
phases and averaged. `ratio_replicated_vs_raw` is `replicas=1`
ops/s over raw write ops/s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import statistics
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
    add_plot_argument(parser, "ops/s per commit level next to raw pycrdt rates")


def run(args: argparse.Namespace) -> dict:
    """Measure raw pycrdt, then each commit level on a live 3-peer mesh."""
    for name in ("ops", "writers", "raw_ops", "retransmit_mult"):
        if getattr(args, name) < 1:
            raise usage(SUITE, f"--{name.replace('_', '-')} must be at least 1")
    if not args.timeout > 0:
        raise usage(SUITE, "--timeout must be positive")
    if args.dir is not None and not Path(args.dir).is_dir():
        raise usage(SUITE, f"--dir {args.dir!r} is not a directory")
    plot = check_plot_path(SUITE, args.plot)
    # Raw rates are measured before and after the mesh and averaged: on a shared machine
    # load drifts during a run, and both sides of the ratio should see the same drift.
    before = _raw(args.raw_ops, args.writers)
    with tempfile.TemporaryDirectory(prefix="statemesh-throughput-", dir=args.dir) as scratch:
        levels, traffic = trio.run(_mesh_phases, Path(scratch), args)
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
        "writers": args.writers,
        "ops_per_level": args.ops // args.writers * args.writers,
        "peers": 3,
        "sealed": True,
        "profile": args.profile,
        "retransmit_mult": args.retransmit_mult,
        **traffic,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    if plot is not None:
        names = ["raw write", "raw apply", *LEVELS]
        values = [raw_write, raw_apply, *(levels[lv]["ops_per_s"] for lv in LEVELS)]
        bar_plot(
            plot,
            [Bars("", names, [("operations per second", values)], "ops/s (log)", log=True)],
            title="statemesh bench throughput: 3 sealed peers on loopback, one process",
            note=(
                f"{args.writers} concurrent writers, one write per commit; "
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


# --- the mesh -----------------------------------------------------------------------------


async def _mesh_phases(root: Path, args: argparse.Namespace) -> tuple[dict, dict]:
    from mesh import MeshConfig, open_mesh

    key = secrets.token_bytes(32)  # a generated cluster key, as `statemesh keygen` makes
    replication = ReplicationConfig(retransmit_mult=args.retransmit_mult)
    rng = random.Random(args.seed)
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(
            open_mesh(
                MeshConfig(
                    node="w0", data_dir=root / "w0", key=key, seed=rng.getrandbits(32),
                    commit_timeout=args.timeout, profile=args.profile, replication=replication,
                )
            )
        )  # fmt: skip
        nodes = [first]
        for i in (1, 2):
            cfg = MeshConfig(
                node=f"w{i}", data_dir=root / f"w{i}", key=key, seeds=[first.address],
                seed=rng.getrandbits(32), commit_timeout=args.timeout, profile=args.profile,
                replication=replication,
            )  # fmt: skip
            nodes.append(await stack.enter_async_context(open_mesh(cfg)))
        await _await_membership(nodes)
        levels = {}
        frames0 = _frames(nodes)
        received0 = _received(nodes)
        commits = 0
        for level in LEVELS:
            levels[level] = await _level(first, level, args)
            commits += args.ops // args.writers * args.writers
            await _settle(nodes)
        per = max(1, commits)
        received, duplicates = (x - x0 for x, x0 in zip(_received(nodes), received0, strict=True))
        traffic = {
            "frames_sent_per_commit": round((_frames(nodes) - frames0) / per, 2),
            # Every peer needs one copy of each update; more is rumour redundancy.
            "updates_received_per_commit": round(received / per, 2),
            "duplicate_updates_per_commit": round(duplicates / per, 2),
        }
    return levels, traffic


def _received(nodes) -> tuple[int, int]:
    stats = [n.node.replicator.stats for n in nodes]
    return sum(s.updates_received for s in stats), sum(s.duplicates for s in stats)


def _frames(nodes) -> int:
    return sum(n.transport.stats.frames_sent + n.transport.stats.datagrams_sent for n in nodes)


async def _await_membership(nodes) -> None:
    names = {n.node_id for n in nodes}
    with trio.move_on_after(_MEMBERSHIP_TIMEOUT):
        while True:
            if all({m["node"] for m in n.members() if m["state"] == "alive"} == names
                   for n in nodes):  # fmt: skip
                return
            await trio.sleep(0.02)
    raise RuntimeError(
        f"the 3 loopback peers did not agree on membership in {_MEMBERSHIP_TIMEOUT} s"
    )


async def _level(mesh, level: str, args: argparse.Namespace) -> dict:
    replicas: int | str | None = {"local": None, "replicas=1": 1, "all": "all"}[level]
    per = max(1, args.ops // args.writers)
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
                session.state.set_memory(f"k{i % 16}", i)
                await session.commit(replicas=replicas, timeout=args.timeout)
                latencies.append(time.perf_counter() - t)
                bar.advance()

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for s in sessions:
                nursery.start_soon(writer, s)
        elapsed = time.perf_counter() - start
    # Every session of this level on every peer before the next level starts.
    async with trio.open_nursery() as nursery:
        for s in sessions:
            nursery.start_soon(_commit, s, "all", args.timeout)
    latencies.sort()
    return {
        "ops_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 3),
    }


async def _settle(nodes) -> None:
    """Let the previous level's replication traffic finish so it does not slow the next."""
    with trio.move_on_after(_MEMBERSHIP_TIMEOUT):
        while any(n.node.replicator.pending_rumours for n in nodes):
            await trio.sleep(0.05)


async def _commit(session, replicas, timeout: float) -> None:
    await session.commit(replicas=replicas, timeout=timeout)
