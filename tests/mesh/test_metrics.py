"""Tests for mesh.metrics: the exposition parses, every family has its name and type."""

from __future__ import annotations

import random

import pytest
from prometheus_client.parser import text_string_to_metric_families

from crdt_types.errors import BadFrame, LocalError
from gossip.messages import MEMBER_STATES, Ack, DocUpdate, MemberUpdate, Ping
from mesh.metrics import CONTENT_TYPE, Metrics, frame_type, message_type

SEED = 4242

# family name (as the parser reports it: counters without _total) -> (type, label names)
REQUIRED = {
    "statemesh_info": ("gauge", {"node", "cluster", "version"}),
    "statemesh_members": ("gauge", {"state"}),
    "statemesh_gossip_frames_sent": ("counter", {"type"}),
    "statemesh_gossip_sent_bytes": ("counter", {"type"}),
    "statemesh_gossip_frames_received": ("counter", {"type"}),
    "statemesh_gossip_received_bytes": ("counter", {"type"}),
    "statemesh_gossip_messages_sent": ("counter", {"type"}),
    "statemesh_gossip_messages_received": ("counter", {"type"}),
    "statemesh_gossip_frames_rejected": ("counter", {"reason"}),
    "statemesh_replication_lag_seconds": ("gauge", set()),
    "statemesh_replication_behind_documents": ("gauge", set()),
    "statemesh_replication_peer_lag_seconds": ("gauge", {"peer"}),
    "statemesh_commit_latency_seconds": ("histogram", {"level"}),
    "statemesh_commit_timeouts": ("counter", {"level"}),
    "statemesh_store_fsync_seconds": ("histogram", set()),
    "statemesh_store_updates": ("counter", set()),
    "statemesh_store_written_bytes": ("counter", set()),
    "statemesh_documents": ("gauge", set()),
    "statemesh_sessions_owned": ("gauge", set()),
    "statemesh_takeovers": ("counter", set()),
    "statemesh_fencings": ("counter", set()),
    "statemesh_event_loop_lag_seconds": ("gauge", set()),
    "statemesh_event_loop_lag_max_seconds": ("gauge", set()),
    "statemesh_event_loop_stalls": ("counter", set()),
    "statemesh_ready": ("gauge", set()),
    "statemesh_config_changes": ("counter", set()),
    "statemesh_secrets": ("gauge", set()),
}


def _families(metrics: Metrics) -> dict:
    return {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}


def _value(metrics: Metrics, sample_name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {sample_name} {labels}")


def _exercise(metrics: Metrics, rng: random.Random) -> None:
    metrics.members({"alive": 3, "suspect": 1})
    metrics.envelope_sent((MemberUpdate("n2", "127.0.0.1:1", 1, "alive", "n2"), Ping(1, "n2")), 120)
    metrics.envelope_received((Ack(1),), 40)
    metrics.frame_rejected("auth")
    metrics.replication_lag(0.25, behind_documents=2)
    metrics.peer_lag("n2", 0.25)
    for _ in range(20):
        metrics.committed(rng.choice([0, 1, 2, "all"]), rng.random() / 10)
    metrics.commit_timed_out(2)
    metrics.store_synced(0.002, updates=10, nbytes=800)
    metrics.documents(5)
    metrics.sessions_owned(2)
    metrics.took_over(2)
    metrics.fenced()
    metrics.loop_lag(0.003)
    metrics.ready(True)
    metrics.config_changed()
    metrics.secrets(1)


def test_every_required_family_parses_with_name_type_and_labels():
    rng = random.Random(SEED)
    metrics = Metrics(node="n1", cluster="prod")
    _exercise(metrics, rng)
    families = _families(metrics)
    for name, (kind, labels) in REQUIRED.items():
        assert name in families, name
        family = families[name]
        assert family.type == kind, (name, family.type)
        assert family.documentation, name
        names = {k for s in family.samples for k in s.labels} - {"le"}
        assert names == labels, (name, names)
    for name in families:
        assert name.startswith("statemesh_"), name


def test_counter_sample_names_end_in_total_and_units_are_base():
    text = Metrics("n1").render().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if family.type == "counter":
                assert s.name.endswith("_total"), s.name
        assert "_milliseconds" not in family.name and "_kilobytes" not in family.name


def test_no_created_series_are_exposed():
    metrics = Metrics("n1")
    metrics.took_over()
    metrics.committed("local", 0.01)
    assert b"_created" not in metrics.render()


def test_fresh_node_exposes_zero_series_for_every_closed_label_value():
    metrics = Metrics("n1", "c")
    for state in MEMBER_STATES:
        assert _value(metrics, "statemesh_members", state=state) == 0
    for reason in BadFrame.REASONS:
        assert _value(metrics, "statemesh_gossip_frames_rejected_total", reason=reason) == 0
    for t in ("ping", "ack", "doc_update", "doc_diff", "replica_ack", "member_update"):
        assert _value(metrics, "statemesh_gossip_frames_sent_total", type=t) == 0
    assert _value(metrics, "statemesh_info", node="n1", cluster="c") == 1


def test_updates_land_in_the_right_series():
    rng = random.Random(SEED)
    metrics = Metrics("n1")
    _exercise(metrics, rng)
    assert _value(metrics, "statemesh_members", state="alive") == 3
    assert _value(metrics, "statemesh_members", state="dead") == 0
    # The piggybacked member update does not name the frame; the ping does.
    assert _value(metrics, "statemesh_gossip_frames_sent_total", type="ping") == 1
    assert _value(metrics, "statemesh_gossip_sent_bytes_total", type="ping") == 120
    assert _value(metrics, "statemesh_gossip_messages_sent_total", type="member_update") == 1
    assert _value(metrics, "statemesh_gossip_frames_received_total", type="ack") == 1
    assert _value(metrics, "statemesh_gossip_received_bytes_total", type="ack") == 40
    assert _value(metrics, "statemesh_gossip_frames_rejected_total", reason="auth") == 1
    assert _value(metrics, "statemesh_replication_lag_seconds") == 0.25
    assert _value(metrics, "statemesh_replication_peer_lag_seconds", peer="n2") == 0.25
    total = sum(
        _value(metrics, "statemesh_commit_latency_seconds_count", level=lv)
        for lv in ("local", "1", "2", "all")
    )
    assert total == 20
    assert _value(metrics, "statemesh_commit_timeouts_total", level="2") == 1
    assert _value(metrics, "statemesh_store_fsync_seconds_count") == 1
    assert _value(metrics, "statemesh_store_updates_total") == 10
    assert _value(metrics, "statemesh_store_written_bytes_total") == 800
    assert _value(metrics, "statemesh_sessions_owned") == 2
    assert _value(metrics, "statemesh_takeovers_total") == 2
    assert _value(metrics, "statemesh_fencings_total") == 1
    assert _value(metrics, "statemesh_event_loop_lag_seconds") == 0.003
    assert _value(metrics, "statemesh_ready") == 1


def test_histogram_buckets_are_cumulative():
    metrics = Metrics("n1")
    for seconds in (0.0004, 0.003, 0.2, 40.0):
        metrics.committed("local", seconds)
    family = _families(metrics)["statemesh_commit_latency_seconds"]
    buckets = [
        (float(s.labels["le"]), s.value)
        for s in family.samples
        if s.name.endswith("_bucket") and s.labels["level"] == "local"
    ]
    counts = [v for _, v in sorted(buckets)]
    assert counts == sorted(counts)
    assert counts[-1] == 4  # +Inf holds the 40 s outlier
    assert dict(buckets)[0.0005] == 1


def test_unknown_label_values_fold_into_other():
    metrics = Metrics("n1")
    metrics.frame_sent("no_such_type", 10)
    metrics.frame_rejected("no_such_reason")
    metrics.committed(99, 0.1)
    metrics.committed("weird", 0.1)
    metrics.committed(-1, 0.1)
    assert _value(metrics, "statemesh_gossip_frames_sent_total", type="other") == 1
    assert _value(metrics, "statemesh_gossip_frames_rejected_total", reason="other") == 1
    assert _value(metrics, "statemesh_commit_latency_seconds_count", level="many") == 1
    assert _value(metrics, "statemesh_commit_latency_seconds_count", level="other") == 2
    assert "no_such" not in metrics.render().decode()


def test_frame_and_message_type_labels():
    assert message_type(DocUpdate("session/a", b"", b"", 0)) == "doc_update"
    assert message_type(object()) == "other"
    assert frame_type([]) == "empty"
    assert frame_type([MemberUpdate("n", "127.0.0.1:1", 1, "alive", "n")]) == "member_update"
    assert frame_type([MemberUpdate("n", "127.0.0.1:1", 1, "alive", "n"), Ack(3)]) == "ack"


def test_loop_lag_tracks_the_maximum_and_stalls():
    metrics = Metrics("n1")
    for lag, stalled in ((0.01, False), (0.6, True), (0.02, False)):
        metrics.loop_lag(lag, stalled=stalled)
    assert _value(metrics, "statemesh_event_loop_lag_seconds") == 0.02
    assert _value(metrics, "statemesh_event_loop_lag_max_seconds") == 0.6
    assert _value(metrics, "statemesh_event_loop_stalls_total") == 1


def test_forget_peer_removes_its_series():
    metrics = Metrics("n1")
    metrics.peer_lag("n2", 1.0)
    metrics.forget_peer("n2")
    metrics.forget_peer("never-seen")
    assert 'peer="n2"' not in metrics.render().decode()


def test_two_nodes_in_one_process_do_not_share_metrics():
    a, b = Metrics("a"), Metrics("b")
    a.took_over(3)
    assert _value(a, "statemesh_takeovers_total") == 3
    assert _value(b, "statemesh_takeovers_total") == 0
    assert "statemesh_" not in _global_exposition()


def _global_exposition() -> str:
    from prometheus_client import REGISTRY, generate_latest

    return generate_latest(REGISTRY).decode()


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("members", ({"zombie": 1},)),
        ("members", ({"alive": -1},)),
        ("members", ({"alive": 1.5},)),
        ("frame_sent", ("ping", -3)),
        ("frame_received", ("ping", True)),
        ("committed", ("local", float("nan"))),
        ("committed", ("local", "fast")),
        ("replication_lag", (float("inf"),)),
        ("store_synced", (0.1, -1)),
        ("sessions_owned", (None,)),
        ("peer_lag", ("", 1.0)),
    ],
)
def test_bad_updates_raise_and_change_nothing(call, args):
    metrics = Metrics("n1")
    before = metrics.render()
    with pytest.raises(LocalError):
        getattr(metrics, call)(*args)
    assert metrics.render() == before


def test_negative_durations_clamp_to_zero():
    metrics = Metrics("n1")
    metrics.committed("local", -0.5)  # a clock step backwards
    assert _value(metrics, "statemesh_commit_latency_seconds_sum", level="local") == 0


def test_content_type_and_repr():
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")
    assert repr(Metrics("n1")) == "Metrics(node='n1')"
