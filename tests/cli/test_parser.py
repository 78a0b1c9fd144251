"""`cli._parser.add_command`: the one shape of a subcommand's parser.

Built on a real argparse tree (the same parser class `statemesh` uses) and on the real
`statemesh` parser: a docstring shown as written, or re-flowed with `wrap`, the runner
set as `func`, and every subcommand of `statemesh` reachable with a runner.
"""

from __future__ import annotations

import argparse

import pytest

from cli import chaos, keygen, peer, sim, status
from cli._parser import add_command
from cli.main import _OneLineParser, build_parser

DOC = """`tool x`: the first line.

    tool x --flag   an indented usage line
    tool x --other  another one

A paragraph that argparse would re-flow."""


def _sub() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    top = _OneLineParser(prog="tool")
    return top, top.add_subparsers(dest="command", parser_class=_OneLineParser)


def _help(parser: argparse.ArgumentParser, monkeypatch: pytest.MonkeyPatch) -> str:
    # argparse wraps to $COLUMNS; a fixed width makes the text the same on every terminal.
    monkeypatch.setenv("COLUMNS", "100")
    return parser.format_help()


def test_the_description_is_shown_as_written(monkeypatch) -> None:
    _, sub = _sub()
    text = _help(add_command(sub, "x", "do x", DOC), monkeypatch)
    assert DOC in text


def test_wrap_reflows_the_description(monkeypatch) -> None:
    _, sub = _sub()
    text = _help(add_command(sub, "x", "do x", DOC, wrap=True), monkeypatch)
    assert "    tool x --flag   an indented usage line\n" not in text
    assert "tool x --flag an indented usage line tool x --other another one" in text


def test_help_is_the_one_line_in_the_command_list(monkeypatch) -> None:
    top, sub = _sub()
    add_command(sub, "x", "do x, briefly", DOC)
    listing = _help(top, monkeypatch)
    assert "do x, briefly" in listing and "the first line" not in listing


def test_func_is_what_the_parsed_command_runs() -> None:
    top, sub = _sub()

    def run(args: argparse.Namespace) -> int:
        return 7

    add_command(sub, "x", "do x", DOC, run).add_argument("--n", type=int, default=0)
    args = top.parse_args(["x", "--n", "3"])
    assert args.func is run and args.n == 3


def test_without_func_no_runner_is_set() -> None:
    top, sub = _sub()
    add_command(sub, "x", "do x", DOC)
    assert not hasattr(top.parse_args(["x"]), "func")


def test_the_parser_is_the_subparsers_class_so_usage_errors_stay_one_line(capsys) -> None:
    top, sub = _sub()
    add_command(sub, "x", "do x", DOC).add_argument("--n", type=int)
    with pytest.raises(SystemExit) as exc:
        top.parse_args(["x", "--n", "many"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("module", [chaos, keygen, peer, sim, status], ids=lambda m: m.__name__)
def test_statemesh_commands_show_their_module_docstring_as_written(module, monkeypatch) -> None:
    name = module.__name__.rpartition(".")[2]
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    text = _help(sub.choices[name], monkeypatch)
    assert module.__doc__.strip() in text


def test_every_statemesh_command_path_ends_in_a_runner() -> None:
    parser = build_parser()
    leaves = []

    def walk(p: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            leaves.append((path, p.get_default("func")))
            return
        for name, child in subs[0].choices.items():
            walk(child, (*path, name))

    walk(parser, ())
    assert len(leaves) >= 10, leaves
    for path, func in leaves:
        assert callable(func), path
