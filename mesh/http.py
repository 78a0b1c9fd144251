"""The peer's small HTTP/1.1 server: h11 (sans-IO) driven by trio sockets.

`serve_http(mesh, "host:port")` answers GET requests from the `ROUTES` table with JSON,
one request per connection (`Connection: close`), which keeps the server a screenful long
and is all that probes and `statemesh status` need. Routes are plain functions
`(mesh, path) -> (status code, JSON-able object)`, and prefix routes (`PREFIX_ROUTES`)
serve paths with an argument (`/documents/<id>`). `HOOKS` are async handlers
`(mesh, Request) -> (status, object) | None` consulted first, for any method: they see
headers and the body, and may answer with `Raw` (a body that is not JSON, such as
Prometheus text). The operations routes (`mesh.ops_http`: probes, metrics, config,
secrets) plug in there.

Invariants: the server binds exactly where it is told; every connection has one overall
deadline (`REQUEST_TIMEOUT`), request heads are capped (`MAX_HEAD_BYTES`, h11 enforces
it), bodies are read only up to `MAX_BODY_BYTES` (413 beyond), and at most
`MAX_CONNECTIONS` are served at once, so a slow or hostile client costs a bounded amount
and never blocks the mesh.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import h11
import trio

from crdt_types.errors import LocalError
from mesh.transport import format_address, parse_address

__all__ = ["HOOKS", "PREFIX_ROUTES", "ROUTES", "Raw", "Request", "serve_http"]

REQUEST_TIMEOUT = 10.0
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 128 * 1024
MAX_CONNECTIONS = 64
_READ = 16 * 1024
LINGER_SECONDS = 1.0
LINGER_READS = 64

Handler = Callable[[Any, str], tuple[int, Any]]


@dataclass(frozen=True, slots=True)
class Request:
    """One request as `HOOKS` see it: header names lower-case, the body read in full."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Raw:
    """A response body that is not JSON, with its content type and extra headers."""

    content_type: str
    data: bytes
    headers: tuple[tuple[str, str], ...] = field(default=())


Hook = Callable[[Any, Request], Awaitable[tuple[int, Any] | None]]
HOOKS: list[Hook] = []


class _TooLarge(Exception):
    pass


def _status(mesh: Any, _path: str) -> tuple[int, Any]:
    return 200, mesh.status()


def _documents(mesh: Any, _path: str) -> tuple[int, Any]:
    return 200, mesh.documents()


def _document(mesh: Any, path: str) -> tuple[int, Any]:
    doc_id = unquote(path[len("/documents/") :])
    doc = mesh.document(doc_id)
    if doc is None:
        return 404, {"error": f"no document {doc_id!r}"}
    return 200, doc


ROUTES: dict[str, Handler] = {"/status": _status, "/documents": _documents}
PREFIX_ROUTES: dict[str, Handler] = {"/documents/": _document}


def _route(mesh: Any, method: str, target: str) -> tuple[int, Any]:
    path = urlsplit(target).path
    if method not in ("GET", "HEAD"):
        return 405, {"error": f"method {method} not allowed"}
    handler = ROUTES.get(path)
    if handler is None:
        for prefix, candidate in PREFIX_ROUTES.items():
            if path.startswith(prefix) and len(path) > len(prefix):
                handler = candidate
                break
    if handler is None:
        return 404, {"error": f"no route {path}"}
    return handler(mesh, path)


def _opaque(value: object) -> object:
    # Binary values (sealed secrets in the cluster document) are shown by size only.
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


async def _read_request(
    conn: h11.Connection, stream: trio.SocketStream, event: h11.Request
) -> Request:
    headers: dict[str, str] = {}
    for name, value in event.headers:
        headers[name.decode("latin-1")] = value.decode("latin-1")
    length = headers.get("content-length", "0")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise _TooLarge  # refuse before reading: the client said how much it would send
    body = bytearray()
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(_READ))
        elif isinstance(ev, h11.Data):
            body += ev.data
            if len(body) > MAX_BODY_BYTES:
                raise _TooLarge
        else:
            break  # EndOfMessage (or the peer closed): the body is complete
    target = urlsplit(event.target.decode("latin-1"))
    return Request(event.method.decode("latin-1"), target.path, target.query, headers, bytes(body))


async def _dispatch(mesh: Any, request: Request) -> tuple[int, Any]:
    for hook in HOOKS:
        answer = await hook(mesh, request)
        if answer is not None:
            return answer
    return _route(mesh, request.method, request.path)


async def _serve_one(mesh: Any, stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    with trio.move_on_after(REQUEST_TIMEOUT):
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(_READ))
                    continue
                break
            if isinstance(event, h11.Request):
                status, obj = await _dispatch(mesh, await _read_request(conn, stream, event))
            else:
                status, obj = 400, {"error": "expected a request"}
        except _TooLarge:
            status, obj = 413, {"error": f"request body larger than {MAX_BODY_BYTES} bytes"}
        except h11.RemoteProtocolError as exc:
            status, obj = exc.error_status_hint, {"error": str(exc)}
            # h11 will not answer a request it could not parse; a fresh connection primed
            # with a minimal request lets us send the error through the same code path.
            conn = h11.Connection(h11.SERVER)
            conn.receive_data(b"GET / HTTP/1.0\r\n\r\n")
            conn.next_event()
        except Exception as exc:  # a handler bug must not take the mesh down
            status, obj = 500, {"error": f"{type(exc).__name__}: {exc}"}
        if isinstance(obj, Raw):
            body, content_type, extra = obj.data, obj.content_type, list(obj.headers)
        else:
            try:
                body = (json.dumps(obj, sort_keys=True, default=_opaque) + "\n").encode()
            except (TypeError, ValueError) as exc:  # never let one answer take the mesh down
                status = 500
                body = (json.dumps({"error": f"cannot encode the answer: {exc}"}) + "\n").encode()
            content_type, extra = "application/json", []
        headers = [
            ("content-type", content_type),
            ("content-length", str(len(body))),
            ("connection", "close"),
            *extra,
        ]
        try:
            data = conn.send(h11.Response(status_code=status, headers=headers))
            data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
            await stream.send_all(data)
            # Lingering close: closing with unread input makes the kernel send a reset,
            # which can destroy the response before the client reads it. Read and discard
            # a bounded amount first.
            await stream.send_eof()
            with trio.move_on_after(LINGER_SECONDS):
                for _ in range(LINGER_READS):
                    if not await stream.receive_some(_READ):
                        break
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away or spoke nonsense: nothing left to tell it
    await trio.aclose_forcefully(stream)


async def serve_http(
    mesh: Any, address: str, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve `ROUTES` on `address` ("host:port"); reports the bound address when started."""
    host, port = parse_address(address)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise LocalError(f"cannot bind http {address}: {exc}") from exc
    bound = listeners[0].socket.getsockname()
    limit = trio.Semaphore(MAX_CONNECTIONS)

    async def handler(stream: trio.SocketStream) -> None:
        if limit.value == 0:
            # Over the limit: refuse at once rather than queue without bound.
            await trio.aclose_forcefully(stream)
            return
        async with limit:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await _serve_one(mesh, stream)

    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(trio.serve_listeners, handler, listeners)
        except BaseException:
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            raise
        task_status.started(format_address(bound[0], bound[1]))
