"""Property test: replicas that see the same writes converge, whatever the network did.

Several writers (each a replica holding its own session, cluster and ownership Docs) make
random writes against their own current view: session appends, tool call starts and
outcomes, memory sets and deletes, RAG entries, cursor moves, cluster settings, ownership
claims. Each transaction's update is delivered to every other replica at random: at
once, later (reordered), twice, or never. Then one anti-entropy round runs (each pair
exchanges `get_update(other_state_vector)`), after which every replica must hold the same
fingerprint and the same content, the content must pass schema validation, and the
highest ownership claim and cluster write ever made must be the ones every replica reads.

Hypothesis runs derandomized (the same examples on every run) so a CI failure replays;
the delivery seed is part of the example and is printed on failure.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc

from crdt_types.cluster import ClusterState
from crdt_types.docs import new_doc
from crdt_types.errors import LocalError
from crdt_types.fingerprint import fingerprint
from crdt_types.ownership import OwnershipTable
from crdt_types.schema import validate_document
from crdt_types.session import SessionState
from crdt_types.vv import VersionVector

DOC_IDS = ("session/s1", "cluster", "ownership")
WRITERS = 3
OPS = (
    "append",
    "start_call",
    "finish_call",
    "fail_call",
    "set_memory",
    "delete_memory",
    "add_rag",
    "set_cursor",
    "cluster_set",
    "claim",
)


@dataclass
class Replica:
    """One node: its three documents and the updates its own writes produced."""

    index: int
    docs: dict[str, Doc]
    outbox: list[tuple[str, bytes]] = field(default_factory=list)
    capturing: bool = False

    def __post_init__(self) -> None:
        for doc_id, doc in self.docs.items():
            doc.observe(lambda event, doc_id=doc_id: self._capture(doc_id, event))
        self.session = SessionState(self.docs["session/s1"])
        self.cluster = ClusterState(self.docs["cluster"])
        self.ownership = OwnershipTable(self.docs["ownership"])

    def _capture(self, doc_id: str, event: object) -> None:
        # Only our own writes go out; what we received is the sender's to spread.
        if self.capturing:
            self.outbox.append((doc_id, event.update))  # type: ignore[attr-defined]

    def contents(self) -> dict[str, object]:
        return {
            "session/s1": self.session.to_dict(),
            "cluster": self.cluster.to_dict(),
            "ownership": self.ownership.to_dict(),
        }


def _make_replicas() -> list[Replica]:
    # The session document is created once and its creation shipped to everyone, as
    # the owner would; each replica then writes under its own client id.
    origin = SessionState.new("s1", client_id=1)
    replicas = []
    for i in range(WRITERS):
        docs = {doc_id: new_doc(client_id=100 + i) for doc_id in DOC_IDS}
        docs["session/s1"].apply_update(origin.doc.get_update())
        replicas.append(Replica(i, docs))
    return replicas


def _apply_op(r: Replica, op: str, a: int, b: int, step: int, log: dict) -> None:
    s = r.session
    node = f"node{r.index}"
    if op == "append":
        s.append_message(("user", "assistant", "tool")[a % 3], f"m{step}", {"w": r.index})
    elif op == "start_call":
        call_id = f"c{a}-{r.index}"
        if s.tool_call(call_id) is None:
            s.start_tool_call(call_id, "search", {"q": step}, started_by=node)
    elif op in ("finish_call", "fail_call"):
        pending = s.pending_tool_calls()
        if pending:
            call = pending[a % len(pending)]
            if op == "finish_call":
                s.finish_tool_call(call.call_id, {"hits": b, "step": step}, by=node)
            else:
                s.fail_tool_call(call.call_id, f"error {step}", by=node)
    elif op == "set_memory":
        s.set_memory(f"k{a}", {"v": step, "w": r.index} if b % 2 else [step, b])
    elif op == "delete_memory":
        s.delete_memory(f"k{a}")
    elif op == "add_rag":
        s.add_rag(f"doc {step}", source=f"src{a}", score=b / 4)
    elif op == "set_cursor":
        s.set_cursor(step, f"label{a}")
    elif op == "cluster_set":
        key, value = [
            ("flags.beta", bool(b % 2)),
            ("slo.p99_ms", 100 + step + b / 2),
            ("prompt.version", f"v{step}"),
            ("tools.search", f"https://tools{b}.test/search"),
            ("model.temperature", b / 10),
        ][a % 5]
        version = r.cluster.set(key, value, by=node)
        log["cluster"].append((key, version, node, value))
    elif op == "claim":
        workload = f"session/w{a % 3}"
        epoch = r.ownership.epoch_of(workload) + 1 + b % 2
        try:
            r.ownership.claim(workload, node, epoch)
        except LocalError:  # pragma: no cover - epoch is always above the local one
            raise
        log["claims"].append((workload, epoch, node))


def _exchange(a: Replica, b: Replica) -> None:
    for doc_id in DOC_IDS:
        da, db = a.docs[doc_id], b.docs[doc_id]
        to_b = da.get_update(db.get_state())
        to_a = db.get_update(da.get_state())
        db.apply_update(to_b)
        da.apply_update(to_a)


op_st = st.tuples(
    st.integers(0, WRITERS - 1),
    st.sampled_from(OPS),
    st.integers(0, 5),
    st.integers(0, 7),
)


@given(ops=st.lists(op_st, min_size=1, max_size=40), seed=st.integers(0, 2**32 - 1))
@settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
def test_replicas_converge_after_loss_duplication_and_reordering(ops, seed):
    rng = random.Random(seed)
    replicas = _make_replicas()
    log: dict[str, list] = {"cluster": [], "claims": []}
    in_flight: list[tuple[int, str, bytes]] = []  # (destination, doc id, update)

    for step, (writer, op, a, b) in enumerate(ops):
        r = replicas[writer]
        r.capturing = True
        try:
            _apply_op(r, op, a, b, step, log)
        finally:
            r.capturing = False
        for doc_id, update in r.outbox:
            for dest in range(WRITERS):
                if dest == writer:
                    continue
                roll = rng.random()
                if roll < 0.2:
                    continue  # lost
                copies = 2 if roll > 0.85 else 1  # duplicated
                in_flight.extend([(dest, doc_id, update)] * copies)
        r.outbox.clear()
        # Deliver a random part of what is in flight, in random order.
        rng.shuffle(in_flight)
        cut = rng.randrange(len(in_flight) + 1)
        for dest, doc_id, update in in_flight[:cut]:
            replicas[dest].docs[doc_id].apply_update(update)
        del in_flight[:cut]

    for dest, doc_id, update in in_flight:
        if rng.random() < 0.5:
            replicas[dest].docs[doc_id].apply_update(update)

    for i in range(WRITERS):
        for j in range(i + 1, WRITERS):
            _exchange(replicas[i], replicas[j])

    first = replicas[0]
    expected = first.contents()
    for doc_id in DOC_IDS:
        validate_document(doc_id, first.docs[doc_id])
        for other in replicas[1:]:
            assert fingerprint(other.docs[doc_id]) == fingerprint(first.docs[doc_id]), (
                f"seed={seed} doc={doc_id}"
            )
            assert VersionVector.from_doc(other.docs[doc_id]) == VersionVector.from_doc(
                first.docs[doc_id]
            ), f"seed={seed} doc={doc_id}"
    for other in replicas[1:]:
        assert other.contents() == expected, f"seed={seed}"

    # The highest claim and the highest cluster write ever made are what everyone reads.
    best_claim: dict[str, tuple[int, str]] = {}
    for workload, epoch, node in log["claims"]:
        best_claim[workload] = max(best_claim.get(workload, (0, "")), (epoch, node))
    assert {w: (c["epoch"], c["owner"]) for w, c in expected["ownership"].items()} == best_claim, (
        f"seed={seed}"
    )
    best_set: dict[str, tuple[int, str, object]] = {}
    for key, version, node, value in log["cluster"]:
        if key not in best_set or (version, node) > best_set[key][:2]:
            best_set[key] = (version, node, value)
    config = expected["cluster"]["config"]
    assert {k: (v["version"], v["by"]) for k, v in config.items()} == {
        k: v[:2] for k, v in best_set.items()
    }, f"seed={seed}"
    for key, (_v, _n, value) in best_set.items():
        assert config[key]["value"] == value, f"seed={seed} key={key}"


@given(keys=st.lists(st.integers(0, 9), min_size=1, max_size=8, unique=True), pick=st.integers())
@settings(derandomize=True, max_examples=30, deadline=None)
def test_a_missing_delete_changes_the_fingerprint(keys, pick):
    replicas = _make_replicas()
    a, b = replicas[0], replicas[1]
    for k in keys:
        a.session.set_memory(f"k{k}", k)
    _exchange(a, b)
    assert fingerprint(a.session.doc) == fingerprint(b.session.doc)
    victim = f"k{keys[pick % len(keys)]}"
    assert a.session.delete_memory(victim)
    # The state vectors still agree (a pure delete does not advance them) ...
    assert a.session.doc.get_state() == b.session.doc.get_state()
    # ... but the fingerprint tells the replicas apart until the delete arrives.
    assert fingerprint(a.session.doc) != fingerprint(b.session.doc)
    _exchange(a, b)
    assert fingerprint(a.session.doc) == fingerprint(b.session.doc)
    assert b.session.get_memory(victim) is None
