"""The `alphasel` command: a thin table from subcommand to the module that parses and calls it.

Each command module has ``register(subparsers)`` that adds its parser and sets ``run`` as the
parser's default ``func``. Project errors become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from alphasel.errors import AlphaselError

#: subcommand → module under alphasel.cli that registers it
COMMANDS = {
    "analyze": "alphasel.cli.analyze",
    "plan": "alphasel.cli.plan",
    "plot": "alphasel.cli.plot",
    "train": "alphasel.cli.train",
    "runs": "alphasel.cli.runs",
    "study": "alphasel.cli.study",
    "compare": "alphasel.cli.compare",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alphasel",
        description="Heavy-tailed alpha per weight matrix, and alpha-guided LoRA plans.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # What ran, for records: the words given, whether from a shell or from Python.
    args.argv = ["alphasel", *(sys.argv[1:] if argv is None else argv)]
    # A command run as a program has the process to itself (main() called from Python shares
    # it with its caller): only then may a command decide what the process imports.
    args.standalone = argv is None
    try:
        args.func(args)
    except AlphaselError as err:
        print(f"alphasel {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alphasel {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
