"""`statemesh bench convergence`: how fast, in time, rounds and bytes, a burst of writes spreads.

Why virtual time. Fifty real peers in one trio process on a 2-core machine do not even
agree on membership in minutes (every node's probes and gossip share one event loop and
the loop's lag turns into suspicions), so a real-socket run would measure the machine, not
the protocol. This suite therefore runs the production protocol sans-IO: real
`gossip.Node`s (SWIM membership, rumour mongering, push-pull anti-entropy, replica acks)
over the deterministic simulator's network (latency 0.5-3 ms, a LAN), every envelope
encoded and sealed for real (`benchmarks.wire.SealedSimulator`), so bytes are the bytes
of real frames and time is virtual: the same seed gives the same figures on any machine.
The simulator models no bandwidth limit, which favours the baseline (its frames are big).

The scenario: `--sessions` session documents, each with `--history` messages already on
every peer (converged before the measurement), owned by the first peers round-robin; then
a burst of `--writes` appended messages, each by its session's owner, one per
millisecond. `converge_ms` runs from the first write until every peer's fingerprint of
every session equals the owner's; `rounds` is that in gossip rounds of the profile
(`gossip_interval`), rounded up. `bytes_total` is every frame any peer sent from the
burst until the mesh is quiet again (rumours retransmitted, acks sent), minus what the
same mesh sends in an idle window of the same length (membership).

The baseline, in the same run: every write sent as the document's full state
(`doc.get_update()`) to every other peer, in sealed frames of the same format, over the
same latency model. A peer holds a write once any full state sent at or after it reached
it.
"""

from __future__ import annotations

import argparse
import bisect
import math
import random

import pycrdt

from benchmarks._plot import Series, add_plot_argument, check_plot_path, line_plot, usage
from benchmarks._progress import note, phase
from benchmarks.wire import SealedSimulator, agent_message
from crdt_types.session import SessionState
from crdt_types.vv import decode_state_vector
from gossip.config import PROFILES
from gossip.config import profile as gossip_profile
from gossip.messages import DocDiff, Envelope
from gossip.replication import ReplicationConfig

HELP = "time, gossip rounds and bytes for a burst of writes to reach every peer vs full-state push"

SUITE = "convergence"
_POLL = 0.005  # virtual seconds between convergence checks (the curve's resolution)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the convergence benchmark."""
    parser.add_argument("--peers", type=int, default=50, help="peers in the mesh")
    parser.add_argument("--writes", type=int, default=100, help="writes in the burst")
    parser.add_argument("--sessions", type=int, default=8, help="session documents written")
    parser.add_argument("--history", type=int, default=20, help="messages per session before")
    parser.add_argument("--profile", default="lan", choices=sorted(PROFILES), help="timing")
    parser.add_argument("--max-rounds", type=int, default=200, help="give up after this many")
    parser.add_argument("--seed", type=int, default=1, help="seed for every random choice")
    defaults = ReplicationConfig()
    parser.add_argument(
        "--fanout", type=int, default=defaults.fanout, help="peers each rumour is pushed to"
    )
    parser.add_argument(
        "--retransmit-mult",
        type=int,
        default=defaults.retransmit_mult,
        help="rumour rounds = this * ceil(log10(N + 1)); defaults are the runtime's",
    )
    add_plot_argument(parser, "fraction of peers holding a write over time, both curves")


def run(args: argparse.Namespace) -> dict:
    """Run the burst on statemesh and on the naive baseline; return the figures."""
    if args.peers < 2:
        raise usage(SUITE, "--peers must be at least 2")
    for name in ("writes", "sessions", "max_rounds", "fanout", "retransmit_mult"):
        if getattr(args, name) < 1:
            raise usage(SUITE, f"--{name.replace('_', '-')} must be at least 1")
    if args.history < 0:
        raise usage(SUITE, "--history must be at least 0")
    plot = check_plot_path(SUITE, args.plot)
    config = gossip_profile(args.profile)
    key = random.Random(f"key:{args.seed}").randbytes(32)
    ours = _statemesh(args, config, key)
    base = _baseline(args, config, key)
    rnd_ms = config.gossip_interval * 1000
    result = {
        "peers": args.peers,
        "converged": ours["converge_ms"] is not None,
        "converge_ms": ours["converge_ms"],
        "rounds": None if ours["converge_ms"] is None else math.ceil(ours["converge_ms"] / rnd_ms),
        "rounds_goal": round(2 * math.log2(args.peers), 2),
        "bytes_total": ours["bytes"],
        "baseline_converge_ms": base["converge_ms"],
        "baseline_bytes_total": base["bytes"],
        "bytes_ratio_vs_baseline": float(f"{ours['bytes'] / base['bytes']:.4g}"),
        "writes": args.writes,
        "sessions": args.sessions,
        "history_messages": args.history,
        "mean_update_bytes": round(ours["update_bytes"] / args.writes, 1),
        "mean_full_state_bytes": round(base["state_bytes"] / args.writes, 1),
        "quiet_after_ms": ours["quiet_ms"],
        "idle_bytes_per_peer_per_s": round(ours["idle_rate"], 1),
        "gossip_interval_ms": rnd_ms,
        "profile": config.name,
        "fanout": args.fanout,
        "retransmit_mult": args.retransmit_mult,
        "virtual_time": True,
        "seed": args.seed,
    }
    if plot is not None:
        end = max(ours["curve"][0][-1], base["curve"][0][-1])
        curves = []
        for label, (xs, ys) in (("statemesh (rumours + anti-entropy)", ours["curve"]),
                                ("baseline: full state to every peer", base["curve"])):  # fmt: skip
            curves.append(Series(label, [*xs, end], [*ys, ys[-1]]))
        line_plot(
            plot,
            curves,
            title=f"statemesh bench convergence: {args.peers} peers, burst of {args.writes} writes",
            xlabel="ms since the first write (virtual time, LAN latency 0.5-3 ms)",
            ylabel="fraction of (peer, write) pairs held",
            note=(
                f"statemesh {_fmt_ms(ours['converge_ms'])}, {ours['bytes']:,} B; baseline "
                f"{_fmt_ms(base['converge_ms'])}, {base['bytes']:,} B (profile {config.name}, "
                f"{args.history} messages of history per session)"
            ),
            step=True,
            ylim=(0, 1.02),
        )
        note(SUITE, f"plot written to {plot}")
    return result


def _fmt_ms(value: float | None) -> str:
    return "did not converge" if value is None else f"{value:,.1f} ms"


def _owners(args: argparse.Namespace, ids: list[str]) -> list[str]:
    return [ids[s % len(ids)] for s in range(args.sessions)]


def _history_updates(args: argparse.Namespace) -> list[tuple[str, int, bytes]]:
    """(doc id, client id, full update) of every session's pre-existing history."""
    rng = random.Random(f"history:{args.seed}")
    out = []
    for s in range(args.sessions):
        client = rng.randrange(1, 2**31)
        doc = pycrdt.Doc(client_id=client)
        state = SessionState.new(f"s{s:03d}", doc)
        for _ in range(args.history):
            state.append_message("assistant", agent_message(rng))
        out.append((f"session/s{s:03d}", client, doc.get_update()))
    return out


def _burst_plan(args: argparse.Namespace) -> list[tuple[float, int, str]]:
    """(offset seconds, session index, text) of each write of the burst."""
    rng = random.Random(f"burst:{args.seed}")
    return [
        (i * 0.001, rng.randrange(args.sessions), agent_message(rng)) for i in range(args.writes)
    ]


def _statemesh(args: argparse.Namespace, config, key: bytes) -> dict:
    replication = ReplicationConfig(fanout=args.fanout, retransmit_mult=args.retransmit_mult)
    sim = SealedSimulator(args.seed, config, key, replication)
    ids = [f"peer{i:03d}" for i in range(args.peers)]
    for node_id in ids:
        sim.add_node(node_id)
    history = _history_updates(args)
    owners = _owners(args, ids)
    for s, (doc_id, client, update) in enumerate(history):
        for node_id in ids:
            replica = sim.replicas[node_id]
            if node_id == owners[s]:
                # The owner writes with the history's client id, as the session's writer.
                replica._docs[doc_id] = pycrdt.Doc(client_id=client)
                replica.doc(doc_id)
            replica.apply(doc_id, update)
    for node_id in ids:
        sim.nodes[node_id].replicator.rebuild()
        sim.start(node_id, known=ids)
    rnd = config.gossip_interval
    sim.run_until(sim.now + 40 * rnd)

    # Idle background over a window as long as the longest run we allow.
    span = args.max_rounds * rnd
    before = sim.frame_bytes
    sim.run_until(sim.now + span)
    idle_rate = (sim.frame_bytes - before) / span

    plan = _burst_plan(args)
    states = [SessionState(sim.replicas[owners[s]].doc(doc_id)) for s, (doc_id, _, _) in
              enumerate(history)]  # fmt: skip
    # Each write is identified by (doc, client id, clock after it): a peer holds it once
    # its state vector of that doc reaches the clock.
    marks: list[tuple[str, int, int]] = []
    update_bytes = 0
    t0 = sim.now
    before = sim.frame_bytes

    def write(s: int, text: str) -> None:
        nonlocal update_bytes
        doc_id = history[s][0]
        owner = owners[s]
        doc = states[s].doc
        box: list[bytes] = []
        sub = doc.observe(lambda event: box.append(event.update))
        states[s].append_message("assistant", text)
        doc.unobserve(sub)
        sim.replicas[owner].changed(doc_id)
        update_bytes += len(box[0])
        marks.append((doc_id, doc.client_id, decode_state_vector(doc.get_state())[doc.client_id]))
        sim._handle(owner, sim.nodes[owner].local_update(sim.now, doc_id, box[0]))

    for offset, s, text in plan:
        sim.at(t0 + offset, lambda s=s, text=text: write(s, text))

    xs: list[float] = [0.0]
    ys: list[float] = [0.0]
    converge_ms = None
    steps = math.ceil(span / _POLL)
    doc_ids = [h[0] for h in history]
    with phase(SUITE, f"statemesh, {args.peers} peers", steps) as bar:
        for step in range(1, steps + 1):
            sim.run_until(t0 + step * _POLL)
            bar.advance()
            # Writes not made yet count as held by nobody: both curves share a denominator.
            frac = _held_fraction(sim, ids, marks) * len(marks) / len(plan) if marks else 0.0
            xs.append(step * _POLL * 1000)
            ys.append(frac)
            if len(marks) == len(plan) and frac >= 1.0 and sim.converged(doc_ids):
                converge_ms = round((sim.now - t0) * 1000, 1)
                bar.advance(steps)
                break
    # Bytes: until every rumour has run out and acks went out, less the idle background.
    quiet_at = sim.now
    for _ in range(args.max_rounds):
        if all(sim.nodes[n].replicator.pending_rumours == 0 for n in ids):
            break
        sim.run_until(sim.now + rnd)
    sim.run_until(sim.now + 2 * rnd)  # acks owed are flushed on the next tick
    quiet_at = sim.now
    burst_bytes = sim.frame_bytes - before - idle_rate * (quiet_at - t0)
    return {
        "converge_ms": converge_ms,
        "bytes": int(round(burst_bytes)),
        "curve": (xs, ys),
        "update_bytes": update_bytes,
        "quiet_ms": round((quiet_at - t0) * 1000, 1),
        "idle_rate": idle_rate / args.peers,
    }


def _held_fraction(sim: SealedSimulator, ids: list[str], marks) -> float:
    held = 0
    by_doc: dict[str, list[tuple[int, int]]] = {}
    for doc_id, client, clock in marks:
        by_doc.setdefault(doc_id, []).append((client, clock))
    for node_id in ids:
        replica = sim.replicas[node_id]
        for doc_id, wanted in by_doc.items():
            sv = decode_state_vector(replica.state_vector(doc_id))
            held += sum(1 for client, clock in wanted if sv.get(client, 0) >= clock)
    return held / (len(ids) * len(marks))


def _baseline(args: argparse.Namespace, config, key: bytes) -> dict:
    """Every write's full state sealed and sent to every other peer over the same latencies."""
    sim = SealedSimulator(args.seed, config, key)  # used for its sealers and sizing only
    ids = [f"peer{i:03d}" for i in range(args.peers)]
    history = _history_updates(args)
    owners = _owners(args, ids)
    states = []
    for _, client, update in history:
        doc = pycrdt.Doc(client_id=client)
        doc.apply_update(update)
        states.append(SessionState(doc))
    net = sim.network
    rng = random.Random(f"baseline-net:{args.seed}")
    total = state_bytes = 0
    # arrivals[(doc, peer)] = sorted (send offset, arrival offset) of full states
    arrivals: dict[tuple[int, str], list[tuple[float, float]]] = {}
    writes: list[tuple[float, int]] = []
    plan = _burst_plan(args)
    with phase(SUITE, f"baseline, {args.peers} peers", len(plan)) as bar:
        for offset, s, text in plan:
            states[s].append_message("assistant", text)
            full = states[s].doc.get_update()
            state_bytes += len(full)
            owner = owners[s]
            env = Envelope(
                owner, sim.addresses.get(owner, "10.0.0.1:7946"), 0,
                (DocDiff(history[s][0], 1, 0, 1, full),),
            )  # fmt: skip
            size = sim.frame_size(owner, env)
            for peer in ids:
                if peer == owner:
                    continue
                total += size
                delay = net.latency_min + rng.random() * (net.latency_max - net.latency_min)
                arrivals.setdefault((s, peer), []).append((offset, offset + delay))
            writes.append((offset, s))
            bar.advance()
    # When does each peer hold each write? At the first arrival of a state sent at/after it.
    times: list[float] = []
    for offset, s in writes:
        for peer in ids:
            if peer == owners[s]:
                times.append(offset)
                continue
            sent = arrivals[(s, peer)]
            i = bisect.bisect_left(sent, (offset, -1.0))
            times.append(min(a for _, a in sent[i:]))
    times.sort()
    n = len(times)
    xs = [0.0] + [t * 1000 for t in times]
    ys = [0.0] + [(i + 1) / n for i in range(n)]
    return {
        "converge_ms": round(times[-1] * 1000, 1),
        "bytes": total,
        "curve": (xs, ys),
        "state_bytes": state_bytes,
    }
