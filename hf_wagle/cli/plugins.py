"""Plugins: how the command line finds a user's extensions, and the table of commands.

A plugin is a Python module that registers something when it is imported: a mask method
(`hf_wagle.register_mask_method`), an objective, an adapter format, a benchmark
(`hf_wagle.evaluation.register_benchmark`) or a command (`register_command` below). Before any command reads its
options, `hf-wagle` imports

1. the entry points of the group `hf_wagle.plugins` of every installed package (an entry point that names a module
   imports it; one that names a function calls it with no arguments);
2. the `plugins:` key of the `--config` YAML file, a name or a list;
3. `--plugins` (alias `--plugin`): module names (`my_pkg.unlearning`) or paths to `.py` files, repeatable.

Each loads once per process. They load before the config is validated, so a plugin may register the mask method or
objective the config names. A package ships its plugin with, in its `pyproject.toml`,

    [project.entry-points."hf_wagle.plugins"]
    my_methods = "my_pkg.wagle_plugin"

A command is one file (`hf-wagle hello --plugins hello.py --name you`):

    from hf_wagle.cli import Command, register_command

    @register_command("hello")
    class Hello(Command):
        \"\"\"Say hello (this docstring is the command's description).\"\"\"

        help = "say hello"

        def add_arguments(self, parser):
            parser.add_argument("--name", default="world", help="whom to greet")

        def run(self, args) -> int:
            print(f"hello {args.name}")
            return 0

A command whose options are dataclasses returns them from `arguments()` instead (see `hf_wagle.cli.common.Command`);
it then reads `--config file.yaml` too.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import sys
from importlib.metadata import entry_points
from pathlib import Path

from .common import Command, flat_plugins, read_yaml, scan_config_and_plugins

ENTRY_POINT_GROUP = "hf_wagle.plugins"
COMMANDS: dict[str, type] = {}
_LOADED: dict[str, object] = {}


def register_command(name: str, override: bool = False):
    """Class decorator: make a `Command` subclass the subcommand `hf-wagle <name>`. A name already taken (a built-in
    or another plugin's) needs `override=True`."""
    if not isinstance(name, str) or not name or name.startswith("-") or name != name.strip():
        raise ValueError(f"a command needs a name that does not start with '-', got {name!r}")

    def wrap(cls):
        if not (isinstance(cls, type) and issubclass(cls, Command)):
            raise TypeError(f"register_command({name!r}) decorates a subclass of hf_wagle.cli.Command, got {cls!r}")
        if name in COMMANDS and COMMANDS[name] is not cls and not override:
            raise ValueError(f"a command {name!r} is already registered; pick another name or pass override=True")
        cls.name = name
        COMMANDS[name] = cls
        return cls

    return wrap


def _is_file(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def load_plugin(spec: str, source: str = "--plugins"):
    """Import one plugin, once per process: a module name, or a path to a `.py` file (imported under a private
    module name). `source` names where it was given, for the error."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{source}: a plugin is a module name or a path to a .py file, got {spec!r}")
    spec = spec.strip()
    path = Path(spec).expanduser()
    key = str(path.resolve()) if _is_file(spec) else spec
    if key in _LOADED:
        return _LOADED[key]
    if _is_file(spec):
        if not path.is_file():
            raise ValueError(f"{source} {spec}: no such file")
        name = f"_hf_wagle_plugin_{path.stem}"
        while name in sys.modules:  # two files with the same stem
            name += "_"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # before running it: dataclasses look their module up there
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[name]
            raise ValueError(f"{source} {spec}: loading it failed ({type(e).__name__}: {e})") from e
    else:
        try:
            module = importlib.import_module(spec)
        except ImportError as e:
            raise ValueError(f"{source} {spec}: cannot import it ({e})") from e
        except Exception as e:  # the module's own code failed
            raise ValueError(f"{source} {spec}: loading it failed ({type(e).__name__}: {e})") from e
    _LOADED[key] = module
    return module


def load_entry_points() -> None:
    """Load every entry point of the group `hf_wagle.plugins` (installed packages' plugins), once per process."""
    for point in entry_points(group=ENTRY_POINT_GROUP):
        key = f"entry point {point.name} = {point.value}"
        if key in _LOADED:
            continue
        try:
            loaded = point.load()
            if inspect.isfunction(loaded):
                loaded()
        except Exception as e:
            dist = f" of {point.dist.name}" if getattr(point, "dist", None) else ""
            raise ValueError(f"plugin {point.name!r}{dist} ({point.value}, entry point group {ENTRY_POINT_GROUP}): "
                             f"loading it failed ({type(e).__name__}: {e})") from e
        _LOADED[key] = loaded


def as_list(plugins, source: str) -> list[str]:
    """Plugins as a list of names: a name, a list of names, or None."""
    if plugins is None:
        return []
    if isinstance(plugins, str):
        return [plugins]
    if isinstance(plugins, (list, tuple)):
        plugins = flat_plugins(plugins)  # `--plugins` gives a list per flag
        if all(isinstance(p, str) for p in plugins):
            return plugins
    raise ValueError(f"{source}: expected a module name, a path to a .py file, or a list of them, got {plugins!r}")


def load_plugins(plugins=None, source: str = "--plugins", installed: bool = True) -> None:
    """The installed packages' entry points (`installed`), then each of `plugins` (`load_plugin`)."""
    if installed:
        load_entry_points()
    for spec in as_list(plugins, source):
        load_plugin(spec, source)


def load_command_line_plugins(argv: list[str]) -> None:
    """What `hf-wagle` loads before it looks up the command: the installed packages' entry points, then the
    `plugins:` key of the `--config` YAML file, then `--plugins`/`--plugin`. A file that cannot be read is left to
    the command's own parser to report."""
    try:
        known = scan_config_and_plugins(argv)
    except argparse.ArgumentError:  # e.g. --config without a file: the command's parser says so
        known = argparse.Namespace(plugins=[], config=None)
    load_entry_points()
    if known.config:
        try:
            values = read_yaml(known.config)
        except ValueError:
            values = {}
        load_plugins(values.get("plugins"), f"plugins in {known.config}", installed=False)
    load_plugins(known.plugins, installed=False)
