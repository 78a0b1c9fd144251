"""`mesh.health`: the loop watchdog (a real trio loop, stalled on purpose) and the
readiness rules (plain functions of their inputs, real pycrdt state vectors)."""

from __future__ import annotations

import logging
import time

import pycrdt
import pytest
import trio

from crdt_types.errors import LocalError
from mesh.health import JOIN_GRACE, CatchUp, LoopWatchdog, assess

pytestmark = pytest.mark.timeout(60)


def _vectors(n_writes: int) -> list[bytes]:
    """State vectors of one document after 0..n_writes writes (each covers the previous)."""
    doc = pycrdt.Doc(client_id=7)
    text = doc.get("t", type=pycrdt.Text)
    out = [doc.get_state()]
    for i in range(n_writes):
        text += str(i)
        out.append(doc.get_state())
    return out


SV = _vectors(3)


# --- liveness ------------------------------------------------------------------------------


async def test_watchdog_reports_a_blocking_stall_and_recovers(caplog):
    dog = LoopWatchdog(interval=0.05, threshold=0.3)
    caplog.set_level(logging.WARNING, logger="statemesh.health")
    async with trio.open_nursery() as nursery:
        await nursery.start(dog.run)
        await trio.sleep(0.2)
        live, lag = dog.live()
        assert live and lag < 0.3, lag
        time.sleep(0.8)  # block the trio thread: nothing on this loop can run
        # Before the watchdog task runs again, the tick's age already tells the stall.
        live, lag = dog.live()
        assert not live and lag >= 0.6, lag
        await trio.sleep(0)  # let the watchdog measure the stall it just lived through
        await trio.sleep(0.1)
        assert dog.max_lag >= 0.6 and dog.stalls >= 1
        await trio.sleep(0.3)
        assert dog.live()[0], dog.lag()
        nursery.cancel_scope.cancel()
    # The thread saw the stall while it happened, and said where the trio thread was.
    stalls = [r for r in caplog.records if "event loop stalled" in r.getMessage()]
    assert len(stalls) == 1
    assert "test_watchdog_reports_a_blocking_stall" in stalls[0].getMessage()


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "1", True, None])
def test_watchdog_refuses_bad_timings(bad):
    with pytest.raises(LocalError):
        LoopWatchdog(interval=bad)
    with pytest.raises(LocalError):
        LoopWatchdog(threshold=bad)


# --- catch-up -------------------------------------------------------------------------------


def test_catch_up_tracks_lag_per_peer_until_covered():
    ours = {"d": SV[1]}
    cu = CatchUp()
    cu.update(10.0, {"p": {"d": SV[3]}, "q": {"d": SV[1]}}, ours.get, ["p", "q"], exchanged=True)
    assert cu.behind == {"p": ["d"]} and not cu.caught_up_once
    cu.update(12.5, {"p": {"d": SV[3]}, "q": {"d": SV[1]}}, ours.get, ["p", "q"], exchanged=True)
    assert cu.peer_lag(12.5) == {"p": 2.5}  # measured from when we first saw it
    ours["d"] = SV[3]
    cu.update(13.0, {"p": {"d": SV[3]}}, ours.get, ["p", "q"], exchanged=True)
    assert cu.behind == {} and cu.peer_lag(13.0) == {} and cu.caught_up_once


def test_catch_up_needs_an_exchange_and_ignores_peers_not_live():
    cu = CatchUp()
    cu.update(1.0, {}, {}.get, ["p"], exchanged=False)
    assert not cu.caught_up_once  # nothing advertised yet says nothing about what peers hold
    cu.update(2.0, {"gone": {"d": SV[3]}}, {"d": SV[0]}.get, ["p"], exchanged=True)
    assert cu.behind == {} and cu.caught_up_once  # a dead peer's vectors do not count


def test_catch_up_treats_an_unreadable_vector_as_covered_and_keeps_its_cache_bounded():
    cu = CatchUp()
    cu.update(1.0, {"p": {"d": b"\xff\xff\xff"}}, {"d": SV[0]}.get, ["p"], exchanged=True)
    assert cu.behind == {}
    docs = {f"d{i}": SV[2] for i in range(50)}
    cu.update(2.0, {"p": docs}, lambda d: SV[2], ["p"], exchanged=True)
    assert len(cu._cache) == 50
    cu.update(3.0, {"p": {"d0": SV[2]}}, lambda d: SV[2], ["p"], exchanged=True)
    assert len(cu._cache) == 1


def test_a_document_nobody_serves_stops_counting_as_behind_after_unserved_after():
    # A keyed peer advertises documents that do not exist: we hold nothing of them and
    # nobody sends them. Behind at first (a real one arrives within a few rounds)...
    cu = CatchUp(unserved_after=5.0)
    made_up = {f"made-up/{i}": SV[2] for i in range(100)}
    cu.update(2.0, {"p": {"d": SV[2]}}, {"d": SV[2]}.get, ["p"], exchanged=True)
    assert cu.caught_up_once
    ours = {"d": SV[2]}

    def lookup(doc_id: str) -> bytes:
        return ours.get(doc_id, SV[0])

    cu.update(10.0, {"p": {"d": SV[2], **made_up}}, lookup, ["p"], exchanged=True)
    assert len(cu.behind["p"]) == 100
    cu.update(14.9, {"p": {"d": SV[2], **made_up}}, lookup, ["p"], exchanged=True)
    assert len(cu.behind["p"]) == 100 and not _assess(cu, now=14.9).ready
    # ...and no longer once nobody served them for `unserved_after` seconds.
    cu.update(15.0, {"p": {"d": SV[2], **made_up}}, lookup, ["p"], exchanged=True)
    assert cu.behind == {} and cu.unserved == 100 and _assess(cu, now=15.0).ready
    # A document we hold part of still counts, however long it lags: peers can serve it.
    cu.update(16.0, {"p": {"d": SV[3], **made_up}}, lookup, ["p"], exchanged=True)
    assert cu.behind == {"p": ["d"]}
    cu.update(30.0, {"p": {"d": SV[3], **made_up}}, lookup, ["p"], exchanged=True)
    assert cu.behind == {"p": ["d"]} and not _assess(cu, now=30.0).ready
    # The clock of a document no longer advertised is forgotten (bounded).
    cu.update(31.0, {"p": {"d": SV[3]}}, lookup, ["p"], exchanged=True)
    assert cu._unheld_since == {}


def test_a_strict_first_catch_up_still_waits_for_an_exchange_despite_unserved_documents():
    cu = CatchUp(unserved_after=1.0)
    cu.update(1.0, {"p": {"x": SV[2]}}, lambda d: SV[0], ["p"], exchanged=False)
    cu.update(5.0, {"p": {"x": SV[2]}}, lambda d: SV[0], ["p"], exchanged=False)
    assert cu.behind == {} and not cu.caught_up_once
    assert _assess(cu, now=5.0).reasons[0].startswith("syncing")


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "5", None])
def test_catch_up_refuses_a_bad_unserved_after(bad):
    with pytest.raises(LocalError):
        CatchUp(unserved_after=bad)


# --- assess -----------------------------------------------------------------------------------


def _assess(cu: CatchUp, now: float = 100.0, **kw):
    args = dict(ready_lag=2.0, started_at=0.0, expects_peers=True, live_peers=1)
    args.update(kw)
    return assess(now, cu, **args)


def test_a_node_alone_is_ready_at_once_without_peers_to_expect_and_after_the_grace_with():
    cu = CatchUp()
    assert _assess(cu, now=0.1, expects_peers=False, live_peers=0).ready
    joining = _assess(cu, now=0.1, live_peers=0)
    assert not joining.ready and joining.reasons[0].startswith("joining")
    assert _assess(cu, now=JOIN_GRACE + 0.1, live_peers=0).ready


def test_first_catch_up_is_strict_then_lag_within_ready_lag_is_tolerated():
    cu = CatchUp()
    cu.update(1.0, {}, {}.get, ["p"], exchanged=False)
    r = _assess(cu, now=1.0)
    assert not r.ready and r.reasons[0].startswith("syncing")
    cu.update(1.5, {"p": {"d": SV[2]}}, {"d": SV[0]}.get, ["p"], exchanged=True)
    r = _assess(cu, now=1.5, standby_behind=[("s1", "p")])
    assert not r.ready and r.reasons[0].startswith("catching up: 1 documents behind p")
    assert any(
        "standby" in x for x in r.reasons
    )  # a standby is not ready before it could take over
    cu.update(2.0, {"p": {"d": SV[2]}}, {"d": SV[2]}.get, ["p"], exchanged=True)
    assert _assess(cu, now=2.0).ready
    # Later, behind again: ready while within ready_lag, not ready beyond it.
    cu.update(10.0, {"p": {"d": SV[3]}}, {"d": SV[2]}.get, ["p"], exchanged=True)
    assert _assess(cu, now=11.0).ready
    late = _assess(cu, now=12.5)
    assert not late.ready and late.reasons[0].startswith("lagging") and late.lag == 2.5
    assert late.to_dict()["peer_lag_seconds"] == {"p": 2.5}


def test_store_errors_and_leaving_make_a_node_not_ready_with_the_reason():
    cu = CatchUp()
    cu.update(1.0, {}, {}.get, [], exchanged=False)
    r = _assess(cu, live_peers=0, store_error="DiskFull: disk full at /x")
    assert not r.ready and r.reasons == ("store: DiskFull: disk full at /x",)
    r = _assess(cu, live_peers=0, leaving=True)
    assert not r.ready and r.reasons[0].startswith("leaving")


def test_damaged_documents_make_a_node_not_ready_naming_each_one():
    cu = CatchUp()
    cu.update(1.0, {}, {}.get, [], exchanged=False)
    damaged = ["session/s at record 4: record fails its checksum", "ownership: unreadable"]
    r = _assess(cu, live_peers=0, expects_peers=False, damaged=damaged)
    assert not r.ready and len(r.reasons) == 1
    assert r.reasons[0].startswith("damaged: 2 document(s)")
    assert "session/s at record 4" in r.reasons[0] and "ownership" in r.reasons[0]
    assert _assess(cu, live_peers=0, expects_peers=False, damaged=[]).ready


@pytest.mark.parametrize("bad", [0, -2.0, float("nan"), "2", None])
def test_assess_refuses_a_bad_ready_lag(bad):
    with pytest.raises(LocalError):
        _assess(CatchUp(), ready_lag=bad)
