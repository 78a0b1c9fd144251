"""The README's multi-agent swarm example, run as a test.

The example is the code block in README.md that starts with the line `# swarm.py`; until
that block is merged into the README, the copy below (the same code) is used. Either way
the code is executed as a user would run it, and the test checks what it promises: every
task the planner wrote was claimed and completed by a worker, through shared state only.
"""

from __future__ import annotations

import re
from pathlib import Path

import trio

README = Path(__file__).resolve().parents[2] / "README.md"

SWARM = '''
# swarm.py: a planner and two workers, three agents on three mesh peers.
import tempfile

import trio

from mesh import MeshConfig, open_mesh

TASKS = ["fetch data", "clean data", "train model", "write report"]


def config(name, data, seeds=()):
    # Loopback and no key for a self-contained demo; in production pass key="cluster.key"
    # (statemesh keygen) and real addresses, or let mDNS find peers (interfaces=[...]).
    return MeshConfig(node=name, data_dir=f"{data}/{name}", seeds=list(seeds), insecure=True)


def results(mesh):
    """Every completed task, from every worker session this replica holds."""
    done = {}
    for sid in mesh.sessions():
        if sid.startswith("worker-"):
            for key, value in mesh.read_session(sid).memory().items():
                if key.startswith("done:"):
                    done.setdefault(key[5:], value)
    return done


async def until_changed(events, seconds=0.5):
    """Wait for the next event (a peer's write, a member change) or a short timeout."""
    with trio.move_on_after(seconds):
        await events.receive()


async def planner(mesh):
    plan = await mesh.session("plan")  # the planner owns and writes this session
    for i, text in enumerate(TASKS):
        plan.state.set_memory(f"task-{i}", text)
    await plan.commit(replicas="all", timeout=10)  # every live peer has the plan on disk
    async with mesh.subscribe() as events:
        while len(results(mesh)) < len(TASKS):
            await until_changed(events)
    return results(mesh)


async def worker(mesh):
    me = await mesh.session(f"worker-{mesh.node_id}")  # each worker writes only its own
    async with mesh.subscribe() as events:
        while True:
            plan = mesh.read_session("plan")
            tasks = plan.memory() if plan is not None else {}
            done = results(mesh)
            todo = [t for t in sorted(tasks) if t not in done]
            if tasks and not todo:
                return
            for task in todo:
                if me.state.get_memory(f"claim:{task}") is None:
                    me.state.set_memory(f"claim:{task}", mesh.node_id)
                    await me.commit(replicas="all", timeout=10)
                # The claim with the smallest worker name wins; a loser moves on.
                claimants = sorted(
                    sid[len("worker-"):]
                    for sid in mesh.sessions()
                    if sid.startswith("worker-")
                    and mesh.read_session(sid).get_memory(f"claim:{task}") is not None
                )
                if claimants and claimants[0] == mesh.node_id:
                    result = f"{tasks[task]}: done by {mesh.node_id}"
                    me.state.set_memory(f"done:{task}", result)
                    await me.commit(replicas="all", timeout=10)
            await until_changed(events)


async def main():
    with tempfile.TemporaryDirectory() as data:
        async with open_mesh(config("planner", data)) as hub:
            async with (
                open_mesh(config("w1", data, [hub.address])) as w1,
                open_mesh(config("w2", data, [hub.address])) as w2,
            ):
                with trio.fail_after(60):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(worker, w1)
                        nursery.start_soon(worker, w2)
                        done = await planner(hub)
    for task, result in sorted(done.items()):
        print(task, "->", result)
    return done


if __name__ == "__main__":
    trio.run(main)
'''


def _example_code() -> tuple[str, str]:
    if README.exists():
        match = re.search(r"```python\n(# swarm\.py.*?)```", README.read_text(), re.S)
        if match:
            return match.group(1), "README.md"
    return SWARM, "the test's copy"


def test_swarm_example_completes_every_task_through_shared_state(capsys):
    code, source = _example_code()
    namespace: dict = {"__name__": "swarm_example"}
    exec(compile(code, f"<swarm example from {source}>", "exec"), namespace)
    done = trio.run(namespace["main"])
    tasks = namespace["TASKS"]
    assert sorted(done) == [f"task-{i}" for i in range(len(tasks))], (source, done)
    for i, text in enumerate(tasks):
        result = done[f"task-{i}"]
        assert result.startswith(f"{text}: done by w"), (source, result)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(tasks)
