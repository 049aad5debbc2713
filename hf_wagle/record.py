"""`unlearning_record.json`: the machine-readable account of a run, saved beside its adapter or model (and in its
checkpoints): what was run, on which data sets (sizes and what each one is, never their text), the scores before and
after, and the targets with whether they were met. Torch-free."""

from __future__ import annotations

import json
from pathlib import Path

from .version import __version__

RECORD_FILE = "unlearning_record.json"
RECORD_VERSION = 1


def run_record(trainer) -> dict:
    """The record of a `WagleTrainer` run, from the trainer after (or during) training."""
    args = trainer.args
    results = trainer.results or {}
    return {
        "record_version": RECORD_VERSION, "hf_wagle": __version__,
        "masked": trainer._masked, "mask_method": args.mask_method if trainer.mask is None else
        trainer.mask.metadata.get("method", "given"),
        "objective": args.objective, "learning_rate": args.learning_rate, "seed": args.seed,
        "steps": trainer.state.global_step, "max_steps": args.max_steps,
        "targets": results.get("targets") or ({"targets": args.targets, "met": None} if args.targets else None),
        "evaluation": {k: results[k] for k in ("before", "after", "sets") if k in results} or None,
    }


def write_record(output_dir, trainer) -> None:
    Path(output_dir, RECORD_FILE).write_text(json.dumps(run_record(trainer), indent=2, sort_keys=True))


def read_record(folder) -> dict | None:
    """The record in `folder`, or None when there is none."""
    path = Path(folder, RECORD_FILE)
    return json.loads(path.read_text()) if path.exists() else None


def unmet_targets(record: dict | None) -> str | None:
    """Why a record's run may not be published as done: its targets were not met (or never evaluated); else None."""
    targets = (record or {}).get("targets")
    if not targets:
        return None
    if targets.get("met") is True:
        return None
    if targets.get("met") is None:
        return f"the run's targets {targets.get('targets')} were never evaluated to the end"
    missed = [r["target"] for r in targets.get("per_target", []) if not r["holds"]]
    return f"the run did not meet its targets ({', '.join(missed)})"
