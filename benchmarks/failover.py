"""`statemesh bench failover`: SIGKILL session owners again and again; time the takeovers.

Three agent peers (`cli.demo_agent`) run on network-namespace hosts (a private bridge in
198.18.0.0/15, mDNS on each host's own address, the `lan` gossip profile, sealed
frames); without root they run on loopback instead (`mode` says which). Each trial: the
next peer in turn opens a fresh session and commits `--writes` messages with
`replicas=1`, then is killed with SIGKILL; the bench waits for a survivor's takeover
handler, checks that every acknowledged message is in the session it was handed, and
restarts the killed peer from its data directory (it rejoins and follows) before the next
trial. Times come from one clock (`time.monotonic()`, shared by every process of the
machine): `detect` is kill to the first `dead`, `rto` kill to the takeover handler.

`false_takeovers` counts takeovers of a session whose owner was not killed; with
`--idle SECONDS` the bench instead leaves the three peers (each owning sessions) running
that long with `--burn N` CPU-burning processes beside them, and counts takeovers, `dead`
and `suspect` declarations of live peers. Burners are ours, bounded by the run, killed by
pid.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks._agents import AgentCluster
from benchmarks._plot import Series, add_plot_argument, check_plot_path, line_plot

HELP = "SIGKILL session owners on namespace hosts; takeover time, detection, acked writes lost"

_BURNER = "import time\nend = time.monotonic() + float(__import__('sys').argv[1])\nwhile time.monotonic() < end:\n    pass\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the failover benchmark."""
    parser.add_argument("--trials", type=int, default=20, help="owners to kill")
    parser.add_argument("--writes", type=int, default=5, help="acked writes before each kill")
    parser.add_argument("--loopback", action="store_true", help="run on loopback, not netns")
    parser.add_argument(
        "--idle", type=float, default=0.0, help="no kills: watch N s for false takeovers"
    )
    parser.add_argument("--burn", type=int, default=0, help="CPU-burning processes during the run")
    add_plot_argument(parser, "RTO and detection time per trial")


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def run(args: argparse.Namespace) -> dict:
    """Run the trials (or the idle watch) and return the figures."""
    from benchmarks._plot import usage

    if args.trials < 1 or args.writes < 1 or args.idle < 0 or args.burn < 0:
        raise usage("failover", "--trials and --writes must be >= 1, --idle and --burn >= 0")
    plot = check_plot_path("failover", args.plot)
    loopback = args.loopback
    if not loopback:
        from mesh.hosts import available

        reason = available()
        if reason is not None:
            print(f"bench failover: {reason}; running on loopback", file=sys.stderr)
            loopback = True
    root = Path(tempfile.mkdtemp(prefix="statemesh-bench-failover-"))
    burners: list[subprocess.Popen] = []
    net = None
    if not loopback:
        from mesh.hosts import HostNetwork

        net = HostNetwork(3)
    cluster = AgentCluster(root, f"bench-{secrets.token_hex(4)}", net)
    try:
        for i in range(3):
            cluster.start(i)
        if not cluster.settle():
            raise RuntimeError("membership did not settle")
        span = max(args.idle, 1.0) + 600.0 if args.burn else 0
        for _ in range(args.burn):
            burners.append(subprocess.Popen([sys.executable, "-c", _BURNER, str(span)]))
        if args.idle:
            result = _idle(cluster, args.idle)
        else:
            result = _trials(cluster, args.trials, args.writes, plot)
        result = {"mode": "loopback" if loopback else "netns", "burners": args.burn, **result}
        return result
    finally:
        for b in burners:
            with contextlib.suppress(ProcessLookupError):
                b.kill()
            b.wait()
        cluster.close()
        if net is not None:
            net.close()
        shutil.rmtree(root, ignore_errors=True)


def _idle(cluster: AgentCluster, seconds: float) -> dict:
    for name in sorted(cluster.peers):
        cluster.ask(name, f"write idle-{name} x 1", "wrote")
    mark = len(cluster.log)
    print(f"bench failover: watching {seconds:.0f} s for false failovers", file=sys.stderr)
    cluster.drain(seconds)
    seen = cluster.log[mark:]
    return {
        "idle_s": seconds,
        "false_takeovers": sum(1 for e in seen if e["event"] == "takeover"),
        "false_dead": sum(1 for e in seen if e["event"] == "member" and e["state"] == "dead"),
        "suspects": sum(1 for e in seen if e["event"] == "member" and e["state"] == "suspect"),
    }


def _trials(cluster: AgentCluster, trials: int, writes: int, plot: Path | None) -> dict:
    detect: list[float] = []
    rto: list[float] = []
    lost = 0
    false_takeovers = 0
    failed = 0
    for k in range(trials):
        owner = f"p{k % 3}"
        session = f"t{k}-{secrets.token_hex(2)}"
        acked = []
        for j in range(writes):
            got = cluster.ask(owner, f"write {session} m{j} 1", "wrote")
            if got and got["ok"]:
                acked.append(f"m{j}")
        mark = len(cluster.log)
        t_kill = cluster.peers[owner].kill()
        taken = cluster.wait(
            lambda e, s=session: e["event"] == "takeover" and e["session"] == s,
            20,
            since=mark,
        )
        dead = cluster.wait(
            lambda e, o=owner: e["event"] == "member" and e["node"] == o and e["state"] == "dead",
            5,
            since=mark,
        )
        if taken is None:
            failed += 1
        else:
            rto.append((taken["handler_t"] - t_kill) * 1000)
            lost += sum(1 for m in acked if m not in taken["summary"]["messages"])
        if dead is not None:
            detect.append((dead["t"] - t_kill) * 1000)
        # A takeover from anyone but the killed owner took a live peer's session.
        false_takeovers += sum(
            1 for e in cluster.log[mark:] if e["event"] == "taken" and e["previous"] != owner
        )
        print(
            f"bench failover: trial {k + 1}/{trials}: rto {rto[-1] if taken else None} ms",
            file=sys.stderr,
        )
        cluster.peers.pop(owner).stop()
        cluster.start(int(owner[1:]))
        if not cluster.settle():
            raise RuntimeError("membership did not settle after a restart")
    if plot is not None:
        xs = list(range(1, len(rto) + 1))
        line_plot(
            plot,
            [Series("kill -> takeover handler (RTO)", xs, rto),
             Series("kill -> dead", list(range(1, len(detect) + 1)), detect)],
            title="statemesh failover: SIGKILL of the session owner, 3 peers",
            xlabel="trial",
            ylabel="ms",
            integer_x=True,
        )  # fmt: skip
    return {
        "trials": trials,
        "takeovers": len(rto),
        "missed_takeovers": failed,
        "detect_ms_p50": _pct(detect, 0.5),
        "detect_ms_p99": _pct(detect, 0.99),
        "rto_ms_p50": _pct(rto, 0.5),
        "rto_ms_p99": _pct(rto, 0.99),
        "rto_ms_max": round(max(rto), 1) if rto else None,
        "rto_ms_mean": round(statistics.fmean(rto), 1) if rto else None,
        "acked_lost": lost,
        "false_takeovers": false_takeovers,
    }
