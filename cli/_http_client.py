"""A small HTTP client for the CLIs that talk to a running peer (`status`, `config`, `secret`).

Stdlib `http.client` only, one request per connection, a timeout on every call. It turns
what can go wrong into two exceptions the commands map to exit codes:

* `Unreachable` (exit 2): the address is malformed, nothing listens there, or it does
  not answer in time: an environment problem, reported in one line.
* `HttpError` (exit 1): the peer answered with an error status; `message` is the
  server's own ``{"error": ...}`` text, so the user reads exactly what the peer refused.

The admin token is computed from the cluster key file (`mesh.auth.authorization`) and
sent as the ``Authorization`` header; it is never printed.

The flags that say which peer and how (`add_peer_arguments`: --http, --key-file, --json,
--timeout), the client they describe (`peer_client`) and the way an action runs
(`add_peer_action`, through `run_guarded`) are defined here once for every such command.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from pathlib import Path
from typing import Any

from cli._parser import add_command
from crdt_types.errors import LocalError

__all__ = [
    "Client",
    "HttpError",
    "Unreachable",
    "add_actions",
    "add_peer_action",
    "add_peer_arguments",
    "admin_headers",
    "peer_client",
    "run_guarded",
]

DEFAULT_TIMEOUT = 10.0
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


class Unreachable(Exception):
    """The peer could not be reached (or the address is not HOST:PORT)."""


class HttpError(Exception):
    """The peer answered `status` with the error `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Unreachable(f"--http {address!r} is not HOST:PORT")
    return host, int(port)


def add_peer_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags every peer-facing action takes: --http, --key-file, --json, --timeout."""
    parser.add_argument("--http", required=True, metavar="HOST:PORT", help="a peer's --http")
    parser.add_argument("--key-file", metavar="FILE", help="cluster key file (admin token)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")


def add_actions(
    sub: argparse._SubParsersAction, name: str, help: str, doc: str | None
) -> argparse._SubParsersAction:
    """Add command `name` (described by the module `doc`) whose ACTION is required."""
    actions = add_command(sub, name, help, doc).add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    return actions


def add_peer_action(
    actions: argparse._SubParsersAction, name: str, help: str, prog: str, fn: Any
) -> argparse.ArgumentParser:
    """Add action `name` with the peer flags; it runs `fn(args)` under `run_guarded(prog)`."""
    parser = actions.add_parser(name, help=help)
    add_peer_arguments(parser)
    parser.set_defaults(func=lambda args: run_guarded(prog, fn, args))
    return parser


def peer_client(args: argparse.Namespace) -> Client:
    """The client the peer flags describe: --http, the admin token of --key-file, --timeout."""
    return Client(args.http, headers=admin_headers(args.key_file), timeout=args.timeout)


def admin_headers(key_file: str | Path | None) -> dict[str, str]:
    """{"Authorization": "Bearer <token>"} from the key file ({} without one); `LocalError` if unusable."""
    if key_file is None:
        return {}
    from gossip.keyring import Keyring, load_key_file
    from mesh.auth import authorization

    try:
        material = load_key_file(Path(key_file))
    except LocalError as exc:
        raise LocalError(f"--key-file: {exc}") from None
    return {"Authorization": authorization(Keyring([material]))}


class Client:
    """Requests to one peer's HTTP server at `address` ("host:port")."""

    def __init__(
        self,
        address: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """Check the address now; `headers` go with every request."""
        self.address = address
        self.host, self.port = _split(address)
        self.headers = dict(headers or {})
        self.timeout = timeout

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[int, str, bytes]:
        """(status, content type, body) of one request; `Unreachable` if there is no answer."""
        headers = dict(self.headers)
        if content_type is not None:
            headers["Content-Type"] = content_type
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read(MAX_RESPONSE_BYTES + 1)
            if len(data) > MAX_RESPONSE_BYTES:
                raise Unreachable(f"{self.address}{path}: answer larger than {MAX_RESPONSE_BYTES}")
            return resp.status, resp.getheader("content-type", ""), data
        except TimeoutError:
            raise Unreachable(
                f"cannot reach statemesh peer at {self.address}: no answer in {self.timeout:g} s"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise Unreachable(f"cannot reach statemesh peer at {self.address}: {reason}") from None
        finally:
            conn.close()

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        *,
        ok: tuple[int, ...] = (200,),
    ) -> tuple[int, str, bytes]:
        """Like `request`, but a status outside `ok` raises `HttpError` with the server's text."""
        status, ctype, data = self.request(method, path, body, content_type)
        if status not in ok:
            raise HttpError(status, _error_text(ctype, data))
        return status, ctype, data

    def json(self, method: str, path: str, payload: Any = None, **kwargs: Any) -> Any:
        """Send `payload` as JSON (if not None) and decode the JSON answer."""
        body = None if payload is None else json.dumps(payload).encode()
        ctype = None if payload is None else "application/json"
        _, _, data = self.call(method, path, body, ctype, **kwargs)
        try:
            return json.loads(data)
        except ValueError:
            raise Unreachable(f"{self.address}{path}: the answer is not JSON") from None


def _error_text(ctype: str, data: bytes) -> str:
    if ctype.startswith("application/json"):
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("error"), str):
            return obj["error"]
    text = data.decode("utf-8", "replace").strip()
    return text[:200] or "(no message)"


def run_guarded(prog: str, fn: Any, *args: Any) -> int:
    """Call `fn(*args)`; print failures as one line on stderr and map them to exit codes."""
    try:
        return int(fn(*args) or 0)
    except HttpError as exc:
        print(f"{prog}: error: {exc.message} (HTTP {exc.status})", file=sys.stderr)
        return 1
    except (Unreachable, LocalError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
