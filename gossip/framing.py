"""Length-prefixed framing for byte streams, sans-IO.

A frame on a stream is a 4-byte big-endian length followed by that many bytes (a sealed
frame, see `gossip.seal`). `FrameDecoder` is fed whatever the socket returned and hands
back complete frames. Invariant: a declared length above `MAX_FRAME_BYTES` raises
`BadFrame("oversized")` *before* any of the body is buffered, so a hostile peer cannot
make us allocate more than one maximum frame per connection.
"""

from __future__ import annotations

import struct

from crdt_types.errors import BadFrame, LocalError

MAX_FRAME_BYTES = 1 << 20  # hard limit for any frame, sealed, on any transport
MAX_DATAGRAM_BYTES = 60_000  # frames sent over UDP must fit one datagram
_PREFIX = struct.Struct(">I")
PREFIX_BYTES = _PREFIX.size


def frame(payload: bytes) -> bytes:
    """Return `payload` with its length prefix."""
    if len(payload) > MAX_FRAME_BYTES:
        raise LocalError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME_BYTES}")
    return _PREFIX.pack(len(payload)) + payload


class FrameDecoder:
    """Reassemble length-prefixed frames from stream chunks."""

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_frame

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every frame now complete, in order."""
        self._buf += data
        frames: list[bytes] = []
        while len(self._buf) >= PREFIX_BYTES:
            (length,) = _PREFIX.unpack_from(self._buf)
            if length > self._max:
                self._buf.clear()
                raise BadFrame("oversized", f"declared length {length} > {self._max}")
            end = PREFIX_BYTES + length
            if len(self._buf) < end:
                break
            frames.append(bytes(self._buf[PREFIX_BYTES:end]))
            del self._buf[:end]
        return frames

    def close(self) -> None:
        """Signal end of stream; a partial frame left over is a truncated frame."""
        if self._buf:
            n = len(self._buf)
            self._buf.clear()
            raise BadFrame("truncated", f"stream ended inside a frame ({n} bytes buffered)")
