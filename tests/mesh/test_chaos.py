"""The chaos checker on synthetic histories, the fault schedule, and the agent in process.

The checker must detect each thing the promise forbids (a lost acknowledged write at each
level, divergence, split brain, a false takeover) and must not count what the promise
allows (a local ack whose writer's disk was lost, a takeover of a killed or cut-off
owner). The schedule is a pure function of its seed and replays through JSON.
"""

from __future__ import annotations

import json
import random

import pytest

from crdt_types.errors import LocalError
from mesh.chaos import (
    FAULT_KINDS,
    Ack,
    Fault,
    FaultWindow,
    OwnerChange,
    Replica,
    check,
    dump_schedule,
    load_schedule,
    plan,
)
from mesh.chaos.campaign import Campaign
from mesh.chaos.checker import FaultSpan, Fencing, takeover_rto_ms
from mesh.chaos.plot import _Labels, _pyplot, draw_campaign, verdict_text
from mesh.chaos.schedule import impaired

NODES = ["p0", "p1", "p2"]


def replicas(tokens: dict[str, set[str]], owner="p0", epoch=1, fp=None, nodes=NODES, sid="s"):
    """Every node's view of session `sid`: the tokens it holds, one owner, a fingerprint."""
    return [
        Replica(n, sid, owner, epoch, fp or f"fp{sorted(tokens[n])}", frozenset(tokens[n]))
        for n in nodes
    ]


def ack(token: str, level=1, writer="p0", t=1.0, sid="s") -> Ack:
    return Ack(sid, token, level, writer, t)


# --- acked writes -----------------------------------------------------------------------


def test_every_ack_present_everywhere_is_clean():
    held = {n: {"a", "b"} for n in NODES}
    v = check([ack("a", 0), ack("b", "all")], [], [], replicas(held), NODES)
    assert v.ok and v.acked_writes == 2 and v.acked_lost == 0 and v.converged
    assert v.by_level == {"local": 1, "all": 1}


@pytest.mark.parametrize("level", [0, 1, 2, "all"])
def test_a_lost_write_is_detected_at_every_level(level):
    held = {"p0": {"a"}, "p1": {"a"}, "p2": set()}
    v = check([ack("a", level)], [], [], replicas(held, fp="same"), NODES)
    assert v.acked_lost == 1 and not v.ok
    assert v.lost == (ack("a", level),)


def test_a_write_missing_on_every_survivor_is_lost():
    held = {n: set() for n in NODES}
    v = check([ack("a", 2)], [], [], replicas(held), NODES)
    assert v.acked_lost == 1


def test_a_session_missing_on_a_survivor_loses_its_acks_and_diverges():
    reps = [r for r in replicas({n: {"a"} for n in NODES}) if r.node != "p2"]
    v = check([ack("a", 1)], [], [], reps, NODES)
    assert v.acked_lost == 1 and not v.converged and v.divergent == ("s",)
    assert v.split_brain_after_heal == 1


def test_a_local_ack_is_promised_only_while_its_writers_disk_survives():
    held = {n: set() for n in NODES}
    v = check([ack("a", 0, writer="p0")], [], [], replicas(held), NODES, lost_disks=["p0"])
    assert v.acked_lost == 0
    # ...but replicas=1 must survive the loss of the writer's disk.
    v = check([ack("b", 1, writer="p0")], [], [], replicas(held), NODES, lost_disks=["p0"])
    assert v.acked_lost == 1


# --- convergence and split brain --------------------------------------------------------


def test_different_fingerprints_are_not_converged():
    reps = replicas({n: {"a"} for n in NODES})
    reps[1] = Replica("p1", "s", "p0", 1, "other", frozenset({"a"}))
    v = check([ack("a")], [], [], reps, NODES)
    assert not v.converged and v.divergent == ("s",) and v.acked_lost == 0


def test_two_owners_after_heal_is_split_brain():
    reps = replicas({n: {"a"} for n in NODES})
    reps[2] = Replica("p2", "s", "p2", 2, reps[2].fingerprint, reps[2].tokens)
    v = check([], [], [], reps, NODES)
    assert v.split_brain_after_heal == 1 and v.split == ("s",)


def test_an_owner_below_the_highest_epoch_seen_is_split_brain():
    reps = replicas({n: set() for n in NODES}, owner="p0", epoch=2)
    change = OwnerChange("s", "p1", 3, "p0", 5.0)
    window = FaultWindow("p0", "kill", 4.0, 6.0)
    v = check([], [change], [window], reps, NODES)
    assert v.split_brain_after_heal == 1 and v.false_takeovers == 0


def test_an_owner_that_is_not_a_survivor_is_split_brain():
    reps = replicas({n: set() for n in ["p0", "p1"]}, owner="p2", nodes=["p0", "p1"])
    v = check([], [], [], reps, ["p0", "p1"])
    assert v.split_brain_after_heal == 1


# --- takeovers ----------------------------------------------------------------------------


def test_a_takeover_of_a_healthy_owner_is_false():
    change = OwnerChange("s", "p1", 2, "p0", 30.0)
    # p0 was impaired long before (outside the grace window) and p2 now: neither counts.
    windows = [FaultWindow("p0", "kill", 1.0, 5.0), FaultWindow("p2", "stop", 29.0, 31.0)]
    reps = replicas({n: set() for n in NODES}, owner="p1", epoch=2)
    v = check([], [change], windows, reps, NODES, grace=10.0)
    assert v.false_takeovers == 1 and v.false == (change,) and not v.ok


@pytest.mark.parametrize("kind", ["kill", "stop", "partition", "oneway", "loss", "leave"])
def test_a_takeover_of_an_impaired_owner_is_justified(kind):
    change = OwnerChange("s", "p1", 2, "p0", 12.0)
    windows = [FaultWindow("p0", kind, 10.0, 11.0)]
    reps = replicas({n: set() for n in NODES}, owner="p1", epoch=2)
    v = check([], [change], windows, reps, NODES, grace=5.0)
    assert v.false_takeovers == 0 and v.ok


def test_rto_is_the_time_from_kill_to_the_takeover_of_the_killed_owner():
    changes = [OwnerChange("s", "p1", 2, "p0", 10.75), OwnerChange("t", "p2", 2, "p1", 20.2)]
    windows = [FaultWindow("p0", "kill", 10.0, 13.0), FaultWindow("p1", "stop", 20.0, 21.0)]
    v = check([], changes, windows, [], [])
    assert v.max_rto_ms == pytest.approx(750.0)
    # A takeover long after a freeze ended was not caused by it.
    late = [OwnerChange("t", "p2", 2, "p1", 30.0)]
    assert check([], late, windows[1:], [], []).max_rto_ms is None
    assert check([], [], windows, [], []).max_rto_ms is None


# --- schedule -------------------------------------------------------------------------------


def test_plan_is_a_function_of_the_seed_and_covers_every_kind():
    a = plan(random.Random(5), 5, 120.0, disk_host=3)
    b = plan(random.Random(5), 5, 120.0, disk_host=3)
    assert a == b, "seed 5"
    assert {f.kind for f in a} == set(FAULT_KINDS)
    assert all(f.hosts == (3,) for f in a if f.kind == "disk_full")
    for x, y in zip(a, a[1:], strict=False):
        assert y.at >= x.end, (x, y)
    assert a[-1].end <= 120.0
    assert plan(random.Random(6), 5, 120.0) != a


def test_plan_is_bounded_in_count_and_time():
    assert len(plan(random.Random(1), 3, 10_000.0, max_faults=7)) == 7
    assert plan(random.Random(1), 3, 2.0) == []


def test_partitions_leave_a_majority_and_impair_only_the_minority():
    for seed in range(50):
        for f in plan(random.Random(seed), 5, 300.0):
            if f.kind == "partition":
                small, big = f.sides
                assert len(small) <= 2 and len(big) >= 3, (seed, f)
                assert impaired(f, 5) == set(small), (seed, f)
            elif f.kind == "oneway":
                lone = set(f.hosts)
                assert impaired(f, 5) == lone, (seed, f)
            elif f.kind == "disk_full":
                assert impaired(f, 5) == set(), (seed, f)
            else:
                assert impaired(f, 5) == set(f.hosts), (seed, f)


def test_schedule_round_trips_through_json():
    faults = plan(random.Random(9), 5, 200.0)
    text = dump_schedule(faults, seed=9, hosts=5)
    assert json.loads(text)["seed"] == 9
    assert load_schedule(text, 5) == faults


@pytest.mark.parametrize(
    "text, message",
    [
        ("not json", "not JSON"),
        ("[]", "list 'faults'"),
        ('{"faults": [1]}', "not an object"),
        ('{"faults": [{"kind": "kill"}]}', "KeyError"),
        ('{"faults": [{"at": 1, "kind": "nuke", "hosts": [0], "duration": 1}]}', "unknown fault"),
        ('{"faults": [{"at": 1, "kind": "kill", "hosts": [7], "duration": 1}]}', "no host 7"),
        ('{"faults": [{"at": 1, "kind": "kill", "hosts": [], "duration": 1}]}', "names no host"),
        ('{"faults": [{"at": 1, "kind": "kill", "hosts": [0], "duration": 0}]}', "duration > 0"),
        ('{"faults": [{"at": 1, "kind": "oneway", "hosts": [0], "duration": 1}]}', "two sides"),
        ('{"faults": [{"at": 1, "kind": "loss", "hosts": [0], "duration": 1}]}', "percent"),
        (
            '{"faults": [{"at": 1, "kind": "kill", "hosts": [0], "duration": 5},'
            ' {"at": 2, "kind": "stop", "hosts": [1], "duration": 1}]}',
            "overlap",
        ),
    ],
)
def test_bad_schedules_are_refused_with_a_clear_error(text, message):
    with pytest.raises(LocalError, match=message):
        load_schedule(text, 3)


def test_bad_plan_arguments_are_refused():
    with pytest.raises(LocalError, match="at least 3 hosts"):
        plan(random.Random(0), 2, 60.0)
    with pytest.raises(LocalError, match="unknown fault kinds"):
        plan(random.Random(0), 3, 60.0, kinds=["meteor"])


def test_fault_end_is_start_plus_duration():
    assert Fault(2.0, "kill", (0,), 1.5).end == 3.5


# --- the timeline plot ---------------------------------------------------------------------

T0 = 1000.0  # the campaign's start on the monotonic clock; the plot counts from it


def _history():
    """A small campaign's records: every fault kind, takeovers (one false), a fencing."""
    spans = [
        FaultSpan(kind, (f"p{i % 3}",), T0 + 3 + 6 * i, T0 + 5 + 6 * i)
        for i, kind in enumerate(FAULT_KINDS)
    ]
    spans[2] = FaultSpan("partition", ("p2",), T0 + 15, T0 + 17, "p2 | p0,p1")
    windows = [FaultWindow(s.nodes[0], s.kind, s.start, s.end) for s in spans]
    changes = [
        # Both sessions of killed p0 taken by p1 (one RTO label for the pair), one of
        # stopped p1 by p2, and one of p0 while it was healthy: false.
        OwnerChange("s0a", "p1", 2, "p0", T0 + 4.2),
        OwnerChange("s0b", "p1", 2, "p0", T0 + 4.3),
        OwnerChange("s1a", "p2", 2, "p1", T0 + 10.9),
        OwnerChange("s0a", "p2", 3, "p1", T0 + 50.0),
    ]
    fencings = [Fencing("p1", "s1a", "p2", 2, T0 + 12.0)]
    levels = (0, 1, 2, "all")
    acks = [ack(f"k{i}", level=levels[i % 4], t=T0 + i * 0.1) for i in range(400)]
    return spans, windows, changes, fencings, acks


def test_the_plot_draws_every_fault_takeover_fencing_and_ack(tmp_path):
    spans, windows, changes, fencings, acks = _history()
    v = check(acks, changes, windows, [], [])
    assert v.false == (changes[3],)  # the checker's verdict is what the plot paints red
    path = tmp_path / "campaign.png"
    drawn = draw_campaign(
        path, nodes=NODES, t0=T0, seconds=45.0, spans=spans, windows=windows,
        changes=changes, fencings=fencings, acks=acks, false=v.false, title="seed 1",
    )  # fmt: skip
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert drawn.faults == dict.fromkeys(FAULT_KINDS, 1)
    assert drawn.takeovers == 4 and drawn.false_takeovers == 1 and drawn.fencings == 1
    # p0's pair shares one label; p1's freeze explains p2's takeover; the false one has none.
    assert drawn.rto_labels == 2
    assert drawn.fault_labels == len(spans)  # a sparse campaign has room for every label
    assert drawn.acks == {"local": 100, "replicas=1": 100, "replicas=2": 100, "all": 100}


def test_the_plot_of_an_empty_history_is_still_a_picture(tmp_path):
    path = tmp_path / "empty.png"
    drawn = draw_campaign(
        path, nodes=NODES, t0=T0, seconds=5.0, spans=[], windows=[], changes=[],
        fencings=[], acks=[],
    )  # fmt: skip
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert drawn.takeovers == 0 and sum(drawn.faults.values()) == 0
    assert sum(drawn.acks.values()) == 0


def test_the_campaign_plots_what_its_agents_reported(tmp_path):
    """Agent lines go through the campaign's record into the picture (no processes)."""
    c = Campaign(3, 30.0, seed=7)
    c.t0 = T0
    c.spans.append(FaultSpan("kill", ("p0",), T0 + 3, T0 + 5))
    c.windows.append(FaultWindow("p0", "kill", T0 + 3, T0 + 5))
    for name, ev in [
        ("p1", {"event": "taken", "session": "s0a", "epoch": 2, "previous": "p0", "t": T0 + 4}),
        ("p0", {"event": "fenced", "session": "s0a", "owner": "p1", "epoch": 2, "t": T0 + 6}),
        ("p1", {"event": "acked", "session": "s1a", "token": "x", "level": 1, "t": T0 + 7}),
    ]:
        c._handle(name, ev)
    assert c.fencings == [Fencing("p0", "s0a", "p1", 2, T0 + 6)]
    drawn = c.plot(tmp_path / "c.png", {"ok": True})
    assert (drawn.takeovers, drawn.fencings, drawn.rto_labels) == (1, 1, 1)
    assert drawn.faults["kill"] == 1 and drawn.acks["replicas=1"] == 1
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_a_label_that_would_print_over_another_or_past_the_axes_is_left_out():
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
    try:
        ax.set_xlim(0, 100)
        labels = _Labels(ax, fig.canvas.get_renderer())
        assert labels.place(lambda: ax.text(10, 0.5, "RTO 1.0 s"))
        assert not labels.place(lambda: ax.text(10.5, 0.5, "kill"))  # on top of the first
        assert labels.place(lambda: ax.text(50, 0.5, "kill"))  # room elsewhere on the row
        assert labels.place(lambda: ax.text(50, 0.1, "kill"))  # another row, same x
        assert not labels.place(lambda: ax.text(97, 0.5, "partition p0 | p1,p2"))  # legend
        assert labels.place(lambda: ax.text(10.5, 0.5, "FALSE"), always=True)
        # What was left out is not in the picture at all.
        assert sorted(x.get_text() for x in ax.texts) == ["FALSE", "RTO 1.0 s", "kill", "kill"]
    finally:
        plt.close(fig)


def _dense(seed: int, hosts: int = 5, seconds: float = 600.0):
    """A ten-minute schedule's spans and windows, two sessions taken per kill or stop."""
    faults = plan(random.Random(seed), hosts, seconds)
    spans = [
        FaultSpan(f.kind, tuple(f"p{h}" for h in f.hosts), T0 + f.at, T0 + f.end) for f in faults
    ]
    windows = [
        FaultWindow(f"p{h}", f.kind, T0 + f.at, T0 + f.end)
        for f in faults
        for h in impaired(f, hosts)
    ]
    changes = [
        OwnerChange(f"s{i}{s}", f"p{(f.hosts[0] + 1) % hosts}", 2 + i, f"p{f.hosts[0]}", t)
        for i, f in enumerate(faults)
        if f.kind in ("kill", "stop")
        for s, t in (("a", T0 + f.at + 0.8), ("b", T0 + f.at + 0.9))
    ]
    return spans, windows, changes


@pytest.mark.parametrize("seed", [10, 11])
def test_a_dense_campaign_draws_every_fault_and_thins_only_the_labels(tmp_path, seed):
    spans, windows, changes = _dense(seed)
    nodes = [f"p{i}" for i in range(5)]
    drawn = draw_campaign(
        tmp_path / "dense.png", nodes=nodes, t0=T0, seconds=600.0, spans=spans,
        windows=windows, changes=changes, fencings=[], acks=[],
    )  # fmt: skip
    assert len(spans) > 80, seed  # a ten-minute run's density (one fault every ~7 s)
    assert sum(drawn.faults.values()) == len(spans), seed
    assert drawn.takeovers == len(changes), seed
    assert 0 < drawn.fault_labels < len(spans), (seed, drawn.fault_labels)
    # A pair taken together gets one label at most, so fewer than half are labelled.
    assert 0 < drawn.rto_labels <= len(changes) // 2, (seed, drawn.rto_labels)


def test_a_false_takeover_is_labelled_before_the_rto_labels_it_would_crowd(tmp_path):
    windows = [FaultWindow("p0", "kill", T0 + 9.0, T0 + 12.0)]
    changes = [
        OwnerChange("s1", "p1", 3, "p2", T0 + 10.0),  # p2 was healthy: false
        OwnerChange("s0", "p1", 2, "p0", T0 + 9.9),  # the kill's takeover, just before it
    ]
    drawn = draw_campaign(
        tmp_path / "false.png", nodes=NODES, t0=T0, seconds=20.0, spans=[], windows=windows,
        changes=changes, fencings=[], acks=[], false=[changes[0]],
    )  # fmt: skip
    assert drawn.false_takeovers == 1 and drawn.takeovers == 2
    assert drawn.rto_labels == 0  # it would print over "FALSE takeover"


def test_the_rto_of_one_takeover_follows_the_checkers_rule():
    windows = [FaultWindow("p0", "kill", 10.0, 13.0), FaultWindow("p1", "partition", 20, 22)]
    assert takeover_rto_ms(OwnerChange("s", "p1", 2, "p0", 10.75), windows) == 750.0
    assert takeover_rto_ms(OwnerChange("s", "p1", 2, "p0", 15.5), windows) is None
    # A partition is a justification, not a failure the RTO measures.
    assert takeover_rto_ms(OwnerChange("s", "p2", 2, "p1", 21.0), windows) is None


@pytest.mark.parametrize(
    "result, text",
    [
        ({"ok": True}, "ok"),
        ({"ok": False, "acked_lost": 2, "converged": True}, "FAILED: 2 acked writes lost"),
        ({"ok": False, "converged": False, "false_takeovers": 1},
         "FAILED: not converged, 1 false takeovers"),
        ({"ok": False, "converged": True, "split_brain_after_heal": 3}, "FAILED: 3 split brain"),
    ],
)  # fmt: skip
def test_the_title_names_the_promises_that_failed(result, text):
    assert verdict_text(result) == text


# --- the agent process, on loopback (no root needed) ------------------------------------


class _Proc:
    """An agent process and a thread that queues its JSON lines."""

    def __init__(self, argv: list[str], log) -> None:
        import queue
        import subprocess
        import threading

        self.events: queue.Queue = queue.Queue()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.seen: list[dict] = []

    def _read(self) -> None:
        for raw in self.proc.stdout:
            try:
                self.events.put(json.loads(raw))
            except ValueError:
                continue

    def send(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def wait_for(self, match, timeout: float) -> dict:
        import queue
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ev = self.events.get(timeout=0.1)
            except queue.Empty:
                continue
            self.seen.append(ev)
            if match(ev):
                return ev
        raise AssertionError(f"timed out; last events: {self.seen[-10:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.mark.timeout(90)
def test_agents_ack_only_what_they_hold_and_dump_it(tmp_path):
    import os
    import sys

    from gossip.keyring import write_key_file

    key = tmp_path / "k"
    write_key_file(key, os.urandom(32))
    procs = []
    try:
        address = None
        for name in ("a", "b"):
            argv = [
                sys.executable, "-m", "mesh.chaos.agent", "--node", name,
                "--data", str(tmp_path / name), "--key-file", str(key),
                "--listen", "127.0.0.1:0", "--cluster", f"chaos-test-{os.getpid()}",
                "--sessions", f"{name}1", "--interval", "0.05", "--seed", "3",
            ]  # fmt: skip
            if address:
                argv += ["--join", address]
            p = _Proc(argv, open(tmp_path / f"{name}.log", "wb"))  # noqa: SIM115
            procs.append(p)
            ready = p.wait_for(lambda e: e["event"] == "ready", 30)
            address = address or ready["address"]
        for p in procs:
            p.send("go")
        for p in procs:
            # replicas=1 needs the other peer: it proves the two are talking.
            p.wait_for(lambda e: e["event"] == "acked" and e["level"] == 1, 30)
        for p in procs:
            p.send("halt")
            p.wait_for(lambda e: e["event"] == "halted", 10)
        levels = {e["level"] for p in procs for e in p.seen if e["event"] == "acked"}
        assert 1 in levels and 2 not in levels, levels  # replicas=2 needs three nodes
        for p in procs:
            p.send("dump")
        dumps = [p.wait_for(lambda e: e["event"] == "dump", 10)["sessions"] for p in procs]
        # Each agent holds at least its own session, with every token it acknowledged.
        for p, d in zip(procs, dumps, strict=True):
            mine = [e for e in p.seen if e["event"] == "acked"]
            for e in mine:
                assert e["token"] in d[e["session"]]["tokens"], e
                assert d[e["session"]]["owner"] == p.seen[0]["node"]
                assert d[e["session"]]["epoch"] == 1
        p.send("dump brief")
        brief = procs[-1].wait_for(lambda e: e["event"] == "dump", 10)["sessions"]
        assert all("tokens" not in v and "fingerprint" in v for v in brief.values())
    finally:
        for p in procs:
            p.close()
