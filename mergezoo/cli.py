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
import signal
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


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP), raised where the program is, so that it cleans up as for Ctrl-C."""


def _terminate(signum: int, frame) -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):  # one clean-up at a time: ignore repeats
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports torch and the rest: seconds, Ctrl-C may come
    except KeyboardInterrupt:
        print("mergezoo: interrupted while starting; nothing was written", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    handlers = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            handlers[sig] = signal.signal(sig, _terminate)
        except ValueError:  # not the main thread (an embedding program): leave them
            pass
    try:
        return int(args.func(args) or 0)
    except MergezooError as err:
        print(f"mergezoo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        what = getattr(err, "left", None) or "nothing was written"  # set by who knows better
        how = f"terminated ({err.args[0]})" if isinstance(err, Terminated) else "interrupted"
        print(f"mergezoo {args.command}: {how}; {what}", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    finally:
        for sig, handler in handlers.items():
            # Run as a program (no argv given), the work is over: a signal during the
            # interpreter's own exit (a second or two of freeing torch) would only print a
            # traceback from an exit handler.
            signal.signal(sig, signal.SIG_IGN if argv is None else handler)
        if argv is None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
