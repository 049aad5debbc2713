"""Torch-free pieces every layer shares: defaults, small checks, and `prefixed_fields`, which lets one options
dataclass (`MaskConfig`, an objective's arguments) be the single source of fields that `WagleConfig`, the command
line and YAML read under prefixed names.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

DEFAULT_PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
DEFAULT_MAX_LENGTH = 512
# Optimizers whose update is exactly zero for a parameter element whose gradient has always been zero
# (moments start at zero and stay zero), so masking the gradient keeps off-mask weights bit-identical.
MASK_SAFE_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "sgd", "adagrad", "rmsprop")


def is_local_path(name: str) -> bool:
    """Whether a model reference is plainly a local path rather than a Hub id (`name` or `org/name`): absolute,
    starting with `.` or `~`, more than one `/`, or a backslash."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name


def one_of(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")


def finite(name: str, value, minimum: float | None = None, strict: bool = False) -> None:
    """`value` is a finite number, `> minimum` (`strict`) or `>= minimum`."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(name: str, value) -> int | None:
    """A memory size as a byte count: an integer, or a number with a unit (`"512MB"`, `"2 GiB"`, `"1.5GB"`)."""
    if value is None:
        return None
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value)) if not isinstance(value, bool) else None
    unit = found.group(2).lower() if found else None
    if unit not in _UNITS or float(found.group(1)) * _UNITS[unit] < 1:
        raise ValueError(f"{name} must be a positive memory size such as 2GB, 512MiB or a byte count, got {value!r}")
    return int(float(found.group(1)) * _UNITS[unit])


def parse_options(value, what: str) -> dict:
    """A dict of options from a dict, None, a JSON object string or `key=value,key=value` (values read as JSON
    where they parse, else kept as strings): the forms YAML, Python and the command line give."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, (list, tuple)):  # repeated `--flag key=value`
        value = ",".join(map(str, value))
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a mapping of option names to values, got {value!r}")
    text = value.strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what}: not a JSON object ({e})") from None
        return parse_options(parsed, what)
    out = {}
    # a comma starts a new pair only where `name=` follows, so values may hold commas (`layers=[2,3]`)
    for item in filter(None, (s.strip() for s in re.split(r",(?=\s*[A-Za-z_][\w.]*\s*=)", text))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what}: expected key=value pairs separated by commas, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def prefixed_fields(options_cls, prefix: str, keep=()) -> list[tuple[str, object, dataclasses.Field]]:
    """`(name, type, field)` of every field of the dataclass `options_cls`, named `prefix + name` (names in `keep`
    stay as they are, and a field's metadata `config_name` overrides its name), with its default and help. Feed
    them to `dataclasses.make_dataclass` to embed the options flat in another dataclass: one definition, read by
    Python, the command line and YAML alike."""
    out = []
    for f in dataclasses.fields(options_cls):
        name = f.metadata.get("config_name") or (f.name if f.name in keep else prefix + f.name)
        kwargs = {"metadata": {k: v for k, v in f.metadata.items() if k != "config_name"}}  # argparse reads them
        if f.default_factory is not dataclasses.MISSING:
            kwargs["default_factory"] = f.default_factory
        else:
            kwargs["default"] = f.default
        out.append((name, f.type, dataclasses.field(**kwargs)))
    return out


def unprefixed_values(options_cls, source, prefix: str, keep=()) -> dict:
    """The values of `options_cls`'s fields read back from `source`'s prefixed attributes (see `prefixed_fields`)."""
    values = {}
    for f in dataclasses.fields(options_cls):
        name = f.metadata.get("config_name") or (f.name if f.name in keep else prefix + f.name)
        values[f.name] = getattr(source, name)
    return values


def build_options(options_cls, values: dict, what: str):
    """`options_cls(**values)` after reading numbers written as text into its `int`/`float` fields: YAML reads
    `1e-10` as a string, the command line reads every value as one."""
    values = dict(values)
    for f in dataclasses.fields(options_cls):
        value = values.get(f.name)
        if not isinstance(value, str) or f.type not in (int, float, "int", "float"):
            continue
        try:
            values[f.name] = (int if f.type in (int, "int") else float)(value)
        except ValueError:
            raise ValueError(f"{what}: {f.name} must be a number, got {value!r}") from None
    return options_cls(**values)


def public_name(name) -> str | None:
    """A model reference fit to publish: a Hub id (`name` or `org/name`) stays; a snapshot in the Hub cache
    (`.../models--org--name/snapshots/<revision>`) becomes its id; any other local path (absolute,
    relative with `.`/`..`/`~`, more than one `/`, or existing here) becomes None."""
    if not isinstance(name, str) or not name:
        return None
    cached = re.search(r"(?:^|[/\\])models--([^/\\]+)[/\\]snapshots[/\\][^/\\]+[/\\]?$", name)
    if cached:  # the cache spells `org/name` as `models--org--name` (a Hub name never holds "--")
        return cached[1].replace("--", "/")
    if is_local_path(name) or os.path.exists(name):
        return None
    return name
