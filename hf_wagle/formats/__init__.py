"""Adapter formats: what a saved result is, how it is audited against its mask, and how a change is exported to it.

A format is an `AdapterFormat` subclass registered with `@register_format`; adding one is one file. Its parts:

* `name`: the registry key (`export_adapter(format=name)`, `hf-wagle export --format name`, `verify`'s `"kind"`);
* `peft_type` and `stem`: what it recognises, the `peft_type` of `adapter_config.json` (None for a folder that is not
  a PEFT adapter) and the weight file `<stem>.safetensors`; `holds(directory)` answers from those by default;
* `key_prefix`: what PEFT puts before base-model module names in saved keys (`base_model.model.`);
* `can_hold`: what change it can hold, one phrase;
* `changes(directory, mask, base, problems)`: used by `hf_wagle.verify`; yields `(base weight name, bool tensor of
  changed weights, all finite)` and appends what else is wrong (e.g. a config setting that moves base weights) to
  `problems`; raises ValueError for what cannot be verified;
* for an exportable format, `build(changes, mask, rank=None) -> Built(config, tensors, mask, report)`, used by
  `hf_wagle.export`: `changes` is `{weight name: (base, trained)}` of the changed untied linear weights, `config` the
  PEFT config, `tensors` the adapter's tensors under their saved keys, `mask` the one it ships and `report` how
  exactly it holds the change; `needs` (options it cannot do without, e.g. `("rank",)`) and `check_options` check
  the options before any work; `scaled_keys` (or `scaled`) says how a staged roll-out scales the tensors;
* `describe(report)`: a phrase for the exported adapter's card; `fidelity(report)`: one line for a log.

Built in: `lora` (a row x column mask, truncated-SVD export), `shira` (any mask on linear weights, exact export) and
`full` (a full model folder, audited against its base; not exportable). Pure Python at import: no torch.
"""

from . import full, lora, shira  # noqa: F401  (the built-ins register themselves)
from .registry import FORMATS, AdapterFormat, Built, export_formats, format_of, get_format, register_format

__all__ = ["FORMATS", "AdapterFormat", "Built", "export_formats", "format_of", "get_format", "register_format"]
