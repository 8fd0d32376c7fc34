"""The `mergezoo` command.

Each sub-command lives in its own module under `mergezoo.commands` and exposes
`register(subparsers)`, which adds its parser and sets `func` to a callable taking the parsed
arguments and returning an exit status. Adding a command means adding one module and one line
to `COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from mergezoo import __version__
from mergezoo.errors import MergezooError

COMMAND_MODULES = [
    "mergezoo.commands.merge",
    "mergezoo.commands.methods",
    "mergezoo.commands.demo",
    "mergezoo.commands.search",
    "mergezoo.commands.pull",
    "mergezoo.commands.push",
    "mergezoo.commands.build_zoo",
    "mergezoo.commands.benchmarks",
    "mergezoo.commands.bench",
    "mergezoo.commands.eval",
    "mergezoo.commands.card",
    "mergezoo.commands.reproduce",
    "mergezoo.commands.space",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mergezoo",
        description="Merge fine-tuned experts from the Hugging Face Hub, evaluate the merges on "
        "compositional splits, and publish them with reproducible model cards.",
    )
    parser.add_argument("--version", action="version", version=f"mergezoo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MergezooError as err:
        print(f"mergezoo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mergezoo {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
