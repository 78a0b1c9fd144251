"""Tests of mesh.transport over real sockets on 127.0.0.1.

Hostile peers are raw sockets driven by the test (silent, slowloris, oversized, never
reading, truncated). Timeouts in the configs are short so cuts happen fast; every wait in
a test is bounded by `trio.fail_after`, and no assertion is about speed.
"""

from __future__ import annotations

import random
import signal
import socket
import struct
import subprocess
import sys

import pytest
import trio

from crdt_types.errors import Closed, LocalError
from gossip.framing import MAX_DATAGRAM_BYTES, MAX_FRAME_BYTES, frame
from mesh.transport import (
    Transport,
    TransportConfig,
    TransportStats,
    format_address,
    parse_address,
)

SEED = 20261130
WAIT = 10.0  # upper bound on any single wait; a failing test fails, it never hangs

FAST = TransportConfig(
    connect_timeout=1.0,
    write_timeout=0.3,
    idle_timeout=0.3,
    frame_timeout=0.3,
    outbound_idle=5.0,
    backoff_min=0.02,
    backoff_max=0.2,
    flush_timeout=2.0,
)
# Long idle so that tests not about idleness never see an idle cut.
CALM = TransportConfig(
    connect_timeout=1.0,
    write_timeout=2.0,
    idle_timeout=30.0,
    frame_timeout=5.0,
    backoff_min=0.02,
    backoff_max=0.2,
    flush_timeout=2.0,
)


def payloads(n: int, seed: int = SEED, size: int = 64) -> list[bytes]:
    rng = random.Random(seed)
    return [i.to_bytes(4, "big") + rng.randbytes(rng.randrange(size)) for i in range(n)]


async def wait_until(predicate, what: str, timeout: float = WAIT) -> None:
    """Poll `predicate` every 10 ms until it holds; fail with `what` after `timeout`."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out waiting for: {what}")


async def receive_n(t: Transport, n: int) -> list[tuple[str, bytes]]:
    with trio.fail_after(WAIT):
        return [await t.receive() for _ in range(n)]


async def raw_connect(address: str) -> trio.SocketStream:
    host, port = parse_address(address)
    return await trio.open_tcp_stream(host, port)


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    """Read until the transport closes the connection; return what it sent."""
    got = b""
    with trio.fail_after(WAIT):
        while True:
            try:
                data = await stream.receive_some(4096)
            except trio.BrokenResourceError:
                return got
            if not data:
                return got
            got += data


# --- round trips and connection reuse -------------------------------------------------------


async def test_frames_round_trip_both_ways():
    sent_ab = payloads(30, SEED)
    sent_ba = payloads(30, SEED + 1)
    async with Transport(config=CALM) as a, Transport(config=CALM) as b:
        for p in sent_ab:
            assert a.send(b.address, p)
        for p in sent_ba:
            assert b.send(a.address, p)
        got_b = await receive_n(b, len(sent_ab))
        got_a = await receive_n(a, len(sent_ba))
    assert [f for _, f in got_b] == sent_ab, f"seed {SEED}"
    assert [f for _, f in got_a] == sent_ba, f"seed {SEED + 1}"
    # The source is the connecting socket's address, as the kernel reports it.
    assert all(src.startswith("127.0.0.1:") for src, _ in got_a + got_b)
    assert a.stats.frames_sent == b.stats.frames_received == 30
    assert a.stats.bytes_sent == b.stats.bytes_received == sum(map(len, sent_ab))


async def test_many_frames_share_one_connection():
    sent = payloads(300, SEED, size=2000)
    async with Transport(config=CALM) as a, Transport(config=CALM) as b:
        for i, p in enumerate(sent):
            assert a.send(b.address, p)
            if i % 50 == 0:
                await trio.sleep(0.01)  # let the writer run between bursts
        got = await receive_n(b, len(sent))
        assert a.stats.connections_opened == {"outbound": 1}
        assert b.stats.connections_opened == {"inbound": 1}
        assert a.connections["outbound"] == 1
    assert [f for _, f in got] == sent, f"seed {SEED}"
    assert len({src for src, _ in got}) == 1


async def test_large_frame_at_the_limit_round_trips():
    big = random.Random(SEED).randbytes(MAX_FRAME_BYTES)
    async with Transport(config=CALM) as a, Transport(config=CALM) as b:
        assert a.send(b.address, big)
        [(_, got)] = await receive_n(b, 1)
    assert got == big


async def test_reconnects_after_peer_restarts_on_same_port():
    async with Transport(config=CALM) as a:
        async with Transport(config=CALM) as b1:
            port = b1.port
            assert a.send(b1.address, b"before")
            [(_, got)] = await receive_n(b1, 1)
            assert got == b"before"
        # b1 is gone: A notices the EOF and later connects refuse until b2 is up.
        await wait_until(lambda: a.connections["outbound"] == 0, "A sees the old connection end")
        a.send(f"127.0.0.1:{port}", b"while down")
        await wait_until(lambda: a.stats.connect_failures["error"] >= 1, "a refused connect")
        async with Transport(f"127.0.0.1:{port}", config=CALM) as b2:
            received: list[bytes] = []

            async def drain():
                async for _, f in b2.incoming():
                    received.append(f)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                for i in range(200):  # bounded: 200 x 20 ms
                    a.send(b2.address, b"after %d" % i)
                    await trio.sleep(0.02)
                    if received:
                        break
                nursery.cancel_scope.cancel()
        assert received and received[0].startswith(b"after"), received
        assert a.stats.connections_opened["outbound"] == 2
        assert a.stats.connections_closed["eof"] >= 1
        assert a.stats.dropped["unreachable"] >= 1


async def test_idle_outgoing_connection_is_closed_and_reopened_on_demand():
    cfg = TransportConfig(outbound_idle=0.1, backoff_min=0.02, backoff_max=0.2)
    async with Transport(config=cfg) as a, Transport(config=CALM) as b:
        assert a.send(b.address, b"one")
        await receive_n(b, 1)
        await wait_until(lambda: a.stats.connections_closed["idle"] == 1, "idle close")
        assert a.connections["outbound"] == 0
        assert a.send(b.address, b"two")
        [(_, got)] = await receive_n(b, 1)
        assert got == b"two"
        assert a.stats.connections_opened["outbound"] == 2
        assert a.stats.connections_cut.total() == 0


def _have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _have_ipv6_loopback(), reason="no IPv6 loopback (::1) on this host")
async def test_ipv6_loopback_round_trip():
    async with Transport("[::1]:0", config=CALM) as a, Transport("[::1]:0", config=CALM) as b:
        assert b.address.startswith("[::1]:")
        assert a.send(b.address, b"over tcp")
        assert a.send_datagram(b.address, b"over udp")
        got = sorted(f for _, f in await receive_n(b, 2))
    assert got == [b"over tcp", b"over udp"]


# A peer in its own process: prints its address, then one line per frame received.
CHILD = """
import sys, trio
from mesh.transport import Transport
async def main():
    async with Transport(sys.argv[1]) as t:
        print(t.address, flush=True)
        async for _, f in t.incoming():
            print(f.decode(), flush=True)
trio.run(main)
"""


class ChildPeer:
    """A transport in a child process, read line by line; killed with SIGKILL by pid."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._buf = b""

    @classmethod
    async def start(cls, bind: str) -> ChildPeer:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", CHILD, bind], stdout=subprocess.PIPE
        )
        return cls(proc)

    async def readline(self) -> str:
        with trio.fail_after(WAIT):
            while b"\n" not in self._buf:
                data = await self.proc.stdout.receive_some(4096)
                assert data, f"child exited with {self.proc.poll()}"
                self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        with trio.fail_after(WAIT):
            await self.proc.wait()
        await self.proc.stdout.aclose()


async def test_reconnects_after_peer_process_is_killed_and_restarted():
    async with Transport(config=CALM) as a:
        child = await ChildPeer.start("127.0.0.1:0")
        try:
            address = await child.readline()
            assert a.send(address, b"hello")
            assert await child.readline() == "hello"
        finally:
            await child.kill()
        assert child.proc.returncode == -signal.SIGKILL
        # The kernel closed the dead process's sockets; A sees its connection end.
        await wait_until(lambda: a.connections["outbound"] == 0, "A notices the kill")
        child = await ChildPeer.start(address)
        try:
            assert await child.readline() == address
            for i in range(200):  # bounded: 200 x 20 ms
                a.send(address, b"again %d" % i)
                await trio.sleep(0.02)
                if a.stats.frames_sent >= 2:
                    break
            assert (await child.readline()).startswith("again")
        finally:
            await child.kill()
        assert a.stats.connections_opened["outbound"] == 2


# --- send queues -------------------------------------------------------------------------


async def test_full_queue_drops_newest_and_counts_without_blocking():
    cfg = TransportConfig(queue_frames=4, flush_timeout=2.0)
    sent = payloads(10)
    async with Transport(config=cfg) as a, Transport(config=CALM) as b:
        # send() is synchronous: no task runs between these calls, so the queue fills.
        accepted = [a.send(b.address, p) for p in sent]
        assert accepted == [True] * 4 + [False] * 6
        assert a.stats.dropped["queue_full"] == 6
        assert a.queued_frames == 4
        got = await receive_n(b, 4)
    assert [f for _, f in got] == sent[:4]


async def test_full_queue_drops_oldest_when_configured():
    cfg = TransportConfig(queue_frames=4, drop="oldest", flush_timeout=2.0)
    sent = payloads(10)
    async with Transport(config=cfg) as a, Transport(config=CALM) as b:
        assert all(a.send(b.address, p) for p in sent)
        assert a.stats.dropped["queue_full"] == 6
        got = await receive_n(b, 4)
    assert [f for _, f in got] == sent[-4:]


async def test_byte_budgets_and_peer_limit_drop_and_count():
    one = MAX_FRAME_BYTES + 4
    cfg = TransportConfig(queue_bytes=2 * one, total_queue_bytes=3 * one, max_peers=2)
    big = bytes(MAX_FRAME_BYTES)
    async with Transport(config=cfg) as a, Transport(config=CALM) as b, Transport() as c:
        assert a.send(b.address, big) and a.send(b.address, big)
        assert not a.send(b.address, big)  # per-peer bytes
        assert a.stats.dropped["queue_full"] == 1
        assert a.send(c.address, big)
        assert not a.send(c.address, big)  # all peers together
        assert a.stats.dropped["buffer_full"] == 1
        assert not a.send("127.0.0.1:9", b"x")  # a third destination
        assert a.stats.dropped["peer_limit"] == 1
        assert a.queued_bytes == 3 * MAX_FRAME_BYTES
        await receive_n(b, 2)
        await receive_n(c, 1)


async def test_unreachable_peer_drops_its_queue_and_backs_off():
    # Bind then close a socket to get a port with (almost surely) nothing listening.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead = format_address(*probe.getsockname())
    probe.close()
    async with Transport(config=FAST, rng=random.Random(SEED)) as a:
        for p in payloads(5):
            assert a.send(dead, p)
        await wait_until(lambda: a.stats.dropped["unreachable"] == 5, "queue dropped")
        assert a.stats.connect_failures["error"] == 1
        assert a.queued_frames == 0


async def test_peer_that_never_reads_does_not_block_other_peers():
    # A listening socket that never accepts or reads: the kernel completes the
    # handshake, then its buffers fill and our writes stall.
    hole = socket.socket()
    hole.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hole.bind(("127.0.0.1", 0))
    hole.listen(1)
    sink = format_address(*hole.getsockname())
    chunk = bytes(256 * 1024)
    try:
        async with Transport(config=FAST) as a, Transport(config=CALM) as b:
            good = payloads(50)
            for i, p in enumerate(good):
                for _ in range(4):
                    a.send(sink, chunk)  # the queue fills; extra frames are dropped
                assert a.send(b.address, p)
                if i % 10 == 0:
                    await trio.sleep(0.01)
            got = await receive_n(b, len(good))
            assert [f for _, f in got] == good
            await wait_until(
                lambda: a.stats.connections_cut["write_timeout"] >= 1, "the sink is cut off"
            )
            assert a.stats.dropped["write_failed"] >= 1
    finally:
        hole.close()


async def test_close_flushes_queued_frames():
    sent = payloads(200, size=1000)
    async with Transport(config=CALM) as b:
        async with Transport(config=CALM) as a:
            for p in sent:
                assert a.send(b.address, p)
            assert a.queued_frames == 200
        # a has closed: everything it had queued was written before it did.
        assert a.stats.frames_sent == 200
        assert a.stats.dropped["shutdown"] == 0
        got = await receive_n(b, len(sent))
    assert [f for _, f in got] == sent


async def test_close_is_bounded_when_peer_stops_reading():
    hole = socket.socket()
    hole.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hole.bind(("127.0.0.1", 0))
    hole.listen(1)
    cfg = TransportConfig(write_timeout=30.0, flush_timeout=0.2)
    try:
        with trio.fail_after(WAIT):
            async with Transport(config=cfg) as a:
                sink = format_address(*hole.getsockname())
                for _ in range(30):
                    a.send(sink, bytes(256 * 1024))
                await trio.sleep(0.05)
        # The write never finished (nobody reads), so the flush gave up and counted.
        assert a.stats.dropped["shutdown"] + a.stats.dropped["write_failed"] >= 1
    finally:
        hole.close()


# --- hostile and broken senders ----------------------------------------------------------


async def test_silent_connection_is_cut_by_idle_timeout():
    async with Transport(config=FAST) as b:
        raw = await raw_connect(b.address)
        await wait_until(lambda: b.connections["inbound"] == 1, "accepted")
        assert await read_until_closed(raw) == b""
        await raw.aclose()
        assert b.stats.connections_cut["idle_timeout"] == 1
        assert b.stats.connections_closed["idle_timeout"] == 1
        assert b.connections["inbound"] == 0


async def test_slowloris_sender_is_cut_by_frame_timeout():
    cfg = TransportConfig(idle_timeout=5.0, frame_timeout=0.3)
    async with Transport(config=cfg) as b:
        raw = await raw_connect(b.address)
        data = frame(b"x" * 100)

        async def trickle():
            # One byte per 0.1 s; bounded by the frame's length (~10 s at most).
            for i in range(len(data)):
                try:
                    await raw.send_all(data[i : i + 1])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            await wait_until(lambda: b.stats.connections_cut["frame_timeout"] == 1, "cut")
            nursery.cancel_scope.cancel()
        await raw.aclose()
        assert b.stats.connections_cut["idle_timeout"] == 0
        assert b.stats.frames_received == 0
        assert b.pending == 0


async def test_frames_sent_slowly_but_whole_are_not_cut():
    cfg = TransportConfig(idle_timeout=1.0, frame_timeout=0.5)
    async with Transport(config=cfg) as b:
        raw = await raw_connect(b.address)
        for i in range(8):  # 8 x 0.1 s: longer than frame_timeout in total
            await raw.send_all(frame(b"tick %d" % i))
            await trio.sleep(0.1)
        got = await receive_n(b, 8)
        await raw.aclose()
    assert [f for _, f in got] == [b"tick %d" % i for i in range(8)]
    assert sum(b.stats.connections_cut.values()) == 0


async def test_oversized_declared_length_closes_connection_others_unaffected():
    async with Transport(config=CALM) as a, Transport(config=CALM) as b:
        assert a.send(b.address, b"first")
        await receive_n(b, 1)
        raw = await raw_connect(b.address)
        await raw.send_all(struct.pack(">I", MAX_FRAME_BYTES + 1) + b"junk")
        assert await read_until_closed(raw) == b""
        await raw.aclose()
        assert b.stats.bad_frames["oversized"] == 1
        assert b.stats.connections_cut["bad_frame"] == 1
        assert a.send(b.address, b"second")
        [(_, got)] = await receive_n(b, 1)
        assert got == b"second"
        assert a.stats.connections_opened["outbound"] == 1  # a's connection survived


async def test_truncated_frame_at_eof_is_counted_and_not_delivered():
    async with Transport(config=CALM) as b:
        raw = await raw_connect(b.address)
        await raw.send_all(frame(b"whole") + frame(b"cut short")[:7])
        await raw.aclose()
        [(_, got)] = await receive_n(b, 1)
        await wait_until(lambda: b.stats.bad_frames["truncated"] == 1, "truncation counted")
        assert got == b"whole"
        assert b.pending == 0


async def test_max_inbound_connections_enforced():
    cfg = TransportConfig(max_inbound_connections=2, idle_timeout=30.0)
    async with Transport(config=cfg) as b:
        first = await raw_connect(b.address)
        await wait_until(lambda: b.connections["inbound"] == 1, "first accepted")
        second = await raw_connect(b.address)
        await wait_until(lambda: b.connections["inbound"] == 2, "second accepted")
        third = await raw_connect(b.address)
        assert await read_until_closed(third) == b""
        assert b.stats.connections_cut["max_inbound"] == 1
        assert b.connections["inbound"] == 2
        # The admitted connections still work.
        await first.send_all(frame(b"one"))
        await second.send_all(frame(b"two"))
        got = sorted(f for _, f in await receive_n(b, 2))
        assert got == [b"one", b"two"]
        for s in (first, second, third):
            await s.aclose()
        # Once one closes, a new connection is admitted again.
        await wait_until(lambda: b.connections["inbound"] == 0, "closes noticed")
        fourth = await raw_connect(b.address)
        await fourth.send_all(frame(b"four"))
        [(_, got4)] = await receive_n(b, 1)
        assert got4 == b"four"
        await fourth.aclose()


async def test_full_inbox_pushes_back_without_losing_tcp_frames():
    cfg = TransportConfig(inbox_frames=4, idle_timeout=30.0, frame_timeout=5.0)
    sent = payloads(100, size=500)
    async with Transport(config=CALM) as a, Transport(config=cfg) as b:
        for p in sent:
            assert a.send(b.address, p)
        await wait_until(lambda: b.pending == 4, "inbox full")
        await trio.sleep(0.2)  # give readers time to overfill it, were that possible
        assert b.pending == 4
        got = await receive_n(b, len(sent))
        assert b.stats.connections_cut.total() == 0
    assert [f for _, f in got] == sent, f"seed {SEED}"


# --- datagrams -----------------------------------------------------------------------------


async def test_datagrams_round_trip_from_the_transport_port():
    async with Transport(config=CALM) as a, Transport(config=CALM) as b:
        probe = random.Random(SEED).randbytes(MAX_DATAGRAM_BYTES)
        assert a.send_datagram(b.address, b"ping")
        assert a.send_datagram(b.address, probe)
        got = await receive_n(b, 2)
        assert b.send_datagram(got[0][0], b"ack")
        [(src, ack)] = await receive_n(a, 1)
    # UDP shares the TCP port, so the source is the sender's listen address.
    assert got == [(a.address, b"ping"), (a.address, probe)]
    assert (src, ack) == (b.address, b"ack")
    assert a.stats.datagrams_sent == 2 and b.stats.datagrams_received == 2


async def test_oversize_datagram_refused_locally():
    async with Transport(config=CALM) as a, Transport(config=CALM) as b:
        with pytest.raises(LocalError, match="exceeds"):
            a.send_datagram(b.address, bytes(MAX_DATAGRAM_BYTES + 1))
        assert a.stats.datagrams_sent == 0


async def test_oversize_datagram_received_is_dropped_and_counted():
    async with Transport(config=CALM) as b:
        host, port = parse_address(b.address)
        udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with udp:
            await udp.sendto(bytes(MAX_DATAGRAM_BYTES + 1), (host, port))
            await udp.sendto(b"fine", (host, port))
            [(_, got)] = await receive_n(b, 1)
        assert got == b"fine"
        assert b.stats.bad_frames["oversized"] == 1
        assert b.pending == 0


async def test_datagrams_dropped_when_inbox_full():
    cfg = TransportConfig(inbox_frames=2)
    async with Transport(config=CALM) as a, Transport(config=cfg) as b:
        for i in range(5):
            assert a.send_datagram(b.address, b"d%d" % i)
        await wait_until(lambda: b.stats.datagrams_received == 5, "all datagrams read")
        assert b.stats.dropped["inbox_full"] == 3
        got = await receive_n(b, 2)
    assert [f for _, f in got] == [b"d0", b"d1"]


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["", "nohost", ":80", "host:", "host:http", "host:70000", "::1:80", "a b:80", None, 80],
)
def test_parse_address_rejects_malformed(address):
    with pytest.raises(LocalError):
        parse_address(address)


def test_parse_and_format_addresses():
    assert parse_address("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_address("[::1]:9") == ("::1", 9)
    assert format_address("::1", 9) == "[::1]:9"
    assert format_address("127.0.0.1", 0) == "127.0.0.1:0"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"connect_timeout": 0},
        {"write_timeout": -1},
        {"idle_timeout": float("nan")},
        {"frame_timeout": "1"},
        {"queue_frames": 0},
        {"queue_bytes": 10},
        {"inbox_bytes": 10},
        {"max_inbound_connections": True},
        {"drop": "random"},
        {"backoff_min": 2.0, "backoff_max": 1.0},
        {"outbound_idle": 0},
    ],
)
def test_bad_config_is_refused(kwargs):
    with pytest.raises(LocalError):
        TransportConfig(**kwargs)


def test_bind_must_be_numeric_and_config_typed():
    with pytest.raises(LocalError, match="numeric"):
        Transport("localhost:0")
    with pytest.raises(LocalError):
        Transport("127.0.0.1:0", config={"idle_timeout": 1})


async def test_bind_to_port_in_use_is_a_clear_error():
    async with Transport(config=CALM) as a:
        with pytest.raises(LocalError, match="cannot bind"):
            async with Transport(a.address):
                pass


async def test_bad_send_arguments_raise_and_change_nothing():
    async with Transport(config=CALM) as a, Transport(config=CALM) as b:
        with pytest.raises(LocalError):
            a.send(b.address, "text")
        with pytest.raises(LocalError, match="exceeds"):
            a.send(b.address, bytes(MAX_FRAME_BYTES + 1))
        with pytest.raises(LocalError):
            a.send("not an address", b"x")
        with pytest.raises(LocalError, match="port 0"):
            a.send("127.0.0.1:0", b"x")
        with pytest.raises(LocalError, match="numeric"):
            a.send_datagram("localhost:80", b"x")
        assert a.queued_frames == 0
        assert a.stats.as_dict()["frames_sent"] == 0
        assert a.stats.dropped.total() == 0


async def test_use_before_open_and_after_close():
    t = Transport(config=CALM)
    with pytest.raises(LocalError, match="not open"):
        t.send("127.0.0.1:9", b"x")
    with pytest.raises(LocalError, match="not open"):
        _ = t.address
    async with t:
        pass
    with pytest.raises(Closed):
        t.send("127.0.0.1:9", b"x")
    with pytest.raises(Closed):
        t.send_datagram("127.0.0.1:9", b"x")
    with pytest.raises(Closed):
        await t.receive()
    assert [item async for item in t.incoming()] == []
    with pytest.raises(LocalError, match="only once"):
        async with t:
            pass


async def test_udp_disabled():
    async with Transport(config=TransportConfig(udp=False)) as a:
        with pytest.raises(LocalError, match="without UDP"):
            a.send_datagram("127.0.0.1:9", b"x")


def test_stats_flatten_for_metrics():
    stats = TransportStats()
    stats.frames_sent = 3
    stats.dropped["queue_full"] += 2
    stats.connections_cut["idle_timeout"] += 1
    flat = stats.as_dict()
    assert flat["frames_sent"] == 3
    assert flat["dropped.queue_full"] == 2
    assert flat["connections_cut.idle_timeout"] == 1
