"""Use a mesh node from an asyncio program: the node runs on trio in a background thread.

`AsyncioMesh.open(config)` starts a thread running `trio.run`, opens the mesh there with
`open_mesh`, and returns a facade whose coroutines the asyncio program awaits. Every
operation is shipped to the trio thread (`TrioToken.run_sync_soon` spawns it in the
bridge's nursery) and its result comes back through an asyncio future
(`loop.call_soon_threadsafe`), so neither loop ever blocks on the other and no executor
thread is tied up per call.

Why a background thread rather than trio's guest mode: the node's failure detector
answers probes within 100 ms (the LAN profile). An agent program on asyncio routinely
blocks its loop (a synchronous SDK call, a CPU-heavy step); in guest mode trio runs on
that same loop and would miss its probes, and peers would declare it dead and fail its
sessions over. On its own thread the node keeps answering whatever the agent's loop does.
The price is that pycrdt documents live on the trio thread and must be touched only
there: the facade never hands out a document. Writes and reads are functions run on the
trio thread (`AsyncioSession.run(fn)`, where `fn` gets the `SessionState`), results are
plain values.

Invariants: every document access happens on the trio thread; `close()` (or leaving
`async with`) leaves the mesh gracefully and joins the thread; an exception raised on the
trio side is re-raised in the awaiting asyncio task as itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import trio

from crdt_types.errors import Closed, LocalError
from crdt_types.session import SessionState
from mesh.config import MeshConfig
from mesh.runtime import Mesh, open_mesh

__all__ = ["AsyncioMesh", "AsyncioSession"]

T = TypeVar("T")
_START_TIMEOUT = 30.0
_EVENT_QUEUE = 1024


def _settle(fut: asyncio.Future[Any], value: Any = None, exc: BaseException | None = None) -> None:
    """Give `fut` its result or exception, unless it is already done (cancelled, timed out)."""
    # Runs on the asyncio loop (call_soon_threadsafe): the trio thread never touches fut.
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


class AsyncioSession:
    """A session of an `AsyncioMesh`; its state is reached through `run`."""

    def __init__(self, bridge: AsyncioMesh, session_id: str) -> None:
        self._bridge = bridge
        self.id = session_id

    async def run(self, fn: Callable[[SessionState], T]) -> T:
        """Run `fn(state)` on the trio thread (read or write); return its result."""

        async def call(mesh: Mesh) -> T:
            return fn((await mesh.session(self.id)).state)

        return await self._bridge._call(call)

    async def commit(self, replicas: int | str | None = None, timeout: float | None = None):
        """`Session.commit` on the trio thread; the same levels and `CommitTimeout`."""

        async def call(mesh: Mesh) -> list[str]:
            return await (await mesh.session(self.id)).commit(replicas=replicas, timeout=timeout)

        return await self._bridge._call(call)

    async def fingerprint(self) -> str:
        """The session's convergence fingerprint (hex)."""

        async def call(mesh: Mesh) -> str:
            return (await mesh.session(self.id)).fingerprint()

        return await self._bridge._call(call)


class AsyncioMesh:
    """The asyncio facade of a mesh node running on a background trio thread."""

    def __init__(self, config: MeshConfig) -> None:
        if not isinstance(config, MeshConfig):
            raise LocalError("AsyncioMesh takes a MeshConfig")
        self.config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._mesh: Mesh | None = None
        self._stop: trio.Event | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._error: BaseException | None = None
        self.node_id = config.node
        self.address: str | None = None

    @classmethod
    async def open(cls, config: MeshConfig) -> AsyncioMesh:
        """Start the trio thread and open the mesh; raises what `open_mesh` raises."""
        bridge = cls(config)
        await bridge._start()
        return bridge

    async def __aenter__(self) -> AsyncioMesh:
        if self._thread is None:
            await self._start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._thread_main, args=(started,), name=f"statemesh-{self.node_id}"
        )
        self._thread.daemon = True
        self._thread.start()
        try:
            await asyncio.wait_for(asyncio.shield(started), _START_TIMEOUT)
        except BaseException:
            self._error = None  # raised here; close() must not raise it a second time
            await self.close()
            raise

    def _thread_main(self, started: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None

        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            async with open_mesh(self.config) as mesh, trio.open_nursery() as nursery:
                self._mesh, self._nursery = mesh, nursery
                self.address = mesh.address
                loop.call_soon_threadsafe(_settle, started)
                await self._stop.wait()
                nursery.cancel_scope.cancel()
            self._mesh = None

        try:
            trio.run(main)
        except BaseException as exc:  # reported to the opener if it is still waiting
            # A failure after start is re-raised by close(); store it.
            self._error = exc
            loop.call_soon_threadsafe(_settle, started, None, exc)
        finally:
            self._closed = True

    async def _call(self, fn: Callable[[Mesh], Any]) -> Any:
        """Run `await fn(mesh)` on the trio thread and return its result here."""
        if self._closed or self._token is None or self._loop is None:
            raise Closed(f"mesh node {self.node_id!r} is closed")
        loop = self._loop
        fut: asyncio.Future[Any] = loop.create_future()

        async def task() -> None:
            try:
                if self._mesh is None:
                    raise Closed(f"mesh node {self.node_id!r} is closed")
                value = await fn(self._mesh)
            except Exception as exc:
                loop.call_soon_threadsafe(_settle, fut, None, exc)
            except BaseException:
                loop.call_soon_threadsafe(
                    _settle, fut, None, Closed("the mesh closed during the call")
                )
                raise
            else:
                loop.call_soon_threadsafe(_settle, fut, value)

        def spawn() -> None:
            if self._nursery is None:
                loop.call_soon_threadsafe(_settle, fut, None, Closed("the mesh is closed"))
                return
            self._nursery.start_soon(task)

        try:
            self._token.run_sync_soon(spawn)
        except trio.RunFinishedError:
            raise Closed(f"mesh node {self.node_id!r} is closed") from None
        return await fut

    # --- the same operations as Mesh ------------------------------------------------

    async def session(self, session_id: str) -> AsyncioSession:
        """Open or create a session (on the trio thread) and return its asyncio handle."""

        async def call(mesh: Mesh) -> None:
            await mesh.session(session_id)

        await self._call(call)
        return AsyncioSession(self, session_id)

    async def cluster(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(cluster_state)` on the trio thread; return its result."""

        async def call(mesh: Mesh) -> T:
            return fn(mesh.cluster)

        return await self._call(call)

    async def status(self) -> dict[str, Any]:
        """The node's status (what GET /status serves)."""

        async def call(mesh: Mesh) -> dict[str, Any]:
            return mesh.status()

        return await self._call(call)

    async def members(self) -> list[dict[str, Any]]:
        """Every member this node knows, itself included."""

        async def call(mesh: Mesh) -> list[dict[str, Any]]:
            return mesh.members()

        return await self._call(call)

    async def events(self, max_buffer: int = _EVENT_QUEUE) -> AsyncIterator[object]:
        """Yield the mesh's events (membership, SessionChanged) as they happen."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue(max_buffer)
        ready: asyncio.Future[None] = loop.create_future()
        stop = threading.Event()
        done = object()

        def put(item: object) -> None:
            # Bounded like a trio subscription: a consumer that falls behind loses events.
            if item is done or not queue.full():
                queue.put_nowait(item)

        async def pump(mesh: Mesh) -> None:
            async with mesh.subscribe(max_buffer) as sub:
                loop.call_soon_threadsafe(lambda: ready.done() or ready.set_result(None))
                try:
                    while not stop.is_set():
                        with trio.move_on_after(0.2):
                            event = await sub.receive()
                            loop.call_soon_threadsafe(put, event)
                finally:
                    loop.call_soon_threadsafe(put, done)

        waiter = asyncio.ensure_future(self._call(pump))
        await asyncio.wait([ready, waiter], return_when=asyncio.FIRST_COMPLETED)
        if waiter.done() and waiter.exception() is not None:
            raise waiter.exception()  # type: ignore[misc]
        try:
            while True:
                item = await queue.get()
                if item is done:
                    return
                yield item
        finally:
            stop.set()
            waiter.cancel()

    async def close(self) -> None:
        """Leave the mesh gracefully and stop the trio thread (idempotent)."""
        token, stop = self._token, self._stop
        if token is not None and stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(stop.set)
        thread = self._thread
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, thread.join)
        self._closed = True
        error = self._error
        if error is not None and not isinstance(error, KeyboardInterrupt):
            self._error = None
            raise error
