"""`statemesh bench throughput` at tiny sizes: three real sealed peers on loopback.

No timing assertions: rates are whatever the machine gives; what is checked is that every
level committed every write, the JSON has its fields with sane types, the ratio is what
it says, the scratch data is removed and the plot is a PNG.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli.main import main

pytestmark = pytest.mark.timeout(120)

TINY = ["--ops", "60", "--writers", "6", "--raw-ops", "600", "--timeout", "30"]


def test_throughput_commits_at_every_level_and_reports_raw_rates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = tmp_path / "tp.png"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    argv = ["bench", "throughput", *TINY, "--dir", str(scratch), "--plot", str(plot), "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["levels"]) == {"local", "replicas=1", "all"}
    for level, figures in result["levels"].items():
        for field in ("ops_per_s", "p50_ms", "p99_ms"):
            assert isinstance(figures[field], float) and figures[field] > 0, (level, field)
        assert figures["p99_ms"] >= figures["p50_ms"], level
    for field in ("raw_write_ops_per_s", "raw_apply_ops_per_s", "ratio_replicated_vs_raw"):
        assert isinstance(result[field], float) and result[field] > 0, field
    # The floor leaves out the runtime and the protocol: it cannot cost more than the
    # full commits did (CPU, not wall time: a comparison of work, not of speed).
    floor = result["floor_cpu_us_per_commit"]
    assert 0 < floor < 1000 * result["levels"]["replicas=1"]["cpu_ms_per_commit"]
    assert result["ratio_floor_vs_raw"] == pytest.approx(
        1e6 / floor / result["raw_write_ops_per_s"], rel=0.02
    )
    assert result["ratio_replicated_vs_raw"] == pytest.approx(
        result["levels"]["replicas=1"]["ops_per_s"] / result["raw_write_ops_per_s"], rel=0.02
    )
    ceiling = result["ceiling_local_commit_ops_per_s"]
    assert isinstance(ceiling, float) and ceiling > 0
    assert result["ratio_ceiling_vs_raw"] == pytest.approx(
        ceiling / result["raw_write_ops_per_s"], rel=0.02
    )
    assert result["writers"] == 6 and result["ops_per_level"] == 60
    assert result["sealed"] is True and result["peers"] == 3 and result["processes"] == 3
    for level, figures in result["levels"].items():
        # The writer's process and each child's: CPU was spent in all three.
        shares = figures["cpu_ms_per_commit_by_process"]
        assert len(shares) == 3 and all(x > 0 for x in shares), (level, shares)
        assert figures["cpu_ms_per_commit"] == pytest.approx(sum(shares), abs=0.01), level
    assert list(scratch.iterdir()) == []  # every node's data directory removed
    assert _children() == []  # the peer processes left with the benchmark
    data = plot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def _children() -> list[int]:
    """Pids of this process's live benchmark peers (read from /proc: no extra dependency)."""
    me, out = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # exited while we looked
            # The command name may hold spaces and parentheses: fields follow the last ")".
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == me and fields[0] != "Z" and b"benchmarks.throughput" in cmdline:
                out.append(int(entry.name))
    return out


def test_throughput_in_one_process_reports_the_same_fields(tmp_path: Path, capsys) -> None:
    argv = ["bench", "throughput", *TINY, "--processes", "1", "--dir", str(tmp_path), "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["processes"] == 1 and _children() == []
    for level, figures in result["levels"].items():
        assert figures["ops_per_s"] > 0 and figures["cpu_ms_per_commit"] > 0, level
        assert len(figures["cpu_ms_per_commit_by_process"]) == 1, level
    # Every peer needs one copy of each update; three peers in agreement forward none.
    assert result["updates_received_per_commit"] >= 2
    assert list(tmp_path.iterdir()) == []


def test_throughput_counts_every_write_of_a_multi_write_commit(tmp_path: Path, capsys) -> None:
    argv = ["bench", "throughput", *TINY, "--processes", "1", "--writes-per-commit", "3"]
    assert main([*argv, "--dir", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # 60 writes over 6 writers, 3 per commit: 3 commits each, 54 writes per level.
    assert result["writes_per_commit"] == 3 and result["ops_per_level"] == 54
    for level, figures in result["levels"].items():
        assert figures["ops_per_s"] == pytest.approx(3 * figures["commits_per_s"], rel=0.01), level
    # The three writes of a turn are merged into one update before they spread: the two
    # other peers need one each per commit (two in all), not one per write (six).
    assert 2 <= result["updates_received_per_commit"] < 6
    assert result["ratio_replicated_vs_raw"] == pytest.approx(
        result["levels"]["replicas=1"]["ops_per_s"] / result["raw_write_ops_per_s"], rel=0.02
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ops", "0"], "--ops must be at least 1"),
        (["--writers", "0"], "--writers must be at least 1"),
        (["--raw-ops", "0"], "--raw-ops must be at least 1"),
        (["--timeout", "0"], "--timeout must be positive"),
        (["--retransmit-mult", "0"], "--retransmit-mult must be at least 1"),
        (["--processes", "2"], "--processes must be 1 (one process) or 3"),
        (["--writes-per-commit", "0"], "--writes-per-commit must be at least 1"),
        (["--dir", "/nonexistent-dir"], "is not a directory"),
        (["--plot", "tp"], "must end in .png"),
    ],
)
def test_throughput_bad_flags_exit_2_before_starting_peers(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "throughput", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


async def test_updates_of_one_pump_leave_in_one_frame_per_peer(tmp_path: Path) -> None:
    """Batching that the throughput figures rely on: 32 writes, one sealed frame per peer."""
    import contextlib
    import secrets

    import trio

    from mesh import MeshConfig, open_mesh

    key = secrets.token_bytes(32)
    async with contextlib.AsyncExitStack() as stack:
        cfg = dict(key=key, profile="local")
        a = await stack.enter_async_context(
            open_mesh(MeshConfig(node="a", data_dir=tmp_path / "a", seed=11, **cfg))
        )
        peers = [a]
        for name in ("b", "c"):
            mc = MeshConfig(node=name, data_dir=tmp_path / name, seeds=[a.address], seed=12, **cfg)
            peers.append(await stack.enter_async_context(open_mesh(mc)))
        with trio.fail_after(20):
            while not all(
                sum(m["state"] == "alive" for m in p.members()) == 3 for p in peers
            ):  # fmt: skip
                await trio.sleep(0.02)
        sessions = [await a.session(f"batch-{k}") for k in range(32)]
        await sessions[-1].commit(replicas="all", timeout=20)
        for s in sessions:
            s.state.set_memory("k", 1)
        sealed = a.codec.sealer.frames_sealed
        a._pump()  # what the pump task does next; called here so nothing else interleaves
        assert a.codec.sealer.frames_sealed - sealed == 2  # not 32 updates x 2 peers
        for s in sessions:
            assert await s.commit(replicas="all", timeout=20) == ["b", "c"]


async def test_concurrent_commits_pump_their_writes_together(tmp_path: Path) -> None:
    """32 writers that write then commit at once: their updates leave in one pump, not 32."""
    import trio

    from mesh import MeshConfig, open_mesh

    async with open_mesh(MeshConfig(node="solo", data_dir=tmp_path / "solo", insecure=True)) as a:
        sessions = [await a.session(f"c-{k}") for k in range(32)]
        await sessions[-1].commit()
        drained: list[int] = []
        drain = a.replica.drain

        def counting_drain():
            items = drain()
            if items:
                drained.append(len(items))
            return items

        a.replica.drain = counting_drain

        async def writer(s) -> None:
            s.state.set_memory("k", 1)
            await s.commit()

        async with trio.open_nursery() as nursery:
            for s in sessions:
                nursery.start_soon(writer, s)
        assert sum(drained) == 32
        assert max(drained) == 32, drained  # one pump for all, not one per commit
        for s in sessions:
            assert a.replica.durable_state_vector(s.doc_id) == s.state.doc.get_state()


def test_the_ceiling_commits_every_write_to_disk_in_group_commits(tmp_path: Path) -> None:
    import sqlite3

    import trio

    from benchmarks.throughput import _ceiling

    rate = trio.run(_ceiling, tmp_path, 600, 6)
    assert rate > 0
    db = sqlite3.connect(tmp_path / "ceiling.sqlite")
    try:
        rows, docs = db.execute("SELECT count(*), count(DISTINCT doc) FROM log").fetchone()
    finally:
        db.close()
    # 600 writes shared by 6 writers: every one reached the table, from every writer.
    assert (rows, docs) == (600, 6)
