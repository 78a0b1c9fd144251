"""The README's multi-agent swarm example, run as a test.

The example is the code block in README.md that starts with the line `# swarm.py`; the
test reads it from there, so the README cannot drift from working code. It is executed as
a user would run it, and the test checks what it promises: every
task the planner wrote was claimed and completed by a worker, through shared state only.
"""

from __future__ import annotations

import re
from pathlib import Path

import trio

README = Path(__file__).resolve().parents[2] / "README.md"


def _example_code() -> tuple[str, str]:
    match = re.search(r"```python\n(# swarm\.py.*?)```", README.read_text(), re.S)
    assert match, "README.md lost its swarm example (a python block starting '# swarm.py')"
    return match.group(1), "README.md"


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
