"""The shared progress helper: plain lines when stderr is not a terminal, a bar when it is."""

from __future__ import annotations

import io

import pytest

from benchmarks._progress import note, phase


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_log_start_each_tenth_and_end() -> None:
    out = io.StringIO()
    with phase("demo", "writing", 1000, stream=out) as bar:
        for _ in range(1000):
            bar.advance()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[bench demo] writing: 0/1000"
    assert lines[-1] == "[bench demo] writing: 1000/1000"
    assert len(lines) == 11  # start, nine tenths, end: short logs whatever the size


def test_advance_is_clamped_and_the_phase_ends_on_error() -> None:
    out = io.StringIO()
    with pytest.raises(RuntimeError), phase("demo", "x", 3, stream=out) as bar:
        bar.advance(10)
        assert bar.done == 3
        raise RuntimeError("boom")
    assert out.getvalue().splitlines()[-1] == "[bench demo] x: 3/3"


def test_a_terminal_gets_a_rich_bar() -> None:
    out = FakeTerminal()
    with phase("demo", "bar", 4, stream=out) as bar:
        bar.advance(4)
        bar.describe("bar done")
    text = out.getvalue()
    assert "bench demo" in text and "4/4" in text and "bar done" in text
    assert "[bench demo] bar: 0/4" not in text  # not the plain-line form


def test_note_prefixes_the_suite() -> None:
    out = io.StringIO()
    note("wire", "hello", stream=out)
    assert out.getvalue() == "[bench wire] hello\n"
