"""What the in-process mesh tests share: one node config rule, one bounded wait, one cluster.

Several test modules open real `open_mesh` nodes on loopback, each with a seed of its own so
a failure replays. `MeshKit(seed)` binds that seed once and hands out the pieces those
modules used to copy: `config` (a node on 127.0.0.1 with a data dir under tmp_path and a
protocol seed derived from the module's), `wait_until` (polls until a check holds, bounded
in time, naming the seed when it gives up) and `nodes` (n nodes joined through the first and
seen alive by one another). Nothing here sends mDNS: configs have no interfaces unless a
test passes them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from mesh import Mesh, MeshConfig, open_mesh

T = TypeVar("T")


def alive(mesh: Mesh) -> set[str]:
    """The names this node currently sees as alive (itself included)."""
    return {m["node"] for m in mesh.members() if m["state"] == "alive"}


class MeshKit:
    """Config, bounded waits and joined clusters for one test module's seed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def config(
        self, tmp_path: Path, name: str, *, seeds=(), seed: int = 0, **kw: Any
    ) -> MeshConfig:
        """A node `name` under tmp_path; insecure unless the test passes a `key`."""
        kw.setdefault("insecure", "key" not in kw)
        return MeshConfig(
            node=name,
            data_dir=tmp_path / name,
            seeds=list(seeds),
            seed=self.seed + seed,
            **kw,
        )

    async def wait_until(self, what: str, check: Callable[[], T], timeout: float = 10.0) -> T:
        """Poll `check` until it returns something truthy; fail naming `what` and the seed."""
        with trio.move_on_after(timeout):
            while True:
                value = check()
                if value:
                    return value
                await trio.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what} (seed {self.seed})")

    @contextlib.asynccontextmanager
    async def nodes(self, tmp_path: Path, n: int, **kw: Any) -> AsyncIterator[list[Mesh]]:
        """n nodes n0..n{n-1} joined through n0, yielded once all see all alive."""
        async with contextlib.AsyncExitStack() as stack:
            first = await stack.enter_async_context(open_mesh(self.config(tmp_path, "n0", **kw)))
            out = [first]
            for i in range(1, n):
                cfg = self.config(tmp_path, f"n{i}", seeds=[first.address], seed=i, **kw)
                out.append(await stack.enter_async_context(open_mesh(cfg)))
            names = {f"n{i}" for i in range(n)}
            await self.wait_until("full membership", lambda: all(alive(m) == names for m in out))
            yield out
