"""The `statemesh` command: one entry point, one module per subcommand.

Each subcommand module exposes `register(subparsers)` which adds its parser and sets
`func` to a callable taking the parsed arguments and returning an exit code. Exit codes:
0 success, 1 the checked thing is unsound (corruption, not converged), 2 usage or
environment errors (bad flags, unusable data dir, missing privileges).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

# Subcommand modules, in the order `statemesh --help` lists them. A module that does not
# exist yet is skipped so the command keeps working while the project grows.
SUBCOMMANDS = (
    "cli.peer",
    "cli.demo",
    "cli.status",
    "cli.inspect",
    "cli.bench",
    "cli.sim",
    "cli.chaos",
    "cli.keygen",
    "cli.config",
    "cli.secret",
)


class _OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit code 2.

    argparse prints the whole usage block before the error; scripts and humans both read
    the one line that says what is wrong, and `--help` still shows the usage.
    """

    def error(self, message: str) -> NoReturn:
        """Print `prog: error: message` and exit 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available subcommand."""
    parser = _OneLineParser(
        prog="statemesh",
        description="Peer-to-peer failover state mesh for autonomous AI agents.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    sub.required = True
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
