"""The agent peer that `statemesh demo`, the failover benchmark and the failover tests run.

One process is one mesh peer (the embedding API, `open_mesh`) with a small scripted agent
in it. Every peer registers a takeover handler and a pre-warm handler; the one started
with `--agent SESSION` opens that session (claiming it) and runs a scripted conversation:
cluster config, messages, memory, a cursor, and a tool call that it starts and leaves
pending while the "tool" runs. Every step is committed with `replicas=1` and reported
once acknowledged. Whoever takes the session over resumes it where its cursor says: it
finishes each pending tool call under the call's idempotency key, then answers.

The process reports what happens as JSON lines on stdout, each stamped `t` with
`time.monotonic()` (one clock for every process of the machine, so the orchestrator can
put them on one timeline): `ready`, `member` (membership changes), `owner`, `standby`,
`prewarm`, `acked`, `takeover`, `resumed`, `fenced`, `stopped`. SIGTERM/SIGINT leave
gracefully (sessions are handed over); SIGKILL is what the demo uses to fail it.

Run: `python -m cli.demo_agent --node a --data DIR --key-file K --interface 127.0.0.1`.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from typing import Any

import trio

from crdt_types.errors import CommitTimeout, NotOwner, StatemeshError
from crdt_types.fingerprint import fingerprint_hex
from gossip.events import OwnerChanged, StandbyAssigned, WorkloadFenced
from mesh.agent_process import MEMBER_EVENT_STATES, alive_members, run, say, stdin_lines
from mesh.failover import SessionTakenOver

# The scripted conversation: (kind, payload). Step i is acknowledged as `acked` step i.
SCRIPT: tuple[tuple[str, Any], ...] = (
    ("message", ("user", "Book me a flight from Lisbon to Oslo next Friday.")),
    ("memory", ("traveller", {"name": "Ada", "seat": "aisle"})),
    ("message", ("assistant", "Sure. Let me search for flights.")),
    ("rag", ("Oslo airport OSL is 50 minutes from the city by train.", "kb/osl")),
    ("tool", ("call-1", "search_flights", {"from": "LIS", "to": "OSL", "day": "friday"})),
)
# After the tool call: the tool "runs" this long before its result would be written. The
# demo kills the owner in this window, with the call pending.
TOOL_SECONDS = 30.0
SPEED_DEFAULT = 0.15  # seconds of "thinking" between steps


def tool_result(name: str, arguments: Any, key: str) -> dict[str, Any]:
    """The demo's deterministic tool: the same idempotency key gives the same answer."""
    return {"flight": "TP1234", "price_eur": 189, "key": key, "tool": name}


def summary(state: Any) -> dict[str, Any]:
    """What the orchestrator checks acknowledged writes against."""
    cursor = state.cursor()
    return {
        "messages": [m.content for m in state.messages()],
        "memory": sorted(state.memory()),
        "rag": [r.source for r in state.rag()],
        "tool_calls": sorted(state.tool_calls()),
        "cursor": None if cursor is None else cursor.step,
    }


def config_from(args: argparse.Namespace):
    """The MeshConfig for this peer (loopback or a namespace host; mDNS only where told)."""
    from mesh.config import MeshConfig

    return MeshConfig(
        node=args.node,
        data_dir=args.data,
        listen=args.listen,
        seeds=list(args.join),
        interfaces=list(args.interface),
        mdns=bool(args.interface),
        cluster=args.cluster,
        key=args.key_file,
        profile=args.profile,
        http=args.http,
        split_brain=args.split_brain,
    )


async def run_script(mesh: Any, session_id: str, speed: float) -> None:
    """Drive the scripted conversation on `session_id`, reporting each acknowledged step."""
    session = await mesh.session(session_id)
    say("opened", session=session_id, owner=mesh.owner_of(session_id))
    mesh.cluster.set("model.name", "demo-llm-7b", by=mesh.node_id)
    st = session.state
    start = (st.cursor().step + 1) if st.cursor() is not None else 0
    for step in range(start, len(SCRIPT)):
        kind, payload = SCRIPT[step]
        await trio.sleep(speed)
        if kind == "message":
            st.append_message(*payload, metadata={"step": step})
        elif kind == "memory":
            st.set_memory(*payload)
        elif kind == "rag":
            st.add_rag(payload[0], source=payload[1], score=0.9)
        elif kind == "tool":
            call_id, name, arguments = payload
            st.start_tool_call(
                call_id, name, arguments, started_by=mesh.node_id, idempotency_key=f"{call_id}-k"
            )
        st.set_cursor(step, kind)
        try:
            holders = await session.commit(replicas=1, timeout=10)
        except CommitTimeout:
            say("unacked", session=session_id, step=step)
            continue
        say(
            "acked",
            session=session_id,
            step=step,
            kind=kind,
            fingerprint=session.fingerprint(),
            holders=holders,
            summary=summary(st),
        )
    # The tool is slow: the agent waits for it with the call pending (the demo kills here).
    await trio.sleep(TOOL_SECONDS)
    await finish(mesh, session, "tool finished")


async def finish(mesh: Any, session: Any, how: str) -> list[str]:
    """Finish every pending tool call (idempotently) and answer; returns the keys resumed."""
    st = session.state
    keys = []
    for call in st.pending_tool_calls():
        result = tool_result(call.name, call.arguments, call.idempotency_key)
        st.finish_tool_call(call.call_id, result, by=mesh.node_id)
        keys.append(call.idempotency_key)
    st.append_message("assistant", f"Booked TP1234 for 189 EUR ({how}).")
    st.set_cursor(len(SCRIPT), "answered")
    await session.commit(replicas=1, timeout=10)
    return keys


async def main(args: argparse.Namespace) -> None:
    """Run the peer until SIGTERM/SIGINT (graceful) or SIGKILL."""
    from mesh.runtime import open_mesh

    config = config_from(args)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with open_mesh(config) as mesh:

            async def on_takeover(session: Any, pending: list[Any]) -> None:
                called = time.monotonic()
                say(
                    "takeover",
                    session=session.id,
                    handler_t=called,
                    fingerprint=session.fingerprint(),
                    pending=[
                        {"call_id": c.call_id, "name": c.name, "key": c.idempotency_key}
                        for c in pending
                    ],
                    summary=summary(session.state),
                )
                try:
                    keys = await finish(mesh, session, f"resumed on {mesh.node_id}")
                except (NotOwner, CommitTimeout) as exc:
                    say("resume_failed", session=session.id, error=str(exc))
                    return
                say(
                    "resumed",
                    session=session.id,
                    keys=keys,
                    fingerprint=session.fingerprint(),
                    summary=summary(session.state),
                )

            async def on_prewarm(session_id: str, owner: str) -> None:
                say("prewarm", session=session_id, owner=owner)

            mesh.on_takeover(on_takeover)
            mesh.on_prewarm(on_prewarm)
            say(
                "ready",
                node=mesh.node_id,
                address=mesh.address,
                http=mesh.http_address,
                pid=os.getpid(),
            )
            async with trio.open_nursery() as nursery:

                async def events() -> None:
                    async with mesh.subscribe() as sub:
                        async for ev in sub:
                            report(ev)

                nursery.start_soon(events)
                if args.agent and not args.wait_go:
                    nursery.start_soon(run_script, mesh, args.agent, args.speed)
                if args.wait_go or args.commands:
                    nursery.start_soon(commands, mesh, args, nursery)
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()
    say("stopped", node=args.node)


async def commands(mesh: Any, args: argparse.Namespace, nursery: trio.Nursery) -> None:
    """Obey one command per stdin line (see `command`) until stdin closes."""
    async for line in stdin_lines():
        words = line.split()
        if words:
            nursery.start_soon(command, mesh, args, words)


async def command(mesh: Any, args: argparse.Namespace, words: list[str]) -> None:
    """`go` (run the script), `open S`, `write S TEXT [REPLICAS]`, `summary S`."""
    verb, rest = words[0], words[1:]
    try:
        if verb == "go" and args.agent:
            await run_script(mesh, args.agent, args.speed)
        elif verb == "open" and len(rest) == 1:
            await mesh.session(rest[0])
            say("opened", session=rest[0], owner=mesh.owner_of(rest[0]))
        elif verb == "write" and len(rest) in (2, 3):
            session = await mesh.session(rest[0])
            replicas = int(rest[2]) if len(rest) == 3 else 1
            try:
                session.state.append_message("agent", rest[1])
                holders = await session.commit(replicas=replicas, timeout=5)
            except (NotOwner, CommitTimeout) as exc:
                say("wrote", session=rest[0], text=rest[1], ok=False, error=type(exc).__name__)
                return
            say(
                "wrote",
                session=rest[0],
                text=rest[1],
                ok=True,
                holders=holders,
                fingerprint=session.fingerprint(),
            )
        elif verb == "status" and not rest:
            st = mesh.status()
            say("status", alive=alive_members(st), stable=st.get("stable"), owners=st.get("owners"))
        elif verb == "summary" and len(rest) == 1:
            state = mesh.read_session(rest[0])
            say(
                "summary",
                session=rest[0],
                owner=mesh.owner_of(rest[0]),
                summary=None if state is None else summary(state),
                fingerprint=None if state is None else fingerprint_hex(state.doc),
            )
        else:
            say("bad_command", words=words)
    except StatemeshError as exc:
        say("command_failed", words=words, error=f"{type(exc).__name__}: {exc}")


def report(ev: object) -> None:
    """One subscriber event as a timeline line."""
    if type(ev) in MEMBER_EVENT_STATES:
        say("member", node=ev.node, state=MEMBER_EVENT_STATES[type(ev)])
    elif isinstance(ev, OwnerChanged):
        say(
            "owner", session=ev.workload, owner=ev.owner, epoch=ev.epoch, previous=ev.previous_owner
        )
    elif isinstance(ev, StandbyAssigned):
        say("standby", session=ev.workload, owner=ev.owner, standby=ev.standby)
    elif isinstance(ev, SessionTakenOver):
        say("taken", session=ev.session_id, previous=ev.previous_owner, epoch=ev.epoch)
    elif isinstance(ev, WorkloadFenced):
        say("fenced", session=ev.workload, owner=ev.owner, epoch=ev.epoch)


def parser() -> argparse.ArgumentParser:
    """Flags of the agent peer."""
    p = argparse.ArgumentParser(prog="python -m cli.demo_agent", description=__doc__)
    p.add_argument("--node", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--key-file", required=True)
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--join", action="append", default=[])
    p.add_argument("--interface", action="append", default=[])
    p.add_argument("--cluster", default="statemesh-demo")
    p.add_argument("--profile", default="lan")
    p.add_argument("--http", default="127.0.0.1:0")
    p.add_argument("--split-brain", default="majority", choices=("majority", "availability"))
    p.add_argument("--agent", metavar="SESSION", help="run the scripted agent on SESSION")
    p.add_argument("--wait-go", action="store_true", help="start the script on 'go' (stdin)")
    p.add_argument("--commands", action="store_true", help="obey commands on stdin")
    p.add_argument("--speed", type=float, default=SPEED_DEFAULT, help="seconds between steps")
    return p


if __name__ == "__main__":
    run(main, parser().parse_args(), "demo_agent")
