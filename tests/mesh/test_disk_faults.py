"""Disk faults under a running node: a full disk during writes, corrupted records, a truncated file.

The promise under test: the node reports the problem (`/readyz` answers 503 with the
store's reason, the peer says it on stderr), refuses durable acknowledgements it cannot
honour (`commit` raises `DiskFull` / `CorruptRecord`; peers get no replica ack covering
what its disk cannot give back), and loses nothing it acknowledged before (checked after
a restart with space again, or after peers refilled a damaged document).

A damaged record does not stop the node: the document is served from the records before
the damage, reported, and refilled from a live peer, after which a checkpoint supersedes
the damage and a restart loads cleanly. A file SQLite cannot open at all stops the peer
with one line saying which file and what to do.

The full disk is real: a small tmpfs mounted as the data directory (root only; the test is
skipped with the reason when mounting fails), unmounted in `finally`. Corruption (bytes of
a record's blob overwritten in the file, or its checksum or row changed through SQLite) and
truncation are done to the real SQLite file between runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pycrdt
import pytest
import trio

from crdt_types.errors import CorruptRecord, DiskFull, NotOwner, StorageError, UnreadableStore
from mesh import MeshConfig, open_mesh
from mesh.storage import DB_NAME, Store, move_unreadable
from tests.mesh.helpers import MeshKit

SEED = 20261203

pytestmark = pytest.mark.timeout(120)


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A tmpfs of `size` mounted at `path` for the block; skip the test if that fails."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a tmpfs mount: run as root")
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def _cfg(data: Path, name: str = "n", **kw) -> MeshConfig:
    return MeshConfig(node=name, data_dir=data, insecure=True, seed=SEED, mdns=False, **kw)


async def _readyz(mesh) -> tuple[int, dict]:
    url = f"http://{mesh.http_address}/readyz"

    def get() -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    return await trio.to_thread.run_sync(get)


async def test_full_disk_refuses_acks_reports_it_and_loses_nothing_acknowledged(tmp_path, caplog):
    data = tmp_path / "data"
    with tmpfs(data, "1m"):
        acked: dict[str, str] = {}
        refused: list[str] = []
        async with open_mesh(_cfg(data, http="127.0.0.1:0")) as mesh:
            s = await mesh.session("busy")
            status, body = await _readyz(mesh)
            assert status == 200, body
            # Fill the disk: every commit that returns is an acknowledgement we must keep.
            for i in range(400):
                key, value = f"k{i}", f"{i:04d}" + "v" * 8000
                s.state.set_memory(key, value)
                try:
                    await s.commit()
                except DiskFull:
                    refused.append(key)
                    break
                acked[key] = value
            else:
                raise AssertionError("1 MiB never filled up")
            assert acked, "the disk was full before anything was written"
            # Reported: /readyz says why, and further durable acks are still refused.
            status, body = await _readyz(mesh)
            assert status == 503 and any("DiskFull" in r for r in body["reasons"]), body
            s.state.set_memory("while-full", "x" * 8000)
            with pytest.raises(StorageError):
                await s.commit()
            refused.append("while-full")
            # Space comes back: the node recovers by itself and acknowledges again.
            remount(data, "64m")
            s.state.set_memory("after", "room again")
            await s.commit()
            acked["after"] = "room again"
            status, body = await _readyz(mesh)
            assert status == 200, body
            durable_after = mesh.replica.durable_state_vector("session/busy")
            assert durable_after == mesh.replica.state_vector("session/busy")
        logged = [r.getMessage() for r in caplog.records if r.name == "statemesh.store"]
        assert len([m for m in logged if "DiskFull" in m]) == 1, logged
        assert any("recovered" in m for m in logged), logged
        # Nothing acknowledged was lost: a restart from the disk holds every acked write.
        async with open_mesh(_cfg(data)) as again:
            state = again.read_session("busy")
            assert state is not None
            missing = [k for k, v in acked.items() if state.get_memory(k) != v]
            assert not missing, f"acknowledged writes lost after a full disk: {missing[:5]}"
            # Refused writes stayed in the documents in memory, and the acks after recovery
            # covered their clocks: they must have reached the disk with the first batch
            # that fitted (before the fix they were dropped and the acks overstated).
            assert all(state.get_memory(k) is not None for k in refused), refused
            assert again.replica.durable_state_vector("session/busy") == durable_after


# --- a damaged document: served, reported, refused durability, refilled from peers ----------

STATEMESH = [sys.executable, "-m", "cli.main"]
_kit = MeshKit(SEED)


def _peer_once(data: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["peer", "--node", "n", "--data", str(data), "--listen", "127.0.0.1:0", *extra]
    return subprocess.run(
        [*STATEMESH, *args, "--no-mdns", "--insecure"], capture_output=True, text=True, timeout=60
    )


def _files(data: Path) -> list[object]:
    """The stored history: log, checkpoints and heads (bytes move when SQLite checkpoints
    its WAL on open, and a start records the client ids it drew: neither is history)."""
    with contextlib.closing(sqlite3.connect(f"file:{data / DB_NAME}?mode=ro", uri=True)) as db:
        try:
            return [
                db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                for table in ("log", "checkpoints", "heads")
            ]
        except sqlite3.DatabaseError as exc:  # a damaged file: compare its bytes instead
            return [f"damaged: {exc}", (data / DB_NAME).read_bytes().hex()]


async def _write_five(data: Path) -> None:
    async with open_mesh(_cfg(data)) as mesh:
        s = await mesh.session("s")
        t = await mesh.session("t")
        t.state.set_memory("other", "fine")
        await t.commit()
        for i in range(5):
            s.state.set_memory(f"k{i}", i)
            await s.commit()  # one batch, one log record each


def _records(data: Path, doc_id: str) -> list[int]:
    with contextlib.closing(sqlite3.connect(data / DB_NAME)) as db:
        rows = db.execute(
            "SELECT first_seq FROM log WHERE doc_id = ? ORDER BY first_seq", (doc_id,)
        )
        return [r[0] for r in rows]


def _damage(data: Path, doc_id: str, seq: int, how: str) -> None:
    """Damage one record: flip bytes of its blob in the file itself, or its checksum or
    its row through SQLite (what a torn write or a lost page leaves behind)."""
    db_path = data / DB_NAME
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        where = "WHERE doc_id = ? AND first_seq = ?"
        if how == "bytes":
            (blob,) = db.execute(f"SELECT data FROM log {where}", (doc_id, seq)).fetchone()
        elif how == "checksum":
            db.execute(f"UPDATE log SET checksum = zeroblob(32) {where}", (doc_id, seq))
        else:
            db.execute(f"DELETE FROM log {where}", (doc_id, seq))
        db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the blob now lives in the main file
    if how == "bytes":
        raw = bytearray(db_path.read_bytes())
        at = raw.find(blob)
        assert at >= 0 and raw.find(blob, at + 1) < 0, "the record's blob is not unique"
        middle = at + len(blob) // 2
        raw[middle : middle + 4] = bytes(b ^ 0xFF for b in raw[middle : middle + 4])
        db_path.write_bytes(bytes(raw))


async def _http_get(address: str, path: str) -> tuple[int, object]:
    def get() -> tuple[int, object]:
        try:
            with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as r:
                body = r.read()
                status = r.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode()

    return await trio.to_thread.run_sync(get)


@pytest.mark.parametrize("how", ["bytes", "checksum", "missing"])
async def test_a_damaged_document_is_served_reported_and_refuses_durable_commits(
    tmp_path, caplog, how
):
    data = tmp_path / "n"
    await _write_five(data)
    victim = _records(data, "session/s")[-2]  # holds k3; k4 after it must not apply alone
    _damage(data, "session/s", victim, how)
    caplog.set_level("INFO", logger="statemesh.store")
    async with open_mesh(_cfg(data, http="127.0.0.1:0")) as mesh:
        # One clear line naming the document and the record, no traceback.
        lines = [r for r in caplog.records if "damaged on disk" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in caplog.records]
        assert "session/s" in lines[0].getMessage() and f"record {victim}" in lines[0].getMessage()
        assert lines[0].exc_info is None
        # Served: what came before the damage, nothing after it.
        kept = mesh.read_session("s")
        assert [kept.get_memory(f"k{i}") for i in range(3)] == [0, 1, 2]
        assert kept.get_memory("k3") is None and kept.get_memory("k4") is None
        # Reported: /readyz 503 naming it, /livez 200, /status and /metrics show it.
        status, body = await _http_get(mesh.http_address, "/readyz")
        assert status == 503 and any("session/s" in r for r in body["reasons"]), body
        status, body = await _http_get(mesh.http_address, "/livez")
        assert status == 200, body
        status, body = await _http_get(mesh.http_address, "/status")
        damaged = body["health"]["damaged_documents"]
        assert [(d["document"], d["record"]) for d in damaged] == [("session/s", victim)], body
        assert body["started"] is True and "ready" not in body
        status, text = await _http_get(mesh.http_address, "/metrics")
        assert "statemesh_store_damaged_documents 1.0" in text
        # Durable commits on it are refused, at every level; the write stays in memory.
        durable = mesh.replica.durable_state_vector("session/s")
        s = await mesh.session("s")
        s.state.set_memory("after", "x")
        for level in (None, 1):
            with pytest.raises(CorruptRecord) as info:
                await s.commit(replicas=level, timeout=2)
            assert info.value.doc_id == "session/s" and info.value.seq == victim
        await mesh.store.flush()
        assert mesh.replica.durable_state_vector("session/s") == durable
        # Undamaged documents work and commit.
        t = await mesh.session("t")
        assert t.state.get_memory("other") == "fine"
        t.state.set_memory("more", "ok")
        await t.commit()
    # Nothing changed in the damaged history by serving it (no repair without peers).
    with Store.open(data, readonly=True) as store, pytest.raises(CorruptRecord):
        store.load("session/s")


async def _a_owns_five_writes_acked_by_b(tmp_path):
    """Nodes a and b (a with HTTP); a writes k0..k4 to session s, each acked by b; both stop.

    b leaves first, so a keeps owning the session (a graceful leave would hand it to b).
    Returns both configs and the acknowledged writes.
    """
    a_cfg = _kit.config(tmp_path, "a", http="127.0.0.1:0")
    b_cfg = _kit.config(tmp_path, "b", seed=1)
    acked: dict[str, int] = {}
    async with open_mesh(a_cfg) as a, open_mesh(replace(b_cfg, seeds=[a.address])):
        s = await a.session("s")
        for i in range(5):
            s.state.set_memory(f"k{i}", i)
            assert await s.commit(replicas=1, timeout=10) == ["b"]
            acked[f"k{i}"] = i
    return a_cfg, b_cfg, acked


async def test_a_live_peer_refills_a_damaged_document_and_readyz_returns_to_200(tmp_path):
    a_cfg, b_cfg, acked = await _a_owns_five_writes_acked_by_b(tmp_path)
    async with open_mesh(b_cfg) as b:
        victim = _records(tmp_path / "a", "session/s")[-2]
        _damage(tmp_path / "a", "session/s", victim, "bytes")
        async with open_mesh(replace(a_cfg, seeds=[b.address])) as a:
            # b knows what a holds durably: while damaged, a never claims more than its disk.
            full = b.replica.state_vector("session/s")
            await _kit.wait_until("a repaired", lambda: not a.replica.damaged, timeout=20)
            status, body = await _http_get(a.http_address, "/readyz")
            for _ in range(100):  # readiness also waits for the first catch-up: bounded
                if status == 200:
                    break
                await trio.sleep(0.1)
                status, body = await _http_get(a.http_address, "/readyz")
            assert status == 200, body
            assert a.replica.fingerprint("session/s") == b.replica.fingerprint("session/s")
            state = a.read_session("s")
            assert {k: state.get_memory(k) for k in acked} == acked
            assert a.replica.durable_state_vector("session/s") == full
            # The session stays a's: after the repair its writes commit again.
            s = await a.session("s")
            await _kit.wait_until("ownership confirmed", lambda: _commits(s))
            assert a.owner_of("s") == "a"
            s.state.set_memory("after", "repair")
            assert await s.commit(replicas=1, timeout=10) == ["b"]
            acked["after"] = "repair"
    # A restart after the repair loads cleanly, alone, with everything acknowledged.
    with Store.open(tmp_path / "a", readonly=True) as store:
        assert store.verify().ok, store.verify()
    async with open_mesh(replace(a_cfg, http=None)) as a:
        assert not a.replica.damaged
        state = a.read_session("s")
        assert {k: state.get_memory(k) for k in acked} == acked


async def test_a_damaged_replica_does_not_count_for_a_peers_replicas_until_repaired(
    tmp_path, monkeypatch
):
    from crdt_types.errors import CommitTimeout
    from mesh import ops

    a_cfg = _kit.config(tmp_path, "a")
    b_cfg = _kit.config(tmp_path, "b", seed=1)
    # a leaves first, so b keeps owning its session.
    async with open_mesh(b_cfg) as b, open_mesh(replace(a_cfg, seeds=[b.address])) as a:
        x = await b.session("x")
        for i in range(3):
            x.state.set_memory(f"k{i}", i)
            assert await x.commit(replicas=1, timeout=10) == ["a"]
    _damage(tmp_path / "a", "session/x", _records(tmp_path / "a", "session/x")[-1], "checksum")
    monkeypatch.setattr(ops, "REPAIR_INTERVAL", 3600.0)  # the test repairs by hand below
    async with open_mesh(b_cfg) as b, open_mesh(replace(a_cfg, seeds=[b.address])) as a:
        assert sorted(a.replica.damaged) == ["session/x"]
        x = await b.session("x")
        await _kit.wait_until("b owns x again", lambda: _commits(x))
        x.state.set_memory("new", "write")
        # a receives it, but its disk cannot give it back: no replica ack covers it.
        with pytest.raises(CommitTimeout):
            await x.commit(replicas=1, timeout=1.5)
        await _kit.wait_until(
            "a holds the write", lambda: a.read_session("x").get_memory("new") == "write"
        )
        assert a.replica.damaged
        assert await a.ops.repair() == ["session/x"]
        assert not a.replica.damaged
        x.state.set_memory("newer", "write")
        assert await x.commit(replicas=1, timeout=10) == ["a"]


def _commits(session) -> bool:
    try:
        session.mesh._authorize_write(session.doc_id)
    except NotOwner:
        return False
    return True


async def test_a_peer_starts_on_a_corrupted_file_and_reports_the_damaged_document(tmp_path):
    from tests.cli.test_peer import Peer

    data = tmp_path / "n"
    await _write_five(data)
    victim = _records(data, "session/s")[-2]
    _damage(data, "session/s", victim, "bytes")
    peer = Peer(
        "--node", "n", "--data", str(data), "--listen", "127.0.0.1:0",
        "--http", "127.0.0.1:0", "--no-mdns", "--insecure",
    )  # fmt: skip
    try:
        assert peer.ready["event"] == "ready" and peer.ready["damaged"] == ["session/s"]
        status, body = await _http_get(peer.ready["http"], "/readyz")
        assert status == 503 and any("session/s" in r for r in body["reasons"]), body
        status, _ = await _http_get(peer.ready["http"], "/livez")
        assert status == 200
    finally:
        stderr = peer.stop_hard()
    damaged = [line for line in stderr.splitlines() if "damaged on disk" in line]
    assert len(damaged) == 1 and "session/s" in damaged[0] and f"record {victim}" in damaged[0]
    assert "Traceback" not in stderr, stderr


def _truncate(db: Path) -> bytes:
    """Cut the database file to half its size (what a lost tail leaves); its new bytes."""
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.truncate(size // 2)
    return db.read_bytes()


async def test_a_truncated_database_stops_the_peer_with_one_line_saying_what_to_do(tmp_path):
    data = tmp_path / "n"
    await _write_five(data)
    db = data / DB_NAME
    _truncate(db)
    before = _files(data)
    out = _peer_once(data, "--on-unreadable-store", "stop")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(db) in lines[0] and "damaged" in lines[0], lines
    assert "move it" in lines[0] and "refills from its peers" in lines[0], lines
    assert _files(data) == before
    assert not list(data.glob("unreadable-*")), "the stop policy moved the file"
    with pytest.raises(UnreadableStore) as caught:
        async with open_mesh(_cfg(data, on_unreadable_store="stop")):
            pass
    assert caught.value.path == db and isinstance(caught.value, StorageError)
    assert _files(data) == before


async def test_a_truncated_database_is_moved_aside_and_the_node_starts_empty_not_ready(
    tmp_path, caplog
):
    data = tmp_path / "n"
    await _write_five(data)
    db = data / DB_NAME
    truncated = _truncate(db)
    async with open_mesh(_cfg(data, http="127.0.0.1:0")) as mesh:
        (moved,) = list(data.glob("unreadable-*"))
        assert (moved / DB_NAME).read_bytes() == truncated  # kept as it was, for inspect
        assert mesh.store_recovered_from == str(moved)
        assert mesh.sessions() == [] and len(mesh.replica) == 0  # started empty
        status, body = await _readyz(mesh)
        assert status == 503, body
        want = f"store was unreadable: moved to {moved}; refilling from peers"
        assert want in body["reasons"], body
        code, full = await _http_get(mesh.http_address, "/status")
        assert code == 200 and full["store_recovered_from"] == str(moved), full
        # The fresh store works: the directory lock is held again and writes are durable.
        with pytest.raises(StorageError, match="in use"):
            Store.open(data)
        s = await mesh.session("new")
        s.state.set_memory("k", "v")
        await s.commit()
    warnings = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING", warnings
    line = warnings[0].getMessage()
    assert str(db) in line and str(moved) in line and "refills from its peers" in line, line
    # A restart uses the fresh store and moves nothing more.
    async with open_mesh(_cfg(data)) as mesh:
        assert mesh.store_recovered_from is None
        assert mesh.read_session("new").get_memory("k") == "v"
    assert len(list(data.glob("unreadable-*"))) == 1


def _readable_at_open_unreadable_when_loaded(data: Path) -> bytes:
    """Zero the start of one page after another until SQLite opens the file but cannot load
    it (a damaged b-tree page below the schema); the damaged file's bytes."""
    doc = pycrdt.Doc()
    memory = doc.get("m", type=pycrdt.Map)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    with Store.open(data) as store:
        for i in range(300):
            memory[f"k{i}"] = "x" * 200
            store.append_many([(f"session/{i % 7}", updates[-1])])
    db = data / DB_NAME
    raw = db.read_bytes()
    for page in range(1, len(raw) // 4096):  # bounded by the file's page count
        damaged = bytearray(raw)
        damaged[page * 4096 : page * 4096 + 100] = bytes(100)
        db.write_bytes(bytes(damaged))
        try:
            with Store.open(data) as store:
                store.recover_all(salvage=True)
        except UnreadableStore:
            found = bytes(damaged)
        except StorageError:
            continue
        else:
            continue
        for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):  # as found, no log
            (data / name).unlink(missing_ok=True)
        db.write_bytes(found)
        return found
    raise AssertionError(f"no page of {len(raw)} bytes fails only when loaded (seed {SEED})")


async def test_a_file_unreadable_only_when_loaded_is_moved_aside_too(tmp_path, caplog):
    data = tmp_path / "n"
    damaged = _readable_at_open_unreadable_when_loaded(data)
    async with open_mesh(_cfg(data, http="127.0.0.1:0")) as mesh:
        (moved,) = list(data.glob("unreadable-*"))
        # Still the damaged file, kept for inspection.
        with pytest.raises(UnreadableStore), Store.open(moved, readonly=True) as store:
            store.recover_all(salvage=True)
        assert mesh.store_recovered_from == str(moved) and len(mesh.replica) == 0
        status, body = await _readyz(mesh)
        assert status == 503 and any("store was unreadable" in r for r in body["reasons"])
    other = tmp_path / "m"
    other.mkdir()
    (other / DB_NAME).write_bytes(damaged)
    with pytest.raises(UnreadableStore):  # and the stop policy stops on it
        async with open_mesh(_cfg(other, on_unreadable_store="stop")):
            pass
    assert not list(other.glob("unreadable-*"))


def test_moving_an_unreadable_store_takes_its_log_files_and_respects_the_lock(tmp_path):
    data = tmp_path / "n"
    data.mkdir()
    files = {DB_NAME + suffix: os.urandom(64) for suffix in ("", "-wal", "-shm")}
    for name, raw in files.items():
        (data / name).write_bytes(raw)
    with Store.open(tmp_path / "busy"):
        # A running peer's files are never moved: the directory lock says it is running.
        with pytest.raises(StorageError, match="in use"):
            move_unreadable(tmp_path / "busy")
        assert (tmp_path / "busy" / DB_NAME).exists()
    moved = move_unreadable(data, now=0.0)
    assert moved == data / "unreadable-19700101T000000Z"
    assert {p.name: p.read_bytes() for p in moved.iterdir()} == files
    assert not any((data / name).exists() for name in files)
    # A second recovery in the same second gets its own directory.
    (data / DB_NAME).write_bytes(b"again")
    again = move_unreadable(data, now=0.0)
    assert again != moved and (again / DB_NAME).read_bytes() == b"again"


async def test_a_node_started_on_an_unreadable_store_refills_from_a_live_peer(tmp_path):
    a_cfg, b_cfg, acked = await _a_owns_five_writes_acked_by_b(tmp_path)
    _truncate(tmp_path / "a" / DB_NAME)
    async with open_mesh(b_cfg) as b, open_mesh(replace(a_cfg, seeds=[b.address])) as a:
        assert a.store_recovered_from is not None
        status, body = await _readyz(a)
        for _ in range(200):  # bounded: refill then the first catch-up
            if status == 200:
                break
            await trio.sleep(0.1)
            status, body = await _readyz(a)
        assert status == 200, body
        assert a.replica.fingerprint("session/s") == b.replica.fingerprint("session/s")
        state = a.read_session("s")
        assert {k: state.get_memory(k) for k in acked} == acked
        assert a.documents() == b.documents()


# --- a real peer on a full disk: no replica acks it cannot honour -------------------------------


def _http(address: str, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
async def test_a_peer_on_a_full_disk_acks_nothing_it_cannot_keep(tmp_path):
    from crdt_types.errors import CommitTimeout
    from crdt_types.session import SessionState
    from tests.cli.test_peer import Peer

    data = tmp_path / "full"
    args = [
        "--node", "full", "--data", str(data), "--listen", "127.0.0.1:0",
        "--http", "127.0.0.1:0", "--no-mdns", "--insecure",
    ]  # fmt: skip
    with tmpfs(data, "1m"):
        peer = Peer(*args)
        try:
            acked_by_peer: dict[str, str] = {}
            cfg = _cfg(tmp_path / "writer", "writer", seeds=[peer.ready["address"]])
            async with open_mesh(cfg) as w:
                s = await w.session("big")
                for i in range(400):
                    key, value = f"k{i}", f"{i:04d}" + "w" * 8000
                    s.state.set_memory(key, value)
                    try:
                        holders = await s.commit(replicas=1, timeout=3)
                    except CommitTimeout:
                        break
                    assert holders == ["full"]
                    acked_by_peer[key] = value
                else:
                    raise AssertionError("1 MiB never filled up")
                assert acked_by_peer
                status, body = await trio.to_thread.run_sync(_http, peer.ready["http"], "/readyz")
                assert status == 503 and any("DiskFull" in r for r in body["reasons"]), body
                # The peer stays up and a member; it just does not claim durability.
                assert peer.proc.poll() is None
                remount(data, "64m")
                s.state.set_memory("after", "space")
                assert await s.commit(replicas=1, timeout=15) == ["full"]
                acked_by_peer["after"] = "space"
            stderr = peer.stop_hard()  # SIGKILL: only what is on its disk survives
            # Reported in its log once per outage, and the recovery too.
            assert stderr.count("store failed") == 1 and "DiskFull" in stderr, stderr
            assert "store recovered" in stderr, stderr
            with Store.open(data, readonly=True) as store:
                state = SessionState(store.load("session/big"))
            lost = [k for k, v in acked_by_peer.items() if state.get_memory(k) != v]
            assert not lost, f"writes the full peer acknowledged were lost: {lost[:5]}"
        finally:
            peer.stop_hard()
