"""`mesh.http`: the peer's HTTP endpoints over real loopback sockets.

A mesh node with `http="127.0.0.1:0"`; requests are made with raw sockets in worker
threads (the server runs on the test's trio loop), so every byte the server sees and
sends is checked, malformed requests included.
"""

from __future__ import annotations

import json
import socket

import pytest
import trio

from mesh import MeshConfig, open_mesh

pytestmark = pytest.mark.timeout(60)


def _exchange(address: str, raw: bytes) -> tuple[int, dict]:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else {}


async def request(address: str, raw: bytes) -> tuple[int, dict]:
    return await trio.to_thread.run_sync(_exchange, address, raw)


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


async def test_status_reports_node_cluster_members_documents_started(tmp_path):
    cfg = MeshConfig(node="h", data_dir=tmp_path / "h", insecure=True, http="127.0.0.1:0")
    async with open_mesh(cfg) as mesh:
        s = await mesh.session("one")
        s.state.append_message("user", "hi")
        await s.commit()
        status, body = await request(mesh.http_address, get("/status"))
        assert status == 200
        assert body["node"] == "h" and body["cluster"] == "statemesh"
        assert body["started"] is True
        # The session, plus whatever bookkeeping documents the node keeps (ownership).
        assert body["documents"] == len(mesh.documents()) >= 1
        assert body["members"] == [
            {"node": "h", "state": "alive", "address": mesh.address, "incarnation": 0}
        ]
        status, docs = await request(mesh.http_address, get("/documents"))
        assert status == 200 and docs == mesh.documents()
        assert docs["session/one"] == s.fingerprint()
        status, doc = await request(mesh.http_address, get("/documents/session%2Fone"))
        assert status == 200 and doc["fingerprint"] == s.fingerprint()
        assert doc["content"]["messages"][0]["content"] == "hi"


async def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(tmp_path):
    cfg = MeshConfig(node="h", data_dir=tmp_path / "h", insecure=True, http="127.0.0.1:0")
    async with open_mesh(cfg) as mesh:
        address = mesh.http_address
        assert (await request(address, get("/nope")))[0] == 404
        assert (await request(address, get("/documents/session%2Fmissing")))[0] == 404
        post = b"POST /status HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
        assert (await request(address, post))[0] == 405
        assert (await request(address, b"NOT HTTP AT ALL\r\n\r\n"))[0] == 400
        huge = b"GET /status HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 40_000 + b"\r\n\r\n"
        assert (await request(address, huge))[0] in (400, 431)
        status, body = await request(address, get("/status"))
        assert status == 200 and body["node"] == "h"


async def test_http_binds_exactly_where_told(tmp_path):
    cfg = MeshConfig(node="h", data_dir=tmp_path / "h", insecure=True, http="127.0.0.2:0")
    async with open_mesh(cfg) as mesh:
        assert mesh.http_address.startswith("127.0.0.2:")
        assert (await request(mesh.http_address, get("/status")))[0] == 200
