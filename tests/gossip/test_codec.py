"""Tests for gossip.codec: round trips of every message, and every way a payload can be bad.

Hypothesis strategies are built from the message annotations themselves (as the codec is),
so a message added to gossip.messages is covered without touching this file. Failing
examples are printed by hypothesis and replay from its database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdt_types.errors import BadFrame, LocalError
from gossip import codec
from gossip.codec import (
    FIELD_CHOICES,
    MAX_INT,
    MAX_STR_BYTES,
    decode_envelope,
    encode_envelope,
    from_wire,
    message_spec,
    to_wire,
)
from gossip.messages import (
    ALIVE,
    PROTOCOL_VERSION,
    REGISTRY,
    Ack,
    DocUpdate,
    Envelope,
    MembershipSync,
    MemberUpdate,
    Ping,
)

# Derandomized: the same examples every run, so a failure replays without a database.
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

# --- strategies derived from the annotations --------------------------------------------

_text = st.text(max_size=12)
_ints = st.one_of(st.integers(0, 1000), st.integers(0, MAX_INT))


def strategy_for(annotation: Any, owner: type | None = None, name: str = "") -> st.SearchStrategy:
    """A strategy producing valid values for one annotation (mirrors the codec)."""
    choices = FIELD_CHOICES.get((owner, name)) if owner is not None else None
    if choices is not None:
        return st.sampled_from(sorted(choices))
    if annotation is int:
        return _ints
    if annotation is str:
        return _text
    if annotation is bytes:
        return st.binary(max_size=24)
    if annotation is bool:
        return st.booleans()
    if annotation is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if dataclasses.is_dataclass(annotation):
        return instances(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return st.none() | strategy_for(inner)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy_for(args[0]), max_size=4).map(tuple)
        return st.tuples(*(strategy_for(a) for a in args))
    raise AssertionError(f"no strategy for {annotation!r}")


def instances(cls: type) -> st.SearchStrategy:
    """A strategy of valid instances of dataclass `cls`."""
    return st.builds(cls, **{n: strategy_for(a, cls, n) for n, a in message_spec(cls)})


any_message = st.sampled_from(sorted(REGISTRY.values(), key=lambda c: c.TYPE)).flatmap(instances)

envelopes = st.builds(
    Envelope,
    sender=_text,
    sender_address=_text,
    incarnation=_ints,
    messages=st.lists(any_message, max_size=5).map(tuple),
)


def sample(cls: type, seed: int = 0) -> Any:
    """One deterministic valid instance of `cls` (for the non-hypothesis tests)."""
    values: dict[str, Any] = {}
    for name, ann in message_spec(cls):
        values[name] = _plain(ann, cls, name, seed)
    return cls(**values)


def _plain(ann: Any, owner: type | None, name: str, seed: int) -> Any:
    choices = FIELD_CHOICES.get((owner, name)) if owner is not None else None
    if choices is not None:
        return sorted(choices)[seed % len(choices)]
    if ann is int:
        return 7 + seed
    if ann is str:
        return f"s{seed}"
    if ann is bytes:
        return bytes([seed % 256]) * 3
    if ann is bool:
        return bool(seed % 2)
    if ann is float:
        return 1.5 + seed
    if dataclasses.is_dataclass(ann):
        return sample(ann, seed)
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return (_plain(args[0], None, "", seed), _plain(args[0], None, "", seed + 1))
    if origin is tuple:
        return tuple(_plain(a, None, "", seed) for a in args)
    raise AssertionError(f"no sample for {ann!r}")


def wire(env_list: list[Any]) -> bytes:
    return msgpack.packb(env_list, use_bin_type=True)


def env_wire(*messages: list[Any]) -> bytes:
    return wire([PROTOCOL_VERSION, "a", "127.0.0.1:1", 1, list(messages)])


def reason(data: bytes) -> str:
    with pytest.raises(BadFrame) as info:
        decode_envelope(data)
    return info.value.reason


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("cls", sorted(REGISTRY.values(), key=lambda c: c.TYPE), ids=repr)
def test_every_registered_message_round_trips(cls: type) -> None:
    msg = sample(cls)
    env = Envelope("node-a", "127.0.0.1:7000", 3, (msg,))
    assert decode_envelope(encode_envelope(env)) == env


@FUZZ
@given(envelopes)
def test_random_envelopes_round_trip(env: Envelope) -> None:
    assert decode_envelope(encode_envelope(env)) == env


def test_empty_envelope_round_trips() -> None:
    env = Envelope("a", "", 0, ())
    assert decode_envelope(encode_envelope(env)) == env


def test_extremes_round_trip() -> None:
    env = Envelope(
        "é" * (MAX_STR_BYTES // 2),
        "x" * MAX_STR_BYTES,
        MAX_INT,
        (Ping(0, ""), sample(DocUpdate)),
    )
    assert decode_envelope(encode_envelope(env)) == env


def test_nested_dataclass_travels_as_plain_field_list() -> None:
    member = MemberUpdate("n", "h:1", 2, ALIVE, "o", b"m")
    raw = msgpack.unpackb(
        encode_envelope(Envelope("a", "b", 1, (MembershipSync((member,), True),)))
    )
    assert raw[4] == [[MembershipSync.TYPE, [["n", "h:1", 2, ALIVE, "o", b"m"]], True]]


# --- evolution: defaults and unknown trailing fields ----------------------------------------


def test_missing_trailing_field_takes_its_default() -> None:
    data = env_wire([MemberUpdate.TYPE, "n", "h:1", 2, ALIVE, "o"])  # no meta
    (member,) = decode_envelope(data).messages
    assert member == MemberUpdate("n", "h:1", 2, ALIVE, "o", b"")


def test_unknown_trailing_fields_from_a_newer_peer_are_ignored() -> None:
    data = env_wire([Ack.TYPE, 5, "future field", [1, 2]])
    assert decode_envelope(data).messages == (Ack(5),)


def test_missing_required_field_is_a_type_error() -> None:
    assert reason(env_wire([Ping.TYPE, 5])) == "type"


# --- bad payloads: one test per class of damage ----------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x95\x01", b"\xff" * 7, msgpack.packb([1]) + b"\x00", b"\x91" * 5000],
    ids=["empty", "reserved-byte", "short-array", "garbage", "trailing-bytes", "deep-nesting"],
)
def test_not_msgpack_is_decode(data: bytes) -> None:
    assert reason(data) == "decode"


@pytest.mark.parametrize(
    "obj",
    [
        [],
        "string",
        7,
        {"a": 1},
        [1, "a", "b", 1],
        [1, "a", "b", 1, [], "extra"],
        [1, "a", "b", 1, {}],
    ],
    ids=["empty-list", "str", "int", "map", "short", "long", "messages-not-array"],
)
def test_wrong_envelope_shape_is_decode(obj: Any) -> None:
    assert reason(wire(obj)) == "decode"


def test_map_and_ext_inside_are_decode() -> None:
    assert reason(env_wire([Ack.TYPE, {"x": 1}])) == "decode"
    ext = msgpack.packb([1, "a", "b", 1, [[Ack.TYPE, msgpack.ExtType(5, b"x")]]])
    assert reason(ext) == "decode"


@pytest.mark.parametrize("version", [0, 2, 255, 2**40])
def test_unknown_protocol_version(version: int) -> None:
    assert reason(wire([version, "a", "b", 1, []])) == "version"
    # Checked before the shape: a future layout is still reported as a version problem.
    assert reason(wire([version, {"new": "layout"}])) == "version"


# True is not 1 on the wire (msgpack keeps bools apart), so it is no TYPE number either.
@pytest.mark.parametrize("type_id", [0, 7, 99, 2**63 - 1, "1", None, 1.0, True])
def test_unknown_message_type(type_id: Any) -> None:
    assert reason(env_wire([type_id, 1])) == "type"


def test_message_that_is_not_an_array_is_decode() -> None:
    assert reason(env_wire(5)) == "decode"
    assert reason(wire([PROTOCOL_VERSION, "a", "b", 1, [[]]])) == "decode"


_WRONG = {
    int: ["7", b"7", 7.0, True, None, [7]],
    str: [b"s", 1, None, ["s"], True],
    bytes: ["b", 1, None, [1], False],
    bool: [1, 0, "true", None],
    float: ["1.0", None, b"1"],
}


def _wrong_values(ann: Any) -> list[Any]:
    if ann in _WRONG:
        return _WRONG[ann]
    # Composite annotations: a scalar where an array belongs, or an array of junk.
    return ["x", 5, None, [None] * 6]


_FIELD_CASES = [
    (cls, i, name, bad)
    for cls in sorted(REGISTRY.values(), key=lambda c: c.TYPE)
    for i, (name, ann) in enumerate(message_spec(cls))
    for bad in _wrong_values(ann)
]


@pytest.mark.parametrize(
    ("cls", "index", "name", "bad"),
    _FIELD_CASES,
    ids=[f"{c.__name__}.{n}={b!r:.12}" for c, _, n, b in _FIELD_CASES],
)
def test_every_field_of_the_wrong_type_is_rejected(
    cls: type, index: int, name: str, bad: Any
) -> None:
    fields = to_wire(sample(cls))
    fields[index] = bad
    assert reason(env_wire([cls.TYPE, *fields])) == "type", (cls, name, bad)


@pytest.mark.parametrize("value", [-1, 2**63, 2**64 - 1, -(2**63)])
def test_int_out_of_range(value: int) -> None:
    assert reason(env_wire([Ping.TYPE, value, "t"])) == "type"
    assert reason(wire([PROTOCOL_VERSION, "a", "b", value, []])) == "type"


def test_member_state_must_be_a_known_state() -> None:
    fields = to_wire(sample(MemberUpdate))
    fields[3] = "zombie"
    assert reason(env_wire([MemberUpdate.TYPE, *fields])) == "type"
    # ... also when nested inside a MembershipSync.
    assert reason(env_wire([MembershipSync.TYPE, [fields], True])) == "type"


def test_string_too_long() -> None:
    assert reason(env_wire([Ping.TYPE, 1, "x" * (MAX_STR_BYTES + 1)])) == "type"
    # Multi-byte characters count by their UTF-8 size.
    too_long = "é" * (MAX_STR_BYTES // 2 + 1)
    assert reason(env_wire([Ping.TYPE, 1, too_long])) == "type"
    # Four-byte characters: exactly the limit passes, one more character does not.
    widest = "\U0001f600" * (MAX_STR_BYTES // 4)
    assert decode_envelope(env_wire([Ping.TYPE, 1, widest])).messages[0].target == widest
    assert reason(env_wire([Ping.TYPE, 1, widest + "\U0001f600"])) == "type"


def test_fixed_tuple_of_wrong_length() -> None:
    for cls in REGISTRY.values():
        for i, (_, ann) in enumerate(message_spec(cls)):
            inner = typing.get_args(ann)
            if typing.get_origin(ann) is tuple and inner and inner[-1] is Ellipsis:
                item = inner[0]
                if typing.get_origin(item) is tuple:
                    fields = to_wire(sample(cls))
                    fields[i] = [fields[i][0][:-1]]
                    assert reason(env_wire([cls.TYPE, *fields])) == "type", cls
                    fields[i] = [[*to_wire(sample(cls))[i][0], b"extra"]]
                    assert reason(env_wire([cls.TYPE, *fields])) == "type", cls
                    return
    pytest.skip("no message has a tuple of fixed tuples")


def test_too_many_fields_or_messages() -> None:
    assert reason(env_wire([Ack.TYPE, *range(codec.MAX_FIELDS + 1)])) == "type"
    many = [[Ack.TYPE, 1]] * (codec.MAX_MESSAGES + 1)
    assert reason(wire([PROTOCOL_VERSION, "a", "b", 1, many])) == "type"


def test_non_bytes_input_is_decode() -> None:
    for bad in ("text", None, 5, [1]):
        with pytest.raises(BadFrame) as info:
            decode_envelope(bad)  # type: ignore[arg-type]
        assert info.value.reason == "decode"


def test_oversized_payload() -> None:
    from gossip.framing import MAX_FRAME_BYTES

    assert reason(b"\x90" * (MAX_FRAME_BYTES + 1)) == "oversized"


# --- only BadFrame, whatever the bytes ----------------------------------------------------------


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_badframe(data: bytes) -> None:
    with contextlib.suppress(BadFrame):
        decode_envelope(data)


@FUZZ
@given(envelopes, st.data())
def test_mutated_encodings_only_raise_badframe(env: Envelope, data: st.DataObject) -> None:
    raw = bytearray(encode_envelope(env))
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]), label="op")
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)), label="pos")
        if op == "flip" and raw:
            raw[pos] ^= data.draw(st.integers(1, 255), label="mask")
        elif op == "cut":
            del raw[pos:]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=4), label="bytes")
    try:
        decoded = decode_envelope(bytes(raw))
    except BadFrame:
        return
    # Whatever decodes must be a fully valid envelope: it encodes again.
    encode_envelope(decoded)


@FUZZ
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats()
        | st.text(max_size=8)
        | st.binary(max_size=8),
        lambda inner: st.lists(inner, max_size=6),
        max_leaves=30,
    )
)
def test_structured_junk_in_message_position_only_raises_badframe(junk: Any) -> None:
    for type_id in sorted(REGISTRY):
        data = env_wire([type_id, *(junk if isinstance(junk, list) else [junk])])
        with contextlib.suppress(BadFrame):
            decode_envelope(data)


# --- encoding refuses what decoding would refuse ------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        Envelope("a", "b", -1, ()),
        Envelope("a", "b", 2**63, ()),
        Envelope("a", "b", True, ()),  # type: ignore[arg-type]
        Envelope(b"a", "b", 1, ()),  # type: ignore[arg-type]
        Envelope("a", "b", 1, [Ack(1)]),  # type: ignore[arg-type]
        Envelope("a", "b", 1, (Ack(-1),)),
        Envelope("a", "b", 1, (Ack("1"),)),  # type: ignore[arg-type]
        Envelope("a", "b", 1, ("not a message",)),
        Envelope("a", "b", 1, (Ping(1, "\ud800"),)),
        Envelope("a", "b", 1, (Ping(1, "x" * (MAX_STR_BYTES + 1)),)),
        Envelope("a", "b", 1, (MemberUpdate("n", "h", 1, "zombie", "o"),)),
        Envelope("a", "b", 1, (MembershipSync([MemberUpdate("n", "h", 1, ALIVE, "o")], True),)),  # type: ignore[arg-type]
        Envelope("a", "b", 1, (MembershipSync((Ack(1),), True),)),  # type: ignore[arg-type]
        Envelope(
            "a", "b", 1, (DocUpdate(**{**dataclasses.asdict(sample(DocUpdate)), "doc_id": 5}),)
        ),
    ],
    ids=repr,
)
def test_encode_rejects_invalid_values_with_localerror(env: Envelope) -> None:
    with pytest.raises(LocalError):
        encode_envelope(env)


def test_encode_rejects_non_envelopes_and_unregistered_dataclasses() -> None:
    @dataclasses.dataclass(frozen=True)
    class Stray:
        TYPE: typing.ClassVar[int] = 1  # claims MemberUpdate's number: not registered
        x: int

    with pytest.raises(LocalError):
        encode_envelope(Envelope("a", "b", 1, (Stray(1),)))
    with pytest.raises(LocalError):
        encode_envelope(("a", "b", 1, ()))  # type: ignore[arg-type]


# --- the annotation compiler on shapes the current messages do not use yet -----------------------


@dataclasses.dataclass(frozen=True)
class _Inner:
    x: int


@dataclasses.dataclass(frozen=True)
class _Everything:
    f: float
    maybe: int | None
    pair: tuple[str, tuple[int, bytes]]
    inner: tuple[_Inner, ...]
    flag: bool = False


def test_annotation_compiler_handles_float_optional_and_deep_tuples() -> None:
    obj = _Everything(1.25, None, ("a", (1, b"b")), (_Inner(2),), True)
    assert from_wire(_Everything, to_wire(obj)) == obj
    assert from_wire(_Everything, to_wire(_Everything(2.0, 5, ("", (0, b"")), ()))).maybe == 5
    # Ints are valid floats going out, and arrive as floats.
    assert from_wire(_Everything, to_wire(_Everything(3, None, ("", (0, b"")), ()))).f == 3.0


@pytest.mark.parametrize(
    "fields",
    [
        [math.nan, None, ["a", [1, b"b"]], []],
        [math.inf, None, ["a", [1, b"b"]], []],
        [1, None, ["a", [1, b"b"]], []],  # an int where a float belongs
        [1.0, "x", ["a", [1, b"b"]], []],
        [1.0, None, ["a", [1]], []],
        [1.0, None, ["a", [1, b"b"]], [[-1]]],
        [1.0, None, ["a", [1, b"b"]], [5]],
    ],
)
def test_annotation_compiler_rejects_bad_values(fields: list[Any]) -> None:
    with pytest.raises(BadFrame) as info:
        from_wire(_Everything, fields)
    assert info.value.reason == "type"


def test_float_encode_rejects_non_finite() -> None:
    with pytest.raises(LocalError):
        to_wire(_Everything(math.nan, None, ("", (0, b"")), ()))


def test_unsupported_annotation_is_refused_at_compile_time() -> None:
    @dataclasses.dataclass(frozen=True)
    class HasDict:
        d: dict[str, int]

    with pytest.raises(LocalError, match="no wire encoding"):
        to_wire(HasDict({}))
    with pytest.raises(LocalError):
        to_wire(object())


@dataclasses.dataclass(frozen=True)
class _Checked:
    low: int
    high: int

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError("low > high")


def test_a_dataclass_own_validation_becomes_a_type_error() -> None:
    assert from_wire(_Checked, [1, 2]) == _Checked(1, 2)
    with pytest.raises(BadFrame) as info:
        from_wire(_Checked, [3, 2])
    assert info.value.reason == "type"
