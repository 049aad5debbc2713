"""Model cards, built from the values they show (`RunCard`, an export report), never from forget-set text."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..formats import get_format
from ..version import __version__
from .names import public_name


@dataclass
class RunCard:
    """What the card of an unlearning run shows.

    `enforced` is `WeightMask.stats()` of the mask actually enforced and `enforced_by` how (its metadata);
    `mask_method` is the method of the mask the run used (`"given"` when unknown), None for a dense run;
    `mask_ratio` the fraction of weights the mask was asked to let change. `base_model` and `model_name` are
    published only when they are Hub ids (`public_name`). `adapter` says what adapter was trained (None: full
    parameters). `results` is `{"before": {metric: v}, "after": {metric: v}, "sets", "targets"}` (see
    `WagleEvalCallback.results`);
    `verification` a `hf_wagle.verify` report of the saved folder. `objective_args` and `mask_options` are the
    objective's own arguments and the mask method's own options (numbers and names; refusal texts are not shown).
    """

    objective: str
    retain_loss: str
    forget_weight: float
    retain_weight: float
    learning_rate: float
    steps: int
    enforced: dict
    enforced_by: str = ""
    mask_method: str | None = None
    mask_ratio: float = 1.0
    base_model: str | None = None
    adapter: str | None = None
    model_name: str | None = None
    results: dict | None = None
    verification: dict | None = None
    objective_args: dict | None = None
    mask_options: dict | None = None
    record_digest: str | None = None
    base_source: dict | None = None


def quantization_name(config: dict) -> str:
    """`4-bit nf4`, `8-bit`, ... of a `quantization_config` dict."""
    if config.get("load_in_4bit"):
        return f"4-bit {config.get('bnb_4bit_quant_type', 'fp4')}"
    return "8-bit" if config.get("load_in_8bit") else str(config.get("quant_method", "quantised"))


def base_source_note(base: str | None, source: dict | None) -> str:
    """A paragraph saying the base weights were not the named model's own (e.g. dequantised from a GGUF file),
    from the `hf_wagle_source` entry of the base's `config.json`; empty when there is none."""
    if not source:
        return ""
    return (f"\n**Base weights.** The run was trained and scored on {source.get('made_by', 'a derived copy')} "
            f"(sha256 of that file `{source.get('file_sha256', '?')}`), not on the weights of "
            f"`{source.get('hub_model') or base or 'the named base'}` themselves; applied to those, the change "
            "gives a model that was not measured.\n")


def _settings(values: dict | None) -> str:
    """`name=value, ...` of numbers, flags and short names; lists of text (refusal answers) are only counted."""
    shown = []
    for name, value in (values or {}).items():
        if isinstance(value, (list, tuple)) and any(isinstance(v, str) for v in value):
            value = f"{len(value)} texts"
        shown.append(f"{name}={value}")
    return ", ".join(shown) or "none"


def model_card(card: RunCard) -> ModelCard:
    """A model card describing an unlearning run: objective, mask, what was enforced, how to load and undo it."""
    base = public_name(card.base_model)  # never publish a local path
    masked, adapter = card.mask_method is not None, card.adapter is not None
    data = ModelCardData(
        base_model=base,
        library_name="peft" if adapter else "transformers",
        tags=["unlearning", "wagle", f"objective:{card.objective}", f"mask:{card.mask_method if masked else 'dense'}"],
        model_name=public_name(card.model_name) or "unlearned model",
        eval_results=eval_results(card.results),
    )
    method = card.mask_method if masked else "dense (no mask)"
    requested = f"{card.mask_ratio:g}" if masked else "1"
    load = (
        peft_load_snippet(base)
        if adapter else
        "```python\nfrom transformers import AutoModelForCausalLM\n\n"
        "model = AutoModelForCausalLM.from_pretrained('<this folder or repo>')\n```\n"
    )
    results = results_section(card.results)
    verify_base = "" if adapter else " --base <base model>"
    confinement = ("`wagle_mask.safetensors` holds the mask actually enforced (bit-packed, base-model parameter "
                   "names): every weight\noutside it is bit-identical to the base model. Check it with `hf-wagle "
                   f"verify <this folder>`{verify_base}.\n" if masked else
                   "A dense run ships no mask: nothing confines its change, which may reach every trained weight.\n")
    how = ("[WAGLE](https://arxiv.org/abs/2410.17509)-style weight attribution: an unlearning objective was run only "
           "through a\nmask of the weights allowed to change." if masked else
           "an unlearning objective run over every weight\n(dense: no mask was enforced).")
    verdict = ""
    if card.record_digest:
        verdict += (f"\nEvidence: `unlearning_record.json` (data digests, settings, scores, file digests; no data "
                    f"text), digest `{card.record_digest}`. `hf-wagle verify <this folder>` checks it against the "
                    "files; `--forget FILE` checks a data file against it.\n")
    report = card.verification
    if report is not None:
        verdict += (f"\n`hf-wagle verify` at save: {report['tensors_checked']} tensors checked, "
                   f"{report['changed_inside_mask']} weights changed inside the mask, "
                   f"{report['changed_outside_mask']} outside; confined: {'yes' if report['confined'] else 'NO'}.\n")
    enforced = card.enforced
    could_change = f"{enforced['selected']} of {enforced['total']} ({enforced['fraction']:.4f})"
    body = f"""
# Unlearned with hf_wagle

This {'adapter' if adapter else 'model'} was produced by machine unlearning with
{how} The forget data is not described here.

| setting | value |
|---|---|
| objective | `{card.objective}` |
| objective arguments | {_settings(card.objective_args)} |
| retain term | `{card.retain_loss}` |
| forget weight / retain weight (gamma) | {card.forget_weight:g} / {card.retain_weight:g} |
| mask method | `{method}` |
| mask method options | {_settings(card.mask_options) if masked else 'none'} |
| mask ratio requested (fraction of weights that may change) | {requested} |
| weights the run could change{' (`wagle_mask.safetensors`)' if masked else ''} | {could_change} |
| enforcement | {card.enforced_by} |
| learning rate / steps | {card.learning_rate:g} / {card.steps} |
| adapter | {card.adapter or 'none (full parameters)'} |
| hf_wagle | {__version__} |

{confinement}{base_source_note(base, card.base_source)}
{verdict}
{module_table(enforced)}
{results}
## How to load

{load}"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def run_card(trainer) -> RunCard:
    """The values a `WagleTrainer` run's card shows, read from the trainer after training."""
    from peft import PeftModel

    args, enforced, model = trainer.args, trainer.enforced_mask, trainer.model
    base = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    adapter = None
    if isinstance(model, PeftModel):
        config = model.peft_config[model.active_adapter]
        base = config.base_model_name_or_path or base
        adapter = f"LoRA r={config.r}, alpha={config.lora_alpha}, masked to rows x columns"
        quantized = trainer.provenance.get("base_quantization")
        if quantized:
            adapter += f", trained over the base quantised by bitsandbytes ({quantization_name(quantized)})"
    # the mask the run used: computed from args, or given (e.g. `mask_dir`), whose own metadata then tells
    masked = trainer.mask is not None
    meta = trainer.mask.metadata if masked else {}
    return RunCard(
        objective=args.objective, retain_loss=args.retain_loss, forget_weight=args.forget_weight,
        retain_weight=args.retain_weight, learning_rate=args.learning_rate, steps=trainer.state.global_step,
        enforced=enforced.stats(), enforced_by=enforced.metadata.get("enforced_by", ""),
        mask_method=(meta.get("method") or args.mask_method or "given") if masked else None,
        mask_ratio=meta.get("ratio", args.mask_ratio) if masked else 1.0,
        base_model=base, adapter=adapter, model_name=args.hub_model_id, results=trainer.results,
        verification=trainer.verification,
        objective_args=asdict(trainer.objective.args) if trainer.objective.args is not None else None,
        mask_options=meta.get("options") if masked else None,
        base_source=trainer.provenance.get("base_source"),
    )


def card_for(trainer) -> ModelCard:
    """The card of a `WagleTrainer` run (`model_card(run_card(trainer))`)."""
    return model_card(run_card(trainer))


def write_model_card(output_dir, trainer) -> None:
    """The run's card, with the digest of the record saved beside it (when there is one)."""
    from ..record import read_record

    card = run_card(trainer)
    record = read_record(output_dir)
    card.record_digest = record.get("digest") if record else None
    model_card(card).save(os.path.join(output_dir, "README.md"))


def module_table(stats) -> str:
    """Per-module-type share of weights a mask lets change (`WeightMask.stats()`, or the mask), as a Markdown table."""
    stats = stats.stats() if hasattr(stats, "stats") else stats
    rows = "\n".join(f"| `{module}` | {e['selected']} | {e['total']} | {100 * e['fraction']:.2f}% |"
                     for module, e in stats["per_module"].items())
    return f"| module | may change | weights | share |\n|---|---|---|---|\n{rows}\n"


_MEASURE_NAMES = {"probability": "mean answer probability, exp(-mean token NLL), teacher forced",
                  "answered": "share of questions whose greedy answer contains the answer",
                  "rouge": "ROUGE-L recall of the greedy answer", "truth_ratio": "TOFU truth ratio"}


def results_section(results: dict | None) -> str:
    """The card's Results: each metric before and after, what each data set is, and the targets' verdict."""
    if not results:
        return ""
    rows = "\n".join(f"| `{name}` | {results['before'][name]:.4g} | {results['after'][name]:.4g} |"
                     for name in results["after"] if name in results["before"] and name != "gap")
    sets = "\n".join(f"- `{name}`: {what}" for name, what in (results.get("sets") or {}).items())
    measures = "\n".join(f"- `*_{m}`: {what}" for m, what in _MEASURE_NAMES.items()
                         if any(k.endswith("_" + m) for k in results["after"]))
    targets = results.get("targets")
    verdict = ""
    if targets:
        from ..evaluation.targets import explain

        named = ", ".join(f"`{t}`" for t in targets["targets"])
        verdict = f"\nTargets: {named}.\n\n```\n{explain(targets)}\n```\n"
    return (f"\n## Results\n\n| metric | before | after |\n|---|---|---|\n{rows}\n\nData sets (sizes only; their "
            f"text is not published):\n\n{sets}\n\nMeasures:\n\n{measures}\n{verdict}")


def eval_results(results: dict | None) -> list[EvalResult] | None:
    """`model-index` entries for the card's metadata: each metric of `results` (`{"before": {metric: v}, "after":
    {metric: v}}`) before and after unlearning."""
    if not results:
        return None
    return [EvalResult(task_type="text-generation", dataset_type=f"{name.split('_')[0]}-data",
                       dataset_name=f"{name.split('_')[0]} data", metric_type=f"{name}_{when}",
                       metric_name=f"{name.replace('_', ' ')} {when}", metric_value=float(results[when][name]))
            for name in results["after"] if name in results["before"] and name != "gap"
            for when in ("before", "after")]


def peft_load_snippet(base: str | None) -> str:
    """How to load an adapter on its base with stock PEFT, and roll it back (Markdown)."""
    return ("```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
            f"base = AutoModelForCausalLM.from_pretrained({base or '<base model>'!r})\n"
            "model = PeftModel.from_pretrained(base, '<this folder or repo>')\n"
            "# undo the unlearning: model.unload() returns the untouched base model\n```\n")


def export_card(report: dict, base: str | None, method: str | None = None, record: dict | None = None) -> ModelCard:
    """The card of an adapter exported from a full-parameter run (`hf_wagle.export.export_adapter`), from its export
    report; `method` is the mask method the run used (from its mask's metadata); `record` the export's
    `unlearning_record.json` (the run's settings, data sizes, scores and targets, shown when given)."""
    base = public_name(base)
    data = ModelCardData(base_model=base, library_name="peft",
                         tags=["unlearning", "wagle", f"export:{report['format']}", f"mask:{method or 'given'}"])
    what = get_format(report["format"]).describe(report)
    if report.get("dropped"):
        worst = max(d["relative_change"] for d in report["dropped"].values())
        what += (f"\n\n**Not held by this adapter:** {report['dropped_weights']} changed weights in "
                 f"{len(report['dropped'])} tensors an adapter cannot hold (norms, biases, embeddings, tied weights; "
                 f"largest relative change {worst:.3g}), listed in `export_report.json`. Base + adapter differs from "
                 "the unlearned model there.")
    provenance = ""
    if record:
        settings = record.get("settings") or {}
        sizes = record.get("data") or {}
        rows = "\n".join(f"| {k} | {v} |" for k, v in (
            ("objective", f"`{settings.get('objective')}`"),
            ("learning rate / steps", f"{settings.get('learning_rate')} / {record.get('steps')}"),
            ("data (rows, as tokenised)", ", ".join(f"{k} {v.get('rows')}" for k, v in sizes.items())),
            ("run record digest", f"`{(record.get('export') or {}).get('run_record_digest')}`")))
        evaluation = {**(record.get("evaluation") or {}), "targets": record.get("targets")}
        results = results_section(evaluation if evaluation.get("after") else None)
        provenance = (f"\n## The run\n\n| | |\n|---|---|\n{rows}\n{results}"
                      f"\nEvidence: `unlearning_record.json`, digest `{record.get('digest')}`; `hf-wagle verify "
                      "<this folder>` checks it against the files.\n")
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
{base_source_note(base, ((record or {}).get("base_model") or {}).get("source"))}{provenance}
## How to load and roll back

{peft_load_snippet(base)}"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def write_export_card(folder, report: dict, base: str | None, method: str | None = None) -> None:
    """`export_card` saved as `folder/README.md`, with the record the export carries; pass it to
    `export_adapter(write_card=...)`."""
    from ..record import read_record

    export_card(report, base, method, read_record(folder)).save(os.path.join(folder, "README.md"))
