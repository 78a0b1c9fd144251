"""Tests for gossip.framing: the stream decoder against any split and any bytes.

The decoder sits in front of everything a TCP peer sends, before authentication, so it
must hand back exactly the frames sent whatever chunks the socket returns, and against
hostile bytes it must either return frames no larger than its limit or raise
`BadFrame("oversized")`, never buffering more than one maximum frame. Hypothesis is
derandomized, so a failure replays; `FUZZ` counts the inputs (run with ``-s``).
"""

from __future__ import annotations

import collections

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_types.errors import BadFrame, LocalError
from gossip.framing import MAX_FRAME_BYTES, PREFIX_BYTES, FrameDecoder, frame

FUZZ: collections.Counter[str] = collections.Counter()
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True)
SMALL_MAX = 64  # a small limit so random prefixes hit both sides of it


@pytest.fixture(scope="module", autouse=True)
def _report_fuzz_count():
    yield
    print(f"\nframing fuzz inputs: {sum(FUZZ.values())} {dict(sorted(FUZZ.items()))}")


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


@SETTINGS
@given(
    st.lists(st.binary(max_size=200), max_size=8),
    st.lists(st.integers(0, 10_000), max_size=12),
)
def test_any_split_of_a_valid_stream_gives_back_exactly_the_frames(payloads, cuts) -> None:
    FUZZ["valid_stream_split"] += 1
    stream = b"".join(frame(p) for p in payloads)
    decoder = FrameDecoder()
    got: list[bytes] = []
    for chunk in _split(stream, cuts):
        got.extend(decoder.feed(chunk))
    assert got == payloads
    assert decoder.buffered == 0
    decoder.close()  # nothing left over: no truncation reported


@SETTINGS
@given(st.binary(max_size=400), st.lists(st.integers(0, 10_000), max_size=12))
def test_random_streams_give_bounded_frames_or_oversized(data, cuts) -> None:
    FUZZ["random_stream"] += 1
    decoder = FrameDecoder(max_frame=SMALL_MAX)
    try:
        for chunk in _split(data, cuts):
            for got in decoder.feed(chunk):
                assert len(got) <= SMALL_MAX
            # Never more than one maximum frame and its prefix held between feeds.
            assert decoder.buffered < PREFIX_BYTES + SMALL_MAX
        decoder.close()
    except BadFrame as exc:
        assert exc.reason in ("oversized", "truncated"), exc
        assert decoder.buffered == 0  # a rejected stream keeps nothing


@SETTINGS
@given(st.binary(min_size=1, max_size=200), st.integers(1, 10_000))
def test_a_stream_cut_inside_a_frame_is_truncated(payload, cut) -> None:
    FUZZ["truncated_stream"] += 1
    stream = frame(payload)
    cut = cut % (len(stream) - 1) + 1  # leave at least one byte out, send at least one
    decoder = FrameDecoder()
    assert decoder.feed(stream[:cut]) == []
    with pytest.raises(BadFrame) as info:
        decoder.close()
    assert info.value.reason == "truncated" and decoder.buffered == 0


def test_declared_length_over_the_limit_is_refused_before_the_body() -> None:
    decoder = FrameDecoder()
    with pytest.raises(BadFrame) as info:
        decoder.feed((MAX_FRAME_BYTES + 1).to_bytes(4, "big"))
    assert info.value.reason == "oversized" and decoder.buffered == 0
    # The limit itself is a legal frame.
    assert FrameDecoder().feed(frame(bytes(MAX_FRAME_BYTES))) == [bytes(MAX_FRAME_BYTES)]


def test_frame_refuses_a_payload_over_the_limit() -> None:
    with pytest.raises(LocalError):
        frame(bytes(MAX_FRAME_BYTES + 1))
