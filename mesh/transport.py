"""Move opaque frames between peers over trio sockets: TCP streams, optional UDP datagrams.

The transport knows nothing of the protocol: it carries sealed frames (bytes of at most
`gossip.framing.MAX_FRAME_BYTES`) to "host:port" addresses and hands every frame that
arrives, from any connection or datagram, to one inbox as `(source address, frame)`.
Outgoing frames to one peer share one TCP connection, kept open while it is in use and
re-established with jittered exponential backoff when it fails. The same port number
also carries UDP datagrams for small probe frames when the runtime asks for them.

Invariants:

* `send()` and `send_datagram()` never block: a frame is queued or dropped, the caller
  is told which, and every drop is counted by reason in `stats.dropped`. Gossip tolerates
  loss; a stalled caller would stall the protocol.
* Nothing waits on the network without a deadline: connects, writes, the silence before a
  frame begins (idle) and the time a started frame takes to complete (progress) each have
  their own timeout. A peer that connects and says nothing, trickles bytes, stops reading,
  or declares an oversized frame loses its own connection and nothing else; the cut is
  counted in `stats.connections_cut`.
* Memory is bounded by configuration: per-peer send queues (frames and bytes) under a global
  byte budget, an inbox bounded in frames and bytes, at most `max_inbound_connections`
  readers each assembling at most one frame. A full inbox pushes back on the TCP readers
  (the kernel then pushes back on the senders) and drops datagrams.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import random
import socket
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from crdt_types.errors import BadFrame, Closed, LocalError
from gossip import framing

__all__ = [
    "Transport",
    "TransportConfig",
    "TransportStats",
    "format_address",
    "parse_address",
]

DROP_POLICIES = ("newest", "oldest")

_RECV_CHUNK = 64 * 1024
# Frames queued for one peer are written together up to this size: fewer syscalls, and
# one write timeout covers a bounded amount of data.
_WRITE_BATCH_BYTES = 256 * 1024
_UDP_BATCH = 64  # datagrams read per wake-up before yielding to other tasks
_BIND_ATTEMPTS = 16  # port-0 retries when the UDP twin of a fresh TCP port is taken
# A connection that lived this long was healthy; its failure starts backoff afresh.
_HEALTHY_CONNECTION_SECONDS = 1.0
_ACCEPT_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


# --- addresses ---------------------------------------------------------------------------


def parse_address(address: str) -> tuple[str, int]:
    """Split "host:port" (or "[v6]:port") into host and port; raise LocalError if malformed."""
    if not isinstance(address, str):
        raise LocalError(f"address must be a 'host:port' string, not {type(address).__name__}")
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise LocalError(f"address {address!r} is not 'host:port'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise LocalError(f"address {address!r}: write IPv6 hosts as '[host]:port'")
    if not host or not host.isprintable() or " " in host:
        raise LocalError(f"address {address!r} has an invalid host")
    if not port_text.isdigit():
        raise LocalError(f"address {address!r} has a non-numeric port")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise LocalError(f"address {address!r} has a port outside 0..65535")
    return host, port


def format_address(host: str, port: int) -> str:
    """Join host and port as "host:port", bracketing IPv6 hosts."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _numeric_ip(host: str, address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        raise LocalError(f"address {address!r}: host must be a numeric IP address") from None


def _as_frame(payload: object, limit: int, what: str) -> bytes:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise LocalError(f"{what} must be bytes, not {type(payload).__name__}")
    data = bytes(payload)
    if len(data) > limit:
        raise LocalError(f"{what} of {len(data)} bytes exceeds the limit of {limit}")
    return data


# --- configuration and counters ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Limits and timeouts of one transport (seconds, frames, bytes)."""

    connect_timeout: float = 3.0
    write_timeout: float = 5.0  # a peer that stops reading is cut after this
    idle_timeout: float = 60.0  # inbound silence allowed between frames
    frame_timeout: float = 10.0  # a started frame must complete within this
    # Our own outgoing connections close after this much silence, before the remote's idle
    # timeout cuts them; None means half of idle_timeout.
    outbound_idle: float | None = None
    queue_frames: int = 1024  # per peer
    queue_bytes: int = 8 << 20  # per peer
    total_queue_bytes: int = 64 << 20  # all peers together
    drop: str = "newest"  # which frame a full peer queue loses: the new one or its oldest
    inbox_frames: int = 4096
    inbox_bytes: int = 32 << 20
    max_inbound_connections: int = 128
    max_peers: int = 1024  # distinct destinations with a queue or connection at once
    backoff_min: float = 0.05
    backoff_max: float = 5.0
    flush_timeout: float = 1.0  # how long closing may spend writing queued frames
    udp: bool = True

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "write_timeout", "idle_timeout", "frame_timeout"):
            _check_positive(name, getattr(self, name))
        for name in ("backoff_min", "backoff_max", "flush_timeout"):
            _check_positive(name, getattr(self, name), allow_zero=name == "flush_timeout")
        if self.outbound_idle is not None:
            _check_positive("outbound_idle", self.outbound_idle)
        if self.backoff_max < self.backoff_min:
            raise LocalError("backoff_max must be at least backoff_min")
        for name in ("queue_frames", "inbox_frames", "max_inbound_connections", "max_peers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LocalError(f"{name} must be a positive int, not {value!r}")
        one_frame = framing.MAX_FRAME_BYTES + framing.PREFIX_BYTES
        for name in ("queue_bytes", "total_queue_bytes", "inbox_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < one_frame:
                raise LocalError(f"{name} must be an int of at least one frame ({one_frame})")
        if self.drop not in DROP_POLICIES:
            raise LocalError(f"drop must be one of {DROP_POLICIES}, not {self.drop!r}")

    @property
    def effective_outbound_idle(self) -> float:
        """Silence after which an outgoing connection is closed by us."""
        return self.outbound_idle if self.outbound_idle is not None else self.idle_timeout / 2


def _check_positive(name: str, value: object, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise LocalError(f"{name} must be a positive finite number, not {value!r}")


@dataclass(slots=True)
class TransportStats:
    """Counters for metrics; `dropped`, `connections_*` and `bad_frames` are keyed by reason.

    Reasons: dropped: queue_full, buffer_full, peer_limit, unreachable, write_failed,
    shutdown, inbox_full, udp_error. connections_closed: eof, error, idle, shutdown and
    every cut reason. connections_cut: idle_timeout, frame_timeout, write_timeout,
    bad_frame, max_inbound. connect_failures: timeout, error.
    """

    frames_sent: int = 0
    bytes_sent: int = 0  # payload bytes, without length prefixes
    frames_received: int = 0
    bytes_received: int = 0
    datagrams_sent: int = 0
    datagram_bytes_sent: int = 0
    datagrams_received: int = 0
    datagram_bytes_received: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    bad_frames: Counter[str] = field(default_factory=Counter)  # BadFrame.reason -> count
    connections_opened: Counter[str] = field(default_factory=Counter)  # inbound/outbound
    connections_closed: Counter[str] = field(default_factory=Counter)
    connections_cut: Counter[str] = field(default_factory=Counter)
    connect_failures: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, int]:
        """Flatten to {"name" or "name.reason": count} for JSON and Prometheus export."""
        out: dict[str, int] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, Counter):
                for reason, count in sorted(value.items()):
                    out[f"{name}.{reason}"] = count
            else:
                out[name] = value
        return out


# --- inbox ----------------------------------------------------------------------------------


class _Inbox:
    """A queue bounded in items and bytes; `put` waits for room, `put_nowait` refuses.

    A trio memory channel bounds items only, and frames range from bytes to a megabyte,
    so this counts both. An item larger than the byte budget still fits an empty inbox,
    so no frame can wedge it.
    """

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self._items: deque[tuple[tuple[str, bytes], int]] = deque()
        self._bytes = 0
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._closed = False
        self._getters = trio.lowlevel.ParkingLot()
        self._putters = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: tuple[str, bytes]) -> bool:
        size = len(item[1])
        if self._closed:
            return False
        if self._items and (
            len(self._items) >= self._max_items or self._bytes + size > self._max_bytes
        ):
            return False
        self._items.append((item, size))
        self._bytes += size
        if self._getters:
            self._getters.unpark_all()
        return True

    async def put(self, item: tuple[str, bytes]) -> None:
        await trio.lowlevel.checkpoint()
        while not self.put_nowait(item):
            if self._closed:
                raise trio.ClosedResourceError("inbox closed")
            await self._putters.park()

    async def get(self) -> tuple[str, bytes]:
        await trio.lowlevel.checkpoint()
        while not self._items:
            if self._closed:
                raise trio.EndOfChannel
            await self._getters.park()
        item, size = self._items.popleft()
        self._bytes -= size
        if self._putters:
            self._putters.unpark_all()
        return item

    def close(self) -> None:
        self._closed = True
        self._getters.unpark_all()
        self._putters.unpark_all()


# --- per-peer state -------------------------------------------------------------------------


class _Peer:
    """One destination: its send queue, its worker's wake-up, its reconnect backoff."""

    __slots__ = (
        "address",
        "host",
        "port",
        "queue",
        "queued_bytes",
        "wakeup",
        "finished",
        "backoff",
        "retry_at",
        "connected",
    )

    def __init__(self, address: str, host: str, port: int, backoff: float) -> None:
        self.address = address
        self.host = host
        self.port = port
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.wakeup = trio.Event()
        self.finished = trio.Event()
        self.backoff = backoff
        self.retry_at = -math.inf
        self.connected = False


class _Conn:
    """Why an outgoing connection ended, written by whichever of its tasks ended it."""

    __slots__ = ("stream", "reason")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reason = "shutdown"


# --- the transport --------------------------------------------------------------------------


class Transport:
    """Frames to and from peers over TCP (and UDP); use as `async with Transport(...) as t`."""

    def __init__(
        self,
        bind: str = "127.0.0.1:0",
        config: TransportConfig | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        host, port = parse_address(bind)
        self._bind_ip = _numeric_ip(host, bind)
        self._bind_port = port
        self._cfg = config if config is not None else TransportConfig()
        if not isinstance(self._cfg, TransportConfig):
            raise LocalError("config must be a TransportConfig")
        # Jitter only spreads reconnects apart; seed it for replayable tests.
        self._rng = rng if rng is not None else random.Random()
        self.stats = TransportStats()
        self._inbox = _Inbox(self._cfg.inbox_frames, self._cfg.inbox_bytes)
        self._peers: dict[str, _Peer] = {}
        self._queued_bytes = 0
        self._inbound = 0
        self._outbound = 0
        self._state = "new"  # new -> open -> closing -> closed
        self._closing_event = trio.Event()
        self._listener: trio.SocketListener | None = None
        self._udp: socket.socket | None = None
        self._nursery: trio.Nursery | None = None
        self._port = 0
        self._cm = None

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Transport:
        if self._state != "new":
            raise LocalError("a Transport can be entered only once")
        self._cm = self._lifetime()
        return await self._cm.__aenter__()

    async def __aexit__(self, *exc_info: object) -> bool | None:
        return await self._cm.__aexit__(*exc_info)

    @asynccontextmanager
    async def _lifetime(self) -> AsyncIterator[Transport]:
        self._bind()
        self._state = "open"
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._accept_loop)
                if self._udp is not None:
                    nursery.start_soon(self._udp_loop)
                try:
                    yield self
                finally:
                    # Flush even when the body was cancelled, but never for longer than
                    # flush_timeout: closing must not hang on a dead peer.
                    with trio.CancelScope(shield=True):
                        await self._flush()
                    nursery.cancel_scope.cancel()
        finally:
            self._state = "closed"
            for peer in self._peers.values():
                self._drop_queue(peer, "shutdown")
            self._peers.clear()
            self._inbox.close()
            if self._listener is not None:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(self._listener)
            if self._udp is not None:
                trio.lowlevel.notify_closing(self._udp)
                self._udp.close()

    def _bind(self) -> None:
        family = socket.AF_INET6 if self._bind_ip.version == 6 else socket.AF_INET
        host = str(self._bind_ip)
        attempts = _BIND_ATTEMPTS if (self._bind_port == 0 and self._cfg.udp) else 1
        for attempt in range(attempts):
            tcp = socket.socket(family, socket.SOCK_STREAM)
            udp = None
            try:
                # Reuse lets a restarted peer take its port back while old connections
                # sit in TIME_WAIT. UDP gets no reuse: two sockets would split traffic.
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                tcp.bind((host, self._bind_port))
                port = tcp.getsockname()[1]
                if self._cfg.udp:
                    udp = socket.socket(family, socket.SOCK_DGRAM)
                    if family == socket.AF_INET6:
                        udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    udp.setblocking(False)
                    udp.bind((host, port))
                tcp.listen(min(self._cfg.max_inbound_connections, socket.SOMAXCONN))
            except OSError as exc:
                tcp.close()
                if udp is not None:
                    udp.close()
                if exc.errno == errno.EADDRINUSE and attempt + 1 < attempts:
                    continue
                where = format_address(host, self._bind_port)
                raise LocalError(f"cannot bind {where}: {exc}") from exc
            self._listener = trio.SocketListener(trio.socket.from_stdlib_socket(tcp))
            self._udp = udp
            self._port = port
            return

    async def _flush(self) -> None:
        self._state = "closing"
        self._closing_event.set()
        for peer in self._peers.values():
            peer.wakeup.set()
        with trio.move_on_after(self._cfg.flush_timeout):
            for peer in list(self._peers.values()):
                await peer.finished.wait()

    # -- public API ---------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The bound "host:port" (the real port when bound to port 0)."""
        if self._state == "new":
            raise LocalError("the transport is not open yet")
        return format_address(str(self._bind_ip), self._port)

    @property
    def port(self) -> int:
        """The bound port number, shared by TCP and UDP."""
        if self._state == "new":
            raise LocalError("the transport is not open yet")
        return self._port

    @property
    def queued_frames(self) -> int:
        """Frames waiting in every peer's send queue."""
        return sum(len(p.queue) for p in self._peers.values())

    @property
    def queued_bytes(self) -> int:
        """Payload bytes waiting in every peer's send queue."""
        return self._queued_bytes

    @property
    def pending(self) -> int:
        """Frames received and waiting in the inbox for `receive()`."""
        return len(self._inbox)

    @property
    def connections(self) -> dict[str, int]:
        """Connections open now: {"inbound": n, "outbound": m}."""
        return {"inbound": self._inbound, "outbound": self._outbound}

    def send(self, address: str, frame: bytes) -> bool:
        """Queue a frame for `address` over TCP; False if it was dropped (counted)."""
        self._check_open()
        data = _as_frame(frame, framing.MAX_FRAME_BYTES, "frame")
        # Fast path: an address already known in its canonical form was checked when
        # its peer was created; gossip sends to the same few addresses all the time.
        peer = self._peers.get(address) if isinstance(address, str) else None
        if peer is None:
            host, port = parse_address(address)
            if port == 0:
                raise LocalError(f"address {address!r}: cannot send to port 0")
            key = format_address(host, port)
            peer = self._peers.get(key)
        if peer is None:
            if len(self._peers) >= self._cfg.max_peers:
                self.stats.dropped["peer_limit"] += 1
                return False
            peer = _Peer(key, host, port, self._cfg.backoff_min)
            self._peers[key] = peer
            self._nursery.start_soon(self._peer_worker, peer)
        return self._enqueue(peer, data)

    def send_datagram(self, address: str, frame: bytes) -> bool:
        """Send one frame as a UDP datagram now; False if the socket refused it (counted)."""
        self._check_open()
        if self._udp is None:
            raise LocalError("this transport was configured without UDP")
        host, port = parse_address(address)
        ip = _numeric_ip(host, address)
        data = _as_frame(frame, framing.MAX_DATAGRAM_BYTES, "datagram")
        if port == 0:
            raise LocalError(f"address {address!r}: cannot send to port 0")
        try:
            self._udp.sendto(data, (str(ip), port))
        except OSError:
            # Full socket buffer, unreachable network, wrong address family: all are
            # loss, which the protocol above already tolerates.
            self.stats.dropped["udp_error"] += 1
            return False
        self.stats.datagrams_sent += 1
        self.stats.datagram_bytes_sent += len(data)
        return True

    async def receive(self) -> tuple[str, bytes]:
        """Wait for the next (source address, frame); raise Closed once the transport closed."""
        try:
            return await self._inbox.get()
        except trio.EndOfChannel:
            raise Closed("the transport is closed") from None

    async def incoming(self) -> AsyncIterator[tuple[str, bytes]]:
        """Yield (source address, frame) pairs until the transport closes."""
        while True:
            try:
                item = await self._inbox.get()
            except trio.EndOfChannel:
                return
            yield item

    def _check_open(self) -> None:
        if self._state == "new":
            raise LocalError("the transport is not open yet (use `async with`)")
        if self._state != "open":
            raise Closed("the transport is closed")

    # -- sending ------------------------------------------------------------------------

    def _enqueue(self, peer: _Peer, data: bytes) -> bool:
        size = len(data)
        cfg = self._cfg
        if cfg.drop == "oldest":
            while peer.queue and (
                len(peer.queue) >= cfg.queue_frames or peer.queued_bytes + size > cfg.queue_bytes
            ):
                old = peer.queue.popleft()
                peer.queued_bytes -= len(old)
                self._queued_bytes -= len(old)
                self.stats.dropped["queue_full"] += 1
        elif len(peer.queue) >= cfg.queue_frames or peer.queued_bytes + size > cfg.queue_bytes:
            self.stats.dropped["queue_full"] += 1
            return False
        if self._queued_bytes + size > cfg.total_queue_bytes:
            self.stats.dropped["buffer_full"] += 1
            return False
        peer.queue.append(data)
        peer.queued_bytes += size
        self._queued_bytes += size
        peer.wakeup.set()
        return True

    def _take_batch(self, peer: _Peer) -> list[bytes]:
        batch: list[bytes] = []
        total = 0
        while peer.queue and (not batch or total + len(peer.queue[0]) <= _WRITE_BATCH_BYTES):
            data = peer.queue.popleft()
            batch.append(data)
            total += len(data)
        peer.queued_bytes -= total
        self._queued_bytes -= total
        return batch

    def _drop_queue(self, peer: _Peer, reason: str) -> None:
        if peer.queue:
            self.stats.dropped[reason] += len(peer.queue)
            self._queued_bytes -= peer.queued_bytes
            peer.queue.clear()
            peer.queued_bytes = 0

    async def _wait_for_frames(self, peer: _Peer, timeout: float) -> bool:
        """Wait until the peer has frames; False on `timeout` of silence or when closing."""
        deadline = trio.current_time() + timeout
        while not peer.queue:
            if self._state != "open" or trio.current_time() >= deadline:
                return False
            peer.wakeup = trio.Event()
            with trio.move_on_at(deadline):
                await peer.wakeup.wait()
        return True

    def _schedule_retry(self, peer: _Peer) -> None:
        # Full jitter in [backoff/2, backoff] keeps peers that lost the same node from
        # reconnecting in lockstep.
        delay = peer.backoff * (0.5 + 0.5 * self._rng.random())
        peer.retry_at = trio.current_time() + delay
        peer.backoff = min(peer.backoff * 2, self._cfg.backoff_max)

    async def _peer_worker(self, peer: _Peer) -> None:
        """Own one destination: connect when frames wait, write them, reconnect on failure."""
        idle = self._cfg.effective_outbound_idle
        try:
            while True:
                if not await self._wait_for_frames(peer, idle):
                    if self._state == "open" and peer.queue:
                        continue
                    return
                if trio.current_time() < peer.retry_at:
                    with trio.move_on_at(peer.retry_at):
                        await self._closing_event.wait()
                    if self._state != "open" and trio.current_time() < peer.retry_at:
                        return
                stream = await self._connect(peer)
                if stream is None:
                    # Frames queued for a peer we cannot reach are stale by the time it
                    # returns; dropping them keeps a dead peer from holding memory.
                    self._drop_queue(peer, "unreachable")
                    self._schedule_retry(peer)
                    continue
                reason, lifetime = await self._serve_outbound(peer, stream)
                if reason == "idle" or lifetime >= _HEALTHY_CONNECTION_SECONDS:
                    peer.backoff = self._cfg.backoff_min
                if reason not in ("idle", "shutdown"):
                    self._schedule_retry(peer)
                # Checked with no await before returning, so a frame queued by send()
                # can never be left behind in a peer that is being forgotten.
                if not peer.queue and (reason == "idle" or self._state != "open"):
                    return
        finally:
            if self._peers.get(peer.address) is peer:
                del self._peers[peer.address]
            self._drop_queue(peer, "shutdown")
            peer.finished.set()

    async def _connect(self, peer: _Peer) -> trio.SocketStream | None:
        with trio.move_on_after(self._cfg.connect_timeout):
            try:
                stream = await trio.open_tcp_stream(peer.host, peer.port)
            except OSError:
                self.stats.connect_failures["error"] += 1
                return None
            self.stats.connections_opened["outbound"] += 1
            return stream
        self.stats.connect_failures["timeout"] += 1
        return None

    async def _serve_outbound(self, peer: _Peer, stream: trio.SocketStream) -> tuple[str, float]:
        """Run one outgoing connection until it fails or idles; return (reason, lifetime)."""
        conn = _Conn(stream)
        started = trio.current_time()
        self._outbound += 1
        peer.connected = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._outbound_reader, peer, conn, nursery.cancel_scope)
                await self._write_loop(peer, conn)
                nursery.cancel_scope.cancel()
        finally:
            self._outbound -= 1
            peer.connected = False
            self._record_close(conn.reason)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
        return conn.reason, trio.current_time() - started

    async def _write_loop(self, peer: _Peer, conn: _Conn) -> None:
        idle = self._cfg.effective_outbound_idle
        while True:
            if not await self._wait_for_frames(peer, idle):
                conn.reason = "idle" if self._state == "open" else "shutdown"
                return
            batch = self._take_batch(peer)
            data = b"".join(framing.frame(f) for f in batch)
            written = False
            try:
                with trio.move_on_after(self._cfg.write_timeout):
                    await conn.stream.send_all(data)
                    written = True
                if not written:
                    conn.reason = "write_timeout"
                    self.stats.connections_cut["write_timeout"] += 1
                    return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                conn.reason = "error"
                return
            finally:
                if written:
                    self.stats.frames_sent += len(batch)
                    self.stats.bytes_sent += sum(len(f) for f in batch)
                else:
                    # Part of the batch may have reached the peer; we cannot know which.
                    self.stats.dropped["write_failed"] += len(batch)

    async def _outbound_reader(self, peer: _Peer, conn: _Conn, scope: trio.CancelScope) -> None:
        # Peers answer over their own connections, so this mostly waits for EOF: noticing
        # it promptly means the next frame goes over a fresh connection, not into a dead one.
        # No idle deadline is needed: the writer closes the connection after outbound_idle.
        reason = await self._read_frames(conn.stream, peer.address, idle_timeout=None)
        conn.reason = reason
        scope.cancel()

    # -- receiving ----------------------------------------------------------------------

    async def _accept_loop(self) -> None:
        assert self._listener is not None
        while True:
            try:
                stream = await self._listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_RESOURCE_ERRNOS:
                    raise
                # Out of descriptors or memory: wait for connections to close rather
                # than spinning on accept.
                self.stats.connect_failures["accept_" + errno.errorcode[exc.errno]] += 1
                await trio.sleep(0.1)
                continue
            if self._inbound >= self._cfg.max_inbound_connections:
                self.stats.connections_cut["max_inbound"] += 1
                self._record_close("max_inbound")
                await trio.aclose_forcefully(stream)
                continue
            self._inbound += 1
            self.stats.connections_opened["inbound"] += 1
            self._nursery.start_soon(self._serve_inbound, stream)

    async def _serve_inbound(self, stream: trio.SocketStream) -> None:
        reason = "shutdown"
        try:
            try:
                host, port = stream.socket.getpeername()[:2]
                src = format_address(host, port)
            except OSError:
                reason = "error"
                return
            reason = await self._read_frames(stream, src, idle_timeout=self._cfg.idle_timeout)
        finally:
            self._inbound -= 1
            self._record_close(reason)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _read_frames(
        self, stream: trio.SocketStream, src: str, *, idle_timeout: float | None
    ) -> str:
        """Deliver frames from one stream until it ends; return why it ended."""
        decoder = framing.FrameDecoder()
        frame_started: float | None = None
        while True:
            if frame_started is not None:
                deadline, cut = frame_started + self._cfg.frame_timeout, "frame_timeout"
            elif idle_timeout is not None:
                deadline, cut = trio.current_time() + idle_timeout, "idle_timeout"
            else:
                deadline, cut = math.inf, ""
            data = None
            with trio.move_on_at(deadline):
                try:
                    data = await stream.receive_some(_RECV_CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return "error"
            if data is None:
                self.stats.connections_cut[cut] += 1
                return cut
            if not data:
                try:
                    decoder.close()
                except BadFrame as exc:
                    self.stats.bad_frames[exc.reason] += 1
                return "eof"
            try:
                frames = decoder.feed(data)
            except BadFrame as exc:
                self.stats.bad_frames[exc.reason] += 1
                self.stats.connections_cut["bad_frame"] += 1
                return "bad_frame"
            for payload in frames:
                self.stats.frames_received += 1
                self.stats.bytes_received += len(payload)
                # receive_some() above already checkpointed, so the common case skips
                # put()'s. Waiting in put() is the back-pressure: this connection stops
                # being read until the consumer catches up, and its sender's buffer fills.
                if not self._inbox.put_nowait((src, payload)):
                    try:
                        await self._inbox.put((src, payload))
                    except trio.ClosedResourceError:
                        return "shutdown"
            if not decoder.buffered:
                frame_started = None
            elif frames or frame_started is None:
                # The clock of a partial frame starts after delivery, so time spent
                # waiting on our own consumer is never charged to the peer.
                frame_started = trio.current_time()

    async def _udp_loop(self) -> None:
        sock = self._udp
        assert sock is not None
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(_UDP_BATCH):
                try:
                    # One byte over the limit tells an oversized datagram from one that
                    # fits exactly (recvfrom truncates silently).
                    data, addr = sock.recvfrom(framing.MAX_DATAGRAM_BYTES + 1)
                except BlockingIOError:
                    break
                except OSError:
                    # ICMP errors from earlier sends surface here; they are not fatal.
                    self.stats.dropped["udp_error"] += 1
                    continue
                if len(data) > framing.MAX_DATAGRAM_BYTES:
                    self.stats.bad_frames["oversized"] += 1
                    continue
                self.stats.datagrams_received += 1
                self.stats.datagram_bytes_received += len(data)
                if not self._inbox.put_nowait((format_address(addr[0], addr[1]), data)):
                    self.stats.dropped["inbox_full"] += 1

    def _record_close(self, reason: str) -> None:
        self.stats.connections_closed[reason] += 1
