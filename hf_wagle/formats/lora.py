"""LoRA: `delta = (alpha / r) * B @ A` per targeted linear weight, `B: out x r`, `A: r x in`.

It holds exactly a row x column mask (zero rows of B, zero columns of A). Audited through PEFT's own delta of each
module (`peft_load.peft_deltas`: scaling, rslora, patterns and targets as PEFT reads them); exported from a
full-parameter run as the rank-k truncated SVD of each changed layer, with its error.
"""

from __future__ import annotations

import math

from .adapter_config import adapter_config_problems
from .peft_load import peft_deltas
from .registry import AdapterFormat, Built, change_phrase, register_format

# adapter_config.json: settings whose effect is the B @ A change PEFT forms (counted by `peft_deltas`) or none, and
# the settings that make PEFT apply more than that change, refused with the reason
_LORA_NEUTRAL = {"alpha_pattern", "auto_mapping", "base_model_name_or_path", "exclude_modules", "inference_mode",
                 "layers_pattern", "layers_to_transform", "lora_alpha", "lora_dropout", "megatron_core",
                 "modules_to_save", "peft_type", "peft_version", "qalora_group_size", "r", "rank_pattern", "revision",
                 "target_modules", "task_type", "use_rslora"}
_LORA_WHY = {
    "use_dora": "DoRA rescales whole weight columns",
    "init_lora_weights": "this initialisation moves part of each base weight into the adapter, or (False) starts "
                         "every targeted module without saved tensors at random, when it loads",
    "layer_replication": "replicated layers change the model's structure",
    "bias": "trained biases shift every output feature",
    "lora_bias": "a LoRA bias shifts every output feature",
    "fan_in_fan_out": "the change is applied transposed",
    "trainable_token_indices": "embedding rows are trained outside the LoRA factors",
    "ensure_weight_tying": "the change is tied into other modules",
    "target_parameters": "raw parameters are adapted outside the audited linear layers",
    "use_qalora": "QALoRA changes how the change is applied",
    "loftq_config": "LoftQ re-quantises the base weights",
}


def lora_config_problems(directory) -> list[str]:
    """`adapter_config_problems` of a LoRA adapter: settings PEFT applies when loading (DoRA, PiSSA/OLoRA-style
    initialisation, layer replication, biases, ...) are problems."""
    return adapter_config_problems(directory, "LORA", _LORA_NEUTRAL, _LORA_WHY)


def truncated_svd(changes: dict, rank: int) -> tuple[dict, dict, float]:
    """Per layer `(B: out x rank, A: rank x in, rows, columns)` of the rank-`rank` truncated SVD of the change,
    computed on the rows and columns the change touches (so `B @ A` is zero elsewhere), and the fidelity report:
    `relative_error = ||delta - B A||_F / ||delta||_F = sqrt(sum_{i>k} s_i^2 / sum_i s_i^2)` and
    `energy_kept = sum_{i<=k} s_i^2 / sum_i s_i^2`; and the overall relative error over all layers,
    `sqrt(sum_layers lost energy / sum_layers energy)`."""
    import torch

    layout, report, lost_sum, total_sum = {}, {}, 0.0, 0.0
    for name, (b, u) in changes.items():
        delta = u.double() - b.double()
        rows, cols = delta.ne(0).any(1), delta.ne(0).any(0)
        U, S, Vh = torch.linalg.svd(delta[rows][:, cols], full_matrices=False)
        k = min(rank, S.numel())
        root = S[:k].sqrt()
        B = torch.zeros(b.shape[0], rank, dtype=torch.float64)
        A = torch.zeros(rank, b.shape[1], dtype=torch.float64)
        B[rows.nonzero().squeeze(1)[:, None], torch.arange(k)[None, :]] = U[:, :k] * root
        A[torch.arange(k)[:, None], cols.nonzero().squeeze(1)[None, :]] = root[:, None] * Vh[:k]
        energy = S.pow(2)
        total = float(energy.sum())
        kept = float(energy[:k].sum())
        report[name] = {"relative_error": math.sqrt(max(0.0, total - kept) / total), "energy_kept": kept / total,
                        "rank_of_change": int((S > S[0] * 1e-12).sum()) if S.numel() else 0,
                        "rows": int(rows.sum()), "columns": int(cols.sum())}
        layout[name] = (B.float(), A.float(), rows, cols)
        lost_sum, total_sum = lost_sum + max(0.0, total - kept), total_sum + total
    return layout, report, math.sqrt(lost_sum / total_sum)


@register_format
class LoraFormat(AdapterFormat):
    name, peft_type = "lora", "LORA"
    can_hold = "a row x column mask on each targeted linear weight"
    needs, scaled_keys = ("rank",), ("lora_B.weight",)

    def changes(self, directory, mask, base, problems):
        """The change of each module PEFT wraps, computed by PEFT (`peft_deltas`: scaling, rslora, rank and alpha
        patterns, target modules as it reads them); a `modules_to_save` copy is a change unless the mask selects all
        of its weight."""
        import torch

        config_problems = lora_config_problems(directory)
        if config_problems:  # PEFT would apply more than a B @ A change: refused without computing one
            problems += config_problems
            return
        for name, delta in peft_deltas(directory, mask, self.keyed(directory, problems), problems, self.key_prefix):
            if delta is None:
                module = self.module(name).replace(".modules_to_save", "")
                if module not in mask or not bool(mask[module].all()):
                    problems.append(f"{name}: a full trained tensor that the mask does not cover")
                continue
            if name in mask and tuple(delta.shape) != tuple(mask.shape(name)):
                raise ValueError(f"cannot verify {directory}: {name} changes a {tuple(delta.shape)} weight but the "
                                 f"mask has shape {tuple(mask.shape(name))}; the mask does not fit this adapter")
            yield name, delta != 0, bool(torch.isfinite(delta).all())

    def check_options(self, rank=None):
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"format='lora' needs a rank (an int >= 1), got {rank!r}")

    def build(self, changes, mask, rank=None):
        """`alpha = r`, so `B @ A` is the change. The mask shipped is the run's own, so `verify` judges the export
        against it; the report counts the adapter's changed weights outside it (`outside_run_mask`: entries where
        `B @ A != 0` and the run's mask is 0; the SVD spreads the change over the row x column hull it touches,
        `hull_weights`), which `verify` then reports as not confined."""
        from peft import LoraConfig

        layout, layers, overall = truncated_svd(changes, rank)
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=[n.removesuffix(".weight") for n in changes],
                            task_type="CAUSAL_LM")
        tensors = {}
        for name, (B, A, _, _) in layout.items():
            prefix = self.key_prefix + name.removesuffix(".weight")
            tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"] = A, B
        hull, outside = 0, 0
        for name, (B, A, rows, cols) in layout.items():
            hull += int(rows.sum()) * int(cols.sum())
            outside += int(((B @ A) != 0).logical_and_(~mask[name]).sum())
        report = {"layers": layers, "rank": rank, "exact": False, "relative_error": overall,
                  "max_relative_error": max(v["relative_error"] for v in layers.values()),
                  "hull_weights": hull, "run_mask_weights": mask.num_selected, "outside_run_mask": outside}
        return Built(config, tensors, mask, report)

    def describe(self, report):
        r = report["rank"]
        return (f"a LoRA adapter (r={r}, alpha={r}) holding the rank-{r} truncated SVD of {change_phrase(report)}. "
                f"Relative error of the change (Frobenius): {report['relative_error']:.4g} overall, "
                f"{report['max_relative_error']:.4g} at worst; `export_report.json` has every layer's error and "
                f"energy kept. {_hull_phrase(report)}")

    def fidelity(self, report):
        return (f"relative error of the change {report['relative_error']:.4g} (worst layer "
                f"{report['max_relative_error']:.4g}). {_hull_phrase(report)}")


def _hull_phrase(report: dict) -> str:
    """What the shipped row x column mask means against the run's own mask."""
    if "outside_run_mask" not in report:
        return ""
    verdict = ("so it is confined to the run's mask" if not report["outside_run_mask"] else
               "so `hf-wagle verify` reports it as not confined; export format='shira' for an exact, confined one")
    return (f"It ships the run's mask ({report['run_mask_weights']} weights) and is verified against it; the SVD "
            f"touches the row x column hull of the change ({report['hull_weights']} weights), and "
            f"{report['outside_run_mask']} weights it changes lie outside the run's mask, {verdict}.")
