"""`statemesh demo`: watch a peer die mid-conversation and another take its session over.

Runs on one machine with nothing set up beyond installation. It starts `--peers` (3)
mesh peers as separate processes (`python -m cli.demo_agent`, the embedding API with a
small scripted agent in it) on loopback, with mDNS on 127.0.0.1 only, a freshly generated
cluster key (frames sealed, not insecure), a cluster name of its own (so two demos never
meet) and data in a temporary directory unless `--data` is given. Once every peer sees
the others and has settled its membership, the last peer runs a scripted agent
conversation (messages, memory, RAG context, config, a tool call left pending), each step
committed with `replicas=1`. Right after the pending tool call is acknowledged the demo
kills that peer with SIGKILL, and shows a live peer declaring it dead, taking the session
over, and resuming the tool call under its idempotency key.

Output: a timeline with millisecond offsets and the figures, or with `--json` one object:
`peers`, `failed_node`, `successor`, `rto_ms` (kill to the takeover handler called),
`detect_ms` (kill to the first `dead`), `acked_writes`, `acked_lost`, `converged` (all
survivors hold equal fingerprints), `fingerprint_match` (the successor's session equals
the last acknowledged state), `pending_resumed` (pending tool calls handed to the handler
and finished), plus `takeovers` (handlers called; 1 expected), `suspect_ms`, `timeline`.
`--plot FILE.png` draws the timeline.

Every process it started and every temporary file is removed on exit, also on Ctrl-C
(SIGINT) or SIGTERM. Exit codes: 0 when the takeover happened and no acknowledged write
was lost, 1 otherwise, 2 for bad flags, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from cli._parser import add_command
from mesh.agent_process import alive_members, events_of, pump, read_events

MAX_PEERS = 9
READY_TIMEOUT = 30.0
SETTLE_TIMEOUT = 30.0
TAKEOVER_TIMEOUT = 20.0
CONVERGE_TIMEOUT = 10.0
SESSION = "demo-chat"


class _Interrupted(Exception):
    pass


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand."""
    p = add_command(
        sub, "demo", "kill a peer mid-conversation and watch another take over", __doc__, run
    )
    p.add_argument("--peers", type=int, default=3, help=f"peers to start (2..{MAX_PEERS})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--data", metavar="DIR", help="keep the peers' data here (default: a temp dir)")
    p.add_argument("--plot", metavar="FILE.png", help="draw the timeline into a PNG")


class Peer:
    """One child process and the thread that reads its JSON lines into the shared queue."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log: Path,
        events: queue.Queue,
        popen: Any = subprocess.Popen,
    ) -> None:
        self.name = name
        self.log = open(log, "wb")  # noqa: SIM115 (closed in stop)
        # A session of its own: a Ctrl-C at the terminal reaches the demo only, which then
        # stops the peers itself (and reports nothing half-done as a takeover).
        self.proc = popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            start_new_session=True,
        )
        self.ready: dict[str, Any] | None = None
        self.killed_at: float | None = None
        assert self.proc.stdout is not None
        self._thread = read_events(name, self.proc.stdout, events)

    def send(self, line: str) -> None:
        """Write one line to the peer's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def kill(self) -> float:
        """SIGKILL the process; returns the kill time (monotonic)."""
        t = time.monotonic()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.killed_at = t
        self.proc.wait(timeout=10)
        return t

    def stop(self) -> None:
        """Leave gracefully (SIGTERM), SIGKILL after 5 s; always reaped."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        self.log.close()


def _get_json(address: str, path: str) -> Any:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=2) as r:
        return json.loads(r.read())


class Demo:
    """One run: start, settle, converse, kill, watch the takeover, check, clean up."""

    def __init__(self, peers: int, data: Path | None, say: Any) -> None:
        self.n = peers
        self.keep = data is not None
        self.root = data if data is not None else Path(tempfile.mkdtemp(prefix="statemesh-demo-"))
        self.say = say
        self.events: queue.Queue = queue.Queue()
        self.peers: dict[str, Peer] = {}
        self.log: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.timeline: list[tuple[float, str, str]] = []
        # A session of its own per run, so a kept --data directory can be reused.
        self.session = f"{SESSION}-{secrets.token_hex(3)}"

    # --- plumbing -----------------------------------------------------------------------

    def note(self, t: float, who: str, what: str) -> None:
        ms = (t - self.t0) * 1000
        self.timeline.append((ms, who, what))
        self.say(f"{ms:9.0f} ms  {who:<7} {what}")

    def pump(self, until: float, done: Any) -> bool:
        """Handle events until `done()` or the monotonic deadline; True if done."""
        return pump(self.events, until, done, self._handle)

    def _handle(self, name: str, ev: dict[str, Any]) -> None:
        ev["peer"] = name
        self.log.append(ev)
        self.narrate(name, ev)

    def narrate(self, name: str, ev: dict[str, Any]) -> None:
        kind, t = ev.get("event"), float(ev.get("t", time.monotonic()))
        if kind == "ready":
            self.peers[name].ready = ev
            self.note(t, name, f"up: gossip {ev['address']}, pid {ev['pid']}")
        elif kind == "member":
            state = ev["state"]
            if state == "alive" and not self.killed:
                self.note(t, name, f"discovered {ev['node']} (mDNS on 127.0.0.1)")
            elif state in ("suspect", "dead", "left"):
                self.note(t, name, f"{ev['node']} is {state}")
        elif kind == "acked":
            self.note(t, name, f"step {ev['step']} ({ev['kind']}) committed, replicas=1 acked")
        elif kind == "owner":
            prev = f" from {ev['previous']}" if ev.get("previous") else ""
            if ev["owner"] == name:
                self.note(t, name, f"owns {ev['session']} at epoch {ev['epoch']}{prev}")
        elif kind == "prewarm":
            self.note(t, name, f"pre-warmed as standby of {ev['session']}")
        elif kind == "takeover":
            keys = ", ".join(c["key"] for c in ev["pending"]) or "none"
            self.note(t, name, f"takeover handler called; pending tool calls: {keys}")
        elif kind == "resumed":
            self.note(t, name, f"resumed: tool call {', '.join(ev['keys'])} finished, answered")
        elif kind == "fenced":
            self.note(t, name, f"fenced from {ev['session']}")

    @property
    def killed(self) -> bool:
        return any(p.killed_at is not None for p in self.peers.values())

    def of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        return events_of(self.log, kind, **match)

    # --- the run --------------------------------------------------------------------------

    def start(self) -> None:
        from gossip.keyring import KEY_BYTES, write_key_file

        self.root.mkdir(parents=True, exist_ok=True)
        key = self.root / "cluster.key"
        if not key.exists():
            write_key_file(str(key), secrets.token_bytes(KEY_BYTES))
        cluster = f"demo-{secrets.token_hex(4)}"
        self.names = [f"peer{i}" for i in range(1, self.n + 1)]
        self.agent = self.names[-1]
        self.say(
            f"statemesh demo: {self.n} peers on loopback, cluster {cluster}, data in {self.root}"
        )
        for name in self.names:
            argv = [
                sys.executable, "-m", "cli.demo_agent",
                "--node", name, "--data", str(self.root / name), "--key-file", str(key),
                "--interface", "127.0.0.1", "--cluster", cluster,
            ]  # fmt: skip
            if name == self.agent:
                argv += ["--agent", self.session, "--wait-go"]
            self.peers[name] = Peer(name, argv, self.root / f"{name}.log", self.events)

    def settle(self) -> bool:
        ok = self.pump(
            time.monotonic() + READY_TIMEOUT,
            lambda: all(p.ready for p in self.peers.values()),
        )
        if not ok:
            self.say("peers did not start: see the logs in " + str(self.root))
            return False
        # Membership settled on every peer: each knows all and has adopted a stable set.
        everyone = sorted(self.names)

        def settled() -> bool:
            for p in self.peers.values():
                try:
                    st = _get_json(p.ready["http"], "/status")
                except OSError:
                    return False
                if alive_members(st) != everyone or st.get("stable") != everyone:
                    return False
            return True

        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            self.pump(time.monotonic() + 0.2, lambda: False)
            if settled():
                self.note(
                    time.monotonic(),
                    "demo",
                    f"all {self.n} peers see each other, membership settled",
                )
                return True
        self.say("membership did not settle in time")
        return False

    def converse_and_kill(self) -> float | None:
        agent = self.peers[self.agent]
        agent.send("go")
        last = len(_script()) - 1
        ok = self.pump(
            time.monotonic() + 30, lambda: bool(self.of("acked", peer=self.agent, step=last))
        )
        if not ok:
            self.say("the agent did not finish its steps")
            return None
        t = agent.kill()
        self.note(t, "demo", f"SIGKILL {self.agent} (pid {agent.proc.pid}) with tool call pending")
        return t

    def watch_takeover(self) -> bool:
        return self.pump(time.monotonic() + TAKEOVER_TIMEOUT, lambda: bool(self.of("resumed")))

    def converged(self) -> bool:
        survivors = [p for n, p in self.peers.items() if n != self.agent]
        deadline = time.monotonic() + CONVERGE_TIMEOUT
        while time.monotonic() < deadline:
            self.pump(time.monotonic() + 0.1, lambda: False)
            try:
                docs = [_get_json(p.ready["http"], "/documents") for p in survivors]
            except OSError:
                continue
            if all(d == docs[0] for d in docs) and f"session/{self.session}" in docs[0]:
                return True
        return False

    def figures(self, t_kill: float | None, converged: bool) -> dict[str, Any]:
        acked = self.of("acked", peer=self.agent)
        takeovers = self.of("takeover")
        resumed = self.of("resumed")
        first = min(takeovers, key=lambda e: e["t"]) if takeovers else None
        dead = [e["t"] for e in self.of("member", node=self.agent, state="dead")]
        suspect = [e["t"] for e in self.of("member", node=self.agent, state="suspect")]
        lost = None
        if first is not None:
            lost = sum(1 for a in acked if not _present(a, first["summary"]))
        last_fp = acked[-1]["fingerprint"] if acked else None

        def ms(ts: list[float]) -> float | None:
            after = [x for x in ts if t_kill is not None and x >= t_kill]
            return round((min(after) - t_kill) * 1000, 1) if after else None

        return {
            "peers": self.n,
            "failed_node": self.agent if t_kill is not None else None,
            "successor": first["peer"] if first else None,
            "rto_ms": ms([first["handler_t"]]) if first else None,
            "detect_ms": ms(dead),
            "suspect_ms": ms(suspect),
            "acked_writes": len(acked),
            "acked_lost": lost if lost is not None else len(acked),
            "converged": converged,
            "fingerprint_match": bool(first and first["fingerprint"] == last_fp),
            "pending_resumed": sum(len(e["keys"]) for e in resumed),
            "takeovers": len(takeovers),
            "timeline": [
                # Lines arrive per process; the JSON puts them in time order.
                {"ms": round(ms_, 1), "peer": who, "what": what}
                for ms_, who, what in sorted(self.timeline)
            ],
        }

    def cleanup(self) -> None:
        for p in self.peers.values():
            with contextlib.suppress(Exception):
                p.stop()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def _script() -> tuple:
    from cli.demo_agent import SCRIPT

    return SCRIPT


def _present(acked: dict[str, Any], held: dict[str, Any]) -> bool:
    """Whether the write acknowledged as `acked` is in the successor's session summary."""
    kind, payload = _script()[acked["step"]]
    if kind == "message":
        ok = payload[1] in held["messages"]
    elif kind == "memory":
        ok = payload[0] in held["memory"]
    elif kind == "rag":
        ok = payload[1] in held["rag"]
    else:
        ok = payload[0] in held["tool_calls"]
    return ok and held["cursor"] is not None and held["cursor"] >= acked["step"]


_KINDS = (  # (label, substring of the timeline text, marker, colour)
    ("up / discovery", "up:", "o", "tab:gray"),
    ("up / discovery", "discovered", "o", "tab:gray"),
    ("write acked (replicas=1)", "committed", "s", "tab:blue"),
    ("SIGKILL", "SIGKILL", "X", "tab:red"),
    ("suspect", "suspect", "v", "tab:orange"),
    ("dead", " dead", "v", "tab:red"),
    ("owner claim", "owns", "D", "tab:purple"),
    ("pre-warm", "pre-warmed", "^", "tab:olive"),
    ("takeover handler", "takeover handler", "*", "tab:green"),
    ("tool call resumed", "resumed", "P", "tab:green"),
)


def _plot(path: str, timeline: list[dict[str, Any]], result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    who = sorted({e["peer"] for e in timeline})
    fig, ax = plt.subplots(figsize=(11, 2.0 + 0.5 * len(who)), dpi=110)
    try:
        labelled: set[str] = set()
        for e in timeline:
            kind = next((k for k in _KINDS if k[1] in e["what"]), None)
            if kind is None:
                continue
            label, _, marker, colour = kind
            ax.plot(
                e["ms"],
                who.index(e["peer"]),
                marker,
                color=colour,
                markersize=9,
                label=None if label in labelled else label,
            )
            labelled.add(label)
            if "SIGKILL" in e["what"]:
                ax.axvline(e["ms"], color="tab:red", linewidth=0.8, linestyle="--")
        ax.set_yticks(range(len(who)), who)
        ax.set_xlabel("ms since the demo started")
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
        ax.set_title(
            f"statemesh demo: SIGKILL of {result['failed_node']}, takeover by "
            f"{result['successor']}: RTO {result['rto_ms']} ms, detect {result['detect_ms']} ms, "
            f"acked lost {result['acked_lost']}",
            fontsize=9,
        )
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code."""
    if not 2 <= args.peers <= MAX_PEERS:
        print(f"statemesh demo: error: --peers must be 2..{MAX_PEERS}", file=sys.stderr)
        return 2
    if args.plot and not args.plot.endswith(".png"):
        print("statemesh demo: error: --plot needs a .png file name", file=sys.stderr)
        return 2
    data = Path(args.data) if args.data else None
    if data is not None and data.exists() and not data.is_dir():
        print(f"statemesh demo: error: {data} is not a directory", file=sys.stderr)
        return 2
    say = (
        (lambda line: print(line, file=sys.stderr, flush=True))
        if args.json
        else (lambda line: print(line, flush=True))
    )
    demo = Demo(args.peers, data, say)

    def on_term(signum: int, frame: Any) -> None:
        raise _Interrupted

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        demo.start()
        t_kill = None
        converged = False
        if demo.settle():
            t_kill = demo.converse_and_kill()
            if t_kill is not None and demo.watch_takeover():
                converged = demo.converged()
        result = demo.figures(t_kill, converged)
    except (KeyboardInterrupt, _Interrupted):
        demo.say("interrupted: stopping the peers and removing temporary files")
        demo.cleanup()
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        demo.cleanup()
    if args.plot:
        _plot(args.plot, result["timeline"], result)
    if args.json:
        print(json.dumps(result))
    else:
        _summary(result)
    ok = result["failed_node"] and result["successor"] and result["acked_lost"] == 0
    return 0 if ok else 1


def _summary(r: dict[str, Any]) -> None:
    print()
    print(f"failed node        {r['failed_node']} (SIGKILL with a tool call pending)")
    print(f"successor          {r['successor']} ({r['takeovers']} takeover handler call)")
    print(f"detect (kill->dead) {r['detect_ms']} ms; suspect after {r['suspect_ms']} ms")
    print(f"RTO (kill->handler) {r['rto_ms']} ms")
    print(f"acknowledged writes {r['acked_writes']}, lost {r['acked_lost']}")
    print(f"fingerprint match  {r['fingerprint_match']}; survivors converged {r['converged']}")
    print(f"pending tool calls resumed {r['pending_resumed']}")
