"""`WeightMask`: which weights of a model may change, by base-model parameter name.

In memory and on disk every mask is bit-packed (1 bit per weight, `numpy.packbits`, little bit order, each tensor
padded to a whole byte). `wagle_mask.safetensors` holds one uint8 tensor `bits` (the tensors' packed bytes one after
another) and, in the safetensors metadata, the index (`wagle.index_z`: base64 of zlib-compressed JSON
`[[name, shape], ...]` in order) and what
produced the mask (`wagle.metadata`): method, ratio, mu, reduction, sample counts, sha256 fingerprints of the
forget and retain data, the model's name, a sha256 of its parameter names and shapes, the library version; and
`wagle.sha256`, a sha256 of the bits and the index, checked on load (the inflated index is also bounded by what the
bits can describe, so a small file cannot claim a huge index).
Files are about `1 + (index bytes) * 8 / N` bits per weight.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .io import MASK_FILE, regular_file
from .modeling import base_named_parameters, logical_shape

_MAX_INDEX_BYTES = 1 << 20
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
_LAYER = re.compile(r"\.(\d+)\.")


def pack_bits(mask: torch.Tensor) -> np.ndarray:
    """A bool tensor -> its elements in row-major order as little-bit-order bytes (`ceil(n / 8)` uint8)."""
    return np.packbits(mask.detach().to("cpu", torch.bool).reshape(-1).numpy(), bitorder="little")


def unpack_bits(packed: np.ndarray, shape) -> torch.Tensor:
    """Inverse of `pack_bits`."""
    n = math.prod(shape)
    return torch.from_numpy(np.unpackbits(packed, count=n, bitorder="little").astype(bool)).reshape(tuple(shape))


def _checksum(bits: np.ndarray, index: bytes, metadata: str) -> str:
    """sha256 of a mask file's packed bits, its (uncompressed) index and its metadata JSON, hashed in place."""
    h = hashlib.sha256(memoryview(np.ascontiguousarray(bits)))
    for part in (index, metadata.encode()):
        h.update(b"\0")
        h.update(part)
    return h.hexdigest()


def parameter_fingerprint(named_shapes) -> str:
    """sha256 of `name:shape;` over `(name, shape)` pairs in order: identifies a model architecture."""
    h = hashlib.sha256()
    for name, shape in named_shapes:
        h.update(f"{name}:{list(shape)};".encode())
    return h.hexdigest()


def layer_and_module(name: str) -> tuple[str, str]:
    """`("3", "q_proj")` for `model.layers.3.self_attn.q_proj.weight`; the layer is `"-"` outside numbered blocks.

    The module type is the last name component before `weight`/`bias` (a parameter directly on a module keeps
    its own name, e.g. `lm_head` or `embed_tokens`).
    """
    m = _LAYER.search(name)
    layer = m.group(1) if m else "-"
    parts = name.split(".")
    module = parts[-2] if len(parts) > 1 and parts[-1] in ("weight", "bias") else parts[-1]
    return layer, module


class WeightMask:
    """`mask[name]` -> bool tensor of the parameter's shape; True = the weight may change.

    Stored bit-packed; `mask[name]` unpacks a fresh tensor on each access. A parameter shared by several modules
    (tied input embedding and output head) is stored once, under its first name in `named_parameters()`; its other
    names are aliases (`metadata["tied"]`, `{alias: name}`) that index the same mask.
    """

    def __init__(self, masks: dict[str, torch.Tensor], metadata: dict | None = None):
        self._packed: dict[str, np.ndarray] = {}
        self._shapes: dict[str, tuple] = {}
        self._counts: dict[str, int] = {}
        for name, m in masks.items():
            self._set(name, pack_bits(m), tuple(m.shape))
        self.metadata = dict(metadata or {})

    @classmethod
    def from_packed(cls, packed: dict[str, tuple[np.ndarray, tuple]], metadata: dict | None = None) -> "WeightMask":
        """Build from `{name: (pack_bits(mask), shape)}` without unpacking."""
        self = cls({}, metadata)
        for name, (bits, shape) in packed.items():
            n = math.prod(shape)
            if bits.dtype != np.uint8 or bits.size != (n + 7) // 8:
                raise ValueError(f"{name}: expected {(n + 7) // 8} packed uint8 bytes for shape {tuple(shape)}, "
                                 f"got {bits.size} of {bits.dtype}")
            self._set(name, bits, tuple(shape))
        return self

    def _set(self, name, bits: np.ndarray, shape: tuple) -> None:
        n = math.prod(shape)
        if n % 8:  # padding bits must be zero for the counts (and equality) to hold
            bits = bits.copy()
            bits[-1] &= (1 << (n % 8)) - 1
        self._packed[name], self._shapes[name] = bits, shape
        self._counts[name] = int(_POPCOUNT[bits].sum())

    def resolve(self, name: str) -> str:
        """The stored name of `name` (itself unless it is an alias of a tied parameter)."""
        return self.metadata.get("tied", {}).get(name, name)

    def __getitem__(self, name: str) -> torch.Tensor:
        name = self.resolve(name)
        return unpack_bits(self._packed[name], self._shapes[name])

    def __contains__(self, name: str) -> bool:
        return self.resolve(name) in self._packed

    def __len__(self) -> int:
        return len(self._packed)

    def names(self) -> list[str]:
        return list(self._packed)

    def items(self):
        """`(name, bool tensor)` pairs, unpacked one at a time."""
        return ((n, self[n]) for n in self._packed)

    def shape(self, name: str) -> tuple:
        return self._shapes[self.resolve(name)]

    def packed(self, name: str) -> np.ndarray:
        """The packed bytes of one tensor (read-only view)."""
        return self._packed[self.resolve(name)]

    def count(self, name: str) -> int:
        """Selected weights of one tensor."""
        return self._counts[self.resolve(name)]

    @property
    def num_selected(self) -> int:
        return sum(self._counts.values())

    @property
    def num_total(self) -> int:
        return sum(math.prod(s) for s in self._shapes.values())

    @property
    def ratio(self) -> float:
        """Fraction of all weights that may change."""
        return self.num_selected / max(1, self.num_total)

    @property
    def nbytes(self) -> int:
        """Bytes the packed bits take in memory."""
        return sum(b.nbytes for b in self._packed.values())

    def __eq__(self, other) -> bool:
        return (isinstance(other, WeightMask) and self._shapes == other._shapes
                and all(np.array_equal(self._packed[n], other._packed[n]) for n in self._packed))

    def __repr__(self) -> str:
        return f"WeightMask({len(self)} tensors, {self.num_selected}/{self.num_total} selected, ratio={self.ratio:.4f})"

    # -- fitting a model --------------------------------------------------------------------------------------

    def check_fits(self, named_shapes: dict[str, tuple]) -> None:
        """Raise a ValueError unless the mask covers exactly the names in `named_shapes`, with the same shapes."""
        missing = [n for n in self._shapes if n not in named_shapes]
        extra = [n for n in named_shapes if n not in self._shapes]
        wrong = [f"{n}: mask {s} vs model {tuple(named_shapes[n])}"
                 for n, s in self._shapes.items() if n in named_shapes and s != tuple(named_shapes[n])]
        if missing or extra or wrong:
            made_on = self.metadata.get("model") or "another model"
            raise ValueError(
                f"this mask (computed on {made_on}) does not fit the model: "
                + (f"{len(missing)} names absent from the model (first: {missing[:3]}); " if missing else "")
                + (f"{len(extra)} model parameters absent from the mask (first: {extra[:3]}); " if extra else "")
                + (f"{len(wrong)} shapes differ (first: {wrong[:3]})" if wrong else "")
                + ". Compute the mask on this model, or load the model it was computed on."
            )

    def check_model(self, model) -> None:
        """Raise a ValueError unless this mask was made for `model`'s base parameters (names and shapes, in order).

        Uses the stored `param_sha256` when present (also catches a different parameter order), else the names and
        shapes themselves. PEFT wrapping and adapter parameters are ignored.
        """
        named = [(n, logical_shape(p)) for n, p in base_named_parameters(model)]
        self.check_fits(dict(named))
        want = self.metadata.get("param_sha256")
        if want and want != parameter_fingerprint(named):
            raise ValueError(f"this mask was computed on a model whose parameters differ from this one (names and "
                             f"shapes fingerprint {want[:12]}... vs {parameter_fingerprint(named)[:12]}...); "
                             "compute the mask on this model")

    # -- storage ----------------------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `directory/wagle_mask.safetensors` atomically; returns its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        bits = np.concatenate([self._packed[n] for n in self._packed]) if self._packed else np.zeros(0, np.uint8)
        index = json.dumps([[n, list(s)] for n, s in self._shapes.items()]).encode()
        metadata = json.dumps(self.metadata, sort_keys=True)
        meta = {"format": "pt", "wagle.index_z": base64.b64encode(zlib.compress(index, 9)).decode(),
                "wagle.metadata": metadata, "wagle.sha256": _checksum(bits, index, metadata)}
        path = directory / MASK_FILE
        tmp = path.with_name(path.name + ".tmp")
        save_file({"bits": torch.from_numpy(bits)}, str(tmp), metadata=meta)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike, model=None) -> "WeightMask":
        """Read a mask saved by `save` (a folder or the file itself); with `model`, also `check_model(model)`."""
        path = Path(directory)
        path = path / MASK_FILE if path.is_dir() else path
        if not path.exists():
            raise FileNotFoundError(f"no {MASK_FILE} at {path.parent}; save a mask there with `WeightMask.save`")
        regular_file(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if "wagle.index_z" not in meta:
                    raise ValueError("it is not a WeightMask file (no `wagle.index_z` metadata)")
                data = f.get_tensor("bits").numpy()
            # the index can be no larger than its entries for this many packed bytes: bound the inflated size
            inflate = zlib.decompressobj()
            index = inflate.decompress(base64.b64decode(meta["wagle.index_z"], validate=True),
                                       _MAX_INDEX_BYTES + 64 * data.size)
            if inflate.unconsumed_tail:
                raise ValueError("its index inflates beyond any size these packed bits allow")
            if meta.get("wagle.sha256") != _checksum(data, index, meta.get("wagle.metadata", "")):
                raise ValueError("its sha256 does not match its contents (or it has none)")
            meta_json = json.loads(meta.get("wagle.metadata", "{}"))
            entries = json.loads(index)
            if not all(isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], list)
                       and all(isinstance(d, int) and d >= 0 for d in e[1]) for e in entries):
                raise ValueError("its index is not a list of [name, shape]")
        except (SafetensorError, zlib.error, KeyError, ValueError) as e:  # JSON, base64, unicode errors included
            raise ValueError(f"{path} is truncated or corrupt: {e}; save the mask again") from None
        packed, offset = {}, 0
        for name, shape in entries:
            size = (math.prod(shape) + 7) // 8
            if offset + size > data.size:
                raise ValueError(f"{path} is truncated: {name} needs bytes {offset}..{offset + size}")
            packed[name] = (data[offset:offset + size], tuple(shape))
            offset += size
        mask = cls.from_packed(packed, meta_json)
        if model is not None:
            mask.check_model(model)
        return mask

    # -- statistics -------------------------------------------------------------------------------------------

    def stats(self) -> dict:
        """Selected counts and fractions, overall, per layer, per module type and per (layer, module type).

        Returns `{"selected", "total", "fraction", "per_layer": {layer: {...}}, "per_module": {type: {...}},
        "per_layer_module": {layer: {type: {...}}}}` where each `{...}` is `{"selected", "total", "fraction"}`;
        layers are the numbered blocks (`"0"`, `"1"`, ...) and `"-"` for parameters outside them
        (see `layer_and_module`).
        """
        def add(d, key, sel, tot):
            e = d.setdefault(key, {"selected": 0, "total": 0})
            e["selected"] += sel
            e["total"] += tot

        per_layer, per_module, per_lm = {}, {}, {}
        for name, shape in self._shapes.items():
            layer, module = layer_and_module(name)
            sel, tot = self._counts[name], math.prod(shape)
            add(per_layer, layer, sel, tot)
            add(per_module, module, sel, tot)
            add(per_lm.setdefault(layer, {}), module, sel, tot)

        def frac(d):
            for e in d.values():
                e["fraction"] = e["selected"] / max(1, e["total"])
            return d

        order = lambda d: dict(sorted(d.items(), key=lambda kv: (kv[0] == "-", int(kv[0]) if kv[0].isdigit() else 0)))
        return {"selected": self.num_selected, "total": self.num_total, "fraction": self.ratio,
                "per_layer": frac(order(per_layer)), "per_module": frac(per_module),
                "per_layer_module": {k: frac(v) for k, v in order(per_lm).items()}}

    def format_stats(self) -> str:
        """`stats()` as a readable table: one line per layer and per module type."""
        s = self.stats()
        lines = [f"selected {s['selected']} of {s['total']} weights ({100 * s['fraction']:.2f}%)",
                 f"{'layer':>8} {'selected':>12} {'total':>12} {'fraction':>9}"]
        lines += [f"{k:>8} {e['selected']:>12} {e['total']:>12} {100 * e['fraction']:>8.2f}%"
                  for k, e in s["per_layer"].items()]
        lines.append(f"{'module':>16} {'selected':>12} {'total':>12} {'fraction':>9}")
        lines += [f"{k:>16} {e['selected']:>12} {e['total']:>12} {100 * e['fraction']:>8.2f}%"
                  for k, e in sorted(s["per_module"].items())]
        lines += [f"{alias} is tied to {name}: one tensor, scored and masked once (counted under {name})"
                  for alias, name in self.metadata.get("tied", {}).items()]
        return "\n".join(lines)

    def heatmap_grid(self) -> tuple[list[str], list[str], np.ndarray]:
        """`(rows, module types, fractions)` of `plot_heatmap`: numbered layers in order then `"outside"`, module
        types in model order, NaN where a row lacks the module type."""
        per_lm = self.stats()["per_layer_module"]
        if not per_lm:
            raise ValueError("the mask is empty: nothing to plot")
        layers = list(per_lm)  # numbered layers in order, then "-"
        modules = list(dict.fromkeys(layer_and_module(n)[1] for n in self._shapes))  # model order
        grid = np.full((len(layers), len(modules)), np.nan)
        for i, layer in enumerate(layers):
            for j, module in enumerate(modules):
                if module in per_lm[layer]:
                    grid[i, j] = per_lm[layer][module]["fraction"]
        return ["outside" if k == "-" else k for k in layers], modules, grid

    def plot_heatmap(self, path: str | os.PathLike, title: str | None = None) -> Path:
        """Save a PNG heat map of the selected fraction, layers (rows) x module types (columns), with matplotlib Agg.

        Layers run top to bottom, with a last row "outside" for parameters outside numbered blocks (embeddings,
        final norm, an untied `lm_head`); module types run left to right in model order. Cells for module types a
        row lacks are blank.
        """
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        layers, modules, grid = self.heatmap_grid()
        fig, ax = plt.subplots(figsize=(2.5 + 0.9 * len(modules), 3.0 + 0.3 * len(layers)), layout="constrained")
        im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
        if len(layers) * len(modules) <= 400:
            for (i, j), v in np.ndenumerate(grid):
                if not np.isnan(v):
                    ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                            color="black" if v > 0.6 else "white")
        ax.set_xticks(range(len(modules)), modules, rotation=45, ha="right")
        ax.set_yticks(range(len(layers)), layers)
        ax.set_xlabel("module type")
        ax.set_ylabel("layer")
        method = self.metadata.get("method")
        ax.set_title(title or f"selected fraction ({method or 'mask'}, overall {self.ratio:.2f})")
        fig.colorbar(im, ax=ax, label="fraction selected")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


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
