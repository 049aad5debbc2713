"""Mask comparison: held-out utility at real matched points, its intervals, `hf-wagle compare-masks` and `plan`."""
import json
import math

import pytest

from hf_wagle.experiments.compare import ci95, compare_masks, parse_specs, spec_options


def test_specs_parse_options_and_refuse_unknown_ones():
    assert parse_specs("dense,random,wagle:mu=1e-4,scope=per_layer,snip") == [
        "dense", "random", "wagle:mu=1e-4,scope=per_layer", "snip"]
    assert spec_options("wagle:mu=1e-4,retain_sampling=paired,ratio=0.8") == {
        "mask_method": "wagle", "mu": 1e-4, "mask_retain_sampling": "paired", "mask_ratio": 0.8}
    assert spec_options("dense") == {"mask_method": None}
    for bad, message in (("wagle:alpha=1", "options are key=value"), ("dense:mu=1", "dense takes no options"),
                         ("nosuch", "nosuch"), ("wagle:mu=abc", "mu must be a number"),
                         ("wagle:scope=perlayer", "scope must be one of"), ("random:ratio=2", "ratio")):
        with pytest.raises(ValueError, match=message):
            spec_options(bad)
    with pytest.raises(ValueError, match="no method before it"):
        parse_specs("mu=1e-4,wagle")


def test_interval_is_the_student_t_interval():
    from scipy import stats

    values = [0.61, 0.72, 0.58, 0.69]
    mean, half = ci95(values)
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
    assert mean == pytest.approx(sum(values) / 4) and (mean - half, mean + half) == pytest.approx((lo, hi))
    assert math.isnan(ci95([0.5])[1]) and math.isnan(ci95([])[0])


@pytest.mark.parametrize("grid", [0.0, 0.1])
def test_a_share_of_rows_is_matched_at_the_first_value_at_or_below_the_target(grid):
    """`forget_answered` over 10 rows takes the values 0.0, 0.1, ...: around a target of 0.25 there is no value
    within 10% of it. On its grid the matched point is the first value at or below the target (0.2, within one row);
    read as continuous, no point is within the tolerance and the comparison would refuse a verdict."""
    import torch

    from hf_wagle.experiments.compare import MatchedPointCallback

    model = torch.nn.Linear(1, 1, bias=False)

    def cheap(m, only=None):  # the share answered falls in steps of 0.1 as the weight goes from 1 to 0
        return {"forget_answered": math.floor(float(m.weight.detach()) * 10) / 10}

    tracker = MatchedPointCallback(cheap, lambda m: {}, "forget_answered", 0.25, {"step": 0}, 1, 0.1, grid=grid)
    with torch.no_grad():
        model.weight.fill_(1.0)
    tracker.on_train_begin(None, None, None, model=model)
    with torch.no_grad():
        model.weight.fill_(0.0)
    matched = tracker._search(model, {"step": 3, "forget_answered": 1.0}, {"step": 4, "forget_answered": 0.0})
    value = cheap(model)["forget_answered"]
    if grid:
        assert matched["within_tolerance"] and value == 0.2 and 3 < matched["step"] < 4
    else:
        assert not matched["within_tolerance"] and value in (0.2, 0.3)


def test_a_target_crossed_inside_the_first_step_is_warned_about_and_matched_by_a_partial_step(trained, world):
    """At a learning rate that forgets in under one step, the matched point is searched inside the first step; the
    model found there is exactly one step at the learning rate scaled by t (Adam's update is linear in it)."""
    import copy

    from transformers import PrinterCallback

    from hf_wagle import WagleConfig, WagleTrainer
    from hf_wagle.evaluation.measure import measure

    model, tokenizer = trained
    training = {"objective": "ga", "learning_rate": 5e-2, "per_device_train_batch_size": 8, "max_length": 64}
    result = compare_masks(model, tokenizer, world["forget"], world["retain"], methods="dense", seeds=1, steps=3,
                           forget_target=0.5, tolerance=0.05, training=training, answers=False, progress=None)
    run = result["runs"][0]
    matched, target = run["matched"], result["settings"]["target"]
    assert run["curve"][1]["step"] == 1 and run["curve"][1]["forget_probability"] < target  # crossed in step 1
    assert run["warnings"] and "first 1 step" in run["warnings"][0]
    assert 0 < matched["t"] < 1 and matched["step"] == pytest.approx(matched["t"])
    assert matched["within_tolerance"] and abs(matched["forget_probability"] - target) <= 0.05 * target
    assert result["summary"]["dense"]["first_step_crossings"] == 1

    assert result["settings"]["rows_available"] == {"forget": 20, "heldout": 36, "retain": 144}

    # one real step at learning rate t * lr reproduces the matched model
    args = WagleConfig(output_dir="unused", report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True,
                       lr_scheduler_type="constant", max_steps=1, seed=0, retain_holdout=0.0, mask_method=None,
                       **{**training, "learning_rate": training["learning_rate"] * matched["t"]})
    from hf_wagle.evaluation.measure import split_holdout

    kept, held = split_holdout(world["retain"], 0.2, 0)
    assert not set(held["question"]) & set(kept["question"])
    trainer = WagleTrainer(model=copy.deepcopy(model), args=args, forget_dataset=world["forget"], retain_dataset=kept,
                           processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    again = measure(trainer.model, tokenizer, {"forget": world["forget"]}, args.prompt_template)
    assert again["forget_probability"] == pytest.approx(matched["forget_probability"], rel=1e-3)


@pytest.mark.slow  # trains 6 runs
def test_compare_masks_command_on_the_world(trained, world, tmp_path, capsys):
    from hf_wagle.cli import main

    model, tokenizer = trained
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    world["forget"].to_json(tmp_path / "forget.jsonl")
    world["retain"].to_json(tmp_path / "retain.jsonl")
    world["forget"].select(range(5)).to_json(tmp_path / "neighbour.jsonl")  # stands in for near facts
    argv = ["compare-masks", "--model_name_or_path", str(tmp_path / "model"), "--forget_file",
            str(tmp_path / "forget.jsonl"), "--retain_file", str(tmp_path / "retain.jsonl"), "--neighbour_file",
            str(tmp_path / "neighbour.jsonl"), "--out", str(tmp_path / "cmp"), "--seeds", "2", "--max_steps", "12",
            "--learning_rate", "2e-3", "--objective", "grad_diff", "--use_peft", "false", "--keep", "true",
            "--per_device_train_batch_size", "8"]
    assert main(argv + ["--methods", "dense,random,wagle", "--survival", "true"]) == 0
    out = capsys.readouterr().out
    assert "NF4 survival" in out
    assert "heldout: 36 of the 180 retain rows" in out and "TRAINS ON" in out and "forget answered" in out
    assert "highest held-out utility at the target" in out or "no verdict" in out
    result = json.loads((tmp_path / "cmp" / "compare_masks.json").read_text())
    assert [(r["method"], r["seed"]) for r in result["runs"]] == [
        (m, s) for s in (0, 1) for m in ("dense", "random", "wagle")]
    assert result["settings"]["utility_sets"] == ["heldout", "neighbour"]
    assert result["settings"]["rows_scored"] == {"forget": 20, "heldout": 36, "neighbour": 5, "retain": 144}
    for run in result["runs"]:
        m = run["matched"]
        assert m is not None and {"forget_answered", "heldout_rouge", "retain_probability"} <= set(m)
        assert m["utility"] == pytest.approx((m["heldout_probability"] + m["neighbour_probability"]) / 2)
        assert 0 < m["nf4_survival"] <= 1 and 0 < m["int8_survival"] <= 1
        assert [p["step"] for p in run["curve"]] == list(range(len(run["curve"])))  # every step recorded
        if run["method"] != "dense":
            assert run["changeable"] == round(0.5 * run["total"])
        # --keep: the run's model at its matched point, with its record; a dense run ships no mask
        kept = tmp_path / "cmp" / "runs" / f"{run['method']}-seed{run['seed']}"
        record = json.loads((kept / "unlearning_record.json").read_text())
        assert record["evaluation"]["after"]["forget_probability"] == pytest.approx(m["forget_probability"])
        assert (kept / "wagle_mask.safetensors").exists() == (run["method"] != "dense")
    assert (tmp_path / "cmp" / "compare_masks.png").stat().st_size > 0
    assert "Ohio" not in json.dumps(result) and world["forget"][0]["answer"] not in json.dumps(result)

    assert main(argv + ["--methods", "dense,wagle:alpha=2"]) == 2
    err = capsys.readouterr().err
    assert "options are key=value" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow  # trains 2 settings x their matched-point searches, then the planned run
def test_plan_writes_a_config_that_meets_its_targets(trained, world, tmp_path, capsys):
    """`plan` tries masks and ratios against the config's targets; its YAML, run as written, meets them."""
    import yaml

    from hf_wagle.cli import main

    model, tokenizer = trained
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    world["forget"].to_json(tmp_path / "forget.jsonl")
    world["retain"].to_json(tmp_path / "retain.jsonl")
    config = {"model_name_or_path": str(tmp_path / "model"), "forget_file": str(tmp_path / "forget.jsonl"),
              "retain_file": str(tmp_path / "retain.jsonl"), "output_dir": str(tmp_path / "out"),
              "objective": "grad_diff", "learning_rate": 1e-3, "max_steps": 30, "per_device_train_batch_size": 4,
              "lora_r": 4, "use_cpu": True, "report_to": "none", "save_strategy": "no",
              "targets": ["forget_probability <= 0.3x", "heldout_probability >= 0.6x"]}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    assert main(["plan", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "plan"), "--seeds", "1",
                 "--methods", "random", "--ratios", "0.1,0.5", "--learning_rates", "1e-3,1e-4"]) == 0
    out = capsys.readouterr().out
    assert "chosen: random:ratio=0.5 at lr 0.001" in out
    assert "random:ratio=0.1             lr 0.001    grad_diff nll:1    fails" in out
    assert "learning_rate: 0.001 met every target in 1 of 2 settings, 0.0001 met every target in" in out
    candidates = json.loads((tmp_path / "plan" / "plan.json").read_text())["candidates"]
    assert [(c["spec"], c["learning_rate"]) for c in candidates] == [
        ("random:ratio=0.1", 1e-3), ("random:ratio=0.5", 1e-3), ("random:ratio=0.1", 1e-4), ("random:ratio=0.5", 1e-4)]
    assert (tmp_path / "plan" / "lr_0.0001" / "compare_masks.json").exists()
    planned = yaml.safe_load((tmp_path / "plan" / "plan.yaml").read_text())
    assert planned["mask_method"] == "random" and planned["mask_ratio"] == 0.5 and planned["targets"] == config[
        "targets"]
    assert main(["unlearn", "--config", str(tmp_path / "plan" / "plan.yaml")]) == 0
    record = json.loads((tmp_path / "out" / "unlearning_record.json").read_text())
    assert record["targets"]["met"] is True and record["steps"] < planned["max_steps"]

    # judged where unlearn would stop: the first evaluation (every 2 steps) from the crossing on where all held
    from hf_wagle.evaluation.targets import parse_targets
    from hf_wagle.experiments.compare import targets_hold

    status = main(["plan", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "plan_t"), "--seeds", "1",
                   "--methods", "random", "--ratios", "0.5", "--match", "targets", "--eval_every", "2"])
    result = json.loads((tmp_path / "plan_t" / "compare_masks.json").read_text())
    matched = result["runs"][0]["matched"]
    assert result["settings"]["matched_where"] == "targets" and status == (0 if matched else 3)
    printed = capsys.readouterr().out
    assert "matched point: the first evaluation, every 2 steps, where every target holds" in printed
    assert "did not reach a matched point within the tolerance" not in printed
    assert matched["step"] % 2 == 0 and targets_hold(parse_targets(config["targets"]), result["base"], matched)


@pytest.mark.slow  # one plan trial per retain file
def test_plan_tries_each_retain_file_on_the_same_heldout_rows(trained, world, tmp_path, capsys):
    """`--retain_files`: each file is a recipe of its own, trained on its rows and judged on the config's held-out
    rows; the lever is reported, and the chosen file is the plan's `retain_file`."""
    import yaml

    from hf_wagle.cli import main

    model, tokenizer = trained
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    world["forget"].to_json(tmp_path / "forget.jsonl")
    retain = world["retain"]
    files = {"all": retain.select(range(150)), "half": retain.select(range(75)),
             "heldout": retain.select(range(150, 180))}
    for name, data in files.items():
        data.to_json(tmp_path / f"{name}.jsonl")
    config = {"model_name_or_path": str(tmp_path / "model"), "forget_file": str(tmp_path / "forget.jsonl"),
              "retain_file": str(tmp_path / "all.jsonl"), "output_dir": str(tmp_path / "out"),
              "objective": "grad_diff", "learning_rate": 1e-3, "max_steps": 30, "per_device_train_batch_size": 4,
              "lora_r": 4, "use_cpu": True, "report_to": "none", "save_strategy": "no",
              "targets": ["forget_probability <= 0.3x", "heldout_probability >= 0.6x"]}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    argv = ["plan", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "plan"), "--seeds", "1",
            "--methods", "random", "--ratios", "0.5", "--retain_files",
            f"{tmp_path / 'all.jsonl'},{tmp_path / 'half.jsonl'}"]
    assert main(argv) == 2  # no heldout set: each file would hold out rows of its own
    assert "--retain_files: without a heldout set" in capsys.readouterr().err
    config["heldout_file"] = str(tmp_path / "heldout.jsonl")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    retain.select(range(140, 160)).to_json(tmp_path / "overlapping.jsonl")  # 10 held-out rows among them
    assert main([*argv[:-1], f"{tmp_path / 'all.jsonl'},{tmp_path / 'overlapping.jsonl'}"]) == 2
    assert "overlapping.jsonl shares 10 question(s) with the heldout data" in capsys.readouterr().err
    assert not (tmp_path / "plan").exists()
    status = main(argv)
    out = capsys.readouterr().out
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert [c["retain_file"] for c in plan["candidates"]] == [str(tmp_path / "all.jsonl"), str(tmp_path / "half.jsonl")]
    assert set(plan["levers"]["retain_data"]) == {str(tmp_path / "all.jsonl"), str(tmp_path / "half.jsonl")}
    for name, rows in (("all", 150), ("half", 75)):
        result = json.loads((tmp_path / "plan" / f"retain_data_{name}" / "compare_masks.json").read_text())
        assert result["settings"]["rows_available"]["retain"] == rows and result["settings"]["rows_available"][
            "heldout"] == 30
    assert "retain_data: " in out
    assert status == (0 if plan["chosen"] else 3)
    if plan["chosen"]:
        planned = yaml.safe_load((tmp_path / "plan" / "plan.yaml").read_text())
        assert planned["retain_file"] == plan["recipe"]["retain_file"] and f"on {planned['retain_file']}" in out


@pytest.mark.slow  # a plan trial, then the relearning attack on its kept model
def test_plan_attacks_each_feasible_setting_against_a_relearning_limit(trained, world, tmp_path, capsys):
    import yaml

    from hf_wagle.cli import main

    model, tokenizer = trained
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    world["forget"].select(range(12)).to_json(tmp_path / "forget.jsonl")
    world["retain"].to_json(tmp_path / "retain.jsonl")
    config = {"model_name_or_path": str(tmp_path / "model"), "forget_file": str(tmp_path / "forget.jsonl"),
              "retain_file": str(tmp_path / "retain.jsonl"), "output_dir": str(tmp_path / "out"),
              "objective": "grad_diff", "learning_rate": 1e-3, "max_steps": 30, "per_device_train_batch_size": 4,
              "lora_r": 4, "use_cpu": True, "report_to": "none", "save_strategy": "no",
              "targets": ["forget_probability <= 0.3x", "heldout_probability >= 0.6x", "relearn_recovery <= 0.01"]}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    assert main(["plan", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "plan"), "--seeds", "1",
                 "--methods", "random", "--ratios", "0.5"]) == 3  # the relearning attack gives more than 1% back
    (candidate,) = json.loads((tmp_path / "plan" / "plan.json").read_text())["candidates"]
    assert candidate["relearn_recovery"] > 0.01 and not candidate["feasible"]
    assert candidate["problems"] == [f"seed 0: relearn_recovery {candidate['relearn_recovery']:.3g} > 0.01"]
    assert f"relearn_recovery {candidate['relearn_recovery']:.3g}; fails: seed 0" in capsys.readouterr().out
    assert not (tmp_path / "plan" / "runs").exists()  # kept for the attack alone
    assert candidate["learning_rate"] == 1e-3


def test_compare_masks_on_the_real_model_with_masked_lora(smollm2, tmp_path, capsys):
    """SmolLM2 and the element-symbols scenario, as examples/unlearn_smollm2.yaml configures it: held-out utility
    (its `topic` set is to be forgotten, so it is no utility), answers at the matched point (a random mask at the
    example's learning rate halves the forget probability inside the second step)."""
    from hf_wagle.cli import main

    argv = ["compare-masks", "--config", "examples/unlearn_smollm2.yaml", "--model_name_or_path", str(smollm2[2]),
            "--methods", "random", "--seeds", "1", "--max_steps", "2", "--lora_r", "4", "--eval_limit", "8",
            "--out", str(tmp_path / "cmp")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "matched at step 1." in out and "first recorded interval" not in out
    assert "[1/1] random seed 0: forget_probability" in out and "done)" in out  # progress
    result = json.loads((tmp_path / "cmp" / "compare_masks.json").read_text())
    assert result["settings"]["utility_sets"] == ["heldout"]
    base = result["base"]
    assert base["heldout_answered"] >= 0.75 and base["forget_answered"] > 0.5  # facts the model knows
    for run in result["runs"]:
        assert run["matched"] and run["matched"]["forget_answered"] <= base["forget_answered"]
