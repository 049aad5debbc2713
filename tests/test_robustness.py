"""Forgetting that lasts: quantisation as bitsandbytes stores weights, the survival predictor, recovery arithmetic,
relearning, and the `hf-wagle audit` command."""
import copy
import math

import pytest
import torch

pytest.importorskip("bitsandbytes")

from hf_wagle.experiments.robustness import (  # noqa: E402
    adapter_on_quantised_base,
    audit,
    exceeded,
    format_audit,
    quantised_linears,
    quantised_model,
    quantised_weight,
    recovery,
    relearned_model,
    update_survival,
)


def test_quantised_weights_are_what_transformers_stores(trained, tmp_path):
    import bitsandbytes.functional as bnb
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model, _ = trained
    model.save_pretrained(tmp_path / "m")
    configs = {"nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                         bnb_4bit_compute_dtype=torch.float32),
               "int8": BitsAndBytesConfig(load_in_8bit=True)}
    for scheme, config in configs.items():
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", quantization_config=config, device_map="cpu",
                                                      dtype=torch.float32)
        for name in quantised_linears(model):
            w = loaded.get_submodule(name).weight
            stored = (bnb.dequantize_4bit(w.data, w.quant_state) if scheme == "nf4"
                      else w.data.float() * (w.SCB.float()[:, None] / 127.0))
            assert torch.equal(stored.float(), quantised_weight(model.get_submodule(name).weight, scheme)), name
    assert model.get_output_embeddings() not in [model.get_submodule(n) for n in quantised_linears(model)]


def _moved(model, fn, whole_blocks=False):
    """A copy with `fn` applied to the quantised linears' weights (`whole_blocks`: only those whose rows hold whole
    NF4 blocks of 64; bitsandbytes' CPU dequantisation does not give a block's largest weight back exactly where a
    block straddles two rows)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name in quantised_linears(out):
            w = out.get_submodule(name).weight
            if not whole_blocks or w.shape[1] % 64 == 0:
                w.copy_(fn(w))
    return out


def test_an_update_below_half_a_step_rounds_back_and_a_large_one_does_not(trained, world):
    """Each weight moved a quarter of the way towards its own NF4 value keeps its code and its block's absmax: NF4
    gives back the original exactly (full recovery, nothing survives). Large noise survives and stays forgotten."""
    model, tokenizer = trained
    forget = world["forget"].select(range(12))
    small = _moved(model, lambda w: w + 0.25 * (quantised_weight(w, "nf4") - w), whole_blocks=True)
    survival = update_survival(model, small, ("nf4",))["nf4"]
    assert survival["changed"] > 0 and survival["surviving"] == 0 and survival["fraction"] == 0
    q_small, q_model = quantised_model(small, "nf4"), quantised_model(model, "nf4")
    assert all(torch.equal(p, q) for p, q in zip(q_small.parameters(), q_model.parameters()))
    report = audit(model, small, tokenizer, forget, schemes=("nf4",), relearn_steps=0)
    assert report["scores"]["nf4"] == report["scores"]["original_nf4"]  # quantised, the two models score the same
    # the move scores no lower than the quantised original, so there is no forgotten share to recover
    assert report["scores"]["unlearned"] >= report["scores"]["original_nf4"]
    assert report["recovery"]["nf4"]["recovery"] is None and "nothing was removed" in report["recovery"]["nf4"][
        "undefined"]

    torch.manual_seed(0)
    large = _moved(model, lambda w: w + torch.randn_like(w) * w.std())
    survival = update_survival(model, large)
    assert survival["nf4"]["fraction"] > 0.9 and survival["int8"]["fraction"] > 0.9
    report = audit(model, large, tokenizer, forget, schemes=("nf4", "int8"), relearn_steps=0)
    assert report["scores"]["unlearned"] < 0.5 * report["scores"]["original"]
    assert all(abs(report["recovery"][s]["recovery"]) < 0.2 for s in ("nf4", "int8"))


def test_an_adapter_served_over_a_quantised_base_keeps_its_change_in_full_precision(trained, world):
    model, tokenizer = trained
    torch.manual_seed(0)
    moved = _moved(model, lambda w: w + 1e-3 * torch.randn_like(w))
    served = adapter_on_quantised_base(model, moved)
    name = quantised_linears(model)[0]
    o, u = model.get_submodule(name).weight, moved.get_submodule(name).weight
    assert torch.equal(served.get_submodule(name).weight, quantised_weight(o, "nf4") + (u - o))
    same = adapter_on_quantised_base(model, model)
    assert all(torch.equal(p, q) for p, q in zip(same.parameters(), quantised_model(model, "nf4").parameters()))
    # asked in other words: rows whose paraphrase is the question itself recover nothing
    forget = world["forget"].select(range(6))
    forget = forget.add_column("paraphrased_question", forget["question"])
    report = audit(model, moved, tokenizer, forget, schemes=(), relearn_steps=0, adapter=True)
    assert report["recovery"]["paraphrase"]["recovery"] == pytest.approx(0.0, abs=1e-9)
    assert "nf4_adapter" in report["recovery"]


def test_recovery_arithmetic():
    r = recovery([1.0, 0.8, 0.6], [0.0, 0.2, 0.1], [0.5, 0.5, 0.35])
    assert r["recovery"] == pytest.approx((1.35 / 3 - 0.3 / 3) / (2.4 / 3 - 0.3 / 3))
    assert r["ci95"][0] <= r["recovery"] <= r["ci95"][1]
    for unlearned in ([0.5, 0.5], [0.7, 0.6]):  # nothing removed, or the probability raised: no share to recover
        r = recovery([0.5, 0.5], unlearned, [0.9, 0.9])
        assert r["recovery"] is None and r["ci95"] is None and "nothing was removed" in r["undefined"]
        assert exceeded({"recovery": {"relearn": r}}, {"relearn": 0.5}) == [
            f"relearn: recovery undefined ({r['undefined']}), so recovery <= 0.5 is not shown"]
    with pytest.raises(ValueError, match="same non-empty rows"):
        recovery([1.0], [0.0, 0.1], [0.5])


def test_openunlearning_robustness_arithmetic():
    from hf_wagle.experiments.robustness import openunlearning_robustness as score

    ou = score(0.2, 0.25, 0.1, 0.6, 0.05, 0.3)  # NF4 gives back 0.05; relearning +0.5 here, +0.25 on the retain model
    assert ou["Q"] == pytest.approx(0.8) and ou["R"] == pytest.approx(0.5)
    assert ou["robustness"] == pytest.approx(2 * 0.8 * 0.5 / 1.3) and ou["why"] is None
    assert score(0.2, 0.1, 0.1, 0.05, 0.05, 0.9)["R"] == 1.0  # nothing came back: robust, even where the retain
    assert score(0.2, 0.1, 0.1, 0.6, 0.3, 0.2) == {"Q": 1.0, "R": 0.0, "robustness": 0.0, "why": None}  # model rises
    assert score(0.2, 0.1, 0.1, 0.6, 0.05, 2.0)["R"] == 1.0  # the retain model learns more: capped at 1
    alone = score(0.2, None, 0.1, 0.6)
    assert alone["Q"] is alone["R"] is alone["robustness"] is None
    assert "nf4" in alone["why"] and "retain" in alone["why"]


def test_audit_scores_the_key_tokens_alone_when_asked(trained, world):
    """tokens="key": each row's probability is exp(mean log-prob) of the answer tokens that spell its key, found here
    by the word-level tokenizer's own tokens, not by the data module's character offsets."""
    from hf_wagle.data import IGNORE_INDEX, tokenize_example
    from hf_wagle.evaluation.measure import answer_keys
    from hf_wagle.options import DEFAULT_PROMPT_TEMPLATE

    model, tokenizer = trained
    forget = world["forget"].select(range(4))
    expected = []
    for row, key in zip(forget, answer_keys(forget)):
        ex = tokenize_example(row, tokenizer, DEFAULT_PROMPT_TEMPLATE, None, "qa")  # the whole answer labelled
        ids = ex["input_ids"]
        with torch.no_grad():
            logp = model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
        picked = [float(logp[t - 1, ids[t]]) for t in range(1, len(ids)) if ex["labels"][t] != IGNORE_INDEX
                  and tokenizer.decode([ids[t]]).strip().lower() in key.split()]
        assert picked, key
        expected.append(math.exp(sum(picked) / len(picked)))
    report = audit(model, model, tokenizer, forget, schemes=(), relearn_steps=0, answers=False, tokens="key")
    assert report["tokens"] == "key" and report["scores"]["original"] == pytest.approx(sum(expected) / 4, rel=1e-5)
    whole = audit(model, model, tokenizer, forget, schemes=(), relearn_steps=0, answers=False)["scores"]["original"]
    assert abs(whole - report["scores"]["original"]) > 1e-3
    assert "forget key-token probability (mean over 4 rows)" in format_audit(report)
    with pytest.raises(ValueError, match="tokens must be 'answer' or 'key'"):
        audit(model, model, tokenizer, forget, schemes=(), relearn_steps=0, tokens="keys")


def test_distance_and_the_straight_path_from_the_base(trained, world):
    from hf_wagle.experiments.robustness import INTERPOLATION, barrier, distance, interpolated_model

    model, tokenizer = trained
    moved = copy.deepcopy(model)
    weight = moved.get_submodule("model.layers.0.mlp.down_proj").weight
    with torch.no_grad():
        weight[0, :4] += torch.tensor([3.0, 4.0, 0.0, 0.0])  # a change of L2 norm 5 in 2 weights
    d = distance(model, moved)
    assert d["l2"] == pytest.approx(5.0, rel=1e-6) and d["changed"] == 2
    assert d["relative"] == pytest.approx(5.0 / math.sqrt(sum(float(p.double().pow(2).sum())
                                                               for p in model.parameters())))
    half = interpolated_model(model, moved, 0.5).get_submodule("model.layers.0.mlp.down_proj").weight
    original = model.get_submodule("model.layers.0.mlp.down_proj").weight
    torch.testing.assert_close(half[0, :2], original[0, :2] + torch.tensor([1.5, 2.0]))
    assert torch.equal(half[1:], original[1:])
    assert barrier([0.0, 2.0, 1.0, 1.0, 1.0]) == pytest.approx(1.75)  # at alpha 0.25: 2 - 0.25
    assert barrier([0.0, 0.25, 0.5, 0.75, 1.0]) == pytest.approx(0.0)  # linear: no barrier
    report = audit(model, moved, tokenizer, world["forget"].select(range(4)), retain=world["retain"].select(range(4)),
                   schemes=(), relearn_steps=0, answers=False)
    path = report["interpolation"]
    assert path["alphas"] == list(INTERPOLATION) and len(path["forget_nll"]) == len(path["retain_nll"]) == 5
    assert path["forget_barrier"] == pytest.approx(barrier(path["forget_nll"]))
    assert report["distance"] == d


def test_the_default_relearning_attack_trains_for_epochs_and_progress_estimates_the_rest():
    from hf_wagle.experiments import Progress, duration
    from hf_wagle.experiments.robustness import relearn_steps_for

    assert relearn_steps_for(10, 8) == 10  # 3 epochs of 2 batches, raised to the 10-step floor
    assert relearn_steps_for(80, 16) == 15  # WMDP's attack: 80 rows, 3 epochs, batch 16
    assert relearn_steps_for(80, 16, 0) == 0 and relearn_steps_for(80, 16, 4) == 4
    from hf_wagle.experiments import RELEARN_PROTOCOLS

    assert relearn_steps_for(80, 16, protocol="wmdp") == 15 and RELEARN_PROTOCOLS["wmdp"].batch_size == 16
    assert relearn_steps_for(5, 8, protocol="muse") == 100 and RELEARN_PROTOCOLS["muse"].learning_rate == 1e-5
    lines = []
    progress = Progress(4, lines.append)
    progress.start -= 20  # 20 s spent on the first unit: 60 s left for three more
    progress.step("first")
    assert lines == ["[1/4] first (20 s elapsed, about 60 s left)"]
    progress.step("second")
    assert lines[1] == "[2/4] second (20 s elapsed, about 20 s left)"
    assert duration(150) == "2.5 min" and duration(7200) == "2.0 h"


def test_relearning_trains_on_one_half_and_scores_the_other(trained, world):
    model, tokenizer = trained
    forget = world["forget"].select(range(8))
    report = audit(model, model, tokenizer, forget, retain=world["retain"].select(range(8)), schemes=(),
                   relearn_steps=2, relearn_lr=1e-3, batch_size=4, related=world["retain"].select(range(8, 12)))
    for name in ("relearn", "relearn_related", "relearn_retain"):
        entry = report["recovery"][name]
        assert entry["steps"] == 2 and entry["rows_scored"] == 4 and entry["recovery"] is None  # nothing forgotten
    assert report["rows"] == 8 and set(report["retain_scores"]) == {"original", "unlearned"}
    assert set(report["answered"]) == {"original", "unlearned", "unlearned_held_back", "relearn", "relearn_related",
                                       "relearn_retain"}
    assert report["recovery"]["relearn_related"]["rows_trained"] == 4
    wmdp = audit(model, model, tokenizer, forget, schemes=(), relearn_steps=1, answers=False, relearn_only=True,
                 protocol="wmdp")["recovery"]["relearn"]
    assert (wmdp["learning_rate"], wmdp["batch_size"], wmdp["protocol"]) == (1e-5, 16, "wmdp")
    assert report["answered"]["original"] == report["answered"]["unlearned"] > 0.5  # the world model knows them
    assert report["scores"]["relearn"] != report["scores"]["unlearned"]
    # a damaged copy as its own retain model: scored on the held-back rows, attacked the same way, so R is 1
    damaged = copy.deepcopy(model)
    with torch.no_grad():
        damaged.get_submodule("model.layers.0.mlp.down_proj").weight.mul_(-1.0)
    report = audit(model, damaged, tokenizer, forget, schemes=(), relearn_steps=2, relearn_lr=1e-3, batch_size=4,
                   answers=False, retain_model=copy.deepcopy(damaged))
    scores = report["scores"]
    assert scores["retain_model"] == scores["unlearned_held_back"] != scores["unlearned"]
    assert scores["retain_model_relearn"] == pytest.approx(scores["relearn"], rel=1e-5)
    assert scores["relearn"] > scores["unlearned_held_back"] + 0.01  # a gain to compare: R = 1 is not the no-gain rule
    assert report["openunlearning"]["R"] == pytest.approx(1.0, rel=1e-3) and "nf4" in report["openunlearning"]["why"]


def test_a_relearning_curve_from_one_attack_is_each_shorter_attack(trained, world):
    """`on_step` sees the attack stopped after each step: the weights of a separate attack of k steps, bit for bit."""
    model, tokenizer = trained
    data = world["forget"].select(range(6))
    seen = {}
    relearned_model(model, tokenizer, data, 3, 1e-3, batch_size=4,
                    on_step=lambda k, m: seen.update({k: [p.detach().clone() for p in m.parameters()]}))
    assert sorted(seen) == [1, 2, 3]
    for k in (1, 3):
        alone = list(relearned_model(model, tokenizer, data, k, 1e-3, batch_size=4).parameters())
        assert all(torch.equal(a, b) for a, b in zip(alone, seen[k]))
    assert not torch.equal(seen[1][0], seen[3][0])


def test_audit_command_appends_to_the_record_and_the_card(trained, world, tmp_path, capsys):
    import json

    from peft import LoraConfig

    from hf_wagle import WagleTrainer
    from hf_wagle.cli import main

    from support import small_args

    model, tokenizer = trained
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    trainer = WagleTrainer(model=copy.deepcopy(model), args=small_args(tmp_path, objective="grad_diff", max_steps=3,
                                                                       learning_rate=5e-3, mask_method="random"),
                           forget_dataset=world["forget"], retain_dataset=world["retain"], processing_class=tokenizer,
                           peft_config=LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer.train()
    trainer.save_model(str(tmp_path / "run"))
    world["forget"].select(range(10)).to_json(tmp_path / "forget.jsonl")
    assert main(["audit", str(tmp_path / "run"), "--base", str(tmp_path / "base"), "--forget",
                 str(tmp_path / "forget.jsonl"), "--relearn-steps", "1", "--by", "auditor",
                 "--out", str(tmp_path / "audit.json")]) == 0
    out = capsys.readouterr().out
    assert "recovery after nf4" in out and "recovery after relearn" in out and "recovery after nf4_adapter" in out
    assert "(1 step at lr 0.0001 on 5 rows, scored on 5 others; default protocol)" in out  # the attack, stated
    assert "distance from the base: ||u - o|| = " in out and "forget answer NLL from base to unlearned" in out
    assert "open-unlearning robustness of the forget probability (Dorna et al. 2025): Q " in out
    stages = [line for line in out.splitlines() if line.startswith("[")]  # base, nf4, int8, adapter, prompt?, relearn
    assert stages[0].startswith(f"[1/{len(stages)}] the base and the unlearned model scored (")
    assert stages[-1].startswith(f"[{len(stages)}/{len(stages)}] relearn: 1 step at") and stages[-1].endswith("done)")
    record = json.loads((tmp_path / "run" / "unlearning_record.json").read_text())
    entry = record["audits"][-1]
    assert entry["kind"] == "robustness" and entry["by"] == "auditor" and "nf4" in entry["recovery"]
    assert json.loads((tmp_path / "audit.json").read_text())["recovery"] == entry["recovery"]
    assert "## Robustness audit" in (tmp_path / "run" / "README.md").read_text()
    assert main(["verify", str(tmp_path / "run")]) == 0  # the appended audit leaves the sealed record intact
    # limits: met, broken (an intervention that was not run cannot be shown to hold), refused before work
    quick = ["audit", str(tmp_path / "run"), "--base", str(tmp_path / "base"), "--forget",
             str(tmp_path / "forget.jsonl"), "--schemes", "nf4", "--relearn-steps", "0"]
    assert main(quick + ["--max-recovery", "nf4=1e9"]) == 0
    assert main(quick + ["--max-recovery", "nf4=1e9,paraphrase=0.5"]) == 3
    assert "BROKEN: paraphrase: not run" in capsys.readouterr().out
    audits = len(json.loads((tmp_path / "run" / "unlearning_record.json").read_text())["audits"])
    assert main(quick + ["--max-recovery", "forgetting=0.5"]) == 2
    assert len(json.loads((tmp_path / "run" / "unlearning_record.json").read_text())["audits"]) == audits
