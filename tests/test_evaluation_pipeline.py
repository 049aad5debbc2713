"""Loaders, the shipped `evaluate` modules, evaluation during training and `hf-wagle evaluate`, end to end."""

import json
import math

import pytest
from datasets import Dataset
from scipy.stats import ks_2samp

from hf_wagle import WagleTrainer
from hf_wagle.evaluation import (
    WagleEvalCallback,
    answer_metrics,
    load_muse,
    load_tofu,
    load_wmdp,
    metric_path,
    model_utility,
    qa_metrics,
    rouge_l,
    summarise,
)

from support import small_args

TOFU_CONFIGS = ("forget10", "retain90", "forget10_perturbed", "retain_perturbed", "real_authors_perturbed",
                "world_facts_perturbed")


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_load_tofu_wmdp_muse_from_local_copies(tmp_path, world):
    for i, config in enumerate(TOFU_CONFIGS):
        rows = [dict(r) for r in world["forget"].select(range(i + 1))]
        for r in rows:
            del r["person"], r["fact"], r["split"]
        write_jsonl(tmp_path / "tofu" / f"{config}.jsonl", rows)
    tofu = load_tofu(tmp_path / "tofu", "forget10")
    assert {k: len(v) for k, v in tofu.items()} == {"forget": 1, "retain": 2, "forget_eval": 3, "retain_eval": 4,
                                                    "real_authors": 5, "world_facts": 6}
    assert tofu["forget_eval"][0]["perturbed_answer"] == world["forget"][0]["perturbed_answer"]

    mcq = [{"question": "q", "choices": ["a", "b", "c", "d"], "answer": 2}]
    Dataset.from_list(mcq * 3).save_to_disk(str(tmp_path / "wmdp" / "wmdp-bio" / "test"))
    write_jsonl(tmp_path / "wmdp" / "wmdp-cyber" / "test.jsonl", mcq)
    wmdp = load_wmdp(tmp_path / "wmdp")
    assert (len(wmdp["bio"]), len(wmdp["cyber"]), wmdp["cyber"][0]["answer"]) == (3, 1, 2)

    for config, split, row in [("verbmem", "forget", {"prompt": "p", "gt": "g"}),
                               ("knowmem", "forget_qa", {"question": "q", "answer": "a"}),
                               ("knowmem", "retain_qa", {"question": "q", "answer": "a"}),
                               ("privleak", "forget", {"text": "t"}), ("privleak", "holdout", {"text": "h"})]:
        write_jsonl(tmp_path / "muse" / config / f"{split}.jsonl", [row])
    muse = load_muse(str(tmp_path / "muse"))
    assert muse["privleak_holdout"][0]["text"] == "h" and muse["verbmem_forget"].column_names == ["prompt", "gt"]

    with pytest.raises(FileNotFoundError, match="forget10_perturbed"):
        (tmp_path / "tofu" / "forget10_perturbed.jsonl").unlink()
        load_tofu(tmp_path / "tofu")
    with pytest.raises(ValueError, match="forget_split"):
        load_tofu(tmp_path / "tofu", "forget20")


def test_loaders_ask_the_hub_for_the_published_names(monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, split: calls.append((name, config, split)))
    load_tofu(forget_split="forget05")
    load_wmdp(subsets=["bio", "chem"])
    load_muse("muse-bench/MUSE-Books")
    assert calls == [
        ("locuslab/TOFU", "forget05", "train"), ("locuslab/TOFU", "retain95", "train"),
        ("locuslab/TOFU", "forget05_perturbed", "train"), ("locuslab/TOFU", "retain_perturbed", "train"),
        ("locuslab/TOFU", "real_authors_perturbed", "train"), ("locuslab/TOFU", "world_facts_perturbed", "train"),
        ("cais/wmdp", "wmdp-bio", "test"), ("cais/wmdp", "wmdp-chem", "test"),
        ("muse-bench/MUSE-Books", "verbmem", "forget"), ("muse-bench/MUSE-Books", "knowmem", "forget_qa"),
        ("muse-bench/MUSE-Books", "knowmem", "retain_qa"), ("muse-bench/MUSE-Books", "privleak", "forget"),
        ("muse-bench/MUSE-Books", "privleak", "holdout"),
    ]


def test_evaluate_modules_load_offline_and_agree():
    import evaluate

    rouge = evaluate.load(metric_path("tofu_rouge_l"))
    out = rouge.compute(predictions=["the cats sat", "nothing"], references=["the cat sat on mats", "a b"])
    assert out["rougeL_recall_per_example"] == pytest.approx([3 / 5, 0.0])  # stemming: cats -> cat
    assert out["rougeL_recall"] == pytest.approx(0.3)
    assert rouge_l(["the cat sat on mats"], ["the cats sat"])["f1"] == pytest.approx([2 * 1 * 0.6 / 1.6])
    fq = evaluate.load(metric_path("tofu_forget_quality"))
    a, b = [0.1, 0.5, 0.9, 1.3], [0.2, 0.4, 2.0, 3.0]
    assert fq.compute(truth_ratios=a, retain_model_truth_ratios=b)["forget_quality"] == ks_2samp(a, b).pvalue
    mu = evaluate.load(metric_path("tofu_model_utility"))
    assert mu.compute(values=[1.0, 0.5, 0.25])["model_utility"] == pytest.approx(3 / 7)
    auc = evaluate.load(metric_path("mia_auc"))
    # MUSE's orientation: non-members above members (members {3, 2}, non-members {1, 2}: one tie of four pairs)
    assert auc.compute(scores=[3.0, 1.0, 2.0, 2.0], labels=[1, 0, 1, 0])["auc"] == pytest.approx(0.5 / 4)
    with pytest.raises(ValueError, match="available"):
        metric_path("rouge")


def test_eval_callback_logs_on_schedule_and_restores_best(model, tokenizer, world, tmp_path):
    forget, retain = world["forget"], world["retain"].select(range(20))
    callback = WagleEvalCallback(forget, retain, eval_steps=3, criterion="forget_probability")
    args = small_args(tmp_path, objective="grad_diff", mask_method=None, learning_rate=2e-3, max_steps=9,
                      per_device_train_batch_size=8)
    trainer = WagleTrainer(model=model, args=args, forget_dataset=forget, retain_dataset=retain,
                           processing_class=tokenizer)
    callback.attach(trainer)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "wagle_eval/forget_probability" in h]
    assert [h["step"] for h in logged] == [3, 6, 9] == [h["step"] for h in callback.history]
    probs = [h["wagle_eval/forget_probability"] for h in logged]
    assert callback.best_step == [3, 6, 9][probs.index(min(probs))]
    assert logged[-1]["wagle_eval/best_step"] == callback.best_step
    assert {"forget_truth_ratio", "retain_truth_ratio", "gap"} <= set(callback.history[0])
    # the model now holds the best step's weights: recomputing the metrics gives the logged values
    assert summarise(answer_metrics(model, tokenizer, forget))["probability"] == pytest.approx(min(probs), rel=1e-5)
    tr = qa_metrics(model, tokenizer, retain, generate=False)["truth_ratio"]
    assert callback.best_metrics["retain_truth_ratio"] == pytest.approx(
        sum(max(0, 1 - t) for t in tr) / len(tr), rel=1e-5)
    assert callback.best_metrics["gap"] == pytest.approx(
        callback.best_metrics["retain_probability"] - callback.best_metrics["forget_probability"])
    with pytest.raises(ValueError, match="criterion"):
        WagleEvalCallback(forget, retain, criterion="accuracy")


def test_cli_evaluate_offline_end_to_end(trained, world, tmp_path, capsys):
    import copy

    from peft import LoraConfig

    from hf_wagle.cli import main

    base, tokenizer = trained
    model_dir, adapter_dir = tmp_path / "model", tmp_path / "adapter"
    base.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    args = small_args(tmp_path, objective="grad_diff", mask_method=None, learning_rate=5e-3, max_steps=6)
    trainer = WagleTrainer(model=copy.deepcopy(base), args=args, forget_dataset=world["forget"],
                           retain_dataset=world["retain"], processing_class=tokenizer,
                           peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    trainer.train()
    trainer.save_model(str(adapter_dir))

    common = ["evaluate", "--model", str(model_dir), "--benchmark", "offline", "--limit", "6",
              "--max-new-tokens", "12", "--batch-size", "6"]
    # the base model as the "retain model": the run before the adapter then has forget quality 1
    base_out = tmp_path / "base.json"
    assert main(common + ["--out", str(base_out)]) == 0
    out = tmp_path / "res" / "results.json"
    sealed = json.loads((adapter_dir / "unlearning_record.json").read_text())
    assert main(common + ["--adapter", str(adapter_dir), "--out", str(out), "--retain-results", str(base_out),
                          "--audit-by", "audit team"]) == 0
    result = json.loads(out.read_text())
    # the evaluation is appended to the adapter's record as a dated audit; the original entries stay sealed
    from hf_wagle.record import check_record, read_record

    record = read_record(adapter_dir)
    audit = record["audits"][0]
    assert audit["by"] == "audit team" and audit["record_digest"] == sealed["digest"] == record["digest"]
    assert audit["base_matches_record"] is True  # the folder holds the base the run started from
    assert audit["summary"]["after"] == result["runs"]["after"]["summary"] and not check_record(adapter_dir)
    record["audits"][0]["by"] = "someone else"
    (adapter_dir / "unlearning_record.json").write_text(json.dumps(record))
    assert check_record(adapter_dir) == ["unlearning_record.json: audit 0 does not match its digest (edited after it "
                                         "was appended)"]
    assert set(result["runs"]) == {"before", "after"}
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before, after = result["runs"]["before"]["report"], result["runs"]["after"]["report"]
    expected = summarise(answer_metrics(base, tokenizer, world["forget"].select(range(6))))["probability"]
    assert before["table"]["forget"]["probability"] == pytest.approx(expected, rel=1e-5)
    assert after["table"]["forget"]["probability"] < before["table"]["forget"]["probability"]
    assert before["model_utility_partial"] == pytest.approx(model_utility(before["utility_numbers"]))
    assert math.isclose(before["forget_quality"], 1.0)
    assert after["forget_quality"] == pytest.approx(
        ks_2samp(after["forget_truth_ratios"], before["forget_truth_ratios"]).pvalue)
    assert result["runs"]["after"]["summary"]["forget_label"] == "forget quality"
    assert "before: forget quality 1," in capsys.readouterr().out
    # no forget-set text in the output
    text = out.read_text()
    assert not any(r["answer"] in text or r["question"] in text for r in world["forget"].select(range(6)))


def test_tensorboard_receives_loss_terms_and_evaluation(model, tokenizer, world, tmp_path, monkeypatch):
    """`report_to="tensorboard"`: the forget/retain loss terms and the evaluation callback's metrics become scalars."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    forget, retain = world["forget"], world["retain"].select(range(20))
    callback = WagleEvalCallback(forget.select(range(5)), retain.select(range(5)), eval_steps=2)
    args = small_args(tmp_path, objective="npo", learning_rate=2e-3, max_steps=4, per_device_train_batch_size=8,
                      report_to="tensorboard", logging_steps=1)
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    trainer = WagleTrainer(model=model, args=args, forget_dataset=forget, retain_dataset=retain,
                           processing_class=tokenizer)
    callback.attach(trainer)
    trainer.train()
    trainer.accelerator.end_training()
    runs = [EventAccumulator(str(p.parent)).Reload() for p in (tmp_path / "tb").rglob("events.out.tfevents.*")]
    scalars = {tag: [e.value for e in run.Scalars(tag)] for run in runs for tag in run.Tags()["scalars"]}
    assert len(scalars["train/forget_loss"]) == 4 and len(scalars["train/retain_nll"]) == 4
    assert scalars["train/wagle_eval/forget_probability"] == pytest.approx(
        [h["forget_probability"] for h in callback.history])
