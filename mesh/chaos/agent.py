"""The agent process of a chaos campaign: one mesh peer that writes what it owns.

Run as `python -m mesh.chaos.agent --node N --data DIR --key-file K --listen A:P
--join B:P ... --sessions s1,s2`. It opens the mesh, reports `ready`, and on the `go`
line (stdin) opens its `--sessions` (claiming the ones nobody owns) and starts writing:
every `--interval` seconds, for each session this node owns, it appends a unique token
as a message and commits at a level drawn from a seeded `random.Random` (local,
replicas=1, replicas=2, all). Each outcome is one JSON line on stdout, stamped `t` with
`time.monotonic()` (the machine's clock, shared with the orchestrator): `acked` (with
the level), `unacked` (timeout or disk full: promised nothing), `refused` (not the owner).
Ownership changes are reported as `taken` (this node took a session over, naming the
previous owner and the epoch) and `fenced`.

`dump` (stdin) prints one `dump` line: for every session held here, the owner and epoch
this replica believes, the fingerprint and every token present. `status` prints the
members this node sees alive.

Invariants: at most one commit per session is in flight, so tokens of one session are
acknowledged in order; a token is reported `acked` only after `commit` returned at its
level; SIGTERM/SIGINT leave gracefully (sessions handed over), SIGKILL is a crash.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
from typing import Any

import trio

from crdt_types.errors import CommitTimeout, NotOwner, StorageError
from crdt_types.fingerprint import fingerprint_hex
from gossip.events import WorkloadFenced
from mesh.agent_process import MEMBER_EVENT_STATES, alive_members, run, say, stdin_lines
from mesh.failover import SessionTakenOver

__all__ = ["LEVELS", "main", "parser"]

# The commit levels an agent draws from; 0 is local durability only.
LEVELS: tuple[int | str, ...] = (0, 1, 2, "all")
COMMIT_TIMEOUT = 3.0


class Writer:
    """Writes unique tokens to the sessions this node owns, one commit per session at a time."""

    def __init__(self, mesh: Any, rng: random.Random, boot: str) -> None:
        self.mesh = mesh
        self.rng = rng
        self.boot = boot
        self.count = 0
        self.busy: set[str] = set()

    async def write(self, sid: str) -> None:
        """Append one token to `sid` and commit it at a random level; report the outcome."""
        self.count += 1
        token = f"{self.mesh.node_id}.{self.boot}.{self.count}"
        level = self.rng.choice(LEVELS)
        try:
            session = await self.mesh.session(sid)
            session.state.append_message("agent", token)
            holders = await session.commit(replicas=level, timeout=COMMIT_TIMEOUT)
        except NotOwner as exc:
            say("refused", session=sid, token=token, error=type(exc).__name__)
        except (CommitTimeout, StorageError) as exc:
            say("unacked", session=sid, token=token, level=level, error=type(exc).__name__)
        else:
            say("acked", session=sid, token=token, level=level, holders=holders)
        finally:
            self.busy.discard(sid)

    async def run(self, sessions: list[str], interval: float) -> None:
        """Open `sessions`, then write to whatever this node owns until cancelled."""
        for sid in sessions:
            with trio.move_on_after(5):
                await self.mesh.session(sid)
        async with trio.open_nursery() as nursery:
            while True:
                for sid in self.mesh.sessions():
                    if sid not in self.busy and self.mesh.owner_of(sid) == self.mesh.node_id:
                        self.busy.add(sid)
                        nursery.start_soon(self.write, sid)
                await trio.sleep(interval)


def dump(mesh: Any, tokens: bool = True) -> dict[str, Any]:
    """Every session held here: owner, epoch, fingerprint and (unless not `tokens`) tokens."""
    out = {}
    for sid in mesh.sessions():
        state = mesh.read_session(sid)
        if state is None:
            continue
        out[sid] = {
            "owner": mesh.owner_of(sid),
            "epoch": mesh.ownership.epoch_of("session/" + sid),
            "fingerprint": fingerprint_hex(state.doc),
        }
        if tokens:
            out[sid]["tokens"] = [m.content for m in state.messages()]
    return out


async def commands(mesh: Any, writer: Writer, args: argparse.Namespace, nursery: Any) -> None:
    """Obey `go`, `halt`, `dump [brief]` and `status` lines on stdin until it closes."""
    started = False
    scope = trio.CancelScope()

    async def write() -> None:
        with scope:
            await writer.run(args.sessions, args.interval)
        say("halted", node=mesh.node_id)

    async for line in stdin_lines():
        verb = line.strip()
        if verb == "go" and not started:
            started = True
            nursery.start_soon(write)
        elif verb == "halt":
            scope.cancel()
            if not started:
                say("halted", node=mesh.node_id)
            started = True
        elif verb in ("dump", "dump brief"):
            say("dump", node=mesh.node_id, sessions=dump(mesh, verb == "dump"))
        elif verb == "status":
            st = mesh.status()
            say("status", alive=alive_members(st), ready=st.get("started"))


async def main(args: argparse.Namespace) -> None:
    """Run the peer until SIGTERM/SIGINT (graceful leave) or SIGKILL."""
    from mesh.config import MeshConfig
    from mesh.runtime import open_mesh

    config = MeshConfig(
        node=args.node,
        data_dir=args.data,
        listen=args.listen,
        seeds=list(args.join),
        mdns=False,
        cluster=args.cluster,
        key=args.key_file,
        profile=args.profile,
        http=args.http,
    )
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with open_mesh(config) as mesh:

            async def on_takeover(session: Any, pending: list[Any]) -> None:
                say("takeover", session=session.id)

            mesh.on_takeover(on_takeover)
            writer = Writer(mesh, random.Random(args.seed), f"{os.getpid()}")
            say("ready", node=mesh.node_id, address=mesh.address, pid=os.getpid())
            async with trio.open_nursery() as nursery:

                async def events() -> None:
                    async with mesh.subscribe() as sub:
                        async for ev in sub:
                            if isinstance(ev, SessionTakenOver):
                                say(
                                    "taken",
                                    session=ev.session_id,
                                    previous=ev.previous_owner,
                                    epoch=ev.epoch,
                                    covered=ev.covered,
                                )
                            elif type(ev) in MEMBER_EVENT_STATES:
                                state = MEMBER_EVENT_STATES[type(ev)]
                                say("member", node=ev.node, state=state)
                            elif isinstance(ev, WorkloadFenced):
                                say("fenced", session=ev.workload, owner=ev.owner, epoch=ev.epoch)

                nursery.start_soon(events)
                nursery.start_soon(commands, mesh, writer, args, nursery)
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()
    say("stopped", node=args.node)


def parser() -> argparse.ArgumentParser:
    """Flags of the chaos agent."""
    p = argparse.ArgumentParser(prog="python -m mesh.chaos.agent", description=__doc__)
    p.add_argument("--node", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--key-file", required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--join", action="append", default=[])
    p.add_argument("--cluster", default="statemesh-chaos")
    p.add_argument("--profile", default="lan")
    p.add_argument("--http", default=None)
    p.add_argument("--sessions", type=lambda s: [x for x in s.split(",") if x], default=[])
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    return p


if __name__ == "__main__":
    run(main, parser().parse_args(), "chaos agent")
