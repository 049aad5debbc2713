"""`WagleParser`: one parser for the command line, its YAML files, the example scripts and the benchmarks.

`transformers.HfArgumentParser` turns dataclasses into flags (`--batch_size` and `--batch-size`, `--flag false`,
lists as several values, `Literal` fields as choices); `WagleParser` reads a YAML file under them, as TRL's
`TrlParser` does, so a flag, a YAML key and a keyword argument are one field:

- `--config file.yaml`: every key of the file is a field of one of the dataclasses (or an option the command adds);
  an unknown key is refused, naming it;
- a flag given on the command line wins over the file, and a key the file gives is no longer required as a flag;
- `plugins:` in the file and `--plugins` are imported before any value is checked, so a plugin may register the
  mask method or objective the config names (`hf_wagle.cli.plugins`);
- every error is one `ValueError` line (argparse's own message, when it has one, is printed above it).

    parser = WagleParser((UnlearnArguments, WagleConfig), prog="hf-wagle unlearn")
    script, training = parser.parse_args_and_config(["--config", "run.yaml", "--max_steps", "4"])
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from transformers import HfArgumentParser

from .common import DefaultsShown, add_plugins_argument, apply_vocabulary, read_yaml, scan_config_and_plugins
from .plugins import load_plugins

_OWN = ("config", "plugins")  # the parser's options, not the dataclasses'


class WagleParser(HfArgumentParser):
    """`HfArgumentParser` over `dataclass_types` that reads `--config file.yaml` under the flags and loads plugins
    first (see the module docstring). `config=False` leaves out `--config`, `plugins=False` `--plugins`."""

    def __init__(self, dataclass_types=(), *, config: bool = True, plugins: bool = True, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsShown)
        kwargs.setdefault("allow_abbrev", False)  # exact names only: `--base` never silently means `--base_model`
        super().__init__(dataclass_types, **kwargs)
        self.hidden: list = []  # options `--help` leaves to `--help-all` (`arrange_help`)
        self.reads_config = config
        if config:
            self.add_argument("--config", metavar="FILE.yaml",
                              help="YAML file that sets any of these options by its name (e.g. `batch_size: 8`, "
                                   "`plugins: [my_methods.py]`); flags given here win over it")
        if plugins and "plugins" not in {a.dest for a in self._actions}:
            add_plugins_argument(self)
        self.loads_plugins = plugins

    def format_help(self) -> str:
        if not self.hidden:
            return super().format_help()
        saved = [(a, a.help) for a in self.hidden]
        for action in self.hidden:
            action.help = argparse.SUPPRESS
        try:
            text = super().format_help()
        finally:
            for action, help_ in saved:
                action.help = help_
        return text.rstrip("\n") + (f"\n\n{len(saved)} more options (unlearning, TrainingArguments): "
                                     f"{self.prog} --help-all\n")

    def _scan(self, args: list[str]) -> argparse.Namespace:
        """`--config` and `--plugins` ahead of the full parse (also `--config=file`)."""
        try:
            return scan_config_and_plugins(args)
        except argparse.ArgumentError as e:
            raise ValueError(f"bad arguments: {e}") from None

    def parse_args_and_config(self, args=None, config: dict | None = None, source: str | None = None) -> tuple:
        """The dataclass instances, in the order given, then (when the parser has options of its own beyond
        `--config` and `--plugins`) a namespace of them: from `args` (default `sys.argv[1:]`) over the YAML file
        of `--config`, or over the mapping `config` (a script's own, named `source` in errors)."""
        args = sys.argv[1:] if args is None else list(args)
        given = self._scan(args)
        if config is None and self.reads_config and given.config is not None:
            source = f"--config {given.config}"
            config = read_yaml(given.config)
        config = dict(config or {})
        source = source or "config"
        if self.loads_plugins:
            load_plugins(config.pop("plugins", None), f"plugins in {source}")
            load_plugins(given.plugins)
        return self._parse(args, config, source, f"see `{self.prog} --help`")

    def parse_mapping(self, values: dict, source: str = "config") -> tuple:
        """The dataclasses from `values` alone (a script's YAML block), without a command line or plugins:
        unknown keys are refused, required ones must be there."""
        hint = f"the keys are the fields of {' and '.join(d.__name__ for d in self.dataclass_types)}"
        missing = sorted(a.dest for a in self._actions if a.required and a.dest not in values)
        if missing:
            raise ValueError(f"{source}: missing keys {missing}; {hint}")
        return self._parse([], dict(values), source, hint)

    def _parse(self, args: list[str], values: dict, source: str, hint: str) -> tuple:
        known = {a.dest for a in self._actions} - {"help", "config"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}; {hint}")
        later, saved = {}, []
        for action in self._actions:
            if action.dest not in values:
                continue
            saved.append((action, action.default, action.required))
            action.required = False  # the file gives it
            given = values[action.dest]
            if action.choices is not None and given is not None and not isinstance(given, list) \
                    and str(given) not in map(str, action.choices):
                raise ValueError(f"{source}: {action.dest} must be one of {', '.join(map(str, action.choices))}, "
                                 f"got {given!r}")
            if isinstance(action, (argparse._AppendAction, argparse._ExtendAction)):
                later[action.dest] = values[action.dest]  # a flag replaces the file's list instead of extending it
            else:
                action.default = values[action.dest]
        try:
            namespace, remaining = self.parse_known_args(args)
        except SystemExit as stop:
            if stop.code:
                raise ValueError(f"bad arguments (see the message above; {hint})") from None
            raise
        finally:
            for action, default, required in saved:  # the parser can parse again
                action.default, action.required = default, required
        if remaining:
            raise ValueError(f"unrecognized arguments {remaining}; {hint}")
        for dest, value in later.items():
            if getattr(namespace, dest, None) is None:
                setattr(namespace, dest, value)
        outputs = []
        for dtype in self.dataclass_types:
            keys = {f.name for f in dataclasses.fields(dtype) if f.init}
            outputs.append(dtype(**{k: v for k, v in vars(namespace).items() if k in keys}))
            for k in keys & set(vars(namespace)):
                delattr(namespace, k)
        for name in _OWN:
            vars(namespace).pop(name, None)
        return (*outputs, namespace) if vars(namespace) else tuple(outputs)


# the run options people change most: shown by `--help` of a command that reads the unlearn config
COMMON_RUN_OPTIONS = ("config", "model_name_or_path", "forget_file", "retain_file", "output_dir", "objective",
                      "mask_method", "mask_ratio", "learning_rate", "max_steps", "per_device_train_batch_size",
                      "use_peft", "forget_kind", "targets", "eval_files", "seed")


class _HelpAll(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=None, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.hidden = []
        parser.print_help()
        parser.exit()


def arrange_help(parser: WagleParser, own: tuple, run: tuple, common_first: bool = False) -> None:
    """Order `parser`'s help for a person: the command's own options (fields of the dataclasses `own`, and the
    options it adds), then `COMMON_RUN_OPTIONS` (with `common_first`, the other way round), then the other
    unlearning options (fields of `run` that are not `TrainingArguments`'), then every `TrainingArguments` field.
    `--help` shows the first two groups and says how many more `--help-all` shows."""
    from transformers import TrainingArguments

    own_names = {f.name for d in own for f in dataclasses.fields(d)}
    trainer_names = {f.name for f in dataclasses.fields(TrainingArguments)}
    run_names = {f.name for d in run for f in dataclasses.fields(d)}
    parser.add_argument("--help-all", "--help_all", action=_HelpAll, help="show every option, TrainingArguments' too")
    groups = {key: parser.add_argument_group(title) for key, title in (
        ("own", f"{parser.prog} options"), ("common", "run options people change most (all: --help-all)"),
        ("more", "more unlearning options"), ("trainer", "TrainingArguments options (the Trainer's own)"))}
    parser.hidden = []
    for group in list(parser._action_groups):
        if group in groups.values():
            continue
        for action in list(group._group_actions):
            if not action.option_strings or action.dest == "help":
                continue
            if action.dest in COMMON_RUN_OPTIONS:
                key = "common"
            elif action.dest in own_names or action.dest not in run_names:
                key = "own"
            else:
                key = "trainer" if action.dest in trainer_names else "more"
            group._group_actions.remove(action)
            groups[key]._group_actions.append(action)
            if key in ("more", "trainer"):
                parser.hidden.append(action)
    rank = {f.name: i for i, d in enumerate(reversed(own)) for f in dataclasses.fields(d)}  # the latest first
    groups["own"]._group_actions.sort(key=lambda a: rank.get(a.dest, len(own)))
    first = ["common", "own"] if common_first else ["own", "common"]
    order = [g for g in parser._action_groups if g not in groups.values()] + [groups[k] for k in first] + [
        groups["more"], groups["trainer"]]
    parser._action_groups[:] = order


def command_parser(command) -> WagleParser:
    """The parser of a `Command` whose options are dataclasses (`command.arguments()`), with the options its
    `add_arguments` adds."""
    parser = WagleParser(tuple(command.arguments().values()), prog=f"hf-wagle {command.name}",
                         description=command.description())
    command.add_arguments(parser)
    apply_vocabulary(parser)
    types = tuple(command.arguments().values())
    if any(t.__name__ == "WagleConfig" for t in types):  # reads the unlearn config: its own options first
        run = tuple(t for t in types if t.__name__ in ("WagleConfig", "UnlearnArguments"))
        own = tuple(t for t in types if t not in run)
        arrange_help(parser, own or run[:1], run, common_first=not own)  # unlearn: the run options are its own
    return parser


def parse_command(command, args: list[str]) -> argparse.Namespace:
    """`args` parsed for `command`: a namespace with one attribute per dataclass (`command.arguments()`'s names)
    and the options `add_arguments` adds."""
    names = list(command.arguments())
    values = command_parser(command).parse_args_and_config(args)
    namespace = values[len(names)] if len(values) > len(names) else argparse.Namespace()
    for name, value in zip(names, values):
        setattr(namespace, name, value)
    return namespace
