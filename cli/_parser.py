"""How a subcommand module adds its parser: the one shape every `register` shares.

A subcommand is listed in `statemesh --help` by its one-line `help`, and its own
`--help` shows the module docstring. The docstrings are written as the text a user
should read (usage lines, lists, paragraphs), so by default they are printed as written
rather than re-flowed by argparse; the few commands whose docstring is plain prose and
was always re-flowed to the terminal's width keep that with `wrap=True`, so no command's
help text changes. Keeping this in one place is why `register` functions stay a list of
their own flags.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["add_command"]


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    help: str,
    doc: str | None,
    func: Callable[[argparse.Namespace], Any] | None = None,
    *,
    wrap: bool = False,
) -> argparse.ArgumentParser:
    """Add subcommand `name` described by `doc` (as written unless `wrap`), running `func`."""
    # argparse's default formatter re-flows a description; the raw one keeps its lines.
    formatter = argparse.HelpFormatter if wrap else argparse.RawDescriptionHelpFormatter
    parser = sub.add_parser(name, help=help, description=doc, formatter_class=formatter)
    if func is not None:
        parser.set_defaults(func=func)
    return parser
