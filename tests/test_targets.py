"""Targets: stated before the run, checked during it, the run stopped once they hold, the best (or closest)
evaluation kept, and a run that missed them refused by push."""
import json

import pytest

from hf_wagle import WagleTrainer
from hf_wagle.evaluation.targets import Target, parse_targets, rank_key, report

from support import small_args


def test_targets_parse_and_refuse_what_they_cannot_mean():
    t = Target.parse("forget_probability <= 0.2x")
    assert (t.set, t.measure, t.op, t.value, t.relative) == ("forget", "probability", "<=", 0.2, True)
    assert t.bound(0.5) == pytest.approx(0.1) and t.shortfall(0.15, 0.5) == pytest.approx(0.05)
    floor = Target.parse("heldout_answered>=0.8")
    assert floor.bound(0.5) == 0.8 and floor.shortfall(0.9, 0.5) == 0 and str(floor) == "heldout_answered >= 0.8"
    assert [str(x) for x in parse_targets("forget_rouge <= 0.5x; neighbour_probability >= 0.9x")] == [
        "forget_rouge <= 0.5x", "neighbour_probability >= 0.9x"]
    for bad, message in (("forget_probability < 0.2", "write"), ("forget_accuracy <= 0.2", "unknown measure"),
                         ("forget_probability <= -1", ">= 0"), ("forget_probability <= 1e999", "finite")):
        with pytest.raises(ValueError, match=message):
            Target.parse(bad)
    with pytest.raises(ValueError, match="twice"):
        parse_targets(["forget_probability <= 0.2x", "forget_probability <= 0.2x"])


def test_the_kept_evaluation_meets_the_targets_with_most_utility_else_comes_closest():
    targets = parse_targets(["forget_probability <= 0.5x", "heldout_probability >= 0.8x"])
    start = {"step": 0, "forget_probability": 0.8, "heldout_probability": 0.9}
    a = {"step": 2, "forget_probability": 0.5, "heldout_probability": 0.88}  # forget misses
    b = {"step": 4, "forget_probability": 0.3, "heldout_probability": 0.80}  # meets
    c = {"step": 6, "forget_probability": 0.1, "heldout_probability": 0.75}  # meets, less utility
    assert rank_key(targets, b, start) > rank_key(targets, c, start) > rank_key(targets, a, start)
    result = report(targets, [start, a, b, c], chosen_step=4)
    assert result["met"] and result["step"] == 4
    missed = report(targets, [start, a], chosen_step=2)
    row = missed["per_target"][0]
    assert not missed["met"] and not row["holds"] and row["shortfall"] == pytest.approx(0.1)
    assert row["closest_step"] == 2 and missed["per_target"][1]["holds"]


def test_a_run_stops_as_soon_as_its_targets_hold(model, tokenizer, world, tmp_path):
    args = small_args(tmp_path, objective="grad_diff", max_steps=40, learning_rate=1e-3, mask_method="random",
                      targets=["forget_probability <= 0.5x", "heldout_probability >= 0.5x"], target_eval_steps=1)
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer)
    # the held-out rows never reach training (nor attribution): the trainer holds the other retain rows
    heldout = trainer.evaluation.splits["heldout"]
    assert len(heldout) == 36 and len(trainer.train_dataset.retain) == 144
    assert not set(heldout["question"]) & set(trainer.retain_dataset["question"])
    trainer.train()
    history = trainer.evaluation.history
    first = next(h["step"] for h in history[1:] if h["forget_probability"] <= 0.5 * history[0]["forget_probability"])
    assert trainer.state.global_step == first < 40  # stopped at the first evaluation meeting both
    targets = trainer.results["targets"]
    assert targets["met"] and targets["step"] == first and not targets["restored"]
    trainer.save_model()
    record = json.loads((tmp_path / "out" / "unlearning_record.json").read_text())
    assert record["targets"]["met"] and record["evaluation"]["after"]["forget_probability"] == pytest.approx(
        history[-1]["forget_probability"])
    assert "Targets: `forget_probability <= 0.5x`" in (tmp_path / "out" / "README.md").read_text()


def test_the_final_evaluation_adds_only_the_answers_the_last_one_left_out(model, tokenizer, world, tmp_path):
    from hf_wagle.evaluation.measure import measure

    args = small_args(tmp_path, objective="grad_diff", max_steps=4, learning_rate=1e-3, mask_method="random",
                      targets=["forget_answered <= 0.5x", "heldout_probability >= 0.5x"], target_eval_steps=2)
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer)
    evaluated = []
    evaluate = trainer.evaluation.evaluate
    trainer.evaluation.evaluate = lambda *a, **k: evaluated.append(sorted(k.get("sets") or ["all"])) or evaluate(
        *a, **k)
    trainer.train()
    # step 4 generated answers on forget (a target) and heldout (the utility floor): the end adds retain alone
    assert evaluated[-1] == ["retain"] and trainer.results["targets"]["step"] == 4
    after = trainer.results["after"]
    full = measure(trainer.model, tokenizer, trainer.evaluation.splits, args.prompt_template, answers=True)
    assert list(after) == [*full, "gap"] and all(after[k] == pytest.approx(v, rel=1e-6) for k, v in full.items())


def test_a_run_that_misses_its_targets_says_why_keeps_the_closest_and_is_not_pushed(model, tokenizer, world,
                                                                                   tmp_path, capsys):
    from peft import LoraConfig

    from hf_wagle.cli import main
    from hf_wagle.hub import push_to_hub

    args = small_args(tmp_path, objective="grad_diff", max_steps=4, learning_rate=1e-4, mask_method="random",
                      targets=["forget_probability <= 0.1x"], target_eval_steps=2)
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer,
                           peft_config=LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer.train()
    targets = trainer.results["targets"]
    row = targets["per_target"][0]
    assert not targets["met"] and row["shortfall"] > 0 and row["closest_step"] == 4 and targets["step"] == 4
    trainer.save_model()
    with pytest.raises(ValueError, match="did not meet its targets .forget_probability <= 0.1x"):
        push_to_hub(tmp_path / "out", "org/x", dry_run=True)
    assert push_to_hub(tmp_path / "out", "org/x", dry_run=True, allow_unmet_targets=True)["files"]
    assert main(["push", str(tmp_path / "out"), "org/x", "--dry-run"]) == 2
    assert "--allow-unmet-targets" in capsys.readouterr().err
    assert main(["push", str(tmp_path / "out"), "org/x", "--dry-run", "--allow-unmet-targets"]) == 0
    assert "NOT met" in (tmp_path / "out" / "README.md").read_text()


def test_without_stopping_the_best_evaluation_meeting_the_targets_is_restored(model, tokenizer, world, tmp_path):
    args = small_args(tmp_path, objective="grad_diff", max_steps=30, learning_rate=1e-3, mask_method="random",
                      targets=["forget_probability <= 0.5x", "heldout_probability >= 0.3x"], target_eval_steps=2,
                      stop_at_targets=False)
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer)
    trainer.train()
    history, kept = trainer.evaluation.history, trainer.results["targets"]
    assert trainer.state.global_step == 30 and kept["met"]
    # the user's targets and the utility floor's (`<set>_answered >= 0.75x` for the kept sets they leave unnamed);
    # the best evaluation meeting them all keeps the most of the `>=` targets' metrics, as a mean share of the start
    start, targets = history[0], trainer.evaluation.targets
    assert [str(t) for t in targets[:2]] == args.targets and len(targets) > 2
    meeting = [h for h in history[1:] if all(t.shortfall(h[t.metric], start[t.metric]) == 0 for t in targets)]
    floors = [t.metric for t in targets if t.op == ">=" and start[t.metric] > 0]
    best = max(meeting, key=lambda h: sum(h[m] / start[m] for m in floors) / len(floors))
    assert kept["step"] == best["step"]
    from hf_wagle.evaluation.measure import measure

    now = measure(trainer.model, tokenizer, {"heldout": trainer.evaluation.splits["heldout"]}, args.prompt_template)
    assert now["heldout_probability"] == pytest.approx(best["heldout_probability"], rel=1e-5)  # weights restored
    assert kept["restored"] == (best["step"] != 30)


@pytest.mark.parametrize("lora", [True, False])
def test_masked_runs_are_reproducible_and_the_seed_matters(model, tokenizer, world, tmp_path, lora):
    """The LoRA weights are created after seeding, as the Trainer seeds before it builds a model; a full-parameter
    run is seeded by the Trainer itself."""
    import copy

    from peft import LoraConfig

    def adapter(seed):
        args = small_args(tmp_path, objective="grad_diff", max_steps=2, mask_method="random", seed=seed)
        peft = LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM") if lora else None
        trainer = WagleTrainer(model=copy.deepcopy(model), args=args, forget_dataset=world["forget"],
                               retain_dataset=world["retain"], processing_class=tokenizer, peft_config=peft)
        trainer.train()
        return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}

    a, b, c = adapter(0), adapter(0), adapter(1)
    assert all(a[n].equal(b[n]) for n in a)
    assert not all(a[n].equal(c[n]) for n in a)


def test_a_relearn_recovery_target_is_checked_once_on_the_kept_model(model, tokenizer, world, tmp_path):
    """`relearn_recovery <= v` is not scored during training; after it, the audit's relearning attack on the start and
    the kept model gives the same recovery as `audit` run by hand, and decides the verdict."""
    import copy

    from hf_wagle.evaluation.targets import explain, recovery_limit
    from hf_wagle.experiments.robustness import audit

    assert recovery_limit(["forget_probability <= 0.5x", "relearn_recovery <= 0.5"]) == 0.5
    assert recovery_limit(["forget_probability <= 0.5x"]) is None
    assert [str(t) for t in parse_targets(["relearn_recovery <= 0.5", "forget_rouge <= 0.5x"])] == [
        "forget_rouge <= 0.5x"]
    with pytest.raises(ValueError, match=">= 0"):
        recovery_limit("relearn_recovery <= -1")

    start = copy.deepcopy(model)
    args = small_args(tmp_path, objective="grad_diff", max_steps=4, learning_rate=2e-3, mask_method="random",
                      targets=["forget_probability <= 0.9x", "relearn_recovery <= 0"])
    assert args.targets == ["forget_probability <= 0.9x", "relearn_recovery <= 0"]
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer)
    assert [str(t) for t in trainer.evaluation.targets] == ["forget_probability <= 0.9x"]
    trainer.train()
    targets = trainer.results["targets"]
    row = targets["per_target"][-1]
    by_hand = audit(start, copy.deepcopy(trainer.model), tokenizer, world["forget"], schemes=(), answers=False,
                    relearn_only=True, batch_size=args.per_device_eval_batch_size)["recovery"]["relearn"]
    assert row["target"] == "relearn_recovery <= 0" and row["value"] == pytest.approx(by_hand["recovery"])
    assert row["value"] > 0 and not row["holds"] and not targets["met"]
    assert targets["per_target"][0]["holds"]  # what training scored held: the durability check alone failed
    text = explain(targets)
    assert "those scored during training hold" in text and "after relearning the kept model" in text
    trainer.save_model()
    record = json.loads((tmp_path / "out" / "unlearning_record.json").read_text())
    assert not record["targets"]["met"] and record["targets"]["per_target"][-1]["value"] == row["value"]


def test_a_lora_run_with_only_a_relearn_target_reports_it(trained, tokenizer, world, tmp_path):
    import copy

    from peft import LoraConfig

    args = small_args(tmp_path, objective="npo", max_steps=2, learning_rate=5e-3, mask_method="random",
                      targets=["relearn_recovery <= 100"])
    trainer = WagleTrainer(model=copy.deepcopy(trained[0]), args=args, forget_dataset=world["forget"],
                           retain_dataset=world["retain"], processing_class=tokenizer,
                           peft_config=LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer.train()
    targets = trainer.results["targets"]
    assert targets["targets"] == ["relearn_recovery <= 100"] and targets["met"]
    assert targets["per_target"][0]["value"] is not None and targets["per_target"][0]["audit"]["steps"] >= 10
    assert trainer.model.peft_config  # the adapter itself is untouched by the check
