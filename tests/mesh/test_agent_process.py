"""mesh.agent_process: the timeline lines, stdin commands and exit codes of agent processes.

The stdin reader and the exit codes are exercised in real child processes (a pipe for
stdin, the real exit status); `say`, `alive_members` and the orchestrator side
(`read_events`, `pump`) in-process.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import time

import pytest

from mesh.agent_process import alive_members, pump, read_events, say

pytestmark = pytest.mark.timeout(60)

# A child that echoes each stdin line back as a `line` event, then says `eof`.
ECHO = """
import trio
from mesh.agent_process import run, say, stdin_lines

async def main(args):
    async for line in stdin_lines():
        say("line", text=line)
    say("eof")

run(main, None, "echo")
"""


def test_say_prints_one_flushed_json_line_stamped_with_the_monotonic_clock(capsys):
    before = time.monotonic()
    say("acked", session="chat", holders=["b"])
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1
    line = json.loads(out)
    assert line["event"] == "acked" and line["session"] == "chat" and line["holders"] == ["b"]
    assert before <= line["t"] <= time.monotonic()


def test_alive_members_are_the_sorted_alive_names_of_a_status():
    status = {
        "members": [
            {"node": "c", "state": "alive"},
            {"node": "a", "state": "alive"},
            {"node": "b", "state": "suspect"},
            {"node": "d", "state": "dead"},
        ]
    }
    assert alive_members(status) == ["a", "c"]
    assert alive_members({"members": []}) == []


def test_stdin_lines_yields_each_line_split_across_writes_until_eof():
    proc = subprocess.Popen(
        [sys.executable, "-c", ECHO],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # A line split over two writes, two lines in one write, an empty line, bad UTF-8.
        proc.stdin.write(b"go")
        proc.stdin.flush()
        time.sleep(0.05)
        out, err = proc.communicate(b" on\nwrite s hi\n\n\xff\n", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.decode().splitlines()]
    assert [e.get("text") for e in events if e["event"] == "line"] == [
        "go on",
        "write s hi",
        "",
        "\ufffd",
    ]
    assert events[-1]["event"] == "eof"


@pytest.mark.parametrize(
    ("raise_", "code", "stderr"),
    [
        ("pass", 0, ""),
        ("raise LocalError('bad flag')", 2, "tool: error: bad flag"),
        ("raise KeyboardInterrupt", 130, ""),
    ],
)
def test_run_exits_0_after_main_2_on_a_statemesh_error_130_on_ctrl_c(raise_, code, stderr):
    src = (
        "from crdt_types.errors import LocalError\n"
        "from mesh.agent_process import run\n"
        f"async def main(args):\n    {raise_}\n"
        "run(main, None, 'tool')\n"
    )
    proc = subprocess.run([sys.executable, "-c", src], capture_output=True, timeout=30)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.decode().strip() == stderr


def test_read_events_queues_json_objects_with_the_name_and_skips_other_lines():
    events: queue.Queue = queue.Queue()
    lines = [b'{"event": "ready"}\n', b"not json\n", b"[1, 2]\n", b'{"event": "acked"}\n']
    read_events("p0", lines, events).join(timeout=10)
    got = []
    while not events.empty():
        got.append(events.get_nowait())
    assert got == [("p0", {"event": "ready"}), ("p0", {"event": "acked"})]


def test_pump_hands_events_in_order_until_done_or_the_deadline():
    events: queue.Queue = queue.Queue()
    for i in range(5):
        events.put(("p", {"i": i}))
    seen: list[int] = []
    assert pump(
        events, time.monotonic() + 10, lambda: len(seen) == 3, lambda n, e: seen.append(e["i"])
    )
    assert seen == [0, 1, 2]
    # Nothing satisfies `done`: it hands over the rest, then gives up at the deadline.
    assert not pump(events, time.monotonic() + 0.3, lambda: False, lambda n, e: seen.append(e["i"]))
    assert seen == [0, 1, 2, 3, 4]
