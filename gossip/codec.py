"""Envelope codec: `Envelope` <-> msgpack bytes, checked against the message annotations.

An envelope travels as one msgpack array::

    [PROTOCOL_VERSION, sender, sender_address, incarnation, [[TYPE, *fields], ...]]

A message is its `TYPE` number followed by its fields in declaration order; a field whose
annotation is a dataclass (``MemberUpdate`` inside ``MembershipSync``) is nested as the
plain list of its own fields, without a TYPE, because the annotation already says what it
is. The cluster name is not in the envelope: `gossip.seal` binds it into every frame as
associated data, which is where a wrong cluster must be caught.

Invariants:

* The annotations in `gossip.messages` are the schema. At import every registered class is
  compiled into a pair of closures (to the wire, from the wire) derived from
  ``typing.get_type_hints``; nothing is written by hand per message. Supported: ``int``
  (0..2**63-1), ``str`` (at most `MAX_STR_BYTES` of UTF-8), ``bytes`` (bounded by the frame
  size), ``bool``, ``float`` (finite), ``X | None``, ``tuple[X, ...]`` (at most `MAX_ITEMS`),
  ``tuple[A, B, C]`` and nested dataclasses. `FIELD_CHOICES` adds the few range rules an
  annotation cannot say (a member state is one of ``MEMBER_STATES``).
* `decode_envelope` raises `BadFrame` and nothing else, whatever the bytes: the shape is
  wrong -> ``"decode"``, another protocol version -> ``"version"``, an unknown TYPE or a
  field of the wrong type or range -> ``"type"``. The version is checked before the rest of
  the shape, so a future envelope layout is still reported as ``"version"``.
* `encode_envelope` applies the same checks and raises `LocalError` on a bad value, so a
  node can never emit a frame that its peers would reject.
* Evolution: fields are only ever added at the end with a default (see `gossip.messages`).
  A message with fewer fields than we know gets the defaults; trailing fields we do not
  know are ignored, so such an addition does not split a cluster during a rolling upgrade.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any, Union

import msgpack

from crdt_types.errors import BadFrame, LocalError
from gossip.framing import MAX_FRAME_BYTES
from gossip.messages import MEMBER_STATES, PROTOCOL_VERSION, REGISTRY, Envelope, MemberUpdate

MAX_INT = 2**63 - 1
MAX_STR_BYTES = 4096  # node ids, addresses, document ids: all short
MAX_ITEMS = 65_536  # per tuple; the frame size bounds the total anyway
MAX_MESSAGES = 4096  # per envelope
MAX_FIELDS = 64  # per message on the wire, including trailing fields we do not know

# Range rules that an annotation cannot express, keyed by (class, field name).
FIELD_CHOICES: dict[tuple[type, str], frozenset[Any]] = {
    (MemberUpdate, "state"): frozenset(MEMBER_STATES),
}

_Fail = Callable[[str], Exception]
# A compiled field: (to_wire(value), from_wire(obj)). Both raise on bad input: to_wire a
# LocalError, from_wire a BadFrame("type"). The field's label is bound at compile time so
# the hot path builds no strings.
_Conv = tuple[Callable[[Any], Any], Callable[[Any], Any]]


def _local(path: str, what: str) -> LocalError:
    return LocalError(f"cannot encode {path}: {what}")


def _remote(path: str, what: str) -> BadFrame:
    return BadFrame("type", f"{path}: {what}")


def _int_conv(path: str) -> _Conv:
    def enc(v: Any) -> int:
        if not isinstance(v, int) or isinstance(v, bool):
            raise _local(path, f"expected int, got {type(v).__name__}")
        if not 0 <= v <= MAX_INT:
            raise _local(path, f"int {v} outside 0..2**63-1")
        return int(v)

    def dec(v: Any) -> int:
        if type(v) is not int:
            raise _remote(path, f"expected int, got {type(v).__name__}")
        if not 0 <= v <= MAX_INT:
            raise _remote(path, f"int {v} outside 0..2**63-1")
        return v

    return enc, dec


_SURELY_SHORT = MAX_STR_BYTES // 4  # at most 4 bytes a character in UTF-8


def _str_too_long(v: str) -> bool:
    # Most strings are short (ids, addresses): decide those with one comparison, the
    # rest without encoding them unless they are not ASCII.
    n = len(v)
    if n <= _SURELY_SHORT:
        return False
    if n > MAX_STR_BYTES:
        return True
    return not v.isascii() and len(v.encode("utf-8", "surrogatepass")) > MAX_STR_BYTES


def _str_conv(path: str) -> _Conv:
    def enc(v: Any) -> str:
        if type(v) is not str:
            raise _local(path, f"expected str, got {type(v).__name__}")
        if _str_too_long(v):
            raise _local(path, f"string longer than {MAX_STR_BYTES} bytes")
        if not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise _local(path, "string is not valid Unicode (lone surrogate)") from exc
        return v

    def dec(v: Any) -> str:
        if type(v) is not str:
            raise _remote(path, f"expected str, got {type(v).__name__}")
        if _str_too_long(v):
            raise _remote(path, f"string longer than {MAX_STR_BYTES} bytes")
        return v

    return enc, dec


def _bytes_conv(path: str) -> _Conv:
    def enc(v: Any) -> bytes:
        if type(v) is not bytes:
            raise _local(path, f"expected bytes, got {type(v).__name__}")
        if len(v) > MAX_FRAME_BYTES:
            raise _local(path, f"{len(v)} bytes exceed the frame limit {MAX_FRAME_BYTES}")
        return v

    def dec(v: Any) -> bytes:
        if type(v) is not bytes:
            raise _remote(path, f"expected bytes, got {type(v).__name__}")
        return v  # msgpack's max_bin_len already bounds it

    return enc, dec


def _bool_conv(path: str) -> _Conv:
    def enc(v: Any) -> bool:
        if type(v) is not bool:
            raise _local(path, f"expected bool, got {type(v).__name__}")
        return v

    def dec(v: Any) -> bool:
        if type(v) is not bool:
            raise _remote(path, f"expected bool, got {type(v).__name__}")
        return v

    return enc, dec


def _float_conv(path: str) -> _Conv:
    def enc(v: Any) -> float:
        # An int is a valid float annotation-wise (PEP 484); it goes out as a float.
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise _local(path, f"expected float, got {type(v).__name__}")
        try:
            f = float(v)
        except OverflowError as exc:
            raise _local(path, "int too large for a float") from exc
        if not math.isfinite(f):
            raise _local(path, f"float {f} is not finite")
        return f

    def dec(v: Any) -> float:
        if type(v) is not float:
            raise _remote(path, f"expected float, got {type(v).__name__}")
        if not math.isfinite(v):
            raise _remote(path, f"float {v} is not finite")
        return v

    return enc, dec


def _optional_conv(inner: _Conv) -> _Conv:
    inner_enc, inner_dec = inner

    def enc(v: Any) -> Any:
        return None if v is None else inner_enc(v)

    def dec(v: Any) -> Any:
        return None if v is None else inner_dec(v)

    return enc, dec


def _variadic_conv(path: str, item: _Conv) -> _Conv:
    item_enc, item_dec = item

    def enc(v: Any) -> list[Any]:
        if type(v) is not tuple:
            raise _local(path, f"expected tuple, got {type(v).__name__}")
        if len(v) > MAX_ITEMS:
            raise _local(path, f"{len(v)} items exceed {MAX_ITEMS}")
        return [item_enc(x) for x in v]

    def dec(v: Any) -> tuple[Any, ...]:
        if type(v) is not list:
            raise _remote(path, f"expected array, got {type(v).__name__}")
        if len(v) > MAX_ITEMS:
            raise _remote(path, f"{len(v)} items exceed {MAX_ITEMS}")
        return tuple([item_dec(x) for x in v])

    return enc, dec


def _fixed_conv(path: str, items: list[_Conv]) -> _Conv:
    n = len(items)
    encs = [c[0] for c in items]
    decs = [c[1] for c in items]

    def enc(v: Any) -> list[Any]:
        if type(v) is not tuple or len(v) != n:
            raise _local(path, f"expected a tuple of {n} items, got {v!r:.80}")
        return [e(x) for e, x in zip(encs, v, strict=True)]

    def dec(v: Any) -> tuple[Any, ...]:
        if type(v) is not list or len(v) != n:
            raise _remote(path, f"expected an array of {n} items, got {v!r:.80}")
        return tuple([d(x) for d, x in zip(decs, v, strict=True)])

    return enc, dec


@dataclasses.dataclass(frozen=True, slots=True)
class _ClassSpec:
    """Compiled codec for one dataclass: field names, converters, how many are required."""

    cls: type
    names: tuple[str, ...]
    encoders: tuple[Callable[[Any], Any], ...]
    decoders: tuple[Callable[[Any], Any], ...]
    required: int  # fields without a default; an older peer sends at least these

    def to_wire(self, obj: Any) -> list[Any]:
        """Return the field values of `obj` as a wire list (raises LocalError)."""
        if type(obj) is not self.cls:
            raise _local(self.cls.__name__, f"expected it, got {type(obj).__name__}")
        return [enc(getattr(obj, n)) for n, enc in zip(self.names, self.encoders, strict=True)]

    def from_wire(self, values: list[Any]) -> Any:
        """Build an instance from wire field values (raises BadFrame)."""
        n = len(values)
        if n < self.required:
            raise _remote(self.cls.__name__, f"needs {self.required} fields, got {n}")
        if n > MAX_FIELDS:
            raise _remote(self.cls.__name__, f"{n} fields exceed {MAX_FIELDS}")
        # Fields past the ones we know come from a newer peer: zip drops them. Fields we
        # know but did not get take their defaults (keyword call, the rare path).
        args = [dec(v) for dec, v in zip(self.decoders, values, strict=False)]
        if len(args) == len(self.names):
            return self.cls(*args)
        return self.cls(**dict(zip(self.names, args, strict=False)))


_SPECS: dict[type, _ClassSpec] = {}


def _conv_for(annotation: Any, path: str) -> _Conv:
    """Compile one annotation into converters (raises LocalError if unsupported)."""
    simple = _SIMPLE.get(annotation)
    if simple is not None:
        return simple(path)
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        spec = _spec_for(annotation)
        return spec.to_wire, _nested_from_wire(spec)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(args) == 2 and len(rest) == 1:
            return _optional_conv(_conv_for(rest[0], path))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _variadic_conv(path, _conv_for(args[0], f"{path}[]"))
        if args and Ellipsis not in args:
            return _fixed_conv(path, [_conv_for(a, f"{path}[{i}]") for i, a in enumerate(args)])
    raise LocalError(f"{path}: annotation {annotation!r} has no wire encoding")


_SIMPLE: dict[Any, Callable[[str], _Conv]] = {
    int: _int_conv,
    str: _str_conv,
    bytes: _bytes_conv,
    bool: _bool_conv,
    float: _float_conv,
}


def _nested_from_wire(spec: _ClassSpec) -> Callable[[Any], Any]:
    def dec(v: Any) -> Any:
        if type(v) is not list:
            raise _remote(spec.cls.__name__, "expected an array of its fields")
        return spec.from_wire(v)

    return dec


def _choice_check(path: str, conv: _Conv, choices: frozenset[Any]) -> _Conv:
    enc, dec = conv
    shown = sorted(choices)

    def checked_enc(v: Any) -> Any:
        v = enc(v)
        if v not in choices:
            raise _local(path, f"{v!r} is not one of {shown}")
        return v

    def checked_dec(v: Any) -> Any:
        v = dec(v)
        if v not in choices:
            raise _remote(path, f"{v!r:.80} is not one of {shown}")
        return v

    return checked_enc, checked_dec


def _spec_for(cls: type) -> _ClassSpec:
    """Return the compiled spec of dataclass `cls`, compiling it on first use."""
    spec = _SPECS.get(cls)
    if spec is not None:
        return spec
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise LocalError(f"{cls!r} is not a dataclass; it has no wire encoding")
    hints = typing.get_type_hints(cls)
    names: list[str] = []
    encoders = []
    decoders = []
    required = 0
    for f in dataclasses.fields(cls):
        path = f"{cls.__name__}.{f.name}"
        if not f.init:
            raise LocalError(f"{path}: init=False fields cannot travel")
        conv = _conv_for(hints[f.name], path)
        choices = FIELD_CHOICES.get((cls, f.name))
        if choices is not None:
            conv = _choice_check(path, conv, choices)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required += 1
        names.append(f.name)
        encoders.append(conv[0])
        decoders.append(conv[1])
    spec = _ClassSpec(cls, tuple(names), tuple(encoders), tuple(decoders), required)
    _SPECS[cls] = spec
    return spec


def to_wire(obj: object) -> list[Any]:
    """Return the wire list of any supported dataclass instance, without a TYPE."""
    return _spec_for(type(obj)).to_wire(obj)


def from_wire(cls: type, values: Any) -> Any:
    """Build a `cls` instance from its wire list, checked like a message (raises BadFrame)."""
    if type(values) is not list:
        raise BadFrame("decode", f"{cls.__name__} travels as an array")
    spec = _spec_for(cls)
    try:
        return spec.from_wire(values)
    except BadFrame:
        raise
    except Exception as exc:  # a __post_init__ check: a range error, see decode_envelope
        raise BadFrame("type", f"{cls.__name__}: {type(exc).__name__}: {exc}") from None


def message_spec(cls: type) -> tuple[tuple[str, Any], ...]:
    """Return (field name, resolved annotation) pairs of a message class, in wire order."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls))


# Compile every registered message now, so a schema the codec cannot carry fails at
# import rather than on the first frame. Classes registered later compile on first use.
for _cls in list(REGISTRY.values()):
    _spec_for(_cls)

_ENC_SENDER, _DEC_SENDER = _str_conv("Envelope.sender")
_ENC_ADDRESS, _DEC_ADDRESS = _str_conv("Envelope.sender_address")
_ENC_INC, _DEC_INC = _int_conv("Envelope.incarnation")


def encode_message(msg: object) -> list[Any]:
    """Return the wire list `[TYPE, *fields]` of one registered message (raises LocalError)."""
    cls = type(msg)
    type_id = getattr(cls, "TYPE", None)
    if type_id is None or REGISTRY.get(type_id) is not cls:
        raise LocalError(f"{cls.__name__} is not a registered message")
    wire = _spec_for(cls).to_wire(msg)
    wire.insert(0, type_id)
    return wire


def encode_envelope(env: Envelope) -> bytes:
    """Encode an envelope to msgpack bytes; raises LocalError on any invalid value."""
    if type(env) is not Envelope:
        raise LocalError(f"expected Envelope, got {type(env).__name__}")
    if type(env.messages) is not tuple:
        raise LocalError("Envelope.messages must be a tuple")
    if len(env.messages) > MAX_MESSAGES:
        raise LocalError(f"{len(env.messages)} messages exceed {MAX_MESSAGES} per envelope")
    wire = [
        PROTOCOL_VERSION,
        _ENC_SENDER(env.sender),
        _ENC_ADDRESS(env.sender_address),
        _ENC_INC(env.incarnation),
        [encode_message(m) for m in env.messages],
    ]
    return msgpack.packb(wire, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    if type(data) is not bytes:
        raise BadFrame("decode", f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_FRAME_BYTES:
        raise BadFrame("oversized", f"{len(data)} bytes > {MAX_FRAME_BYTES}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            # No maps or extension types in our schema: refusing them outright keeps the
            # unpacker from building anything we would only throw away.
            max_map_len=0,
            max_ext_len=0,
            # Strings are bounded by the field checks (a range error, "type").
            max_str_len=MAX_FRAME_BYTES,
            max_bin_len=MAX_FRAME_BYTES,
            max_array_len=max(MAX_ITEMS, MAX_MESSAGES),
        )
    except Exception as exc:  # msgpack raises ValueError subclasses and others: all "decode"
        version = _peek_version(data)
        if version is not None and version != PROTOCOL_VERSION:
            # Another version may use what we refuse (a map, an extension): say so.
            raise BadFrame(
                "version", f"protocol version {version}, we speak {PROTOCOL_VERSION}"
            ) from None
        raise BadFrame("decode", f"not msgpack: {type(exc).__name__}: {exc}") from None


_UINT_SIZES = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}


def _peek_version(data: bytes) -> int | None:
    """The leading protocol version of an array that does not unpack as a whole, if any."""
    if not data:
        return None
    lead = data[0]
    if 0x91 <= lead <= 0x9F:
        pos = 1
    elif lead == 0xDC:
        pos = 3
    elif lead == 0xDD:
        pos = 5
    else:
        return None
    if pos >= len(data):
        return None
    tag = data[pos]
    if tag <= 0x7F:
        return tag
    size = _UINT_SIZES.get(tag)
    if size is None or pos + 1 + size > len(data):
        return None
    return int.from_bytes(data[pos + 1 : pos + 1 + size], "big")


def decode_message(wire: Any) -> object:
    """Build one message from its wire list `[TYPE, *fields]` (raises BadFrame)."""
    if type(wire) is not list or not wire:
        raise BadFrame("decode", "a message is a non-empty array")
    type_id = wire[0]
    cls = REGISTRY.get(type_id) if type(type_id) is int else None
    if cls is None:
        raise BadFrame("type", f"unknown message TYPE {type_id!r:.40}")
    return _spec_for(cls).from_wire(wire[1:])


def decode_envelope(data: bytes) -> Envelope:
    """Decode and check msgpack bytes into an Envelope; raises BadFrame and nothing else."""
    obj = _unpack(data)
    if type(obj) is not list or not obj:
        raise BadFrame("decode", "an envelope is a non-empty array")
    version = obj[0]
    if type(version) is not int:
        raise BadFrame("decode", "envelope does not start with a protocol version")
    if version != PROTOCOL_VERSION:
        raise BadFrame("version", f"protocol version {version}, we speak {PROTOCOL_VERSION}")
    if len(obj) != 5:
        raise BadFrame("decode", f"envelope has {len(obj)} items, expected 5")
    _, sender, address, incarnation, messages = obj
    if type(messages) is not list:
        raise BadFrame("decode", "envelope messages are not an array")
    if len(messages) > MAX_MESSAGES:
        raise BadFrame("type", f"{len(messages)} messages exceed {MAX_MESSAGES}")
    try:
        return Envelope(
            sender=_DEC_SENDER(sender),
            sender_address=_DEC_ADDRESS(address),
            incarnation=_DEC_INC(incarnation),
            messages=tuple([decode_message(m) for m in messages]),
        )
    except BadFrame:
        raise
    except Exception as exc:
        # A message class whose __post_init__ rejects a value is a range error the
        # annotations could not express; anything else here would be our bug, but a peer
        # must still never be able to turn it into a crash.
        raise BadFrame("type", f"{type(exc).__name__}: {exc}") from None
