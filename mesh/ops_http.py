"""The operations routes of the peer's HTTP server: probes, metrics, config, secrets.

`install()` adds `handle` to `mesh.http.HOOKS` (once); it answers these paths and lets
every other one fall through to the runtime's own routes:

    GET  /livez            200 while the event loop is responsive, else 503
    GET  /readyz           200 when ready (store ok, joined, caught up), else 503 + reasons
    GET  /healthz          both: 200 only when live and ready
    GET  /metrics          Prometheus text exposition
    GET  /status           the runtime's status + health, lag per peer, owners, takeovers
    GET  /config           every cluster setting with its version and writer
    GET  /config/KEY       one setting (404 if never set)
    PUT  /config/KEY       body {"value": V}; admin token; 400 with the schema error
    GET  /secrets          secret names and sealing key ids; admin token
    GET  /secrets/NAME     the clear value (application/octet-stream); admin token
    PUT  /secrets/NAME     body = the value's bytes; admin token

Admin token: ``Authorization: Bearer <token>`` (`mesh.auth`). Requests that change
configuration or reveal secrets, and the secret listing (names say which credentials
exist), need it; probes, metrics, status and reading configuration (not secret) do not.
A request without a valid token gets 401 before its body is looked at, so it changes
nothing. Errors are JSON ``{"error": "..."}``; no answer ever carries a secret except
`GET /secrets/NAME` to a holder of the token.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from crdt_types.errors import InvalidValue, LocalError, SecretUnreadable
from mesh import http
from mesh.auth import check_admin
from mesh.http import Raw, Request
from mesh.metrics import CONTENT_TYPE

__all__ = ["handle", "install"]

_WRITE = ("PUT", "POST")
_UNAUTHORIZED_HEADERS = (("www-authenticate", 'Bearer realm="statemesh"'),)


def install() -> None:
    """Register the operations routes with the HTTP server (idempotent)."""
    if handle not in http.HOOKS:
        http.HOOKS.append(handle)


def _json_error(status: int, message: str, headers: tuple = ()) -> tuple[int, Any]:
    body = (json.dumps({"error": message}) + "\n").encode()
    return status, Raw("application/json", body, headers)


def _unauthorized(mesh: Any) -> tuple[int, Any]:
    if mesh.config.keyring is None:
        message = "this node runs --insecure: it has no admin token, so this is refused"
    else:
        message = "admin token required: send Authorization: Bearer <token> (--key-file)"
    return _json_error(401, message, _UNAUTHORIZED_HEADERS)


def _admin(mesh: Any, request: Request) -> bool:
    return check_admin(request.headers.get("authorization"), mesh.config.keyring)


def _method(request: Request, allowed: tuple[str, ...]) -> tuple[int, Any] | None:
    if request.method in allowed:
        return None
    return 405, {"error": f"method {request.method} not allowed on {request.path}"}


async def handle(mesh: Any, request: Request) -> tuple[int, Any] | None:
    """Answer an operations route, or None to let the runtime's routes answer."""
    ops = getattr(mesh, "ops", None)
    path = request.path
    if ops is None:
        return None
    if path in ("/livez", "/readyz", "/healthz", "/metrics", "/status"):
        return _method(request, ("GET",)) or _probe(ops, path)
    if path == "/config" or path.startswith("/config/"):
        return await _config(mesh, ops, request)
    if path == "/secrets" or path.startswith("/secrets/"):
        return await _secrets(mesh, ops, request)
    return None


def _probe(ops: Any, path: str) -> tuple[int, Any]:
    if path == "/livez":
        live = ops.liveness()
        return (200 if live["live"] else 503), live
    if path == "/readyz":
        readiness = ops.readiness()
        return (200 if readiness.ready else 503), readiness.to_dict()
    if path == "/healthz":
        live = ops.liveness()
        readiness = ops.readiness()
        ok = live["live"] and readiness.ready
        reasons = list(readiness.reasons)
        if not live["live"]:
            reasons.insert(0, f"event loop lag {live['loop_lag_seconds']} s over the threshold")
        return (200 if ok else 503), {
            "live": live["live"],
            "ready": readiness.ready,
            "reasons": reasons,
            "loop_lag_seconds": live["loop_lag_seconds"],
            "lag_seconds": round(readiness.lag, 3),
        }
    if path == "/metrics":
        ops.refresh()  # a scrape sees the gauges as of now, not of the last refresh
        return 200, Raw(CONTENT_TYPE, ops.metrics.render())
    return 200, ops.status()


def _entry(key: str, entry: Any) -> dict[str, Any]:
    return {"key": key, "value": entry.value, "version": entry.version, "by": entry.writer}


async def _config(mesh: Any, ops: Any, request: Request) -> tuple[int, Any]:
    key = unquote(request.path[len("/config/") :]) if request.path != "/config" else ""
    if not key:
        return _method(request, ("GET",)) or (200, {"config": ops.config()})
    refused = _method(request, ("GET", *_WRITE))
    if refused is not None:
        return refused
    if request.method == "GET":
        entry = ops.config_entry(key)
        if entry is None:
            return 404, {"error": f"setting {key!r} is not set"}
        return 200, _entry(key, entry)
    if not _admin(mesh, request):
        return _unauthorized(mesh)
    try:
        doc = json.loads(request.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return 400, {"error": 'body must be JSON: {"value": ...}'}
    if not isinstance(doc, dict) or set(doc) != {"value"}:
        return 400, {"error": 'body must be a JSON object with exactly one field, "value"'}
    try:
        entry = await ops.set_config(key, doc["value"])
    except InvalidValue as exc:
        return 400, {"error": str(exc)}
    return 200, _entry(key, entry)


async def _secrets(mesh: Any, ops: Any, request: Request) -> tuple[int, Any]:
    name = unquote(request.path[len("/secrets/") :]) if request.path != "/secrets" else ""
    refused = _method(request, ("GET",) if not name else ("GET", *_WRITE))
    if refused is not None:
        return refused
    if not _admin(mesh, request):
        return _unauthorized(mesh)
    try:
        if not name:
            return 200, {"secrets": ops.secrets()}
        if request.method == "GET":
            value = ops.get_secret(name)
            if value is None:
                return 404, {"error": f"no secret {name!r}"}
            return 200, Raw("application/octet-stream", value)
        key_id = await ops.set_secret(name, request.body)
        return 200, {"name": name, "key_id": key_id, "bytes": len(request.body)}
    except SecretUnreadable as exc:
        return 409, {"error": str(exc)}  # names the secret and the reason, never the value
    except LocalError as exc:
        return 400, {"error": str(exc)}
