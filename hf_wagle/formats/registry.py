"""`AdapterFormat`, the base of every format, and the registry: a name -> format instance.

Pure Python: registering a format does not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from ..io import ADAPTER_STEM, has_weights, loader_problems, peft_type, read_adapter_config, read_tensors

FORMATS: dict[str, AdapterFormat] = {}


class Built(NamedTuple):
    """What `AdapterFormat.build` returns: the PEFT config, the adapter's tensors under their saved keys (at scale 1),
    the mask the adapter ships (`wagle_mask.safetensors`) and the format's part of the export report."""

    config: object
    tensors: dict
    mask: object
    report: dict


class AdapterFormat:
    """One kind of saved result: how to recognise it, audit it against a mask and, if exportable, build it.

    Class attributes: `name` (the registry key, `export_adapter(format=name)`), `peft_type` (the `peft_type` in
    `adapter_config.json` it reads; None for a folder that is not a PEFT adapter), `stem` (its weight file,
    `<stem>.safetensors`), `key_prefix` (what PEFT puts before base-model module names in saved keys), `can_hold`
    (what change it can hold, one phrase), `needs` (the `export_adapter` options it cannot do without, e.g.
    `("rank",)`) and `scaled_keys` (suffixes of the saved keys a scaled export multiplies).
    """

    name = ""
    peft_type: str | None = None
    stem = ADAPTER_STEM
    key_prefix = "base_model.model."
    can_hold = ""
    needs: tuple[str, ...] = ()
    scaled_keys: tuple[str, ...] = ()

    def holds(self, directory: Path) -> bool:
        """Whether a saved folder is of this format: its weight file, and its `peft_type` when it has one."""
        return has_weights(directory, self.stem) and (self.peft_type is None or peft_type(directory) == self.peft_type)

    def changes(self, directory: Path, mask, base, problems: list[str]):
        """Yield `(base weight name, bool tensor of changed weights, all finite)` for a saved folder; append what is
        wrong beyond that to `problems`; raise ValueError for what cannot be verified."""
        raise NotImplementedError

    @property
    def exportable(self) -> bool:
        return type(self).build is not AdapterFormat.build

    def check_options(self, rank=None) -> None:
        """Raise before any work if `export_adapter`'s options do not suit this format."""

    def build(self, changes: dict, mask, rank=None) -> Built:
        """The adapter holding `changes` (`{weight name: (base, trained)}` of untied linear weights, all inside
        `mask`), see `Built`. Its report says how exactly the adapter holds the change."""
        raise NotImplementedError(f"format {self.name!r} cannot be exported to")

    def scaled(self, tensors: dict, report: dict, scale: float) -> tuple[dict, dict]:
        """The tensors and report of an adapter holding `scale x` the change (a staged roll-out)."""
        tensors = {k: t * scale if scale != 1.0 and k.endswith(self.scaled_keys) else t for k, t in tensors.items()}
        return tensors, {**report, "scale": scale}

    def describe(self, report: dict) -> str:
        """What an exported adapter is, for its card: a phrase completing "exported as ..."."""
        return f"a {self.name} adapter"

    def fidelity(self, report: dict) -> str:
        """One line on how exactly an exported adapter holds the change, for a log."""
        return ""

    def module(self, key: str) -> str:
        """The base-model name of a saved key, `key_prefix` removed."""
        return key.removeprefix(self.key_prefix)

    def keyed(self, directory: Path, problems: list[str]):
        """`(key, tensor)` of the saved weights PEFT loads: the loader's own file (`loader_problems` flags what other
        tools might read instead), and only keys under `key_prefix`; any other key is a problem, not audited as a
        change (PEFT leaves it out), so a benign copy under an unprefixed name cannot stand in for the loaded one."""
        problems += loader_problems(directory, self.stem)
        for key, t in read_tensors(directory, self.stem):
            if key.startswith(self.key_prefix):
                yield key, t
            else:
                problems.append(f"{key}: a key PEFT does not load (no {self.key_prefix!r} prefix)")


def change_phrase(report: dict) -> str:
    """"the change", or its fraction in a scaled export."""
    scale = report.get("scale", 1.0)
    return "the change" if scale == 1 else f"{scale:g} x the change (a staged roll-out)"


def register_format(cls=None, *, override: bool = False):
    """Class decorator: register an `AdapterFormat` subclass (one instance) under its `name`.

        @register_format
        class VeraFormat(AdapterFormat):
            name, peft_type = "vera", "VERA"
            def changes(self, directory, mask, base, problems): ...
    """

    def wrap(cls):
        fmt = cls()
        if not isinstance(fmt, AdapterFormat) or not isinstance(fmt.name, str) or not fmt.name:
            raise ValueError(f"{cls.__name__}: a format is an AdapterFormat subclass with a non-empty `name`")
        if type(fmt).changes is AdapterFormat.changes:
            raise ValueError(f"format {fmt.name!r} must define changes(directory, mask, base, problems)")
        if fmt.name in FORMATS and not override:
            raise ValueError(f"a format {fmt.name!r} is already registered; pick another name or pass override=True")
        # a folder is audited by the first format that reads its peft_type; a subclass of that format (another way
        # to export the same adapter type) reads it the same way, so it may share the peft_type
        claimed = [f.name for f in FORMATS.values() if f.name != fmt.name and fmt.peft_type is not None
                   and f.peft_type == fmt.peft_type and not isinstance(fmt, type(f))]
        if claimed:
            raise ValueError(f"format {fmt.name!r}: peft_type {fmt.peft_type!r} is already read by {claimed[0]!r}")
        FORMATS[fmt.name] = fmt
        return cls

    return wrap if cls is None else wrap(cls)


def get_format(name: str) -> AdapterFormat:
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; registered: {', '.join(FORMATS)} "
                         "(add one with hf_wagle.formats.register_format)")
    return FORMATS[name]


def export_formats() -> tuple[str, ...]:
    """Names of the formats `export_adapter` can write."""
    return tuple(name for name, fmt in FORMATS.items() if fmt.exportable)


def format_of(directory: Path) -> AdapterFormat:
    """The format of a saved folder: the first whose `holds` answers yes, asking the formats whose `peft_type` an
    adapter config names before the others (a folder may hold an adapter beside a full model)."""
    directory = Path(directory)
    ordered = sorted(FORMATS.values(), key=lambda f: f.peft_type is None)
    adapter = has_weights(directory, ADAPTER_STEM)
    # an adapter beside a full model is audited as that adapter, or refused: never passed as the full model alone
    fmt = next((f for f in ordered if f.holds(directory) and (f.peft_type is not None or not adapter)), None)
    if fmt is not None:
        return fmt
    if adapter:
        kind = read_adapter_config(directory).get("peft_type")  # a missing or unreadable config says so
        known = ", ".join(f.peft_type for f in FORMATS.values() if f.peft_type)
        raise ValueError(f"cannot verify {directory}: adapter_config.json names peft_type {kind!r}, which no "
                         f"registered format reads ({known})")
    raise ValueError(f"{directory} holds neither an adapter (adapter_model.safetensors) nor a model "
                     "(model.safetensors); point at a folder written by WagleTrainer.save_model")
