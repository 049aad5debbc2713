"""The `hf-wagle` command line: `main`, and the table of commands (`COMMANDS`).

Each command is a small class in its own file (`demo`, `unlearn`, `attribute`, `compare_masks`, `plan`, `evaluate`,
`export`, `verify`, `audit`, `push`), registered with `register_command(name)`; a plugin adds one the same way
(`hf_wagle.cli.plugins`). Commands whose options are dataclasses (`unlearn`, `attribute`, `compare-masks`) parse
them with `WagleParser` (`hf_wagle.cli.parser`): flags generated from the fields, a YAML file under them. The
others add plain argparse options. `hf-wagle --help` and `hf-wagle <command> --help` import no torch (but
`unlearn --help`, whose keys are `TrainingArguments`'); the work, and torch with it, happens in each command's `run`.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

# isort: off
# the built-in commands register themselves on import, in the order `hf-wagle --help` lists them
from . import demo, unlearn, attribute, compare_masks, plan, evaluate, export, verify, audit, sign, push  # noqa: F401
# isort: on
from .common import Command, DefaultsShown, add_plugins_argument, apply_vocabulary
from .plugins import COMMANDS, load_command_line_plugins, load_plugins, register_command

__all__ = ["COMMANDS", "Command", "WagleParser", "build_parser", "load_plugins", "main", "register_command"]


def __getattr__(name: str):
    if name == "WagleParser":  # imports transformers: on first use only
        from .parser import WagleParser

        return WagleParser
    raise AttributeError(f"module 'hf_wagle.cli' has no attribute {name!r}")


def build_parser() -> argparse.ArgumentParser:
    """The `hf-wagle` parser, with a subparser per registered command. A plain command's options are added here; a
    command that parses dataclasses gets a placeholder (its own parser reads the rest, `--help` included)."""
    from ..version import __version__

    parser = argparse.ArgumentParser(prog="hf-wagle", description="WAGLE unlearning for Hugging Face models")
    parser.add_argument("--version", action="version", version=f"hf-wagle {__version__}")
    with_defaults = functools.partial(argparse.ArgumentParser, formatter_class=DefaultsShown, allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=with_defaults)
    for name, cls in COMMANDS.items():
        command = cls()
        if command.parses_dataclasses:
            sub.add_parser(name, help=command.help, add_help=False)
            continue
        p = sub.add_parser(name, help=command.help, description=command.description())
        command.add_arguments(p)
        if "plugins" not in {a.dest for a in p._actions}:
            add_plugins_argument(p)
        apply_vocabulary(p)
        p.set_defaults(_hf_wagle_run=command.run)  # a name no option uses
    return parser


def main(argv=None) -> int:
    """Run `hf-wagle` on `argv` (default `sys.argv[1:]`) and return its exit status. A command's failure is one line
    on stderr and status 2 (1 for a folder that is not confined to its mask, `hf_wagle.io.NotConfined`);
    `HF_WAGLE_DEBUG=1` raises it with its traceback instead."""
    argv = sys.argv[1:] if argv is None else list(argv)
    name = argv[0] if argv and not argv[0].startswith("-") else None
    try:
        load_command_line_plugins(argv[1:] if name else [])  # before the lookup: a plugin may add the command
        command = COMMANDS[name]() if name in COMMANDS else None
        if command is not None and command.parses_dataclasses:
            from .parser import parse_command

            return command.run(parse_command(command, argv[1:]))
        args = build_parser().parse_args(argv)
        return args._hf_wagle_run(args)
    except (ValueError, OSError, NotImplementedError, RuntimeError, ArithmeticError, TypeError) as error:
        # bad input, a missing model or file, the Hub offline or refusing, a diverging run (FloatingPointError), a
        # config value of the wrong type: one line, no traceback, status 2 (OSError covers a missing path,
        # huggingface_hub's HTTP errors and offline mode). HF_WAGLE_DEBUG=1 shows the traceback.
        if os.environ.get("HF_WAGLE_DEBUG"):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"hf-wagle{' ' + name if name else ''}: error: {message}", file=sys.stderr)
        return getattr(error, "exit_status", 2)
