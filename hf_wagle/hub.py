"""Model cards and publishing. Cards never contain forget-set text.

`Trainer.push_to_hub` and `PeftModel.push_to_hub` rewrite README.md with generic cards: `WagleTrainer` overrides
`create_model_card` so `trainer.push_to_hub()` keeps this card, and `push_to_hub` below uploads a saved folder as
it is, after checking it against its mask.
"""

from __future__ import annotations

import os
import re

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers.utils import logging

from .mask import MASK_FILE, WeightMask
from .options import is_local_path
from .version import __version__

logger = logging.get_logger(__name__)


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


def card_for(trainer) -> ModelCard:
    """A model card describing an unlearning run: objective, mask, what was enforced, how to load and undo it."""
    from peft import PeftModel

    args, enforced = trainer.args, trainer.enforced_mask
    adapter = isinstance(trainer.model, PeftModel)
    base = getattr(getattr(trainer.model, "config", None), "_name_or_path", None) or None
    if adapter:
        base = trainer.model.peft_config[trainer.model.active_adapter].base_model_name_or_path or base
    base = public_name(base)  # never publish a local path
    # the mask the run used: computed from args, or given (e.g. `mask_dir`), whose own metadata then tells
    mask_meta = trainer.mask.metadata if trainer.mask is not None else {}
    masked = trainer.mask is not None
    method_name = mask_meta.get("method") or (args.mask_method if masked else None) or "given"
    data = ModelCardData(
        base_model=base,
        library_name="peft" if adapter else "transformers",
        tags=["unlearning", "wagle", f"objective:{args.objective}", f"mask:{method_name if masked else 'dense'}"],
        model_name=public_name(args.hub_model_id) or "unlearned model",
        eval_results=eval_results(trainer.results),
    )
    method = method_name if masked else "dense (no mask)"
    requested = f"{mask_meta.get('ratio', args.mask_ratio):g}" if masked else "1"
    load = (
        peft_load_snippet(base)
        if adapter else
        "```python\nfrom transformers import AutoModelForCausalLM\n\n"
        "model = AutoModelForCausalLM.from_pretrained('<this folder or repo>')\n```\n"
    )
    lora = "none (full parameters)"
    if adapter:
        config = trainer.model.peft_config[trainer.model.active_adapter]
        lora = f"LoRA r={config.r}, alpha={config.lora_alpha}, masked to rows x columns"
    results = trainer.results
    if results:
        rows = "\n".join(f"| {split} | {results['before'][split]:.4g} | {results['after'][split]:.4g} |"
                         for split in results["after"])
        results = ("\n## Results\n\nMean answer probability, `exp(-mean token NLL)` of each answer and EOS, teacher "
                   f"forced, on the data of this run:\n\n| data | before | after |\n|---|---|---|\n{rows}\n")
    else:
        results = ""
    verify_base = "" if adapter else " --base <base model>"
    how = ("[WAGLE](https://arxiv.org/abs/2410.17509)-style weight attribution: an unlearning objective was run only "
           "through a\nmask of the weights allowed to change." if masked else
           "an unlearning objective run over every weight\n(dense: no mask was enforced).")
    verdict = ""
    report = trainer.verification
    if report is not None:
        verdict = (f"\n`hf-wagle verify` at save: {report['tensors_checked']} tensors checked, "
                   f"{report['changed_inside_mask']} weights changed inside the mask, "
                   f"{report['changed_outside_mask']} outside; confined: {'yes' if report['confined'] else 'NO'}.\n")
    body = f"""
# Unlearned with hf_wagle

This {'adapter' if adapter else 'model'} was produced by machine unlearning with
{how} The forget data is not described here.

| setting | value |
|---|---|
| objective | `{args.objective}` |
| retain term | `{args.retain_loss}` |
| forget weight / retain weight (gamma) | {args.forget_weight:g} / {args.retain_weight:g} |
| mask method | `{method}` |
| mask ratio requested (fraction of weights that may change) | {requested} |
| weights the run could change (`wagle_mask.safetensors`) | {enforced.num_selected} of {enforced.num_total} ({enforced.ratio:.4f}) |
| enforcement | {enforced.metadata.get('enforced_by', '')} |
| learning rate / steps | {args.learning_rate:g} / {trainer.state.global_step} |
| adapter | {lora} |
| hf_wagle | {__version__} |

`wagle_mask.safetensors` holds the mask actually enforced (bit-packed, base-model parameter names): every weight
outside it is bit-identical to the base model. Check it with `hf-wagle verify <this folder>`{verify_base}.
{verdict}
{module_table(enforced)}
{results}
## How to load

{load}"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def module_table(mask) -> str:
    """Per-module-type share of weights the mask lets change, as a Markdown table."""
    rows = "\n".join(f"| `{module}` | {e['selected']} | {e['total']} | {100 * e['fraction']:.2f}% |"
                     for module, e in mask.stats()["per_module"].items())
    return f"| module | may change | weights | share |\n|---|---|---|---|\n{rows}\n"


def eval_results(results: dict | None) -> list[EvalResult] | None:
    """`model-index` entries for the card's metadata: the mean answer probability on the forget and retain data,
    before and after unlearning (`results = {"before": {split: p}, "after": {split: p}}`)."""
    if not results:
        return None
    return [EvalResult(task_type="text-generation", dataset_type=f"{split}-data", dataset_name=f"{split} data",
                       metric_type=f"answer_probability_{when}", metric_name=f"answer probability {when}",
                       metric_value=float(results[when][split]))
            for split in results["after"] for when in ("before", "after")]


def peft_load_snippet(base: str | None) -> str:
    """How to load an adapter on its base with stock PEFT, and roll it back (Markdown)."""
    return ("```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
            f"base = AutoModelForCausalLM.from_pretrained({base or '<base model>'!r})\n"
            "model = PeftModel.from_pretrained(base, '<this folder or repo>')\n"
            "# undo the unlearning: model.unload() returns the untouched base model\n```\n")


def export_card(report: dict, base: str | None, method: str | None = None) -> ModelCard:
    """The card of an adapter exported from a full-parameter run (`hf_wagle.adapters.export_adapter`); `method` is
    the mask method the run used (from its mask's metadata)."""
    base = public_name(base)
    data = ModelCardData(base_model=base, library_name="peft",
                         tags=["unlearning", "wagle", f"export:{report['format']}", f"mask:{method or 'given'}"])
    scale = report.get("scale", 1.0)
    change = "the change" if scale == 1 else f"{scale:g} x the change (a staged roll-out)"
    if report["format"] == "shira":
        if scale != 1:
            exact = "base model plus this adapter is the base moved part of the way to the unlearned model."
        elif report["exact"]:
            exact = "base model plus this adapter equals the unlearned model bit for bit."
        else:
            exact = (f"base model plus this adapter equals the unlearned model at every weight but "
                     f"{report['inexact_weights']}, where float32 cannot express base + change; those differ by at "
                     f"most {report['max_abs_error']:.3g}.")
        what = f"a SHiRA adapter (r={report['rank']}) holding {change}: merged or loaded with PEFT, the {exact}"
    else:
        what = (f"a LoRA adapter (r={report['rank']}, alpha={report['rank']}) holding the rank-{report['rank']} "
                f"truncated SVD of {change}. Relative error of the change (Frobenius): "
                f"{report['relative_error']:.4g} overall, {report['max_relative_error']:.4g} at worst; "
                "`export_report.json` has every layer's error and energy kept.")
    body = f"""
# Unlearned with hf_wagle (exported adapter)

This adapter holds the weight change of a full-parameter unlearning run through a `{method or 'given'}` weight
mask, exported as {what}
The forget data is not described here.

| | |
|---|---|
| layers | {len(report['layers'])} |
| weights the run changed | {report['changed_weights']} |
| hf_wagle | {__version__} |

`wagle_mask.safetensors` holds the mask the adapter keeps to; check it with `hf-wagle verify <this folder>`.

## How to load and roll back

{peft_load_snippet(base)}"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def write_model_card(output_dir, trainer) -> None:
    card_for(trainer).save(os.path.join(output_dir, "README.md"))


# What a published repository may hold; anything else in the folder (training_args.bin, references, checkpoints,
# stray files) stays local. Links are never followed.
PUBLISHED = ("README.md", "adapter_config.json", "adapter_model.safetensors", "config.json", "generation_config.json",
             "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors", MASK_FILE,
             "mask_stats.json", "mask_heatmap.png", "export_report.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "tokenizer.model", "vocab.json",
             "merges.txt")


def stage_for_hub(folder, staging) -> list[str]:
    """Copy what may be published from `folder` into `staging`, with local paths removed from
    `adapter_config.json` (`base_model_name_or_path`), `config.json` (`_name_or_path`) and the mask's metadata
    (`model`). Returns what was left out, with the reason."""
    import fnmatch
    import json
    import shutil
    from pathlib import Path

    folder, staging = Path(folder), Path(staging)
    left_out = []
    for path in sorted(folder.iterdir()):
        if not any(fnmatch.fnmatchcase(path.name, pattern) for pattern in PUBLISHED):
            left_out.append(f"{path.name} (not part of a published adapter or model)")
        elif path.is_symlink() or not path.is_file():
            left_out.append(f"{path.name} (a link or not a regular file)")
        elif path.name in ("adapter_config.json", "config.json"):
            config = json.loads(path.read_text())
            key = "base_model_name_or_path" if path.name == "adapter_config.json" else "_name_or_path"
            if key in config:
                config[key] = public_name(config[key])
            (staging / path.name).write_text(json.dumps(config, indent=2, sort_keys=True))
        elif path.name == MASK_FILE:
            mask = WeightMask.load(path)
            mask.metadata["model"] = public_name(mask.metadata.get("model")) or ""
            mask.save(staging)
        else:
            shutil.copyfile(path, staging / path.name)
    return left_out


def push_to_hub(folder, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload unlearned adapter (hf_wagle)", base=None, api=None,
                dry_run: bool = False):
    """Upload a folder written by `WagleTrainer.save_model` to the Hub (card included).

    The folder is first audited with `hf_wagle.adapters.verify` (pass `base` for a full model): a folder that
    changes weights outside its mask is refused. Only the files in `PUBLISHED` are uploaded, never through a link,
    and local paths are removed from the configs and the mask (`stage_for_hub`). `api` is an `HfApi`-like object
    (default `HfApi(token=token)`). Returns the commit info of `upload_folder`; with `dry_run`, nothing is sent
    and the result is `{"files": [...], "left_out": [...]}`.
    """
    import tempfile

    from huggingface_hub import HfApi

    from .adapters import verify

    report = verify(folder, base=base)
    if not report["confined"]:
        raise ValueError(f"refusing to publish {folder}: {'; '.join(report['problems'][:3])}")
    if not os.path.exists(os.path.join(folder, "README.md")):
        raise FileNotFoundError(f"{folder} has no README.md model card; save it with WagleTrainer.save_model")
    with tempfile.TemporaryDirectory(prefix="hf_wagle_push_") as staging:
        left_out = stage_for_hub(folder, staging)
        if dry_run:
            return {"files": sorted(os.listdir(staging)), "left_out": left_out}
        if left_out:
            logger.warning(f"not uploaded from {folder}: {', '.join(left_out)}")
        api = api or HfApi(token=token)
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            return api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=staging,
                                     commit_message=commit_message)
        except (OSError, ValueError):  # offline mode, HTTP errors, bad repo ids: already clear
            raise
        except Exception as e:  # the HTTP client's own connection errors
            raise ConnectionError(f"could not reach the Hub to push {repo_id} ({type(e).__name__}: {e})") from e
