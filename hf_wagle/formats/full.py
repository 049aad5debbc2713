"""A full model folder (`model.safetensors`, or shards): audited bit for bit against its base model. Not exportable:
it is what a full-parameter run saves, and what `export_adapter` turns into an adapter."""

from __future__ import annotations

from pathlib import Path

from ..io import MODEL_STEM, has_weights, loader_problems, local_or_download, read_tensors
from .registry import AdapterFormat, register_format


@register_format
class FullModelFormat(AdapterFormat):
    name, peft_type, stem, key_prefix = "full", None, MODEL_STEM, ""
    can_hold = "any mask (every weight is saved)"

    def holds(self, directory: Path) -> bool:
        return has_weights(directory, self.stem)

    def changes(self, directory, mask, base, problems):
        import torch

        if base is None:
            raise ValueError(f"{directory} holds a full model; pass the base model (--base) to compare against")
        problems += loader_problems(directory, self.stem)
        base_dir = local_or_download(base)
        problems += config_problems(directory, base_dir)
        trained = dict(read_tensors(directory, self.stem))
        seen = set()
        for name, b in read_tensors(base_dir, self.stem):
            seen.add(name)
            if name not in trained:
                if mask.resolve(name) != name and mask.resolve(name) in trained:
                    continue  # a tied alias the base stores twice: transformers ties it to the saved tensor
                problems.append(f"{name}: missing from the folder; transformers would initialise it at random")
                continue
            t = trained[name]
            if t.shape != b.shape:
                problems.append(f"{name}: shape {tuple(t.shape)} differs from the base's {tuple(b.shape)}")
                continue
            if t.dtype != b.dtype:
                if not (t.is_floating_point() and b.is_floating_point() and t.element_size() > b.element_size()):
                    problems.append(f"{name}: saved as {t.dtype}, which cannot hold the base's {b.dtype} values "
                                    "exactly, so off-mask weights are not bit-identical; save in the base's dtype")
                    continue
                b = b.to(t.dtype)  # an exact upcast (e.g. a bf16 base trained and saved in fp32)
            # bit patterns, so -0.0 vs 0.0 or a changed NaN payload count as changes
            bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
            yield name, t.view(bits) != b.view(bits), bool(torch.isfinite(t).all())
        for name in sorted(set(trained) - seen):
            problems.append(f"{name}: a tensor the base model does not have")


# keys of config.json that describe the file, not the model it builds
_CONFIG_NEUTRAL = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache", "architectures"}


def config_problems(directory: Path, base_dir: Path) -> list[str]:
    """`config.json` against the base's, both as transformers reads them (`AutoConfig(...).to_dict()`, so a config
    that `save_pretrained` rewrote in a newer layout compares equal): any other key that differs changes the model
    transformers builds (a norm epsilon, the rope base, the number of layers), outside any mask."""
    from transformers import AutoConfig

    def read(folder):
        try:
            return AutoConfig.from_pretrained(str(folder)).to_dict()
        except (OSError, ValueError, KeyError, TypeError):
            return None

    mine, theirs = read(directory), read(base_dir)
    if mine is None or theirs is None:
        return [] if theirs is None else ["config.json: missing or unreadable; transformers cannot build the model"]
    keys = sorted(k for k in set(mine) | set(theirs) if k not in _CONFIG_NEUTRAL and mine.get(k) != theirs.get(k))
    return [f"config.json: {k} is {mine.get(k)!r}, the base's is {theirs.get(k)!r}" for k in keys]
