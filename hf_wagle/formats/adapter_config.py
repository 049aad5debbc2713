"""What in an adapter's `adapter_config.json` would let PEFT move weights outside the adapter's mask when it loads."""

from __future__ import annotations

from pathlib import Path

from ..io import read_adapter_config


def _neutral_value(key: str, value) -> bool:
    if key == "bias":
        return value == "none"
    if key == "init_lora_weights":  # False: PEFT starts B at random, a dense change wherever no tensor is saved
        return value in (True, "gaussian")
    return value in (None, False, [], {}, "", 0)


def adapter_config_problems(directory: Path, peft_type: str, neutral: set, why: dict) -> list[str]:
    """What in `adapter_config.json` (of type `peft_type`) would let the loaded adapter move weights outside its
    mask: a setting outside `neutral` with a non-default value is a problem when `why` explains it; an unknown one,
    or a missing or unreadable file, cannot be verified (ValueError)."""
    config = read_adapter_config(directory)
    if config.get("peft_type") != peft_type:
        raise ValueError(f"cannot verify {directory}: adapter_config.json is not a {peft_type} config "
                         f"(peft_type {config.get('peft_type')!r})")
    problems = []
    for key, value in config.items():
        if key in neutral or _neutral_value(key, value):
            continue
        if key not in why:
            raise ValueError(f"cannot verify {directory}: adapter_config.json sets {key}={value!r}, which hf_wagle "
                             "does not know; it cannot tell whether PEFT would move base weights with it")
        problems.append(f"adapter_config.json: {key}={value!r}: {why[key]}, outside any mask")
    return problems
