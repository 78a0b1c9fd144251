"""The asyncio facade (`mesh.asyncio_bridge.AsyncioMesh`), driven from real asyncio programs.

Each test is a plain function running `asyncio.run(...)`: the program under test is an
asyncio program, and the mesh nodes run on their background trio threads. Two nodes on
loopback, insecure, joined by a static seed.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from crdt_types.errors import Closed, CommitTimeout, InvalidValue, StorageError
from mesh import MeshConfig, SessionChanged
from mesh.asyncio_bridge import AsyncioMesh

pytestmark = pytest.mark.timeout(60)


def config(tmp_path, name, seeds=(), seed=0):
    return MeshConfig(
        node=name, data_dir=tmp_path / name, seeds=list(seeds), insecure=True, seed=7 + seed
    )


async def until(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


def test_asyncio_program_writes_commits_and_reads_through_the_bridge(tmp_path):
    async def program():
        async with (
            AsyncioMesh(config(tmp_path, "a")) as a,
            AsyncioMesh(config(tmp_path, "b", [a.address], 1)) as b,
        ):

            async def both_alive():
                members = await a.members()
                return {m["node"] for m in members if m["state"] == "alive"} == {"a", "b"}

            await until(both_alive)
            s = await a.session("chat")
            index = await s.run(lambda st: st.append_message("user", "from asyncio"))
            assert index == 0
            assert await s.commit(replicas=1, timeout=10) == ["b"]
            sb = await b.session("chat")
            assert await sb.run(lambda st: [m.content for m in st.messages()]) == ["from asyncio"]
            assert await sb.fingerprint() == await s.fingerprint()
            # The documents are touched only on the trio thread.
            threads = await s.run(lambda st: threading.current_thread().name)
            assert threads == "statemesh-a" != threading.current_thread().name
            status = await a.status()
            assert status["node"] == "a" and status["documents"] >= 1
            await a.cluster(lambda c: c.set("flags.x", True, by="a"))
            assert await a.cluster(lambda c: c.get("flags.x")) is True

    asyncio.run(program())


def test_asyncio_events_and_errors_cross_the_bridge_as_themselves(tmp_path):
    async def program():
        async with AsyncioMesh(config(tmp_path, "a")) as a:
            s = await a.session("solo")
            await s.run(lambda st: st.set_memory("k", 1))
            with pytest.raises(CommitTimeout):
                await s.commit(replicas=1, timeout=0.2)
            with pytest.raises(InvalidValue):
                await a.session("")
            with pytest.raises(ZeroDivisionError):
                await s.run(lambda st: 1 / 0)
            # The failed calls left the node working.
            assert await s.run(lambda st: st.get_memory("k")) == 1

            events = a.events()
            first = asyncio.ensure_future(events.__anext__())
            await asyncio.sleep(0.2)
            async with AsyncioMesh(config(tmp_path, "b", [a.address], 1)) as b:
                sb = await b.session("solo")
                await sb.run(lambda st: st.set_memory("from-b", True))
                await sb.commit(replicas=1, timeout=10)
                seen = [await asyncio.wait_for(first, 10)]
                while SessionChanged("solo", local=False) not in seen:
                    seen.append(await asyncio.wait_for(events.__anext__(), 10))
            await events.aclose()
        with pytest.raises(Closed):
            await s.commit()

    asyncio.run(program())


def test_asyncio_open_reports_an_unusable_data_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")

    async def program():
        with pytest.raises(StorageError):
            await AsyncioMesh.open(MeshConfig(node="x", data_dir=blocker, insecure=True))

    asyncio.run(program())
