"""Real `statemesh peer` processes with --http for the operations CLI tests.

Peers listen on loopback with `--no-mdns`, port 0 and a generated cluster key; they are
stopped by pid (SIGTERM, then SIGKILL) when the fixture ends.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gossip.keyring import write_key_file

STATEMESH = [sys.executable, "-m", "cli.main"]


def cli_process(
    *args: str, input: bytes | None = None, timeout: float = 30
) -> subprocess.CompletedProcess:
    """Run `statemesh ARGS` as a real process; stdout and stderr as bytes."""
    return subprocess.run(
        [*STATEMESH, *map(str, args)], input=input, capture_output=True, timeout=timeout
    )


def cli(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    """Run `statemesh ARGS` in this process (the command's own entry point, no spawn cost).

    Standard streams are byte-backed text streams, as in a real process, so commands that
    write bytes (`secret get`) and read bytes (`secret set`) are exercised as they run.
    """
    from cli.main import main

    out, err = io.BytesIO(), io.BytesIO()
    streams = (
        io.TextIOWrapper(io.BytesIO(input or b""), encoding="utf-8"),
        io.TextIOWrapper(out, encoding="utf-8", write_through=True),
        io.TextIOWrapper(err, encoding="utf-8", write_through=True),
    )
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = streams
    try:
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        streams[1].flush()
        streams[2].flush()
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def read_line(proc: subprocess.Popen, timeout: float) -> bytes | str | None:
    """The next line of `proc`'s stdout; None if it exits or `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if line:
                return line
        if proc.poll() is not None:
            break
    return None


class Peer:
    """One `statemesh peer` process; `http` is its HTTP address."""

    def __init__(self, name: str, root: Path, key: Path, *extra: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [
                *STATEMESH, "peer", "--node", name, "--data", str(root / name),
                "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--key-file", str(key),
                "--no-mdns", "--log-format", "json", *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        self.ready = json.loads(self._line(30))
        self.address = self.ready["address"]
        self.http = self.ready["http"]

    def _line(self, timeout: float) -> bytes:
        line = read_line(self.proc, timeout)
        if line is None:
            self.kill()
            raise AssertionError(
                f"peer {self.name} printed no ready line: {self.proc.stderr.read()!r}"
            )
        return line

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://{self.http}{path}", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> bytes:
        """SIGTERM (graceful leave), SIGKILL if it lingers; returns its stderr."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    """Poll `predicate` until it returns a true value (bounded); return that value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except OSError as exc:  # a peer still starting
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def start_pair(root: Path) -> tuple[Path, Peer, Peer]:
    """A key file and two joined peers, both ready (their /readyz answers 200)."""
    key = root / "cluster.key"
    write_key_file(key, os.urandom(32))
    a = Peer("a", root, key)
    b = Peer("b", root, key, "--join", a.address)

    def ready() -> bool:
        for peer in (a, b):
            try:
                urllib.request.urlopen(f"http://{peer.http}/readyz", timeout=5).close()
            except OSError:
                return False
        return True

    try:
        wait_for(ready, what="both peers ready")
    except AssertionError:
        a.stop(), b.stop()
        raise
    return key, a, b
