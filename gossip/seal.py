"""Sealed frames: authenticated encryption, cluster binding and replay protection, sans-IO.

Every frame a node sends is ``header || ChaCha20-Poly1305(payload)``; the header travels in
clear and is authenticated together with the cluster name as associated data::

    offset  size  field
    0       1     frame format version (1)
    1       1     flags: bit 0 set = insecure (no encryption); other bits must be 0
    2       4     cluster tag: blake3(cluster name)[:4], for a clear "cluster" rejection
    6       4     key id of the cluster key that sealed it (zero when insecure)
    10      8     boot id of the sender (u64, random per process start)
    18      8     counter (u64, strictly increasing per boot)
    26      8     sender timestamp (float64, seconds, the sender's wall clock)
    34      1     n = length of the sender id in UTF-8 (1..255)
    35      n     sender id
    35+n    ...   ciphertext, then the 16-byte Poly1305 tag
                  (insecure: the payload, then a 16-byte blake3 checksum)

Nonces. ChaCha20-Poly1305 must never see one (key, nonce) pair twice. The key is a subkey
derived with blake3's key-derivation mode from (the cluster key's frame base key, sender
id, boot id); the nonce is the counter. Within one boot the counter never repeats; across
nodes the sender ids differ; across restarts the boot id differs. The runtime must draw
the boot id at random (64 bits from ``secrets``) for every `Sealer` it builds: if two
boots of the same node drew the same id (p ~ 2**-64 per pair) nonces would repeat.
Counter-derived nonces also give the receiver a sequence number for replay detection.

Replays. A frame is accepted once: the receiver keeps, per (sender, boot), a sliding
window of `window` counters (a bitmap below the highest counter seen). A frame whose
timestamp is more than `max_age` seconds away from the receiver's `now`, in either
direction, is refused, which is what makes forgetting safe: state for a (sender, boot)
is dropped once `2 * max_age` has passed since it last accepted anything (every frame it
covered is then too old anyway), and the number of senders and of boots per sender is
capped. When a cap forces out state that is still young, the newest timestamp it had
seen becomes a floor that unknown (sender, boot) pairs must beat. Clock assumption:
every node's wall clock is within `max_age` (default 60 s) of every other's, minus
network delay; ``now`` must be Unix time on every node (``time.time()``, not a monotonic
clock). A node whose own frame comes back to it ("reflection") rejects it as a replay.

Invariants: `Sealer.open` raises `BadFrame` and nothing else; a rejected frame changes no
state (the replay window advances only in `Sealer.accept` / a successful `open`); a frame
larger than ``gossip.framing.MAX_FRAME_BYTES`` is never produced (`LocalError`) nor
opened (``"oversized"``). A sealed node rejects insecure frames and an insecure node
rejects sealed ones (``"insecure"``): a cluster cannot be half-encrypted by accident.
Insecure mode exists for debugging with packet captures only; it still checks the
cluster, the frame size, a checksum and replays, but anyone can read and forge it.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import struct

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from crdt_types.errors import BadFrame, LocalError
from gossip.codec import decode_envelope, encode_envelope
from gossip.framing import MAX_FRAME_BYTES
from gossip.keyring import KEY_ID_BYTES, Keyring
from gossip.messages import Envelope

FRAME_VERSION = 1
FLAG_INSECURE = 0x01
TAG_BYTES = 16
MAX_ID_BYTES = 255  # sender ids and cluster names, in UTF-8
MAX_U64 = 2**64 - 1

_FIXED = struct.Struct(">BB4s4sQQdB")  # version .. sender length
FIXED_HEADER_BYTES = _FIXED.size  # 35
MIN_FRAME_BYTES = FIXED_HEADER_BYTES + 1 + TAG_BYTES
_NO_KEY = bytes(KEY_ID_BYTES)
_NONCE_PAD = bytes(4)

_SENDER_CONTEXT = "statemesh 2026 sender frame key v1"
_CLUSTER_TAG_CONTEXT = "statemesh 2026 cluster tag v1"
_INSECURE_CONTEXT = "statemesh 2026 insecure frame checksum v1"

DEFAULT_MAX_AGE = 60.0
DEFAULT_WINDOW = 1024
DEFAULT_MAX_SENDERS = 4096
DEFAULT_MAX_BOOTS = 4
_CIPHER_CACHE = 1024


def _id_bytes(value: str, what: str) -> bytes:
    if type(value) is not str or not value:
        raise LocalError(f"{what} must be a non-empty str")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise LocalError(f"{what} is not valid Unicode") from None
    if len(raw) > MAX_ID_BYTES:
        raise LocalError(f"{what} is {len(raw)} bytes of UTF-8, at most {MAX_ID_BYTES}")
    return raw


def cluster_tag(cluster: str) -> bytes:
    """The 4-byte cluster tag carried in clear in every frame header."""
    raw = _id_bytes(cluster, "cluster name")
    return blake3.blake3(raw, derive_key_context=_CLUSTER_TAG_CONTEXT).digest(4)


def _sender_key(frame_key: bytes, sender: bytes, boot_id: int) -> bytes:
    # frame_key is a fixed 32 bytes and the sender is length-prefixed: the input is
    # unambiguous, so distinct (sender, boot) always give independent subkeys.
    material = frame_key + bytes([len(sender)]) + sender + boot_id.to_bytes(8, "big")
    return blake3.blake3(material, derive_key_context=_SENDER_CONTEXT).digest()


def _nonce(counter: int) -> bytes:
    return _NONCE_PAD + counter.to_bytes(8, "big")


def _checksum(associated: bytes, payload: bytes) -> bytes:
    h = blake3.blake3(derive_key_context=_INSECURE_CONTEXT)
    h.update(len(associated).to_bytes(4, "big"))
    h.update(associated)
    h.update(payload)
    return h.digest(TAG_BYTES)


@dataclasses.dataclass(frozen=True, slots=True)
class Header:
    """The clear part of a frame, as parsed by `parse_header` (not yet authenticated)."""

    insecure: bool
    cluster_tag: bytes
    key_id: bytes
    boot_id: int
    counter: int
    timestamp: float
    sender: str
    size: int  # header length in bytes; the body starts here


def parse_header(frame: bytes) -> Header:
    """Parse the clear header of a frame (raises BadFrame); nothing is verified yet."""
    n = len(frame)
    if n > MAX_FRAME_BYTES:
        raise BadFrame("oversized", f"{n} bytes > {MAX_FRAME_BYTES}")
    if n < 1:
        raise BadFrame("truncated", "empty frame")
    if frame[0] != FRAME_VERSION:
        raise BadFrame("version", f"frame format {frame[0]}, we speak {FRAME_VERSION}")
    if n < MIN_FRAME_BYTES:
        raise BadFrame("truncated", f"{n} bytes, a frame has at least {MIN_FRAME_BYTES}")
    _, flags, tag, kid, boot, counter, ts, slen = _FIXED.unpack_from(frame)
    if flags & ~FLAG_INSECURE:
        raise BadFrame("decode", f"unknown header flags {flags:#04x}")
    size = FIXED_HEADER_BYTES + slen
    if slen == 0:
        raise BadFrame("decode", "empty sender id")
    if n < size + TAG_BYTES:
        raise BadFrame("truncated", f"{n} bytes, header and tag need {size + TAG_BYTES}")
    try:
        sender = frame[FIXED_HEADER_BYTES:size].decode("utf-8")
    except UnicodeDecodeError:
        raise BadFrame("decode", "sender id is not UTF-8") from None
    if not math.isfinite(ts):
        raise BadFrame("decode", "timestamp is not a finite number")
    return Header(bool(flags & FLAG_INSECURE), tag, kid, boot, counter, ts, sender, size)


# --- replay protection -------------------------------------------------------------------


class _Window:
    """Counters seen from one (sender, boot): the highest, and a bitmap of those below it."""

    __slots__ = ("top", "bits", "start", "floor", "max_ts", "last_seen")

    def __init__(self, start: int, floor: float) -> None:
        self.top = -1
        self.bits = 0  # bit i set: counter top - i was accepted
        # Counters below `start` came before this window existed: we may have accepted
        # them under state we later had to forget, so they must beat the floor then in force.
        self.start = start
        self.floor = floor
        self.max_ts = -math.inf  # newest sender timestamp accepted
        self.last_seen = -math.inf  # receiver time of the last acceptance


class _Peer:
    __slots__ = ("boots", "floor", "last_seen")

    def __init__(self, floor: float) -> None:
        self.boots: dict[int, _Window] = {}
        self.floor = floor  # a boot we do not track must have a newer timestamp
        self.last_seen = -math.inf


class ReplayGuard:
    """Accept each (sender, boot, counter) once, within `max_age`, in bounded memory."""

    def __init__(
        self,
        *,
        max_age: float = DEFAULT_MAX_AGE,
        window: int = DEFAULT_WINDOW,
        max_senders: int = DEFAULT_MAX_SENDERS,
        max_boots: int = DEFAULT_MAX_BOOTS,
    ) -> None:
        if not (math.isfinite(max_age) and max_age > 0):
            raise LocalError("max_age must be a positive number of seconds")
        if window < 1 or max_senders < 1 or max_boots < 1:
            raise LocalError("window, max_senders and max_boots must be at least 1")
        self.max_age = float(max_age)
        self.window = int(window)
        self.max_senders = int(max_senders)
        self.max_boots = int(max_boots)
        self._mask = (1 << self.window) - 1
        # Ordered by last acceptance, oldest first: expiry and eviction pop from the front.
        self._peers: dict[str, _Peer] = {}
        self._floor = -math.inf  # for senders we do not track at all

    def __len__(self) -> int:
        """Number of (sender, boot) pairs tracked."""
        return sum(len(p.boots) for p in self._peers.values())

    @property
    def senders(self) -> int:
        """Number of senders tracked."""
        return len(self._peers)

    def check(self, now: float, sender: str, boot_id: int, counter: int, ts: float) -> None:
        """Raise BadFrame("replay") unless this frame is fresh; changes nothing."""
        age = now - ts
        if age > self.max_age:
            raise BadFrame("replay", f"frame is {age:.1f} s old, max age {self.max_age:g} s")
        if -age > self.max_age:
            raise BadFrame("replay", f"frame is {-age:.1f} s in the future (clock skew?)")
        peer = self._peers.get(sender)
        win = peer.boots.get(boot_id) if peer is not None else None
        if win is None:
            floor = peer.floor if peer is not None else self._floor
            if ts <= floor:
                raise BadFrame("replay", "unknown boot older than state we had to forget")
            return
        if counter < win.start and ts <= win.floor:
            raise BadFrame("replay", "frame older than state we had to forget")
        if counter > win.top:
            return
        behind = win.top - counter
        if behind >= self.window:
            raise BadFrame("replay", f"counter {counter} is behind the window (top {win.top})")
        if (win.bits >> behind) & 1:
            raise BadFrame("replay", f"counter {counter} already accepted")

    def accept(self, now: float, sender: str, boot_id: int, counter: int, ts: float) -> None:
        """Record a frame that passed `check` and authentication."""
        self._expire(now)
        peer = self._peers.pop(sender, None)
        if peer is None:
            if len(self._peers) >= self.max_senders:
                _, evicted = self._pop_oldest()
                self._floor = max(self._floor, _newest(evicted))
            peer = _Peer(self._floor)
        self._peers[sender] = peer  # (re)insert at the end: most recently seen
        peer.last_seen = now
        win = peer.boots.get(boot_id)
        if win is None:
            self._expire_boots(peer, now)
            if len(peer.boots) >= self.max_boots:
                old = min(peer.boots, key=lambda b: peer.boots[b].last_seen)
                peer.floor = max(peer.floor, peer.boots.pop(old).max_ts)
            win = peer.boots[boot_id] = _Window(counter, peer.floor)
        if counter > win.top:
            shift = counter - win.top
            win.bits = ((win.bits << shift) | 1) & self._mask if shift < self.window else 1
            win.top = counter
        else:
            win.bits |= 1 << (win.top - counter)
        win.max_ts = max(win.max_ts, ts)
        win.last_seen = now

    def _pop_oldest(self) -> tuple[str, _Peer]:
        sender = next(iter(self._peers))
        return sender, self._peers.pop(sender)

    def _expire(self, now: float) -> None:
        horizon = now - 2 * self.max_age
        # Bounded: each pass removes one entry, and there are at most max_senders.
        while self._peers:
            sender = next(iter(self._peers))
            peer = self._peers[sender]
            if peer.last_seen >= horizon:
                break
            del self._peers[sender]
            # Raising the floor costs nothing here (those frames are too old anyway) and
            # keeps us safe if this node's clock is later stepped backwards.
            self._floor = max(self._floor, _newest(peer))

    def _expire_boots(self, peer: _Peer, now: float) -> None:
        horizon = now - 2 * self.max_age
        for boot in [b for b, w in peer.boots.items() if w.last_seen < horizon]:
            peer.floor = max(peer.floor, peer.boots.pop(boot).max_ts)


def _newest(peer: _Peer) -> float:
    return max([peer.floor, *(w.max_ts for w in peer.boots.values())])


# --- sealing -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Opened:
    """A frame that verified, not yet recorded by the replay guard (see `Sealer.verify`)."""

    header: Header
    payload: bytes


class Sealer:
    """Seal outgoing payloads and open incoming frames for one node of one cluster."""

    def __init__(
        self,
        cluster: str,
        keyring: Keyring | None,
        node_id: str,
        boot_id: int,
        insecure: bool = False,
        *,
        max_age: float = DEFAULT_MAX_AGE,
        window: int = DEFAULT_WINDOW,
        max_senders: int = DEFAULT_MAX_SENDERS,
        max_boots: int = DEFAULT_MAX_BOOTS,
    ) -> None:
        """Build a sealer; `boot_id` must be fresh randomness for every instance."""
        self._cluster = _id_bytes(cluster, "cluster name")
        self._sender = _id_bytes(node_id, "node id")
        if type(boot_id) is not int or not 0 <= boot_id <= MAX_U64:
            raise LocalError("boot_id must be an int in 0..2**64-1")
        if insecure:
            if keyring is not None:
                raise LocalError("insecure mode takes no keyring (it encrypts nothing)")
        elif keyring is None or keyring.primary_id is None:
            raise LocalError("a sealed node needs a keyring with a key (or insecure=True)")
        self.cluster = cluster
        self.node_id = node_id
        self.boot_id = boot_id
        self.insecure = insecure
        self.keyring = keyring
        self.replay = ReplayGuard(
            max_age=max_age, window=window, max_senders=max_senders, max_boots=max_boots
        )
        self._tag = cluster_tag(cluster)
        self._counter = 0
        self._ciphers: dict[tuple[bytes, bytes, int], ChaCha20Poly1305] = {}
        self._generation = keyring.generation if keyring is not None else 0

    @property
    def overhead(self) -> int:
        """Bytes a sealed frame adds to its payload (header and tag)."""
        return FIXED_HEADER_BYTES + len(self._sender) + TAG_BYTES

    @property
    def max_payload(self) -> int:
        """Largest payload `seal` accepts."""
        return MAX_FRAME_BYTES - self.overhead

    @property
    def frames_sealed(self) -> int:
        """Frames sealed so far by this instance (the next counter)."""
        return self._counter

    def _cipher(self, kid: bytes, sender: bytes, boot_id: int) -> ChaCha20Poly1305 | None:
        assert self.keyring is not None
        if self._generation != self.keyring.generation:
            # A key was removed or added: drop derived keys so none outlive their key.
            self._ciphers.clear()
            self._generation = self.keyring.generation
        cache_key = (kid, sender, boot_id)
        cipher = self._ciphers.get(cache_key)
        if cipher is None:
            frame_key = self.keyring.frame_key(kid)
            if frame_key is None:
                return None
            cipher = ChaCha20Poly1305(_sender_key(frame_key, sender, boot_id))
            if len(self._ciphers) >= _CIPHER_CACHE:
                del self._ciphers[next(iter(self._ciphers))]
            self._ciphers[cache_key] = cipher
        return cipher

    def seal(self, now: float, payload: bytes) -> bytes:
        """Return the sealed frame for `payload`; LocalError if it would exceed the limit."""
        if type(payload) is not bytes:
            raise LocalError(f"payload must be bytes, got {type(payload).__name__}")
        if len(payload) > self.max_payload:
            raise LocalError(
                f"payload of {len(payload)} bytes exceeds {self.max_payload} "
                f"(frame limit {MAX_FRAME_BYTES})"
            )
        if not isinstance(now, (int, float)) or not math.isfinite(now):
            raise LocalError("now must be a finite number of seconds")
        counter = self._counter
        if counter > MAX_U64:
            raise LocalError("counter exhausted: start a new Sealer with a new boot id")
        kid = _NO_KEY if self.insecure else self.keyring.primary_id  # type: ignore[union-attr]
        flags = FLAG_INSECURE if self.insecure else 0
        header = (
            _FIXED.pack(
                FRAME_VERSION,
                flags,
                self._tag,
                kid,
                self.boot_id,
                counter,
                float(now),
                len(self._sender),
            )
            + self._sender
        )
        associated = header + self._cluster
        if self.insecure:
            body = payload + _checksum(associated, payload)
        else:
            cipher = self._cipher(kid, self._sender, self.boot_id)
            assert cipher is not None  # the primary is always in the ring
            body = cipher.encrypt(_nonce(counter), payload, associated)
        # Only now: a seal that raised above must not burn a counter value, and one that
        # returned must never hand out the same value again.
        self._counter = counter + 1
        return header + body

    def verify(self, now: float, frame: bytes) -> Opened:
        """Check and decrypt a frame without recording it (raises BadFrame only)."""
        if not isinstance(frame, bytes):
            if isinstance(frame, (bytearray, memoryview)):
                frame = bytes(frame)
            else:
                raise BadFrame("decode", f"a frame is bytes, got {type(frame).__name__}")
        h = parse_header(frame)
        if h.insecure != self.insecure:
            raise BadFrame(
                "insecure",
                "insecure frame reached a sealed node"
                if h.insecure
                else "sealed frame reached an insecure node",
            )
        if h.cluster_tag != self._tag:
            raise BadFrame("cluster", "frame belongs to another cluster")
        if h.sender == self.node_id:
            raise BadFrame("replay", "our own frame came back (reflection)")
        self.replay.check(now, h.sender, h.boot_id, h.counter, h.timestamp)
        associated = frame[: h.size] + self._cluster
        body = frame[h.size :]
        if self.insecure:
            if h.key_id != _NO_KEY:
                raise BadFrame("decode", "insecure frame names a key")
            payload = body[:-TAG_BYTES]
            if _checksum(associated, payload) != body[-TAG_BYTES:]:
                raise BadFrame("auth", "checksum mismatch: corrupted, or another cluster")
            return Opened(h, payload)
        sender = frame[FIXED_HEADER_BYTES : h.size]
        cipher = self._cipher(h.key_id, sender, h.boot_id)
        if cipher is None:
            raise BadFrame("unknown_key", f"sealed with key {h.key_id.hex()}, not in our ring")
        try:
            payload = cipher.decrypt(_nonce(h.counter), body, associated)
        except InvalidTag:
            raise BadFrame("auth", "tag does not verify: tampered, or another cluster") from None
        return Opened(h, payload)

    def accept(self, now: float, opened: Opened) -> None:
        """Record a verified frame in the replay window (call once, after it was used)."""
        h = opened.header
        self.replay.accept(now, h.sender, h.boot_id, h.counter, h.timestamp)

    def open(self, now: float, frame: bytes) -> tuple[str, bytes]:
        """Verify, decrypt and record a frame; return (sender, payload). Raises BadFrame."""
        opened = self.verify(now, frame)
        self.accept(now, opened)
        return opened.header.sender, opened.payload


class FrameCodec:
    """Envelope <-> sealed frame, counting rejections by reason in `rejected`."""

    def __init__(self, sealer: Sealer) -> None:
        """Wrap `sealer`; the node's envelopes must name `sealer.node_id` as sender."""
        self.sealer = sealer
        self.rejected: collections.Counter[str] = collections.Counter()
        self.accepted = 0

    def pack(self, now: float, env: Envelope) -> bytes:
        """Encode and seal an envelope from this node (LocalError on bad input or size)."""
        if type(env) is not Envelope or env.sender != self.sealer.node_id:
            raise LocalError(f"envelope sender must be this node ({self.sealer.node_id!r})")
        return self.sealer.seal(now, encode_envelope(env))

    def unpack(self, now: float, frame: bytes) -> Envelope:
        """Open, decode and check a frame; BadFrame (counted) on any problem, state unchanged."""
        try:
            opened = self.sealer.verify(now, frame)
            env = decode_envelope(opened.payload)
            if env.sender != opened.header.sender:
                raise BadFrame(
                    "auth", f"envelope sender {env.sender!r} != frame {opened.header.sender!r}"
                )
        except BadFrame as exc:
            self.rejected[exc.reason] += 1
            raise
        # Recorded only once the whole frame is good: a rejected frame changes nothing.
        self.sealer.accept(now, opened)
        self.accepted += 1
        return env
