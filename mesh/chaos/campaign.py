"""The orchestrator of a chaos campaign: agents on namespace hosts, faults, heal, verdict.

`Campaign(hosts, seconds, seed).run()` builds `hosts` network-namespace hosts
(`mesh.hosts.HostNetwork`), starts one `mesh.chaos.agent` process per host (static joins,
no mDNS, a sealed cluster key), lets the membership settle, starts the writers and then
applies the fault schedule, one fault at a time, recording the real time each fault
began and healed. At the end it heals everything (rules flushed, frozen processes
continued, dead ones restarted, the full disk emptied), halts the writers, waits
(bounded) until every replica agrees, collects every replica's final state and hands
the history to `mesh.chaos.checker.check`. The same history (fault spans, takeovers,
fencings, acknowledgements) is what `plot()` draws, so the picture and the verdict can
never disagree about what happened.

Host `disk_host`'s data directory is a small tmpfs, so "disk full" is real: a filler file
takes the rest of it for the fault's duration.

Invariants: every wait is bounded (agent start, settle, convergence, process exits);
`close()` continues and kills every process we started, removes our namespaces, unmounts
the tmpfs and the work directory; it is idempotent and runs on any exit path, including
KeyboardInterrupt (the CLI turns SIGTERM into one).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crdt_types.errors import LocalError
from gossip.keyring import write_key_file
from mesh.agent_process import pump, read_events
from mesh.chaos.checker import (
    Ack,
    FaultSpan,
    FaultWindow,
    Fencing,
    OwnerChange,
    Replica,
    Verdict,
    check,
)
from mesh.chaos.schedule import FAULT_KINDS, Fault, dump_schedule, impaired, plan
from mesh.hosts import HostNetwork, available, cleanup_stale

__all__ = ["Campaign", "MAX_FAULTS", "PORT"]

PORT = 7946
PREFIX = "smc"
MAX_FAULTS = 200
START_TIMEOUT = 30.0
SETTLE_TIMEOUT = 30.0
CONVERGE_TIMEOUT = 90.0
STOP_TIMEOUT = 10.0
TMPFS_SIZE = "48m"
SESSIONS_PER_HOST = 2


class Agent:
    """One agent process on a host and the thread that reads its JSON lines."""

    def __init__(self, index: int, name: str, argv: list[str], host: Any, log: Path) -> None:
        self.index = index
        self.name = name
        self.argv = argv
        self.host = host
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False
        self.boots = 0

    def start(self, events: queue.Queue) -> None:
        """Start (or restart) the process; its lines go to `events` as (name, dict)."""
        self.boots += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child holds it; closed below)
        try:
            self.proc = self.host.popen(
                [*self.argv, "--seed", str(self.index * 1000 + self.boots)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # a Ctrl-C at the terminal reaches the orchestrator only
            )
        finally:
            log.close()
        self.stopped = False
        assert self.proc.stdout is not None
        read_events(self.name, self.proc.stdout, events)

    @property
    def running(self) -> bool:
        """Whether the process exists (frozen counts)."""
        return self.proc is not None and self.proc.poll() is None

    def send(self, line: str) -> None:
        """One line to the agent's stdin (ignored if it is gone)."""
        if self.running and self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(line.encode() + b"\n")
                self.proc.stdin.flush()

    def signal(self, sig: int) -> None:
        """Send `sig` to the process (by its pid; it is ours)."""
        if self.running and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            if sig == signal.SIGSTOP:
                self.stopped = True
            elif sig == signal.SIGCONT:
                self.stopped = False

    def reap(self, timeout: float = STOP_TIMEOUT) -> None:
        """Wait (bounded) for the process to exit, SIGKILL it if it does not."""
        if self.proc is None:
            return
        if self.stopped:
            self.signal(signal.SIGCONT)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()


class Campaign:
    """One chaos run; `run()` returns the result dict, `close()` cleans up (idempotent)."""

    def __init__(
        self,
        hosts: int = 5,
        seconds: float = 60.0,
        seed: int = 0,
        *,
        schedule: list[Fault] | None = None,
        max_faults: int = MAX_FAULTS,
        converge_timeout: float = CONVERGE_TIMEOUT,
        progress: Callable[[str], None] | None = None,
        tick: Callable[[float], None] | None = None,
        keep: Path | None = None,
    ) -> None:
        if isinstance(hosts, bool) or not isinstance(hosts, int) or not 3 <= hosts <= 16:
            raise LocalError(f"hosts must be an int in 3..16, got {hosts!r}")
        if not (isinstance(seconds, int | float) and 0 < seconds <= 24 * 3600):
            raise LocalError(f"the campaign must last (0, 24h] seconds, got {seconds!r}")
        self.n = hosts
        self.seconds = float(seconds)
        self.seed = seed
        rng = random.Random(seed)
        self.disk_host = rng.randrange(hosts)
        if schedule is None:
            schedule = plan(
                rng, hosts, self.seconds, disk_host=self.disk_host, max_faults=max_faults
            )
        else:
            disk = {f.hosts[0] for f in schedule if f.kind == "disk_full"}
            if len(disk) > 1:
                raise LocalError("a schedule may fill the disk of one host only")
            self.disk_host = disk.pop() if disk else self.disk_host
        self.schedule = schedule[:max_faults]
        self.converge_timeout = converge_timeout
        self._say = progress or (lambda msg: None)
        self._tick = tick or (lambda t: None)
        self.events: queue.Queue = queue.Queue()
        self.acks: list[Ack] = []
        self.changes: list[OwnerChange] = []
        self.windows: list[FaultWindow] = []
        self.spans: list[FaultSpan] = []
        self.fencings: list[Fencing] = []
        self.counts: dict[str, int] = {}
        self.unacked = 0
        self.verdict: Verdict | None = None
        self.agents: list[Agent] = []
        self.net: HostNetwork | None = None
        self.root: Path | None = None
        self.mounted: Path | None = None
        self._ready: dict[str, float] = {}
        self._dumps: dict[str, dict[str, Any]] = {}
        self._halted: set[str] = set()
        self._status: dict[str, list[str]] = {}
        self._closed = False
        self.t0 = 0.0
        self.keep = keep
        self.timeline: list[str] = []

    # --- events -------------------------------------------------------------------------

    def _handle(self, name: str, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        if self.keep is not None and kind not in ("dump", "acked"):
            self.timeline.append(json.dumps({"peer": name, **ev}))
        if kind == "ready":
            self._ready[name] = ev["t"]
        elif kind == "acked":
            self.acks.append(Ack(ev["session"], ev["token"], ev["level"], name, ev["t"]))
        elif kind == "unacked":
            self.unacked += 1
        elif kind == "taken":
            self.changes.append(
                OwnerChange(ev["session"], name, ev["epoch"], ev["previous"], ev["t"])
            )
        elif kind == "fenced":
            self.fencings.append(
                Fencing(name, ev["session"], ev.get("owner"), ev.get("epoch", 0), ev["t"])
            )
        elif kind == "dump":
            self._dumps[name] = ev["sessions"]
        elif kind == "halted":
            self._halted.add(name)
        elif kind == "status":
            self._status[name] = ev["alive"]

    def _pump(self, until: float, done: Callable[[], bool] = lambda: False) -> bool:
        """Handle agent events until monotonic time `until` or `done()`; returns done()."""
        return pump(self.events, until, done, self._handle)

    # --- setup ----------------------------------------------------------------------------

    def _setup(self) -> None:
        reason = available()
        if reason is not None:
            raise LocalError(reason)
        cleanup_stale(PREFIX)
        self.root = Path(tempfile.mkdtemp(prefix="statemesh-chaos-"))
        self.net = HostNetwork(self.n, prefix=PREFIX)
        key = self.root / "cluster.key"
        write_key_file(key, os.urandom(32))
        addresses = self.net.addresses
        cluster = f"chaos-{os.getpid()}"
        for i, host in enumerate(self.net.hosts):
            name = f"p{i}"
            data = self.root / name
            data.mkdir()
            if i == self.disk_host:
                subprocess.run(
                    ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(data)],
                    check=True,
                    timeout=10,
                    capture_output=True,
                )
                self.mounted = data
            argv = [
                sys.executable, "-m", "mesh.chaos.agent", "--node", name, "--data", str(data),
                "--key-file", str(key), "--listen", f"{host.address}:{PORT}",
                "--cluster", cluster,
                "--sessions", ",".join(f"s{i}{c}" for c in "abcdefgh"[:SESSIONS_PER_HOST]),
            ]  # fmt: skip
            for j, other in enumerate(addresses):
                if j != i:
                    argv += ["--join", f"{other}:{PORT}"]
            self.agents.append(Agent(i, name, argv, host, self.root / f"{name}.log"))

    def _start(self, agent: Agent) -> float:
        """(Re)start `agent` and wait (bounded) for its ready line; returns when."""
        self._ready.pop(agent.name, None)
        agent.start(self.events)
        if not self._pump(time.monotonic() + START_TIMEOUT, lambda: agent.name in self._ready):
            raise LocalError(
                f"{agent.name} did not start in {START_TIMEOUT} s: see {agent.log_path}"
            )
        return self._ready[agent.name]

    def _settle(self, timeout: float) -> bool:
        """Wait until every agent sees every agent alive (bounded)."""
        names = sorted(a.name for a in self.agents)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._status.clear()
            for a in self.agents:
                a.send("status")
            self._pump(min(deadline, time.monotonic() + 2.0), lambda: len(self._status) == self.n)
            if len(self._status) == self.n and all(v == names for v in self._status.values()):
                return True
            self._pump(min(deadline, time.monotonic() + 0.3))
        return False

    # --- faults ---------------------------------------------------------------------------

    def _fill_disk(self) -> None:
        """Take every free byte of the tmpfs with a filler file (bounded: 256 MiB)."""
        assert self.mounted is not None
        # Unbuffered: every write either lands or fails now, none is left for close().
        with open(self.mounted / "filler", "wb", buffering=0) as f:
            for size in (1 << 20, 1 << 12, 1 << 8, 1):
                chunk = b"\0" * size
                for _ in range(256 * (1 << 20) // size):
                    try:
                        f.write(chunk)
                    except OSError:
                        break

    def _empty_disk(self) -> None:
        if self.mounted is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.mounted / "filler").unlink()

    def _apply(self, fault: Fault) -> Callable[[], None]:
        """Start `fault`; returns the function that heals it."""
        assert self.net is not None
        net = self.net
        targets = [self.agents[h] for h in fault.hosts]

        def restart() -> None:
            for a in targets:
                self._restart(a)

        def resume() -> None:
            for a in targets:
                a.signal(signal.SIGCONT)

        if fault.kind in ("kill", "leave"):
            sig = signal.SIGKILL if fault.kind == "kill" else signal.SIGTERM
            for a in targets:
                a.signal(sig)
                a.reap()  # a leave that hangs is killed after STOP_TIMEOUT
            return restart
        if fault.kind == "stop":
            for a in targets:
                a.signal(signal.SIGSTOP)
            return resume
        if fault.kind in ("partition", "oneway"):
            net.partition(*fault.sides, oneway=fault.kind == "oneway")
            return lambda: net.heal(loss=False)
        if fault.kind == "loss":
            net.loss(fault.hosts[0], fault.percent)
            return lambda: net.loss(fault.hosts[0], 0)
        if fault.kind == "disk_full":
            self._fill_disk()
            return self._empty_disk
        raise LocalError(f"unknown fault kind {fault.kind!r}")

    def _restart(self, agent: Agent) -> None:
        self._start(agent)
        agent.send("go")

    def _run_faults(self, t0: float) -> None:
        end = t0 + self.seconds
        for fault in self.schedule:
            if self._pump_ticking(t0, min(end, t0 + fault.at)):
                break
            start = time.monotonic()
            what = f"{fault.kind} on {[f'p{h}' for h in fault.hosts]}"
            self._say(f"t={start - t0:5.1f}s {what}")
            self.timeline.append(json.dumps({"fault": what, "t": start, "sides": fault.sides}))
            heal = self._apply(fault)
            self.counts[fault.kind] = self.counts.get(fault.kind, 0) + 1
            self._pump_ticking(t0, min(end, start + fault.duration))
            heal()
            healed = time.monotonic()
            for h in impaired(fault, self.n):
                self.windows.append(FaultWindow(f"p{h}", fault.kind, start, healed))
            nodes = tuple(f"p{h}" for h in fault.hosts)
            self.spans.append(FaultSpan(fault.kind, nodes, start, healed, _detail(fault)))
        self._pump_ticking(t0, end)

    def _pump_ticking(self, t0: float, until: float) -> bool:
        """Pump events until `until`, reporting campaign time; True once the campaign is over."""
        while time.monotonic() < until:
            self._pump(min(until, time.monotonic() + 1.0))
            self._tick(min(self.seconds, time.monotonic() - t0))
        return time.monotonic() >= t0 + self.seconds

    # --- end --------------------------------------------------------------------------------

    def _heal_all(self) -> None:
        assert self.net is not None
        self.net.heal()
        self._empty_disk()
        for a in self.agents:
            if a.stopped:
                a.signal(signal.SIGCONT)
        for a in self.agents:
            if not a.running:
                self._start(a)

    def _converge(self) -> tuple[bool, float]:
        """Halt writers, then wait (bounded) until every replica agrees; (agreed, seconds)."""
        self._halted.clear()
        for a in self.agents:
            a.send("halt")
        started = time.monotonic()
        deadline = started + self.converge_timeout
        self._pump(min(deadline, started + 10.0), lambda: len(self._halted) == self.n)
        while time.monotonic() < deadline:
            self._dumps.clear()
            for a in self.agents:
                a.send("dump brief")
            self._pump(min(deadline, time.monotonic() + 5.0), lambda: len(self._dumps) == self.n)
            if len(self._dumps) == self.n and len({_digest(d) for d in self._dumps.values()}) == 1:
                return True, time.monotonic() - started
            self._pump(min(deadline, time.monotonic() + 0.5))
        return False, time.monotonic() - started

    def _final(self) -> list[Replica]:
        self._dumps.clear()
        for a in self.agents:
            a.send("dump")
        self._pump(time.monotonic() + 30.0, lambda: len(self._dumps) == self.n)
        out = []
        for node, sessions in self._dumps.items():
            for sid, v in sessions.items():
                out.append(
                    Replica(
                        node,
                        sid,
                        v["owner"],
                        v["epoch"],
                        v["fingerprint"],
                        frozenset(str(t) for t in v["tokens"]),
                    )
                )
        return out

    def run(self) -> dict[str, Any]:
        """Run the whole campaign and return the result (see `statemesh chaos --help`)."""
        try:
            self._setup()
            self._say(f"{self.n} hosts up, starting agents (disk host p{self.disk_host})")
            for a in self.agents:
                self._start(a)
            if not self._settle(SETTLE_TIMEOUT):
                raise LocalError(f"membership did not settle in {SETTLE_TIMEOUT} s")
            for a in self.agents:
                a.send("go")
            t0 = self.t0 = time.monotonic()
            self._say(f"writing; {len(self.schedule)} faults over {self.seconds:g} s")
            self._run_faults(t0)
            self._say("healing everything")
            self._heal_all()
            agreed, took = self._converge()
            self._say(f"{'converged' if agreed else 'NOT converged'} after {took:.1f} s")
            replicas = self._final()
            survivors = sorted(self._dumps)
            verdict = self.verdict = check(
                self.acks, self.changes, self.windows, replicas, survivors
            )
            return self._result(verdict, agreed, took, survivors)
        finally:
            self.close()

    def _result(
        self, v: Verdict, agreed: bool, took: float, survivors: list[str]
    ) -> dict[str, Any]:
        result: dict[str, Any] = {
            "seed": self.seed,
            "minutes": round(self.seconds / 60.0, 4),
            "hosts": self.n,
            "faults": {k: self.counts.get(k, 0) for k in FAULT_KINDS},
            "acked_writes": v.acked_writes,
            "acked_by_level": dict(sorted(v.by_level.items())),
            "unacked_writes": self.unacked,
            "acked_lost": v.acked_lost,
            "converged": v.converged and agreed and len(survivors) == self.n,
            "convergence_s": round(took, 2),
            "split_brain_after_heal": v.split_brain_after_heal,
            "false_takeovers": v.false_takeovers,
            "takeovers": len(self.changes),
            "fenced": len(self.fencings),
            "max_rto_ms": v.max_rto_ms,
        }
        result["ok"] = bool(v.ok and result["converged"])
        if not result["ok"]:
            result["evidence"] = {
                "lost": [f"{a.session}:{a.token}@{a.level} by {a.writer}" for a in v.lost[:20]],
                "divergent": list(v.divergent),
                "split": list(v.split),
                "false_takeovers": [
                    f"{c.session} {c.previous}->{c.owner} epoch {c.epoch} t={c.t - self.t0:.2f}"
                    for c in v.false
                ],
                "windows": [
                    f"{w.node} {w.kind} {w.start - self.t0:.2f}..{w.end - self.t0:.2f}"
                    for w in self.windows
                ],
                "survivors": survivors,
            }
            result["schedule"] = json.loads(self.schedule_json())
        return result

    def plot(self, path: Path, result: dict[str, Any]) -> Any:
        """Draw the recorded history as a timeline PNG at `path` (after `run()`)."""
        from mesh.chaos.plot import draw_campaign, verdict_text

        title = (
            f"statemesh chaos: seed {self.seed}, {self.n} hosts, {self.seconds / 60.0:g} min: "
            f"{verdict_text(result)}"
        )
        return draw_campaign(
            path,
            nodes=[f"p{i}" for i in range(self.n)],
            t0=self.t0,
            seconds=self.seconds,
            spans=self.spans,
            windows=self.windows,
            changes=self.changes,
            fencings=self.fencings,
            acks=self.acks,
            false=self.verdict.false if self.verdict is not None else (),
            title=title,
        )

    def schedule_json(self) -> str:
        """The schedule of this run as replayable JSON (`--schedule FILE`)."""
        return dump_schedule(self.schedule, seed=self.seed, hosts=self.n)

    def close(self) -> None:
        """Stop every agent, remove the hosts, the tmpfs and the work directory."""
        if self._closed:
            return
        self._closed = True
        for a in self.agents:
            if a.running:
                a.signal(signal.SIGCONT)
                a.signal(signal.SIGKILL)
        for a in self.agents:
            a.reap(timeout=5.0)
        if self.net is not None:
            with contextlib.suppress(LocalError):
                self.net.close()
        if self.mounted is not None:
            subprocess.run(
                ["umount", "-l", str(self.mounted)], timeout=10, capture_output=True, check=False
            )
        if self.root is not None:
            if self.keep is not None:
                # What a failing run leaves to read: every agent's log and the timeline.
                self.keep.mkdir(parents=True, exist_ok=True)
                for log in self.root.glob("*.log"):
                    shutil.copy(log, self.keep / log.name)
                (self.keep / "timeline.jsonl").write_text("\n".join(self.timeline) + "\n")
                (self.keep / "schedule.json").write_text(self.schedule_json())
            shutil.rmtree(self.root, ignore_errors=True)


def _digest(sessions: dict[str, Any]) -> str:
    return json.dumps(
        {s: [v["owner"], v["epoch"], v["fingerprint"]] for s, v in sessions.items()},
        sort_keys=True,
    )


def _detail(fault: Fault) -> str:
    """A short label for a span: who is cut from whom, or how much is lost."""
    if fault.kind in ("partition", "oneway") and len(fault.sides) == 2:
        a, b = (",".join(f"p{h}" for h in side) for side in fault.sides)
        return f"{a} | {b}" if fault.kind == "partition" else f"{a} -/-> {b}"
    if fault.kind == "loss":
        return f"{fault.percent:g}%"
    return ""
