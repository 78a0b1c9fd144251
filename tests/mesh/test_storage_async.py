"""AsyncStore: group commit really batches, checkpoints run beside appends, errors reach the writer."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pycrdt
import pytest
import trio

from crdt_types.errors import DiskFull, InvalidValue, StoreClosed
from mesh.storage import AsyncStore, Store
from tests.mesh.test_storage import Writer, memory_of


async def test_concurrent_appends_share_transactions(tmp_path: Path) -> None:
    writers = 200
    async with AsyncStore.open(tmp_path) as store:
        before = store.store.stats.transactions
        results: dict[int, int] = {}

        async def one(k: int) -> None:
            results[k] = await store.append(f"session/{k % 10}", Writer().set("k", k))

        async with trio.open_nursery() as nursery:
            for k in range(writers):
                nursery.start_soon(one, k)
        transactions = store.store.stats.transactions - before
        # Counted, not timed: one fsync'd transaction per write would be 200.
        assert transactions <= 5, transactions
        # Every document's seqs are dense and distinct.
        for d in range(10):
            seqs = sorted(results[k] for k in range(writers) if k % 10 == d)
            assert seqs == list(range(1, writers // 10 + 1))
    with Store.open(tmp_path) as reopened:
        assert sum(reopened.info(f"session/{d}").updates for d in range(10)) == writers


async def test_submit_then_wait_and_flush(tmp_path: Path) -> None:
    w = Writer()
    async with AsyncStore.open(tmp_path) as store:
        pending = [store.submit("session/a", w.set(f"k{i}", i)) for i in range(50)]
        await store.flush()
        assert all(p.done for p in pending)
        assert [await p.wait() for p in pending] == list(range(1, 51))
        assert await store.append_many([]) == []
        assert memory_of(await store.load("session/a")) == memory_of(w.doc)


async def test_checkpoint_while_appends_continue_loses_nothing(tmp_path: Path) -> None:
    seed = 1234
    rng = random.Random(seed)
    writers = [Writer() for _ in range(4)]
    acked: list[tuple[int, str, int]] = []
    async with AsyncStore.open(tmp_path) as store:
        done = trio.Event()

        async def write(k: int) -> None:
            w = writers[k]
            for i in range(300):
                seq = await store.append("session/shared", w.set(f"w{k}.{i}", i))
                acked.append((k, f"w{k}.{i}", seq))
                if rng.random() < 0.1:
                    await trio.sleep(0)

        async def compact() -> None:
            count = 0
            while not done.is_set() and count < 500:
                await store.checkpoint("session/shared")
                count += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(compact)
            async with trio.open_nursery() as inner:
                for k in range(len(writers)):
                    inner.start_soon(write, k)
            done.set()
        info = await store.info("session/shared")
        assert info.checkpoints >= 1, f"seed {seed}"
    with Store.open(tmp_path) as reopened:
        got = memory_of(reopened.load("session/shared"))
    missing = [key for _, key, _ in acked if key not in got]
    assert not missing, f"seed {seed}: lost {missing[:5]}"
    assert len(got) == 4 * 300


def test_checkpoint_from_another_thread_while_appending(tmp_path: Path) -> None:
    """The sync Store is shared by threads: compaction in one, appends in another."""
    w = Writer()
    stop = threading.Event()
    errors: list[BaseException] = []
    with Store.open(tmp_path) as store:

        def compact() -> None:
            try:
                while not stop.is_set():
                    store.checkpoint("session/a")
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        thread = threading.Thread(target=compact)
        thread.start()
        try:
            for i in range(200):
                store.append_many([("session/a", w.set(f"k{i}", i))])
        finally:
            stop.set()
            thread.join(timeout=30)
        assert not errors
        store.checkpoint("session/a")
    with Store.open(tmp_path) as reopened:
        assert memory_of(reopened.load("session/a")) == memory_of(w.doc)


async def test_disk_full_fails_the_batch_and_keeps_earlier_writes(tmp_path: Path) -> None:
    """`PRAGMA max_page_count` stands in for a full disk."""
    w = Writer()
    async with AsyncStore.open(tmp_path) as store:
        kept = await store.append("session/a", w.set("kept", 1))
        store.store._conn.execute("PRAGMA max_page_count = 30")
        with pytest.raises(DiskFull):
            for i in range(1000):
                await store.append("session/a", w.set(f"big{i}", "x" * 4000))
        assert store.store.last_seq("session/a") >= kept
        last = store.store.last_seq("session/a")
        # Reads still work and hold exactly what was acknowledged.
        got = memory_of(await store.load("session/a"))
        assert got["kept"] == 1.0
        assert len(got) == last
        store.store._conn.execute("PRAGMA max_page_count = 100000")
        # Room again: appends resume (a store may first write updates it refused while
        # full, which the documents in memory still hold, so only "later" is promised).
        again = await store.append("session/a", Writer().set("again", 1))
        assert again > last
        assert memory_of(await store.load("session/a"))["again"] == 1.0


async def test_bad_input_and_closed_store(tmp_path: Path) -> None:
    async with AsyncStore.open(tmp_path) as store:
        with pytest.raises(InvalidValue):
            store.submit("", Writer().set("k", 1))
        with pytest.raises(InvalidValue):
            store.submit("session/a", b"not an update")
        with pytest.raises(InvalidValue):
            await store.append_many([("session/a", Writer().set("k", 1)), ("session/a", "x")])
        assert await store.documents() == []
        outside = store
    with pytest.raises(StoreClosed):
        await outside.append("session/a", Writer().set("k", 1))
    with pytest.raises(StoreClosed):
        await outside.load("session/a")


async def test_slow_loads_do_not_block_the_event_loop(tmp_path: Path) -> None:
    w = Writer()
    with Store.open(tmp_path) as store:
        for start in range(0, 20_000, 10_000):
            store.append_many(
                [("session/big", w.set(f"k{i % 50}", i)) for i in range(start, start + 10_000)],
                max_record_updates=1,
            )
    ticks = 0
    async with AsyncStore.open(tmp_path) as store:

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            doc = await store.load("session/big")
            nursery.cancel_scope.cancel()
    # The loop kept running while the document was rebuilt in a worker thread.
    assert ticks > 10
    assert isinstance(doc, pycrdt.Doc)
    assert memory_of(doc) == memory_of(w.doc)


async def test_flush_waits_for_the_batch_already_being_committed(tmp_path: Path) -> None:
    w = Writer()
    async with AsyncStore.open(tmp_path) as store:
        pending = [store.submit("session/a", w.set(f"k{i % 7}", i)) for i in range(3000)]
        for _ in range(1000):  # bounded: let the committer take the batch into its thread
            if store._inflight is not None:
                break
            await trio.sleep(0)
        assert store._inflight is not None and not pending[-1].done
        await store.flush()
        assert all(p.done for p in pending)
        assert await pending[-1].wait() == 3000


async def test_a_failing_commit_reaches_its_waiters_without_killing_the_store(
    tmp_path: Path,
) -> None:
    Store.open(tmp_path).close()
    async with trio.open_nursery() as nursery:
        store = AsyncStore(Store.open(tmp_path, readonly=True))
        await nursery.start(store.run)
        with pytest.raises(InvalidValue, match="read-only"):
            await store.append("session/a", Writer().set("k", 1))
        assert await store.documents() == []  # still serving reads
        await store.aclose()
