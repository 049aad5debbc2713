"""Targets: what "forgotten" and "kept" mean for a run, written down before it starts. Torch-free.

A target is the text `<metric> <= <value>` or `<metric> >= <value>`, where `<metric>` is `<set>_<measure>` of
`hf_wagle.evaluation.measure` (`forget_probability`, `heldout_answered`, `neighbour_rouge`, ...). A value ending in
`x` is a multiple of the metric's value before unlearning (step 0); without it, an absolute number:

    forget_probability <= 0.2x     the forget answers' probability at most a fifth of its start
    forget_answered <= 0.1         at most 10% of forget questions still answered (the key in the greedy answer)
    heldout_probability >= 0.9x    held-out utility at least 90% of its start

`bound = value * start` for a relative target, `value` otherwise. A target holds when `metric <= bound` (or
`>= bound`); its shortfall is how far the metric is on the wrong side, `max(0, metric - bound)` (or
`max(0, bound - metric)`), in the metric's own units.

Of several evaluations, the one kept is, among those where every target holds, the one with the highest mean of
`metric / start` over the `>=` targets (the most utility kept; the earliest when there are none); when no evaluation
meets every target, the one closest to doing so: the smallest sum of shortfalls, each divided by its bound.

A target that cannot fail measures nothing (`vacuous`): a `<=` target that already holds before training, a `>=`
target whose bound is 0, or an `answered` target whose set the model answers in fewer than `ANSWERED_FLOOR` of its
rows at the start (forgetting, or keeping, what it never said is not measured). A run with one is never reported as
having met its targets; `explain` says which and why.

**What is forgotten** (`forget_kind`, `KINDS`). The sets `forget` and `topic` are to be forgotten; every other set
but `retain` is to be kept. A run states which of two requests it answers:

    fact    forget the listed facts and nothing else: `neighbour` (the same relation, other subjects: other
            countries' languages) and `entity` (other facts about the same subjects: those countries' capitals)
            must stay. Needs at least one of them.
    topic   forget a topic: `topic` (facts of the topic never trained on) must be forgotten too (the forgetting
            generalises); other topics (`heldout`, `neighbour`) stay. Needs `topic`.

A run with a kind and no targets of its own gets the kind's (`kind_targets`).

**Durability.** `relearn_recovery <= v` is checked once, on the model the run keeps, after training: the relearning
attack of `hf-wagle audit` (`hf_wagle.experiments.robustness`: fine-tuning on half of the forget rows, scored on the
other half) must give back at most `v` of what the run removed. `recovery_limit` reads it; `parse_targets` leaves
it out of the targets scored during training, and `durability_row` adds its verdict to the targets' report.

**Utility floor.** With targets, every kept set that no `>=` answered target and no `<=` target names gets
`<set>_answered >= floor x`
(`floor_targets`, `utility_floor` 0.75 by default) once its start is known, when the model answers at least
`ANSWERED_FLOOR` of it then: no stop and no kept model may buy forgetting with the knowledge the run was to keep.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .measure import ANSWER_MEASURES, ANSWERED, MEASURES

ANSWERED_FLOOR = 0.5  # below this share answered at the start, an `answered` target measures too little
FORGOTTEN_SETS = ("forget", "topic")  # sets a run must forget; every other set but `retain` it must keep
KINDS = {
    "fact": {"needs": ("neighbour", "entity"),
             "targets": ("forget_answered <= 0.25", "neighbour_answered >= 0.8x", "entity_answered >= 0.8x",
                         "heldout_answered >= 0.9x")},
    "topic": {"needs": ("topic",),
              "targets": ("forget_answered <= 0.25", "topic_answered <= 0.25", "heldout_answered >= 0.9x",
                          "neighbour_answered >= 0.8x")},
}

_TARGET = re.compile(r"^\s*([a-z][a-z0-9]*)_([a-z]+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*(x?)\s*$")


@dataclass(frozen=True)
class Target:
    """One target: `metric op value` (`relative`: value is a multiple of the metric's start)."""

    set: str
    measure: str
    op: str
    value: float
    relative: bool = False

    @classmethod
    def parse(cls, text: str) -> Target:
        if isinstance(text, Target):
            return text
        match = _TARGET.match(str(text))
        if not match:
            raise ValueError(f"target {text!r}: write `<set>_<measure> <= <value>` or `>=`, with measure one of "
                             f"{', '.join(MEASURES)} and an optional `x` after the value for a multiple of its start, "
                             "e.g. 'forget_probability <= 0.2x' or 'heldout_answered >= 0.8x'")
        set_, measure, op, raw, x = match.groups()
        if measure not in MEASURES:
            raise ValueError(f"target {text!r}: unknown measure {measure!r}; choose one of {', '.join(MEASURES)}")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"target {text!r}: {raw!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"target {text!r}: the value must be a finite number >= 0")
        return cls(set_, measure, op, value, bool(x))

    @property
    def metric(self) -> str:
        return f"{self.set}_{self.measure}"

    @property
    def floor(self) -> bool:
        """A `>=` target: something to keep."""
        return self.op == ">="

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}{'x' if self.relative else ''}"

    def bound(self, start: float) -> float:
        return self.value * start if self.relative else self.value

    def shortfall(self, value: float, start: float) -> float:
        """How far `value` is on the wrong side of the bound (0 when the target holds)."""
        bound = self.bound(start)
        return max(0.0, bound - value) if self.floor else max(0.0, value - bound)


_RECOVERY = re.compile(r"^\s*relearn_recovery\s*<=\s*([-+0-9.eE]+)\s*$")


def _items(items) -> list:
    if items is None:
        return []
    return [t for t in items.split(";") if t.strip()] if isinstance(items, str) else list(items)


def recovery_limit(items) -> float | None:
    """`v` of a `relearn_recovery <= v` target among `items` (None when there is none)."""
    for item in _items(items):
        match = _RECOVERY.match(str(item)) if not isinstance(item, Target) else None
        if match:
            try:
                value = float(match[1])
            except ValueError:
                raise ValueError(f"target {item!r}: {match[1]!r} is not a number") from None
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"target {item!r}: the value must be a finite number >= 0")
            return value
    return None


def durability_row(limit: float, audit: dict) -> dict:
    """The `relearn_recovery <= limit` row of a targets report from an audit report with a `relearn` recovery: it
    holds when the recovery is measured (the run removed something) and at most `limit`."""
    entry = audit["recovery"]["relearn"]
    value = entry["recovery"]
    return {"target": f"relearn_recovery <= {limit:g}", "bound": limit, "value": value,
            "holds": value is not None and value <= limit,
            "shortfall": None if value is None else max(0.0, value - limit), "audit": entry}


def parse_targets(items) -> list[Target]:
    """Targets from a list of texts (or one text with targets separated by `;`); duplicates refused. A
    `relearn_recovery` target is not scored during training and is left out (`recovery_limit` reads it)."""
    targets = [Target.parse(t) for t in _items(items) if isinstance(t, Target) or not _RECOVERY.match(str(t))]
    if len({str(t) for t in targets}) != len(targets):
        raise ValueError(f"targets lists one twice: {[str(t) for t in targets]}")
    return targets


def check_kind(kind: str | None, sets) -> None:
    """Refuse a `forget_kind` whose sets are missing (before any work): forgetting of that kind would go unmeasured."""
    if kind is None:
        return
    if kind not in KINDS:
        raise ValueError(f"forget_kind must be one of {', '.join(KINDS)} or None, got {kind!r}")
    needs = KINDS[kind]["needs"]
    if not any(name in sets for name in needs):
        what = {"fact": "facts that must stay: `neighbour` (same relation, other subjects) or `entity` (other facts "
                        "about the same subjects)",
                "topic": "`topic`: facts of the topic never trained on, which must be forgotten too"}[kind]
        raise ValueError(f"forget_kind={kind!r} is measured on {what}; give it as an evaluation set (unlearn: "
                         f"eval_files: {{{needs[0]}: FILE}}; WagleTrainer: eval_datasets={{'{needs[0]}': ...}})")


def kind_targets(kind: str, sets) -> list[str]:
    """The default targets of `kind` (`KINDS`) on the sets a run has."""
    return [t for t in KINDS[kind]["targets"] if Target.parse(t).set in sets]


def run_targets(targets, kind: str | None, sets) -> list[str]:
    """A run's targets: its own (`targets`), else its `kind`'s on the sets it has (`check_kind` first)."""
    check_kind(kind, sets)
    own = parse_targets(targets)
    if own:
        return [str(t) for t in own]
    return kind_targets(kind, sets) if kind else []


def kept_sets(sets) -> list[str]:
    """The sets a run must keep: all but `retain` and `FORGOTTEN_SETS`."""
    return [name for name in sets if name != "retain" and name not in FORGOTTEN_SETS]


def floor_targets(targets: list[Target], start: dict, floor: float | None) -> list[Target]:
    """The utility floor (module docstring): `<set>_answered >= floor x` for each kept set in `start` (the metrics
    at step 0) answered in at least `ANSWERED_FLOOR` of its rows, named by no `>=` answered target (the user's own
    floor) and by no `<=` target (the user forgets it)."""
    if floor is None:
        return []
    named = {t.set for t in targets if (t.floor and t.measure == ANSWERED) or not t.floor}
    sets = [m[:-len("_" + ANSWERED)] for m in start if m.endswith("_" + ANSWERED)]
    return [Target(s, ANSWERED, ">=", floor, True) for s in kept_sets(sets)
            if s not in named and start[f"{s}_{ANSWERED}"] >= ANSWERED_FLOOR]


def needs_answers(targets: list[Target]) -> bool:
    return any(t.measure in ANSWER_MEASURES for t in targets)


def check(targets: list[Target], metrics: dict, start: dict) -> list[dict]:
    """Per target: `{target, bound, value, holds, shortfall}` for one evaluation."""
    out = []
    for t in targets:
        bound, value = t.bound(start[t.metric]), metrics[t.metric]
        out.append({"target": str(t), "bound": bound, "value": value, "holds": t.shortfall(value, start[t.metric])
                    == 0.0, "shortfall": t.shortfall(value, start[t.metric])})
    return out


def vacuous(targets: list[Target], start: dict) -> list[str]:
    """Why each target that cannot fail is vacuous (module docstring), one line each; empty when none is."""
    out = []
    for t in targets:
        s = start[t.metric]
        bound = t.bound(s)
        if not t.floor and s <= bound:
            out.append(f"{t} already holds before training ({t.metric} starts at {s:.4g}, bound {bound:.4g}): it "
                       "cannot fail, so it measures nothing")
        elif t.floor and bound <= 0:
            out.append(f"{t} holds whatever happens (its bound is {bound:.4g})")
        elif t.measure == ANSWERED and s < ANSWERED_FLOOR:
            out.append(f"{t}: the model answers only {s:.2g} of the {t.set} questions at the start (fewer than "
                       f"{ANSWERED_FLOOR:g}), so `answered` says little about them; give an answer_key column naming "
                       "the fact, or questions the model answers")
    return out


def rank_key(targets: list[Target], metrics: dict, start: dict) -> tuple:
    """Sort key of one evaluation, larger = better (module docstring)."""
    rows = check(targets, metrics, start)
    if all(r["holds"] for r in rows):
        kept = [metrics[t.metric] / start[t.metric] for t in targets if t.floor and start[t.metric] > 0]
        return (1, sum(kept) / len(kept) if kept else 0.0)
    return (0, -sum(r["shortfall"] / max(abs(r["bound"]), 1e-12) for r in rows))


def report(targets: list[Target], history: list[dict], chosen_step: int | None) -> dict:
    """What a run with targets says at its end: whether they were met, at which step, and, per target, its start,
    bound, value at the kept step, and the step where it came closest (smallest shortfall) with that shortfall.
    `history` is the list of evaluations, `{"step", **metrics}`, the first at step 0."""
    start = history[0]
    chosen = next(h for h in history if h["step"] == chosen_step) if chosen_step is not None else history[-1]
    rows = check(targets, chosen, start)
    per_target = []
    for t, row in zip(targets, rows):
        closest = min(history[1:] or history, key=lambda h: (t.shortfall(h[t.metric], start[t.metric]), h["step"]))
        per_target.append({**row, "start": start[t.metric], "closest_step": closest["step"],
                           "closest_shortfall": t.shortfall(closest[t.metric], start[t.metric])})
    empty = vacuous(targets, start)
    met = all(r["holds"] for r in rows) and not empty
    return {"targets": [str(t) for t in targets], "met": met, "step": chosen["step"], "evaluations": len(history),
            "per_target": per_target, "vacuous": empty}


def explain(result: dict) -> str:
    """One or more lines saying whether the targets were met, and if not which, by how much and where closest."""
    lines = _explain(result)
    if result.get("kind"):
        lines = f"{result['kind']}-level forgetting ({KIND_MEANING[result['kind']]}); {lines}"
    if result.get("utility_floor"):
        lines += f"\n  utility floor in force: {', '.join(result['utility_floor'])}"
    return lines


KIND_MEANING = {"fact": "the listed facts only; neighbours and the same subjects' other facts kept",
                "topic": "the topic, held-out facts of it included"}


def _explain(result: dict) -> str:
    empty = [f"  VACUOUS {why}" for why in result.get("vacuous") or []]
    if result["step"] in (result.get("collapsed_steps") or []):
        empty.append(f"  COLLAPSED step {result['step']} is inside a retain collapse (retain probability below its "
                     "floor), the only evaluations near the targets were; lower the learning rate or raise "
                     "retain_weight")
    if empty and all(r["holds"] for r in result["per_target"]):
        return "\n".join([f"targets NOT met: all hold at step {result['step']}, but:", *empty])
    if result["met"]:
        return (f"targets met at step {result['step']}: "
                + "; ".join(f"{r['target']} ({r['value']:.4g} vs bound {r['bound']:.4g})"
                            for r in result["per_target"]))
    missed = [r for r in result["per_target"] if not r["holds"] and "audit" not in r]
    lines = [f"targets NOT met within the run ({result['evaluations']} evaluations); kept the closest evaluation, "
             f"step {result['step']}:" if missed else
             f"targets NOT met: those scored during training hold at step {result['step']}, but the forgetting does "
             "not last:"]
    for r in missed:
        lines.append(f"  {r['target']}: {r['value']:.4g} against bound {r['bound']:.4g} (start {r['start']:.4g}), "
                     f"short by {r['shortfall']:.4g}; closest at step {r['closest_step']} (short by "
                     f"{r['closest_shortfall']:.4g})")
    for r in result["per_target"]:
        if "audit" in r and not r["holds"]:
            a = r["audit"]
            value = "not measured (the run removed nothing)" if r["value"] is None else f"{r['value']:.4g}"
            lines.append(f"  {r['target']}: {value} after relearning the kept model ({a['steps']} steps at lr "
                         f"{a['learning_rate']:g} on {a['rows_trained']} forget rows, scored on {a['rows_scored']} "
                         "others)")
    return "\n".join(lines + empty)
