"""Mask comparison: utility at matched forgetting, its intervals, and `hf-wagle compare-masks`."""
import json
import math

import pytest

from hf_wagle.experiments.compare import ci95, matched_point, parse_specs, spec_options, summarize_runs


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


def test_matched_point_interpolates_between_recorded_steps():
    curve = [{"step": 0, "forget": 0.8, "utility": 0.9}, {"step": 2, "forget": 0.6, "utility": 0.8},
             {"step": 4, "forget": 0.2, "utility": 0.4}, {"step": 6, "forget": 0.1, "utility": 0.3}]
    m = matched_point(curve, 0.5)  # target 0.4: halfway between steps 2 and 4
    assert m == pytest.approx({"step": 3.0, "forget": 0.4, "utility": 0.6})
    assert matched_point(curve, 0.1) is None  # 0.08 is never reached
    runs = [{"method": "a", "seed": s, "curve": curve, "matched": matched_point(curve, 0.5)} for s in (0, 1)]
    summary = summarize_runs(runs + [{"method": "b", "seed": 0, "curve": curve, "matched": None}], ["a", "b"])
    assert summary["a"]["reached"] == 2 and summary["a"]["matched_utility"]["mean"] == pytest.approx(0.6)
    assert summary["a"]["matched_utility"]["n"] == 2 and summary["a"]["matched_utility"]["ci95_half_width"] == 0
    assert summary["b"]["reached"] == 0 and "matched_utility" not in summary["b"]


def test_compare_masks_command_on_the_world(trained, world, tmp_path, capsys):
    from hf_wagle.cli import main

    model, tokenizer = trained
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    world["forget"].to_json(tmp_path / "forget.jsonl")
    world["retain"].to_json(tmp_path / "retain.jsonl")
    argv = ["compare-masks", "--model", str(tmp_path / "model"), "--forget", str(tmp_path / "forget.jsonl"),
            "--retain", str(tmp_path / "retain.jsonl"), "--out", str(tmp_path / "cmp"), "--seeds", "2",
            "--steps", "6", "--learning-rate", "2e-3", "--objective", "grad_diff"]
    assert main(argv + ["--methods", "dense,random,wagle"]) == 0
    out = capsys.readouterr().out
    assert "utility at target" in out and "highest utility at the target" in out
    result = json.loads((tmp_path / "cmp" / "compare_masks.json").read_text())
    assert [(r["method"], r["seed"]) for r in result["runs"]] == [
        (m, s) for s in (0, 1) for m in ("dense", "random", "wagle")]
    for run in result["runs"]:
        assert [p["step"] for p in run["curve"]] == [0, 2, 4, 6]
        assert run["curve"][-1]["forget"] < run["curve"][0]["forget"]
        if run["method"] != "dense":
            assert run["changeable"] == round(0.5 * run["total"])
    # one process, one model, one data order per seed: dense runs start identically and random masks differ
    dense = [r for r in result["runs"] if r["method"] == "dense"]
    assert dense[0]["curve"][0] == dense[1]["curve"][0]
    assert (tmp_path / "cmp" / "compare_masks.png").stat().st_size > 0
    assert "forget" not in json.dumps(result["settings"]).replace("forget_target", "")  # numbers, no data text

    assert main(argv + ["--methods", "dense,wagle:alpha=2"]) == 2
    err = capsys.readouterr().err
    assert "options are key=value" in err and len(err.strip().splitlines()) == 1


def test_compare_masks_on_the_real_model_with_masked_lora(smollm2, tmp_path, capsys):
    from hf_wagle.cli import main

    argv = ["compare-masks", "--model", str(smollm2[2]), "--forget", "scenario:element_symbols/forget",
            "--retain", "scenario:element_symbols/retain", "--utility", "holdout=scenario:element_symbols/holdout",
            "--methods", "dense,wagle", "--seeds", "1", "--steps", "2", "--eval-every", "1", "--eval-limit", "8",
            "--lora-r", "8", "--learning-rate", "1e-3", "--out", str(tmp_path / "cmp")]
    assert main(argv) == 0
    result = json.loads((tmp_path / "cmp" / "compare_masks.json").read_text())
    assert result["settings"]["utility_sets"] == ["retain", "holdout"]
    for run in result["runs"]:
        first = run["curve"][0]
        assert first["utility"] == pytest.approx((first["retain"] + first["holdout"]) / 2)
        assert run["curve"][-1]["forget"] < first["forget"]
