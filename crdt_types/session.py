"""Session state: everything an agent needs to resume a session on another node.

One pycrdt document per session (`session/<id>`), with these root types:

    meta          Map    session_id, schema version
    messages      Array  conversation, in order: {role, content, metadata}
    tool_calls    Map    call_id -> {name, arguments, idempotency_key, started_by}
    tool_results  Map    call_id -> {status: done|failed, result, error, finished_by}
    memory        Map    key -> JSON value
    rag           Array  RAG context entries: {content, source, score, metadata}
    cursor        Array  {step, label} log: the last entry is where to resume

Invariants: every write is checked first (`crdt_types.values`) and then made in ONE
pycrdt transaction, so an invalid call raises `InvalidValue` (or `LocalError` for a
misuse such as finishing an unknown call) and leaves the document byte-for-byte as it
was. A tool call is pending while it has no result; the start record is written once
and never rewritten, and the outcome goes to a separate map, so finishing a call adds a
key instead of overwriting one (an overwrite leaves a delete, and every diff of the
document carries the whole delete set). The cursor, which moves on every step, is an
append-only log for the same reason: measured over 10,000 steps interleaved with
appends, an overwritten Map key made every `get_update(state_vector)` diff 31.7 KB of
delete set, the log keeps diffs at ~50 bytes for a full state 37% larger. Memory is
overwritten in place; its deletes are the price of a key-value store.

Concurrency: concurrent appends interleave the same way on every replica; concurrent
writes to one memory key or one call's outcome resolve by pycrdt's deterministic
last-writer rule, and concurrent cursor moves by the array order (the same everywhere).
Only the session's owner writes in normal operation (the mesh fences the others), so
such races only occur around a takeover.

Reads skip records that do not parse (a buggy or hostile peer can write anything);
`validate` names them. Numbers read back follow `crdt_types.values.from_stored`:
integral numbers come back as int, which is what the schema wants for the cursor step.
Reading everything (`to_dict`, `tool_calls`) converts whole arrays and maps, which
pycrdt does slowly for large ones; use `messages(start, stop)` and `cursor()` on hot
paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pycrdt import Array, Doc, Map

from crdt_types.docs import MAX_DOC_ID_BYTES, new_doc
from crdt_types.errors import InvalidValue, LocalError, SchemaError
from crdt_types.values import MAX_INT, check_name, check_value, from_stored, to_stored

__all__ = [
    "Cursor",
    "Message",
    "RagEntry",
    "SCHEMA_VERSION",
    "SessionState",
    "ToolCall",
    "check_session_id",
    "validate",
]

SCHEMA_VERSION = 1
PENDING, DONE, FAILED = "pending", "done", "failed"
ROOTS = {
    "meta": Map,
    "messages": Array,
    "tool_calls": Map,
    "tool_results": Map,
    "memory": Map,
    "rag": Array,
    "cursor": Array,
}
# A cursor read looks back at most this far for a well-formed entry.
_CURSOR_LOOKBACK = 16
_MAX_ID = 256
_MAX_SESSION_ID_BYTES = MAX_DOC_ID_BYTES - len("session/")


@dataclass(frozen=True, slots=True)
class Message:
    """One conversation message."""

    role: str
    content: Any
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call and, once it has one, its outcome."""

    call_id: str
    name: str
    arguments: Any
    idempotency_key: str
    started_by: str
    status: str = PENDING  # pending, done or failed
    result: Any = None
    error: str | None = None
    finished_by: str | None = None


@dataclass(frozen=True, slots=True)
class RagEntry:
    """One retrieved context entry."""

    content: Any
    source: str = ""
    score: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where execution resumes: a step number and a free-form label."""

    step: int
    label: str = ""


def check_session_id(session_id: Any) -> str:
    """Raise `InvalidValue` unless `session_id` is usable in `session/<id>`."""
    check_name(session_id, "session id", max_len=_MAX_ID)
    # Its document id, "session/<id>", must fit the store's 256-byte limit on document ids:
    # a longer one would be claimed in the ownership table and then fail to be logged.
    if len(session_id.encode("utf-8")) > _MAX_SESSION_ID_BYTES:
        raise InvalidValue(f"session id is longer than {_MAX_SESSION_ID_BYTES} bytes of UTF-8")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in session_id):
        raise InvalidValue(f"session id {session_id!r} contains control characters")
    return session_id


def _metadata(metadata: Any, path: str) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidValue(f"{path}: metadata must be a dict, not {type(metadata).__name__}")
    return metadata


class SessionState:
    """Typed view of one session document; every write is one validated transaction."""

    def __init__(self, doc: Doc) -> None:
        self.doc = doc
        self._meta = doc.get("meta", type=Map)
        self._messages = doc.get("messages", type=Array)
        self._calls = doc.get("tool_calls", type=Map)
        self._results = doc.get("tool_results", type=Map)
        self._memory = doc.get("memory", type=Map)
        self._rag = doc.get("rag", type=Array)
        self._cursor = doc.get("cursor", type=Array)

    @classmethod
    def new(
        cls, session_id: str, doc: Doc | None = None, *, client_id: int | None = None
    ) -> SessionState:
        """Start session `session_id` in `doc` (a fresh document by default)."""
        check_session_id(session_id)
        state = cls(doc if doc is not None else new_doc(client_id))
        existing = state.session_id
        if existing is not None and existing != session_id:
            raise LocalError(f"document already holds session {existing!r}")
        if existing is None:
            with state.doc.transaction():
                state._meta["session_id"] = session_id
                state._meta["schema"] = SCHEMA_VERSION
        return state

    @property
    def session_id(self) -> str | None:
        """The session id recorded in the document (None until its meta arrives)."""
        value = self._meta.get("session_id")
        return value if isinstance(value, str) else None

    # --- conversation ---------------------------------------------------------------

    def append_message(
        self, role: str, content: Any, metadata: dict[str, Any] | None = None
    ) -> int:
        """Append a message; return its index."""
        check_name(role, "message role", max_len=64)
        record = to_stored(
            {"role": role, "content": content, "metadata": _metadata(metadata, "$.metadata")}
        )
        with self.doc.transaction():
            index = len(self._messages)
            self._messages.append(record)
        return index

    def message_count(self) -> int:
        """The number of messages."""
        return len(self._messages)

    def messages(self, start: int = 0, stop: int | None = None) -> list[Message]:
        """Messages[start:stop] in conversation order (slicing avoids reading them all)."""
        return _readable(_message, self._messages[start:stop])

    # --- tool calls -----------------------------------------------------------------

    def start_tool_call(
        self,
        call_id: str,
        name: str,
        arguments: Any = None,
        *,
        started_by: str,
        idempotency_key: str | None = None,
    ) -> ToolCall:
        """Record a pending tool call; `LocalError` if `call_id` was already started."""
        check_name(call_id, "call id", max_len=_MAX_ID)
        check_name(name, "tool name", max_len=_MAX_ID)
        check_name(started_by, "started_by", max_len=_MAX_ID)
        key = call_id if idempotency_key is None else idempotency_key
        check_name(key, "idempotency key", max_len=_MAX_ID)
        record = to_stored(
            {
                "name": name,
                "arguments": arguments,
                "idempotency_key": key,
                "started_by": started_by,
            },
            path=f"tool_calls[{call_id!r}]",
        )
        if call_id in self._calls:
            raise LocalError(f"tool call {call_id!r} was already started")
        with self.doc.transaction():
            self._calls[call_id] = record
        return ToolCall(call_id, name, from_stored(record["arguments"]), key, started_by)

    def finish_tool_call(
        self, call_id: str, result: Any = None, *, by: str | None = None
    ) -> ToolCall:
        """Mark a pending call done with `result`."""
        return self._finish(call_id, {"status": DONE, "result": result, "error": None}, by)

    def fail_tool_call(self, call_id: str, error: str, *, by: str | None = None) -> ToolCall:
        """Mark a pending call failed with an `error` message."""
        if not isinstance(error, str):
            raise InvalidValue(f"tool call error must be a str, not {type(error).__name__}")
        return self._finish(call_id, {"status": FAILED, "result": None, "error": error}, by)

    def _finish(self, call_id: str, outcome: dict[str, Any], by: str | None) -> ToolCall:
        if by is not None:
            check_name(by, "finished_by", max_len=_MAX_ID)
        record = to_stored({**outcome, "finished_by": by}, path=f"tool_results[{call_id!r}]")
        call = self.tool_call(call_id)
        if call is None:
            raise LocalError(f"no tool call {call_id!r} was started")
        if call.status != PENDING:
            raise LocalError(f"tool call {call_id!r} is already {call.status}")
        with self.doc.transaction():
            self._results[call_id] = record
        return _tool_call(call_id, self._calls.get(call_id), record)

    def tool_call(self, call_id: str) -> ToolCall | None:
        """The tool call `call_id` with its status, or None if it was never started."""
        raw = self._calls.get(call_id) if isinstance(call_id, str) else None
        return None if raw is None else _read(_tool_call, call_id, raw, self._results.get(call_id))

    def tool_calls(self) -> dict[str, ToolCall]:
        """Every started tool call, by call id (sorted)."""
        results = self._results.to_py() or {}
        calls = {
            call_id: _read(_tool_call, call_id, raw, results.get(call_id))
            for call_id, raw in sorted((self._calls.to_py() or {}).items())
        }
        return {call_id: call for call_id, call in calls.items() if call is not None}

    def pending_tool_calls(self) -> list[ToolCall]:
        """The calls started but not finished, sorted by call id: what a successor resumes."""
        return [c for c in self.tool_calls().values() if c.status == PENDING]

    # --- memory ---------------------------------------------------------------------

    def set_memory(self, key: str, value: Any) -> None:
        """Set memory `key` to a JSON value."""
        check_name(key, "memory key", max_len=_MAX_ID)
        stored = to_stored(value, path=f"memory[{key!r}]")
        with self.doc.transaction():
            self._memory[key] = stored

    def delete_memory(self, key: str) -> bool:
        """Delete memory `key`; return whether it existed."""
        check_name(key, "memory key", max_len=_MAX_ID)
        if key not in self._memory:
            return False
        with self.doc.transaction():
            del self._memory[key]
        return True

    def get_memory(self, key: str, default: Any = None) -> Any:
        """The value of memory `key`, or `default`."""
        if not isinstance(key, str) or key not in self._memory:
            return default
        return from_stored(self._memory[key])

    def memory(self) -> dict[str, Any]:
        """All of memory, sorted by key."""
        return {k: from_stored(v) for k, v in sorted((self._memory.to_py() or {}).items())}

    # --- RAG context ----------------------------------------------------------------

    def add_rag(
        self,
        content: Any,
        *,
        source: str = "",
        score: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        """Append a RAG context entry; return its index."""
        if not isinstance(source, str):
            raise InvalidValue(f"rag source must be a str, not {type(source).__name__}")
        if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
            raise InvalidValue(f"rag score must be a number or None, not {type(score).__name__}")
        record = to_stored(
            {
                "content": content,
                "source": source,
                "score": score,
                "metadata": _metadata(metadata, "$.metadata"),
            }
        )
        with self.doc.transaction():
            index = len(self._rag)
            self._rag.append(record)
        return index

    def rag(self) -> list[RagEntry]:
        """The RAG context entries in order."""
        return _readable(_rag, self._rag.to_py() or [])

    # --- cursor ---------------------------------------------------------------------

    def set_cursor(self, step: int, label: str = "") -> None:
        """Record where execution resumes."""
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_INT:
            raise InvalidValue(f"cursor step must be an int in 0..2**53, got {step!r}")
        if not isinstance(label, str):
            raise InvalidValue(f"cursor label must be a str, not {type(label).__name__}")
        stored = to_stored({"step": step, "label": label}, max_bytes=4096, path="cursor")
        with self.doc.transaction():
            self._cursor.append(stored)

    def cursor(self) -> Cursor | None:
        """The execution cursor, or None if never set."""
        n = len(self._cursor)
        for i in range(n - 1, max(n - 1 - _CURSOR_LOOKBACK, -1), -1):
            cursor = _read(_cursor, self._cursor[i])
            if cursor is not None:
                return cursor
        return None

    # --- whole state ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The whole session as plain JSON data."""
        cursor = self.cursor()
        return {
            "session_id": self.session_id,
            "messages": [_as_dict(m) for m in self.messages()],
            "tool_calls": {k: _as_dict(c) for k, c in self.tool_calls().items()},
            "memory": self.memory(),
            "rag": [_as_dict(r) for r in self.rag()],
            "cursor": None if cursor is None else _as_dict(cursor),
        }


def _read(parse: Any, *args: Any) -> Any:
    # Records come from peers too. A malformed one (which `validate` reports with its
    # path) is skipped by reads rather than breaking every read of the session.
    try:
        return parse(*args)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _readable(parse: Any, raws: Any) -> list[Any]:
    return [item for item in (_read(parse, raw) for raw in raws) if item is not None]


def _cursor(raw: Any) -> Cursor:
    raw = from_stored(raw)
    step, label = raw["step"], raw["label"]
    if not isinstance(step, int) or not isinstance(label, str):
        raise TypeError("malformed cursor")
    return Cursor(step=step, label=label)


def _as_dict(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def _message(raw: Any) -> Message:
    raw = from_stored(raw)
    return Message(role=raw["role"], content=raw["content"], metadata=raw["metadata"])


def _rag(raw: Any) -> RagEntry:
    raw = from_stored(raw)
    score = raw["score"]
    return RagEntry(
        content=raw["content"],
        source=raw["source"],
        score=float(score) if score is not None else None,
        metadata=raw["metadata"],
    )


def _tool_call(call_id: str, raw: Any, result: Any) -> ToolCall:
    raw = from_stored(raw)
    outcome = from_stored(result) if isinstance(result, dict) else {}
    return ToolCall(
        call_id=call_id,
        name=raw["name"],
        arguments=raw["arguments"],
        idempotency_key=raw["idempotency_key"],
        started_by=raw["started_by"],
        status=outcome.get("status", PENDING),
        result=outcome.get("result"),
        error=outcome.get("error"),
        finished_by=outcome.get("finished_by"),
    )


# --- schema ---------------------------------------------------------------------------

_FIELDS = {
    "messages": {"role", "content", "metadata"},
    "tool_calls": {"name", "arguments", "idempotency_key", "started_by"},
    "tool_results": {"status", "result", "error", "finished_by"},
    "rag": {"content", "source", "score", "metadata"},
    "cursor": {"step", "label"},
}


def _record(path: str, raw: Any, root: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SchemaError(path, f"must be a map, got {type(raw).__name__}")
    value = from_stored(raw)
    try:
        check_value(value, path=path)
    except InvalidValue as exc:
        raise SchemaError(path, str(exc)) from None
    if set(value) != _FIELDS[root]:
        raise SchemaError(path, f"fields are {sorted(value)}, expected {sorted(_FIELDS[root])}")
    return value


def _need(path: str, ok: bool, message: str) -> None:
    if not ok:
        raise SchemaError(path, message)


def _is_str(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= _MAX_ID


def validate(doc: Doc, session_id: str | None = None) -> None:
    """Raise `SchemaError` naming the first invalid field of a session document."""
    meta = doc.get("meta", type=Map).to_py() or {}
    _need("meta", set(meta) <= {"session_id", "schema"}, f"unknown meta fields {sorted(meta)}")
    if "session_id" in meta:
        sid = meta["session_id"]
        _need("meta.session_id", isinstance(sid, str), "must be a str")
        _need(
            "meta.session_id",
            session_id is None or sid == session_id,
            f"{sid!r} does not match the document id's {session_id!r}",
        )
    if "schema" in meta:
        _need("meta.schema", meta["schema"] == SCHEMA_VERSION, f"unsupported {meta['schema']!r}")
    for i, raw in enumerate(doc.get("messages", type=Array).to_py() or []):
        path = f"messages[{i}]"
        m = _record(path, raw, "messages")
        _need(f"{path}.role", _is_str(m["role"]) and len(m["role"]) <= 64, "must be a short str")
        _need(f"{path}.metadata", isinstance(m["metadata"], dict), "must be a map")
    for call_id, raw in (doc.get("tool_calls", type=Map).to_py() or {}).items():
        path = f"tool_calls[{call_id!r}]"
        c = _record(path, raw, "tool_calls")
        for name in ("name", "idempotency_key", "started_by"):
            _need(f"{path}.{name}", _is_str(c[name]), "must be a non-empty str")
    for call_id, raw in (doc.get("tool_results", type=Map).to_py() or {}).items():
        path = f"tool_results[{call_id!r}]"
        r = _record(path, raw, "tool_results")
        _need(
            f"{path}.status", r["status"] in (DONE, FAILED), f"{r['status']!r} is not done/failed"
        )
        _need(
            f"{path}.error",
            (r["error"] is None) if r["status"] == DONE else isinstance(r["error"], str),
            "a done call has no error; a failed one has a str error",
        )
        _need(f"{path}.finished_by", r["finished_by"] is None or _is_str(r["finished_by"]), "bad")
    for key, raw in (doc.get("memory", type=Map).to_py() or {}).items():
        path = f"memory[{key!r}]"
        try:
            check_value(from_stored(raw), path=path)
        except InvalidValue as exc:
            raise SchemaError(path, str(exc)) from None
    for i, raw in enumerate(doc.get("rag", type=Array).to_py() or []):
        path = f"rag[{i}]"
        r = _record(path, raw, "rag")
        _need(f"{path}.source", isinstance(r["source"], str), "must be a str")
        score = r["score"]
        _need(
            f"{path}.score",
            score is None or (isinstance(score, int | float) and not isinstance(score, bool)),
            "must be a number or null",
        )
        _need(f"{path}.metadata", isinstance(r["metadata"], dict), "must be a map")
    for i, raw in enumerate(doc.get("cursor", type=Array).to_py() or []):
        path = f"cursor[{i}]"
        c = _record(path, raw, "cursor")
        step = c["step"]
        _need(
            f"{path}.step",
            isinstance(step, int) and not isinstance(step, bool) and 0 <= step <= MAX_INT,
            "must be an int in 0..2**53",
        )
        _need(f"{path}.label", isinstance(c["label"], str), "must be a str")
