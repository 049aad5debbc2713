"""What every command shares: the `Command` base class, the help formatter that shows defaults, reading a YAML
file, data and model arguments, and joining a launcher's process group.

Torch-free at import: `hf-wagle --help` builds every plain command's parser from here.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

QUANTIZATIONS = ("nf4", "int8")


@dataclass(kw_only=True)
class QuantizedBase:
    """The one option of the commands that can load their model quantised by bitsandbytes."""

    quantization: str | None = field(default=None, metadata={
        "help": "load the model quantised by bitsandbytes: 'nf4' (4-bit NormalFloat, computing in dtype) or 'int8' "
                "(LLM.int8()); attribution takes a quantised weight's gradient sums from its layer's inputs and "
                "output gradients (the mask memory budget bounds them), unlearn trains a masked LoRA over it "
                "(use_peft)"})

    def bnb_config(self, dtype: str):
        """The `BitsAndBytesConfig` of `quantization` (None: the model in `dtype`)."""
        if self.quantization is None:
            return None
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")
        import torch
        from transformers import BitsAndBytesConfig

        if self.quantization == "nf4":
            return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=getattr(torch, dtype))
        return BitsAndBytesConfig(load_in_8bit=True)


class Command:
    """One `hf-wagle` subcommand; a file with a subclass decorated by `register_command(name)` adds one.

    A command sets `help` (one line for `hf-wagle --help`; the class docstring is its description) and either

    - `add_arguments(parser)`: options added to a plain `argparse` parser, built by `hf-wagle --help`; or
    - `arguments()`: a mapping of attribute name to dataclass. The command then gets its own `WagleParser` (flags
      generated from the fields, `--config file.yaml` under the flags, `--plugins`), and `run` finds one instance
      per name on `args` (`{"mask": MaskConfig}` -> `args.mask`); `add_arguments` may add options to that parser.

    `run(args) -> int` does the work and returns the exit status. Import torch and transformers inside `run` (and
    inside `arguments()` when a dataclass needs them), so that `--help` stays light.
    """

    name: str = ""
    help: str = ""

    def arguments(self) -> dict[str, type]:
        return {}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args) -> int:
        raise NotImplementedError(f"command {self.name!r} has no run()")

    @property
    def parses_dataclasses(self) -> bool:
        """Whether the command's options are dataclasses (it defines `arguments()`), parsed by its own parser."""
        return type(self).arguments is not Command.arguments

    @classmethod
    def description(cls) -> str | None:
        return cls.__doc__.strip() if cls.__doc__ else None  # a class's docstring is not inherited


class DefaultsShown(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the default is empty (None, False) or the help already
    says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


# One vocabulary: the names of `hf-wagle unlearn`'s config are canonical; every command that takes the same thing
# accepts them and the short names beside them, each written with `_` or `-`.
VOCABULARY = {
    "model_name_or_path": ("model", "base"),  # the model before unlearning
    "forget_file": ("forget",),
    "retain_file": ("retain",),
    "mask_method": ("method",),
    "mask_ratio": ("ratio",),
}


def spellings(name: str) -> list[str]:
    """`--a_b` and `--a-b` of a name."""
    return list(dict.fromkeys(f"--{name.replace(c, d)}" for c, d in (("-", "_"), ("_", "-"))))


def concept_of(action) -> str | None:
    """The `VOCABULARY` entry an option is one of (by any of its names), or None."""
    names = {o.lstrip("-").replace("-", "_") for o in action.option_strings}
    found = [canonical for canonical, short in VOCABULARY.items() if names & {canonical, *short}]
    return found[0] if len(found) == 1 else None


def apply_vocabulary(parser: argparse.ArgumentParser) -> None:
    """Give every option of `parser` both spellings of each of its names and, for a `VOCABULARY` thing, every name
    of it; a name another option of the parser holds is left to that option (the vocabulary test finds it), and a
    short name that begins the name of exactly one other option (`--method` beside `--methods`, `--base` beside
    `--base_model`: what it abbreviated before names were exact) is not added, so that it is refused instead of read
    as something else than a user may mean."""
    taken = [o for o in parser._option_string_actions if o.startswith("--")]
    for action in list(parser._actions):
        if not action.option_strings or action.dest == "help":
            continue
        concept = concept_of(action)
        names = [o.lstrip("-") for o in action.option_strings if o.startswith("--")]
        if concept is not None:
            names += [concept, *VOCABULARY[concept]]
        for name in names:
            for option in spellings(name):
                shadows = len({id(parser._option_string_actions[o]) for o in taken if o != option
                                   and o.startswith(option) and parser._option_string_actions[o] is not action}) == 1
                if option not in parser._option_string_actions and not shadows:
                    action.option_strings.append(option)
                    parser._option_string_actions[option] = action


PLUGINS_HELP = ("import these first: module names or paths to .py files that register mask methods, objectives, "
                "formats, benchmarks or commands; repeatable (installed packages' `hf_wagle.plugins` entry points "
                "load always)")


def add_plugins_argument(parser: argparse.ArgumentParser) -> None:
    """`--plugins MODULE_OR_FILE` (alias `--plugin`), one per flag, repeatable (or several joined by commas), so that
    positional arguments after it stay the command's; the command line imports them before anything else
    (`hf_wagle.cli.plugins`)."""
    parser.add_argument("--plugins", "--plugin", action="append", type=split_plugins, metavar="PLUGIN",
                        help=PLUGINS_HELP)


def scan_config_and_plugins(argv: list[str]) -> argparse.Namespace:
    """`--config` and `--plugins` (also `--config=file`) read ahead of the full parse; an `argparse.ArgumentError`
    (e.g. `--config` without a file) is left to the caller."""
    scan = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    scan.add_argument("--config")
    scan.add_argument("--plugins", "--plugin", action="append", type=split_plugins, default=[])
    return scan.parse_known_args(argv)[0]


def split_plugins(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def flat_plugins(values) -> list[str]:
    """`--plugins` values (a list per flag) as one list."""
    return [p for v in values or [] for p in (v if isinstance(v, list) else [v])]


_MAX_YAML_BYTES, _MAX_YAML_ALIASES = 1 << 20, 64


def read_yaml(path: str | os.PathLike, flag: str = "--config") -> dict:
    """The mapping a YAML file holds; one clear error for a missing file, invalid YAML or another shape."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{flag} {path}: no such file")
    text = path.read_text()
    if len(text) > _MAX_YAML_BYTES:
        raise ValueError(f"{flag} {path}: {len(text)} bytes; a config is at most {_MAX_YAML_BYTES}")
    try:
        aliases = sum(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader))
        if aliases > _MAX_YAML_ALIASES:  # references that expand (a "billion laughs" file) are refused unread
            raise ValueError(f"{flag} {path}: {aliases} YAML aliases; a config uses at most {_MAX_YAML_ALIASES}")
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{flag} {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{flag} {path}: expected a mapping of keys to values")
    return values


def read_eval_sets(script) -> dict:
    """The evaluation sets an unlearn config names, never trained on: `heldout_file`, `neighbour_file` and each
    `eval_files` entry (`NAME: FILE`), loaded by `load_data`."""
    from ..options import parse_options

    named = {"heldout": script.heldout_file, "neighbour": script.neighbour_file}
    for name, path in parse_options(script.eval_files, "eval_files").items():
        if name in ("forget", "retain"):
            raise ValueError(f"eval_files names {name!r}, the {name} data itself (forget_file / retain_file); give "
                             "evaluation sets other names")
        if name in named and named[name]:
            raise ValueError(f"eval_files names {name!r}, which {name}_file names already; give it once")
        named[name] = str(path)
    return {name: load_data(path, f"{name}_file" if name in ("heldout", "neighbour") else f"eval_files {name}")
            for name, path in named.items() if path}


_DATA_FILES = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def load_data(path: str, what: str, config: str | None = None, split: str = "train"):
    """A dataset from a .json/.jsonl/.parquet/.csv file, a `save_to_disk` folder, a shipped scenario's split
    (`scenario:element_symbols/forget`), or a Hub dataset name with its `config` and `split` (a local folder in the
    Hub layout, `<folder>/<config>.jsonl`, works the same way); one clear error otherwise."""
    if path.startswith("scenario:"):
        from ..real_model import load_scenario

        name, _, part = path[len("scenario:"):].partition("/")
        data = load_scenario(name)
        if part not in data or part == "info":
            splits = ", ".join(k for k in data if k != "info")
            raise ValueError(f"--{what} {path}: scenario {name!r} has no split {part!r} ({splits})")
        return data[part]
    import datasets

    from ..options import is_local_path

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # our one-line error says what went wrong
    p = Path(path).expanduser()
    if config is not None or not (p.exists() or is_local_path(path) or p.suffix in _DATA_FILES):
        from ..evaluation.loaders import load_split

        where = f"config {config!r}, split {split!r}" if config else f"split {split!r}"
        try:
            data = load_split(path, config, split)
        except Exception as e:  # datasets' and the Hub client's own error types
            raise ValueError(f"--{what} {path} ({where}): cannot load it ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
    elif not p.exists():
        raise ValueError(f"--{what} {path}: no such file or folder")
    elif p.is_dir():
        data = datasets.load_from_disk(str(p))
        if isinstance(data, datasets.DatasetDict):
            if split not in data and len(data) != 1:
                raise ValueError(f"--{what} {path} holds splits {list(data)}; name one with the split key")
            data = data[split] if split in data else next(iter(data.values()))
    elif p.suffix not in _DATA_FILES:
        raise ValueError(f"--{what} {path}: expected a .json, .jsonl, .parquet or .csv file, a save_to_disk "
                         "folder or a Hub dataset name")
    else:
        try:
            data = datasets.load_dataset(_DATA_FILES[p.suffix], data_files=str(p), split="train")
        except Exception as e:  # datasets raises its own error types for malformed files
            raise ValueError(f"--{what} {path}: cannot read it as {_DATA_FILES[p.suffix]} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if len(data) == 0:
        raise ValueError(f"--{what} {path}: no rows")
    return data


def check_model(name: str, flag: str = "--model") -> None:
    """A model argument that is plainly a local path must exist (otherwise it would be tried as a Hub id)."""
    from ..options import is_local_path

    if is_local_path(name) and not os.path.isdir(os.path.expanduser(name)):
        raise ValueError(f"{flag} {name}: no such model folder (and not a Hub id such as org/name)")


def join_processes(model, fsdp: bool) -> bool:
    """Under a launcher (`WORLD_SIZE` > 1), join the process group (NCCL with one GPU per local rank, gloo on CPU)
    and, with `fsdp`, shard `model` with FSDP2's `fully_shard`. Returns whether this is the main process."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            model.to(torch.cuda.current_device())
        dist.init_process_group("nccl" if cuda else "gloo")
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        from ..modeling import decoder_layers

        for layer in decoder_layers(model):
            fully_shard(layer)
        fully_shard(model)
    return dist.get_rank() == 0


def leave_processes() -> None:
    """After a distributed run succeeded: every rank leaves the last collective before any tears its connections
    down (a rank that closes its gloo pairs while a peer still reads from them can abort that peer); after an error
    the launcher stops the other ranks, so this runs on success only."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def escape(text) -> str:
    """`text` with every non-printable character (terminal escape codes, newlines) shown as its escape sequence, so a
    tensor or file name cannot rewrite what a command prints."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def check_device(device: str | None, flag: str = "--device") -> None:
    """A device torch can use here, checked before any model loads."""
    if not device:
        return
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"{flag} {device!r}: not a device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{flag} {device}: CUDA is not available on this machine; use cpu or leave it unset")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{flag} {device}: MPS is not available on this machine")


def check_checkpoint(path) -> str | None:
    """`resume_from_checkpoint`: a Trainer checkpoint folder (with trainer_state.json), or True for the last one."""
    if path in (None, False, "", "false", "False"):
        return None
    if path in (True, "true", "True"):
        return True
    if not Path(path, "trainer_state.json").is_file():
        raise ValueError(f"resume_from_checkpoint {path}: not a checkpoint folder (no trainer_state.json); give a "
                         "checkpoint-N folder of an earlier run, or true for the last one in output_dir")
    return str(path)
