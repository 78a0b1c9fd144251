"""`mesh.ops_http` and `mesh.ops`: the operations endpoints of real mesh nodes.

Nodes run in this trio process on loopback (keyed, real SQLite files); every request goes
through `http.client` in a worker thread, over a real socket, so the server is exercised
exactly as probes, Prometheus and the CLIs use it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import shutil
import subprocess
import sys
import time

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from crdt_types.vv import decode_state_vector
from gossip.keyring import Keyring, write_key_file
from mesh import ConfigChanged, MeshConfig, open_mesh
from mesh.auth import authorization

pytestmark = pytest.mark.timeout(90)

KEY = Keyring([bytes(range(32))])
OTHER_KEY = Keyring([bytes(range(1, 33))])
ADMIN = {"Authorization": authorization(KEY)}
WRONG = {"Authorization": authorization(OTHER_KEY)}
SECRET = b"hunter2-d41d8cd98f00-never-in-clear"


def _call(address, method, path, body=None, headers=None):
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type"), resp.read()
    finally:
        conn.close()


async def call(address, method, path, body=None, headers=None):
    return await trio.to_thread.run_sync(_call, address, method, path, body, headers)


async def get_json(address, path, headers=None):
    status, _, data = await call(address, "GET", path, headers=headers)
    return status, json.loads(data)


async def put_config(address, key, value, headers=ADMIN):
    body = json.dumps({"value": value}).encode()
    status, _, data = await call(address, "PUT", f"/config/{key}", body, headers)
    return status, json.loads(data)


def config(tmp_path, name, **kw):
    kw.setdefault("key", KEY)
    return MeshConfig(node=name, data_dir=tmp_path / name, http="127.0.0.1:0", **kw)


def covers(ours: bytes, theirs: bytes) -> bool:
    mine = decode_state_vector(ours)
    return all(mine.get(c, 0) >= k for c, k in decode_state_vector(theirs).items())


async def wait_until(predicate, timeout=15.0, what="condition"):
    with trio.move_on_after(timeout):
        while not await predicate():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting for {what}")


# --- probes -----------------------------------------------------------------------------


async def test_a_stalled_loop_fails_liveness_with_the_measured_lag_then_recovers(tmp_path):
    async with open_mesh(config(tmp_path, "a")) as mesh:
        address = mesh.http_address
        status, body = await get_json(address, "/livez")
        assert status == 200 and body["live"] is True
        threshold = body["threshold_seconds"]
        results = []

        def probe_during_stall():
            time.sleep(0.2)  # the loop is blocked by then; the kernel queues the connection
            results.append(_call(address, "GET", "/livez"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, probe_during_stall)
            await trio.sleep(0.05)
            time.sleep(threshold + 0.8)  # the test hook: a blocking call on the trio thread
        status, _, data = results[0]
        body = json.loads(data)
        assert status == 503 and body["live"] is False
        assert body["loop_lag_seconds"] >= threshold + 0.5, body
        await trio.sleep(0.3)  # the watchdog's next ticks are on time again
        healthz, hbody = await get_json(address, "/healthz")
        assert healthz == 200 and hbody["live"] is True
        _, metrics = (await call(address, "GET", "/metrics"))[1:]
        families = {f.name: f for f in text_string_to_metric_families(metrics.decode())}
        stalls = families["statemesh_event_loop_stalls"].samples[0].value
        assert stalls >= 1 and families["statemesh_event_loop_lag_max_seconds"].samples[0].value > 1


async def test_ready_turns_200_only_after_the_joiner_caught_up(tmp_path):
    async with open_mesh(config(tmp_path, "a")) as a:
        for i in range(150):
            s = await a.session(f"s{i}")
            s.state.append_message("user", f"message {i} " + "x" * 200)
        await a.session("s0")
        await a.commit("session/s0")
        for i in range(150):
            await a.commit(f"session/s{i}")
        assert (await get_json(a.http_address, "/readyz"))[0] == 200  # alone, nobody to expect
        async with open_mesh(config(tmp_path, "b", seeds=[a.address])) as b:
            seen = []
            first_ready = None
            with trio.move_on_after(20):
                while True:
                    status, body = await get_json(b.http_address, "/readyz")
                    seen.append((status, tuple(body["reasons"])))
                    if status == 200:
                        # At the first 200 the joiner's disk holds everything the peer holds.
                        first_ready = {
                            d: b.replica.durable_state_vector(d) for d in a.replica.doc_ids()
                        }
                        a_durable = {
                            d: a.replica.durable_state_vector(d) for d in a.replica.doc_ids()
                        }
                        break
                    await trio.sleep(0.005)
            assert first_ready is not None, seen[-3:]
            assert seen[0][0] == 503 and seen[0][1], seen[:3]
            differ = {
                d: (decode_state_vector(first_ready[d]), decode_state_vector(a_durable[d]))
                for d in first_ready
                if not covers(first_ready[d], a_durable[d])
            }
            assert not differ, differ
            assert b.documents() == a.documents()
            _, status = await get_json(b.http_address, "/status")
            assert status["health"]["ready"] and status["health"]["caught_up_once"]
            assert status["lag"] == {"a": 0.0}
            assert status["sessions_owned"] == {"a": 150}


async def test_a_full_disk_makes_the_node_not_ready_with_the_reason(tmp_path):
    async with open_mesh(config(tmp_path, "a")) as mesh:
        s = await mesh.session("one")
        s.state.append_message("user", "fits")
        await s.commit()
        store = mesh.store.store
        with store._lock:  # real SQLite: cap the file at its current size (SQLITE_FULL)
            pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
            store._conn.execute(f"PRAGMA max_page_count = {pages}")
        s.state.append_message("user", "y" * 300_000)
        with contextlib.suppress(Exception):
            await s.commit()
        status, body = await get_json(mesh.http_address, "/readyz")
        assert status == 503
        assert any(r.startswith("store: DiskFull") for r in body["reasons"]), body
        status, body = await get_json(mesh.http_address, "/healthz")
        assert status == 503 and body["live"] is True and body["ready"] is False


async def test_metrics_parse_as_prometheus_text_and_follow_the_runtime(tmp_path):
    async with (
        open_mesh(config(tmp_path, "a")) as a,
        open_mesh(config(tmp_path, "b", seeds=[a.address])),
    ):

        async def both_alive():
            return a.node.membership.live_members() == ["b"]

        await wait_until(both_alive, what="a to see b alive")
        s = await a.session("m")
        s.state.append_message("user", "counted")
        await s.commit()
        await s.commit(replicas=1, timeout=10)
        # A garbage datagram to a: rejected and counted by reason.
        with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as sock:
            host, port = a.address.rsplit(":", 1)
            await sock.sendto(b"\x00garbage", (host, int(port)))

        async def ready():
            return (await get_json(a.http_address, "/readyz"))[0] == 200

        await wait_until(ready, what="a to be ready (a digest exchange with b matched)")
        status, ctype, data = await call(a.http_address, "GET", "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(data.decode())}

        def sample(family, name=None, **labels):
            for smp in families[family].samples:
                if (name is None or smp.name == name) and all(
                    smp.labels.get(k) == v for k, v in labels.items()
                ):
                    return smp.value
            raise AssertionError(f"no sample {family} {name} {labels}")

        assert sample("statemesh_members", state="alive") == 2
        # A frame is labelled by its main message, and the write travels as a rumour or,
        # if a's replicator has not listed b yet, as an anti-entropy diff: count messages.
        sent = "statemesh_gossip_messages_sent"
        assert sample(sent, type="doc_update") + sample(sent, type="doc_diff") >= 1
        assert sample("statemesh_gossip_messages_received", type="replica_ack") >= 1
        assert sum(s.value for s in families["statemesh_gossip_frames_sent"].samples) >= 2
        assert sum(s.value for s in families["statemesh_gossip_sent_bytes"].samples) > 0
        assert sum(s.value for s in families["statemesh_gossip_frames_received"].samples) >= 2
        assert sum(s.value for s in families["statemesh_gossip_frames_rejected"].samples) >= 1
        count = "statemesh_commit_latency_seconds_count"
        assert sample("statemesh_commit_latency_seconds", count, level="local") == 1
        assert sample("statemesh_commit_latency_seconds", count, level="1") == 1
        assert sample("statemesh_store_fsync_seconds", "statemesh_store_fsync_seconds_count") >= 1
        assert sample("statemesh_sessions_owned") == 1
        assert sample("statemesh_replication_lag_seconds") == 0
        assert sample("statemesh_ready") == 1
        assert "statemesh_event_loop_lag_seconds" in families
        assert "statemesh_takeovers" in families and "statemesh_fencings" in families
        # Conventions: counters end in _total, durations are _seconds, sizes _bytes.
        for family in families.values():
            for smp in family.samples:
                assert smp.name.startswith("statemesh_")
                if family.type == "counter":
                    assert smp.name.endswith("_total"), smp.name


# --- configuration --------------------------------------------------------------------------


async def test_config_set_on_one_node_is_read_on_another_with_events_on_both(tmp_path):
    async with (
        open_mesh(config(tmp_path, "a")) as a,
        open_mesh(config(tmp_path, "b", seeds=[a.address])) as b,
    ):
        async with a.subscribe() as on_a, b.subscribe() as on_b:
            status, entry = await put_config(a.http_address, "flags.beta", True)
            assert status == 200
            assert entry == {"key": "flags.beta", "value": True, "version": 1, "by": "a"}
            status, entry = await put_config(a.http_address, "flags.beta", False)
            assert entry["version"] == 2

            async def on_b_too():
                s, body = await get_json(b.http_address, "/config/flags.beta")
                return s == 200 and body["value"] is False and body["version"] == 2

            await wait_until(on_b_too, what="b to read the new value")

            async def changes(sub, n):
                out = []
                with trio.move_on_after(10):
                    async for ev in sub:
                        if isinstance(ev, ConfigChanged):
                            out.append(ev)
                            if len(out) >= n:
                                break
                return out

            local = await changes(on_a, 2)
            assert [(e.key, e.value, e.version, e.local) for e in local] == [
                ("flags.beta", True, 1, True),
                ("flags.beta", False, 2, True),
            ]
            remote = await changes(on_b, 1)
            assert remote[-1] == ConfigChanged("flags.beta", False, 2, "a", False)
        status, body = await get_json(b.http_address, "/config")
        assert body == {"config": {"flags.beta": {"value": False, "version": 2, "by": "a"}}}


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "message"),
    [
        ("/config/flags.beta", b'{"value": true}', {}, 401, "admin token required"),
        ("/config/flags.beta", b'{"value": true}', WRONG, 401, "admin token required"),
        ("/config/flags.beta", b'{"value": 3}', ADMIN, 400, "a flag must be a bool"),
        ("/config/slo.p99", b'{"value": "fast"}', ADMIN, 400, "must be a number"),
        ("/config/tools.search", b'{"value": "not a url"}', ADMIN, 400, "not a URL"),
        ("/config/colour.x", b'{"value": 1}', ADMIN, 400, "unknown setting"),
        ("/config/flags.beta", b"true", ADMIN, 400, "exactly one field"),
        ("/config/flags.beta", b"{not json", ADMIN, 400, "must be JSON"),
        ("/config/flags.beta", b"\xff\xfe", ADMIN, 400, "must be JSON"),
        ("/config/flags.beta", b'{"value": 1, "x": 2}', ADMIN, 400, "exactly one field"),
        ("/config/flags.beta", b"x" * (200 * 1024), ADMIN, 413, "larger than"),
    ],
)
async def test_refused_config_changes_answer_clearly_and_change_nothing(
    tmp_path, path, body, headers, status, message
):
    async with open_mesh(config(tmp_path, "a")) as mesh:
        assert (await put_config(mesh.http_address, "flags.beta", False))[0] == 200
        before = mesh.documents()
        got, _, data = await call(mesh.http_address, "PUT", path, body, headers)
        assert got == status and message in json.loads(data)["error"], data
        assert mesh.documents() == before  # not one byte of the cluster document moved
        _, entry = await get_json(mesh.http_address, "/config/flags.beta")
        assert entry["value"] is False and entry["version"] == 1


async def test_config_reads_need_no_token_and_wrong_methods_are_refused(tmp_path):
    async with open_mesh(config(tmp_path, "a")) as mesh:
        address = mesh.http_address
        assert await get_json(address, "/config") == (200, {"config": {}})
        status, body = await get_json(address, "/config/flags.none")
        assert status == 404 and "not set" in body["error"]
        assert (await call(address, "DELETE", "/config/flags.x", headers=ADMIN))[0] == 405
        assert (await call(address, "POST", "/livez"))[0] == 405
        assert (await call(address, "PUT", "/secrets", b"x", ADMIN))[0] == 405


# --- secrets --------------------------------------------------------------------------------


async def test_secrets_need_the_token_and_a_peer_without_the_key_cannot_read_them(tmp_path):
    async with open_mesh(config(tmp_path, "a")) as mesh:
        address = mesh.http_address
        status, _, data = await call(address, "PUT", "/secrets/api.token", SECRET)
        assert status == 401 and "cluster" not in mesh.replica  # nothing was written
        for path in ("/secrets", "/secrets/api.token"):
            assert (await call(address, "GET", path))[0] == 401
            assert (await call(address, "GET", path, headers=WRONG))[0] == 401
        status, _, data = await call(address, "PUT", "/secrets/api.token", SECRET, ADMIN)
        assert status == 200 and json.loads(data)["bytes"] == len(SECRET)
        status, ctype, value = await call(address, "GET", "/secrets/api.token", headers=ADMIN)
        assert status == 200 and value == SECRET and ctype == "application/octet-stream"
        assert await get_json(address, "/secrets", ADMIN) == (
            200,
            {"secrets": {"api.token": KEY.primary_id.hex()}},
        )
        assert (await call(address, "GET", "/secrets/nope", headers=ADMIN))[0] == 404
        assert (await call(address, "PUT", "/secrets/" + "n" * 200, b"v", ADMIN))[0] == 400
        assert (await call(address, "PUT", "/secrets/empty", b"", ADMIN))[0] == 400
    # The same data on a node with another cluster key: the blob is there, the value is not.
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    async with open_mesh(
        MeshConfig(node="a", data_dir=tmp_path / "c", key=OTHER_KEY, http="127.0.0.1:0")
    ) as other:
        h = {"Authorization": authorization(OTHER_KEY)}
        assert "api.token" in other.cluster.secret_names()
        status, _, data = await call(other.http_address, "GET", "/secrets/api.token", headers=h)
        assert status == 409 and b"unknown_key" in data and SECRET not in data


async def test_an_insecure_node_refuses_secrets_and_config_changes(tmp_path):
    cfg = MeshConfig(node="i", data_dir=tmp_path / "i", insecure=True, http="127.0.0.1:0")
    async with open_mesh(cfg) as mesh:
        status, _, data = await call(mesh.http_address, "PUT", "/secrets/x", b"v", ADMIN)
        assert status == 401 and b"--insecure" in data
        status, body = await put_config(mesh.http_address, "flags.x", True)
        assert status == 401 and "--insecure" in body["error"]


async def test_secrets_never_appear_in_clear_in_files_logs_status_metrics_or_inspect(
    tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    async with (
        open_mesh(config(tmp_path, "a")) as a,
        open_mesh(config(tmp_path, "b", seeds=[a.address])) as b,
    ):
        assert (await call(a.http_address, "PUT", "/secrets/api.token", SECRET, ADMIN))[0] == 200

        async def replicated():
            return "api.token" in (
                b.cluster.secret_names() if "cluster" in b.replica else []
            ) and b.replica.durable_state_vector("cluster") == b.replica.state_vector("cluster")

        await wait_until(replicated, what="the sealed secret on b")
        assert b.ops.get_secret("api.token") == SECRET  # b holds the key: it can open it
        exposed = []
        for node in (a, b):
            for path in ("/status", "/metrics", "/config", "/documents", "/documents/cluster"):
                exposed.append((await call(node.http_address, "GET", path))[2])
    exposed.append(caplog.text.encode())
    for name in ("a", "b"):
        for f in (tmp_path / name).iterdir():
            exposed.append(f.read_bytes())
        out = subprocess.run(
            [sys.executable, "-m", "cli.main", "inspect", str(tmp_path / name), "--json"],
            capture_output=True,
            timeout=60,
        )
        exposed.append(out.stdout + out.stderr)
    assert exposed and all(SECRET not in blob for blob in exposed)
    assert all(b"hunter2" not in blob for blob in exposed)


async def test_a_key_file_on_disk_gives_the_same_token_the_cli_sends(tmp_path):
    key_file = tmp_path / "cluster.key"
    write_key_file(key_file, os.urandom(32))
    cfg = MeshConfig(node="k", data_dir=tmp_path / "k", key=key_file, http="127.0.0.1:0")
    from cli._http_client import admin_headers

    async with open_mesh(cfg) as mesh:
        headers = admin_headers(key_file)
        assert headers["Authorization"].startswith("Bearer smadm1.")
        assert (await put_config(mesh.http_address, "prompt.version", "v7", headers))[0] == 200
        assert mesh.cluster.get("prompt.version") == "v7"
