"""Tests of mesh.ops on real in-process meshes over loopback.

`Operations.repair` counts a repair only when every peer the failover pull asked has
answered; which peers those are is defined once, by `Failover.pull_peers`. These tests
check that definition (live, addressable, not us) and that a pull answers exactly that
many when every such peer is up.
"""

from __future__ import annotations

import contextlib

import pytest

from crdt_types.errors import CorruptRecord
from mesh import open_mesh
from tests.mesh.helpers import MeshKit, alive

SEED = 6161

pytestmark = pytest.mark.timeout(60)

_kit = MeshKit(SEED)


async def test_pull_peers_are_the_live_addressable_others_and_all_of_them_answer(tmp_path):
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(open_mesh(_kit.config(tmp_path, "n0")))
        b = await stack.enter_async_context(
            open_mesh(_kit.config(tmp_path, "n1", seeds=[a.address], seed=1))
        )
        async with open_mesh(_kit.config(tmp_path, "n2", seeds=[a.address], seed=2)) as c:
            names = {"n0", "n1", "n2"}
            await _kit.wait_until(
                "full membership", lambda: all(alive(m) == names for m in (a, b, c))
            )
            assert sorted(a.failover.pull_peers()) == ["n1", "n2"], SEED
            assert await a.failover.pull(["ownership"], timeout=10) == 2, SEED
        # n2 left gracefully: it is no longer a peer to pull from, and the pull says so.
        await _kit.wait_until("n2 gone", lambda: a.failover.pull_peers() == ["n1"])
        assert await a.failover.pull(["ownership"], timeout=10) == 1, SEED


async def test_repair_without_peers_to_pull_from_repairs_nothing_and_keeps_the_mark(tmp_path):
    async with open_mesh(_kit.config(tmp_path, "n0")) as a:
        s = await a.session("x")
        s.state.set_memory("k", "v")
        await s.commit()
        assert a.failover.pull_peers() == []
        a.replica.mark_damaged(CorruptRecord("session/x", 1, "record fails its checksum"))
        # Nobody can vouch for what the damaged records held: it stays damaged.
        assert await a.ops.repair() == []
        assert sorted(a.replica.damaged) == ["session/x"]
