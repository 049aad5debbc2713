"""SHiRA: an elementwise-sparse adapter, `W + sparse(shira_indices, shira_weight)` per targeted linear weight.

It holds any mask on linear weights, with exactly `r (in + out)` entries per `out x in` layer (one `r` per adapter).
Audited through the non-zero entries of the change PEFT forms (`peft_load.peft_deltas`); exported from a
full-parameter run exactly wherever float32 allows.
"""

from __future__ import annotations

from .adapter_config import adapter_config_problems
from .peft_load import peft_deltas
from .registry import AdapterFormat, Built, change_phrase, register_format

# adapter_config.json of a SHiRA adapter: settings whose effect is the sparse change PEFT forms (counted by
# `peft_deltas`, an initialisation included where no tensors are saved) or none, and those refused with the reason
_SHIRA_NEUTRAL = {"auto_mapping", "base_model_name_or_path", "inference_mode", "init_weights", "mask_type",
                  "peft_type", "peft_version", "r", "random_seed", "revision", "target_modules", "task_type"}
_SHIRA_WHY = {"modules_to_save": "full copies of modules are trained and saved",
              "fan_in_fan_out": "the change is applied transposed"}


def nearest_delta(base, trained):
    """fp32 `d` that makes `(base.float() + d).to(base.dtype)`, which is how PEFT applies a SHiRA change, equal to
    `trained` wherever float arithmetic allows, and nearest to it elsewhere.

    `trained - base` is exact whenever the two are within a factor 2 of each other (Sterbenz), and then
    `base + d == trained`. Otherwise `d` is stepped one float at a time toward `trained` while that brings the sum
    closer. A few weights may stay unreachable: `base + d` can only land on multiples of the smaller float spacing
    of `base` and `d`, so a weight driven from 0.5 to 1e-9 ends 1 ulp of `base` away. Callers count them."""
    import torch

    b, u = base.float(), trained.float()
    d = u - b
    for _ in range(8):
        got = (b + d).to(base.dtype).float()
        bad = (got != u).nonzero(as_tuple=True)
        if not bad[0].numel():
            break
        toward = torch.where(got[bad] < u[bad], torch.tensor(float("inf")), torch.tensor(float("-inf")))
        step = torch.nextafter(d[bad], toward)
        better = ((b[bad] + step).to(base.dtype).float() - u[bad]).abs() < (got[bad] - u[bad]).abs()
        if not better.any():
            break
        d[bad] = torch.where(better, step, d[bad])
    return d


def sparse_layout(changes: dict, mask) -> tuple[int, dict]:
    """SHiRA's rank r (one per adapter: every targeted `m x n` layer holds exactly `r (m + n)` entries) and, per
    layer, `(indices 2 x r(m+n), exact delta values)`: the changed weights first, then zero-valued padding taken
    from unchanged weights inside the mask, then outside it."""
    import torch

    need = {name: int((u != b).sum()) for name, (b, u) in changes.items()}
    r = max(-(-need[name] // sum(b.shape)) for name, (b, _) in changes.items())
    too_small = [name for name, (b, _) in changes.items() if r * sum(b.shape) > b.numel()]
    if too_small:
        raise ValueError(f"SHiRA needs r={r} entries per row+column to hold the largest change, more than "
                         f"{too_small[0]} ({tuple(changes[too_small[0]][0].shape)}) has weights; export format='lora' "
                         "or ship the full model")
    layout = {}
    for name, (b, u) in changes.items():
        count = r * sum(b.shape)
        changed = (u != b).reshape(-1)
        inside = mask[name].reshape(-1) & ~changed
        order = torch.cat([changed.nonzero().squeeze(1), inside.nonzero().squeeze(1),
                           (~inside & ~changed).nonzero().squeeze(1)])[:count]
        order = order.sort().values
        values = nearest_delta(b, u).reshape(-1)[order]
        index = torch.stack([order // b.shape[1], order % b.shape[1]]).to(torch.int32)
        layout[name] = (index, values)
    return r, layout


def applied_error(changes: dict, layout: dict) -> tuple[int, float]:
    """`(weights where base + SHiRA change != trained, largest absolute difference there)`, as PEFT applies it."""
    inexact, worst = 0, 0.0
    for name, (b, u) in changes.items():
        index, values = layout[name]
        merged = b.float().clone()
        merged[index[0].long(), index[1].long()] += values
        diff = (merged.to(b.dtype).float() - u.float()).abs()
        inexact += int((diff != 0).sum())
        worst = max(worst, float(diff.max()))
    return inexact, worst


@register_format
class ShiraFormat(AdapterFormat):
    """Each targeted linear weight changes by `sparse(shira_indices, shira_weight)`, so the changed weights are the
    indices whose value is not zero."""

    name, peft_type = "shira", "SHIRA"
    can_hold = "any mask on linear weights"
    scaled_keys = ("shira_weight",)

    def changes(self, directory, mask, base, problems):
        """The change of each module PEFT wraps, computed by PEFT (`peft_deltas`), after checking that each layer's
        indices fit its weight and its values (PEFT would fail on them later, or add repeated ones up)."""
        import torch

        problems += adapter_config_problems(directory, "SHIRA", _SHIRA_NEUTRAL, _SHIRA_WHY)
        keyed = list(self.keyed(directory, problems))
        for key, index in keyed:
            if not key.endswith(".shira_indices"):
                continue
            module = self.module(key).removesuffix(".shira_indices")
            values = dict(keyed).get(f"{self.key_prefix}{module}.shira_weight")
            shape = mask.shape(f"{module}.weight") if f"{module}.weight" in mask else None
            index = index.long()
            if values is None or shape is None or index.dim() != 2 or index.shape != (2, values.numel()) \
                    or (index < 0).any() or (index[0] >= shape[0]).any() or (index[1] >= shape[1]).any():
                raise ValueError(f"cannot verify {directory}: {module}'s SHiRA indices do not fit its weight in the "
                                 "mask or its values")
            flat = index[0] * shape[1] + index[1]
            if flat.unique().numel() != flat.numel():
                problems.append(f"{module}.weight: SHiRA indices repeat, so values add up at the same weight")
        for name, delta in peft_deltas(directory, mask, keyed, problems, self.key_prefix):
            if delta is None:
                problems.append(f"{name}: a full trained tensor in a SHiRA adapter")
                continue
            yield name, delta != 0, bool(torch.isfinite(delta).all())

    def build(self, changes, mask, rank=None):
        """Loaded or merged with PEFT, `base + sparse(indices, values)` equals the trained weights bit for bit
        wherever float32 can express it (`nearest_delta`); the report counts the weights where it cannot
        (`inexact_weights`, typically a weight driven close to zero) and the largest difference there
        (`max_abs_error`, 1 ulp of the base weight). The mask shipped is the run's mask."""
        from peft import ShiraConfig

        r, layout = sparse_layout(changes, mask)
        config = ShiraConfig(r=r, target_modules=[n.removesuffix(".weight") for n in changes], task_type="CAUSAL_LM")
        tensors = {}
        for name, (index, values) in layout.items():
            prefix = self.key_prefix + name.removesuffix(".weight")
            tensors[f"{prefix}.shira_indices"], tensors[f"{prefix}.shira_weight"] = index, values
        inexact, worst = applied_error(changes, layout)
        layers = {name: {"entries": int(values.numel()), "changed": int((values != 0).sum())}
                  for name, (_, values) in layout.items()}
        report = {"layers": layers, "rank": r, "exact": inexact == 0, "inexact_weights": inexact,
                  "max_abs_error": worst}
        return Built(config, tensors, mask, report)

    def scaled(self, tensors, report, scale):
        tensors, report = super().scaled(tensors, report, scale)
        if scale != 1.0:  # exactness is that of the whole change
            report.update(exact=None, inexact_weights=None, max_abs_error=None)
        return tensors, report

    def describe(self, report):
        if report.get("scale", 1.0) != 1:
            exact = "base model plus this adapter is the base moved part of the way to the unlearned model."
        elif report["exact"]:
            exact = "base model plus this adapter equals the unlearned model bit for bit."
        else:
            exact = (f"base model plus this adapter equals the unlearned model at every weight but "
                     f"{report['inexact_weights']}, where float32 cannot express base + change; those differ by at "
                     f"most {report['max_abs_error']:.3g}.")
        return (f"a SHiRA adapter (r={report['rank']}) holding {change_phrase(report)}: merged or loaded with PEFT, "
                f"the {exact}")

    def fidelity(self, report):
        if report.get("scale", 1.0) != 1:
            return f"{report['scale']:g} x the change (exactness is stated for scale 1 only)"
        return (f"exact at all but {report['inexact_weights']} weights (largest difference "
                f"{report['max_abs_error']:.3g}, where float32 cannot express base + delta)")
