"""`WeightMask`: which weights of a model may change, by base-model parameter name.

On disk (`wagle_mask.safetensors`) every mask is bit-packed (1 bit per weight, `numpy.packbits`, little bit order)
under its parameter name; the safetensors metadata holds the shapes and what produced the mask.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

MASK_FILE = "wagle_mask.safetensors"


class WeightMask:
    """`mask[name]` -> bool tensor of the parameter's shape; True = the weight may change."""

    def __init__(self, masks: dict[str, torch.Tensor], metadata: dict | None = None):
        self._masks = {n: m.detach().to("cpu", torch.bool) for n, m in masks.items()}
        self.metadata = dict(metadata or {})

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __contains__(self, name: str) -> bool:
        return name in self._masks

    def __len__(self) -> int:
        return len(self._masks)

    def names(self) -> list[str]:
        return list(self._masks)

    def items(self):
        return self._masks.items()

    @property
    def num_selected(self) -> int:
        return sum(int(m.sum()) for m in self._masks.values())

    @property
    def num_total(self) -> int:
        return sum(m.numel() for m in self._masks.values())

    @property
    def ratio(self) -> float:
        """Fraction of all weights that may change."""
        return self.num_selected / max(1, self.num_total)

    def __repr__(self) -> str:
        return f"WeightMask({len(self)} tensors, {self.num_selected}/{self.num_total} selected, ratio={self.ratio:.4f})"

    def check_fits(self, named_shapes: dict[str, tuple]) -> None:
        """Raise a ValueError unless every masked name exists in `named_shapes` with the same shape."""
        missing = [n for n in self._masks if n not in named_shapes]
        wrong = [f"{n}: mask {tuple(m.shape)} vs model {tuple(named_shapes[n])}"
                 for n, m in self._masks.items() if n in named_shapes and tuple(m.shape) != tuple(named_shapes[n])]
        if missing or wrong:
            raise ValueError(
                "this mask does not fit the model: "
                + (f"{len(missing)} names absent from the model (first: {missing[:3]}); " if missing else "")
                + (f"{len(wrong)} shapes differ (first: {wrong[:3]})" if wrong else "")
                + ". Compute the mask on this model, or load the model it was computed on."
            )

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `directory/wagle_mask.safetensors` atomically; returns its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {n: torch.from_numpy(np.packbits(m.numpy().reshape(-1), bitorder="little")) for n, m in self.items()}
        meta = {"format": "pt", "wagle.shapes": json.dumps({n: list(m.shape) for n, m in self.items()}),
                "wagle.metadata": json.dumps(self.metadata, sort_keys=True)}
        path = directory / MASK_FILE
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "WeightMask":
        path = Path(directory)
        path = path / MASK_FILE if path.is_dir() else path
        if not path.exists():
            raise FileNotFoundError(f"no {MASK_FILE} at {path.parent}; save a mask there with `WeightMask.save`")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "wagle.shapes" not in meta:
                raise ValueError(f"{path} is not a WeightMask file (no `wagle.shapes` metadata)")
            shapes = json.loads(meta["wagle.shapes"])
            masks = {}
            for name, shape in shapes.items():
                n = math.prod(shape)
                bits = np.unpackbits(f.get_tensor(name).numpy(), count=n, bitorder="little")
                masks[name] = torch.from_numpy(bits.astype(bool)).reshape(shape)
        return cls(masks, json.loads(meta.get("wagle.metadata", "{}")))


def project_rows_columns(element_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Structured (row x column) approximation of a 2-D element mask, as LoRA can hold exactly.

    With f the selected fraction of the `out x in` mask, keep the `round(out * sqrt(f))` rows and
    `round(in * sqrt(f))` columns that contain the most selected elements (ties: lower index first), so the
    structured mask `rows[:, None] & cols[None, :]` keeps about the same fraction f. f = 0 gives no rows.
    """
    if element_mask.dim() != 2:
        raise ValueError(f"row/column projection needs a 2-D weight, got shape {tuple(element_mask.shape)}")
    out_f, in_f = element_mask.shape
    f = element_mask.float().mean().item()

    def top(counts: torch.Tensor, n: int) -> torch.Tensor:
        keep = torch.zeros_like(counts, dtype=torch.bool)
        if f > 0:
            order = torch.sort(counts, descending=True, stable=True).indices
            keep[order[: max(1, min(len(counts), round(n)))]] = True
        return keep

    return top(element_mask.sum(1), out_f * math.sqrt(f)), top(element_mask.sum(0), in_f * math.sqrt(f))
