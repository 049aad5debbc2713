"""The seal, the signature and the saves, tried as a hostile user would: every folder below is one a user could be
handed, and verify, push and the savers must refuse it in one line with the status that means what went wrong
(1: a change or a mismatch with the record, 2: cannot be checked)."""
import copy
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest
import torch
from peft import LoraConfig
from safetensors.torch import load_file

from hf_wagle import WagleTrainer, WeightMask
from hf_wagle.cli import main
from hf_wagle.io import output_lock
from hf_wagle.record import append_audit, read_record, record_digest
from hf_wagle.verify import verify

from support import small_args


@pytest.fixture(scope="module")
def runs(trained, world, tmp_path_factory):
    """A masked LoRA run, a masked full-parameter run and its SHiRA export, with the base they started from."""
    tmp = tmp_path_factory.mktemp("seal")
    model, tokenizer = trained
    model.save_pretrained(tmp / "base")
    tokenizer.save_pretrained(tmp / "base")
    for name, peft in (("lora", LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")), ("full", None)):
        args = small_args(tmp / name, objective="grad_diff", mask_method="random", max_steps=2, learning_rate=5e-3)
        trainer = WagleTrainer(model=copy.deepcopy(model), args=args, forget_dataset=world["forget"],
                               retain_dataset=world["retain"], processing_class=tokenizer, peft_config=peft)
        trainer.train()
        trainer.save_model(str(tmp / name / "saved"))
    assert main(["export", str(tmp / "full" / "saved"), "--base", str(tmp / "base"), "--out", str(tmp / "shira")]) == 0
    return tmp


def _copy(runs, tmp_path, kind):
    src = runs / kind if kind == "shira" else runs / kind / "saved"
    out = tmp_path / kind
    shutil.copytree(src, out)
    return out


def _edit_json(path, **changes):
    value = json.loads(path.read_text())
    value.update(changes)
    path.write_text(json.dumps(value))


def _reseal(folder):
    """What a forger does: recompute every digest the record holds, so the self-computed seal matches again."""
    from hf_wagle.record import artifact_digests, save_record

    record = read_record(folder)
    save_record(folder, {**record, "artifacts": artifact_digests(folder)})


@pytest.mark.parametrize("changes", [{"lora_alpha": 0}, {"lora_alpha": -16}, {"use_rslora": True},
                                     {"alpha_pattern": {"q_proj": 64}},
                                     {"target_modules": ["q_proj", "v_proj"]}])
def test_adapter_config_edits_are_caught_and_change_what_peft_loads(runs, tmp_path, changes, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = _copy(runs, tmp_path, "lora")
    batch = {"input_ids": torch.tensor([[2, 5, 9, 11, 7, 3]])}

    def logits(folder):
        base = AutoModelForCausalLM.from_pretrained(runs / "base")
        with torch.no_grad():
            return PeftModel.from_pretrained(base, folder).eval()(**batch).logits

    before = logits(out)
    _edit_json(out / "adapter_config.json", **changes)
    assert not torch.equal(before, logits(out))  # stock PEFT loads another model from the edited folder
    assert main(["verify", str(out)]) == 1
    assert "adapter_config.json: its content differs" in capsys.readouterr().out
    assert main(["push", str(out), "org/x", "--dry-run"]) == 1


def test_verify_computes_the_change_with_peft(runs, tmp_path):
    """rslora and a rank/alpha pattern: the change verify counts is the one PEFT merges, weight for weight."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from hf_wagle.formats.peft_load import peft_deltas
    from hf_wagle.formats.registry import get_format

    out = _copy(runs, tmp_path, "lora")
    _edit_json(out / "adapter_config.json", use_rslora=True, alpha_pattern={"v_proj": 3})
    base = AutoModelForCausalLM.from_pretrained(runs / "base")
    start = {n: p.detach().clone() for n, p in base.named_parameters()}
    merged = dict(PeftModel.from_pretrained(base, out).merge_and_unload().named_parameters())
    fmt, problems = get_format("lora"), []
    deltas = dict(peft_deltas(out, WeightMask.load(out), fmt.keyed(out, problems), problems, fmt.key_prefix))
    assert len(deltas) == 28 and not problems
    for name, delta in deltas.items():
        assert torch.allclose(merged[name].detach() - start[name], delta, atol=1e-6)


@pytest.mark.parametrize("changes", [{"base_model_name_or_path": "evil-org/poisoned-base"},
                                     {"revision": "refs/pr/1"}])
def test_the_base_a_config_names_must_be_the_records(runs, tmp_path, changes, capsys):
    out = _copy(runs, tmp_path, "lora")
    _edit_json(out / "adapter_config.json", **changes)
    _reseal(out)  # even with the file digests recomputed
    assert main(["verify", str(out)]) == 1
    assert "loader" in capsys.readouterr().out
    assert main(["verify", str(out), "--base", "/no/such/base"]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_a_shira_config_that_starts_modules_at_random_is_a_change_outside_the_mask(runs, tmp_path):
    """`init_weights: false` and a targeted module the file holds no tensors for: stock PEFT starts it at random."""
    from peft import PeftModel
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    out = _copy(runs, tmp_path, "shira")
    module = "model.layers.0.self_attn.q_proj"
    weights = {k: v for k, v in load_file(out / "adapter_model.safetensors").items() if f".{module}." not in k}
    save_file(weights, str(out / "adapter_model.safetensors"))
    _edit_json(out / "adapter_config.json", init_weights=False)
    report = verify(out)
    assert not report["confined"] and report["changed_outside_mask"] > 0
    base = AutoModelForCausalLM.from_pretrained(runs / "base")
    start = base.get_submodule(module).weight.detach().clone()
    merged = PeftModel.from_pretrained(base, out).merge_and_unload()
    changed = merged.get_submodule(module).weight != start  # what stock PEFT loads: random values, unsaved
    assert (changed & ~WeightMask.load(out)[f"{module}.weight"]).any()


def test_a_tokenizer_with_two_ids_swapped_does_not_match_the_record(runs, tmp_path, capsys):
    out = _copy(runs, tmp_path, "lora")
    tok = json.loads((out / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[10:12]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (out / "tokenizer.json").write_text(json.dumps(tok))
    assert main(["verify", str(out)]) == 1
    assert "tokenizer.json: its content differs" in capsys.readouterr().out


def test_audits_are_chained_to_the_record_and_to_each_other(runs, tmp_path, capsys):
    out = _copy(runs, tmp_path, "lora")
    first = append_audit(out, {"kind": "robustness", "by": "alice"})
    append_audit(out, {"kind": "evaluation", "by": "bob"})
    assert main(["verify", str(out)]) == 0 and "2 audit(s), chained" in capsys.readouterr().out
    record = read_record(out)
    assert record["audits"][1]["previous_digest"] == first["digest"]
    # an unfavourable audit deleted from the middle of the chain
    removed = {**record, "audits": record["audits"][1:]}
    (out / "unlearning_record.json").write_text(json.dumps(removed))
    assert main(["verify", str(out)]) == 1
    # a forged "independent" audit, self-consistent, for another record
    from hf_wagle.record import _canonical_digest

    forged = {"kind": "robustness", "by": "independent", "record_digest": "0" * 64,
              "previous_digest": record["audits"][-1]["digest"]}
    forged["digest"] = _canonical_digest(forged)
    (out / "unlearning_record.json").write_text(json.dumps({**record, "audits": [*record["audits"], forged]}))
    assert main(["verify", str(out)]) == 1
    assert "another run" in capsys.readouterr().out


def test_a_resealed_folder_passes_the_seal_but_not_the_counts_nor_a_signature(runs, tmp_path, capsys):
    pytest.importorskip("model_signing")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    (tmp_path / "pub.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    out = _copy(runs, tmp_path, "lora")
    assert main(["sign", str(out), "--key", str(tmp_path / "key.pem")]) == 0
    assert main(["verify", str(out), "--public-key", str(tmp_path / "pub.pem")]) == 0
    assert "valid; every published file is as signed" in capsys.readouterr().out
    # an all-ones mask with the record re-sealed: the seal matches, the record's counts do not
    mask = WeightMask.load(out)
    WeightMask({n: torch.ones(mask.shape(n), dtype=torch.bool) for n in mask.names()}, mask.metadata).save(out)
    _reseal(out)
    assert main(["verify", str(out)]) == 1
    assert "the record's run mask selects" in capsys.readouterr().out
    # counts forged too: only the signature tells
    record = read_record(out)
    record["mask"].update(selected=mask.num_total, total=mask.num_total)
    from hf_wagle.record import save_record

    save_record(out, record)
    assert main(["verify", str(out)]) == 0  # a self-computed seal cannot prove more; the output says so
    assert "not signature-checked" in capsys.readouterr().out
    assert main(["verify", str(out), "--public-key", str(tmp_path / "pub.pem")]) == 1
    # the last audit removed: invisible to the chain, visible to the signature
    out = _copy(runs, tmp_path / "second", "lora")
    append_audit(out, {"kind": "robustness", "by": "alice"})
    assert main(["sign", str(out), "--key", str(tmp_path / "key.pem")]) == 0
    record = read_record(out)
    (out / "unlearning_record.json").write_text(json.dumps({**record, "audits": []}))
    assert main(["verify", str(out)]) == 0
    assert main(["verify", str(out), "--public-key", str(tmp_path / "pub.pem")]) == 1
    # push: --sign signs the staged copy and uploads the signature; --require-signature refuses an unsigned one
    out = _copy(runs, tmp_path / "third", "lora")
    assert main(["push", str(out), "org/x", "--dry-run", "--require-signature", "--public-key",
                 str(tmp_path / "pub.pem")]) == 2
    assert "not signed" in capsys.readouterr().err
    assert main(["push", str(out), "org/x", "--dry-run", "--sign", str(tmp_path / "key.pem")]) == 0
    assert "model.sig" in capsys.readouterr().out


def test_files_that_are_not_regular_are_refused_without_hanging(runs, tmp_path, capsys):
    out = _copy(runs, tmp_path, "lora")
    (out / "unlearning_record.json").unlink()
    os.mkfifo(out / "unlearning_record.json")
    result = {}
    worker = threading.Thread(target=lambda: result.update(code=main(["verify", str(out)])), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert result.get("code") == 2 and "not a regular file" in capsys.readouterr().err
    (out / "unlearning_record.json").unlink()
    (out / "unlearning_record.json").symlink_to("/dev/zero")
    assert main(["verify", str(out)]) == 2
    (out / "unlearning_record.json").unlink()
    shutil.copy(runs / "lora" / "saved" / "unlearning_record.json", out)
    (out / "wagle_mask.safetensors").unlink()
    os.mkfifo(out / "wagle_mask.safetensors")
    assert main(["verify", str(out)]) == 2
    assert main(["push", str(out), "org/x", "--dry-run"]) == 2


@pytest.mark.parametrize("field,value", [("audits", [1]), ("targets", "x"),
                                         ("targets", {"met": False, "per_target": [{}]}),
                                         ("data", {"retain": {"rows": 1, "sha256": "x", "held_out": {"seed": 0}}}),
                                         ("mask", {"selected": "many"})])
def test_malformed_record_fields_are_one_line_and_status_2(runs, tmp_path, capsys, field, value):
    out = _copy(runs, tmp_path, "lora")
    record = read_record(out)
    record[field] = value
    record["digest"] = record_digest(record)
    (out / "unlearning_record.json").write_text(json.dumps(record))
    for argv in (["verify", str(out)], ["push", str(out), "org/x", "--dry-run"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "malformed" in err and err.count("\n") == 1


def test_push_refuses_a_folder_without_its_record(runs, tmp_path, capsys):
    out = _copy(runs, tmp_path, "lora")
    (out / "unlearning_record.json").unlink()
    _edit_json(out / "adapter_config.json", lora_alpha=64)  # nothing left to compare it with
    assert main(["verify", str(out)]) == 0 and "nothing ties this folder to a run" in capsys.readouterr().out
    assert main(["push", str(out), "org/x", "--dry-run"]) == 2
    assert "no unlearning_record.json" in capsys.readouterr().err
    assert main(["push", str(out), "org/x", "--dry-run", "--allow-no-record"]) == 0


def test_push_checks_the_card(runs, tmp_path, capsys):
    out = _copy(runs, tmp_path, "lora")
    card = (out / "README.md").read_text()
    (out / "README.md").write_text(card.replace(read_record(out)["digest"], "0" * 64))
    assert main(["push", str(out), "org/x", "--dry-run"]) == 1
    assert "does not name the record's digest" in capsys.readouterr().err
    (out / "README.md").unlink()
    (out / "README.md").mkdir()
    assert main(["push", str(out), "org/x", "--dry-run"]) == 2


def test_export_never_writes_over_the_run_or_the_base(runs, tmp_path, capsys):
    run, base = runs / "full" / "saved", runs / "base"
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    for out in (run, base, run / "inside", run.parent):
        assert main(["export", str(run), "--base", str(base), "--out", str(out)]) == 2
        assert "saving there would replace it" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before
    assert (base / "model.safetensors").exists() and (base / "config.json").exists()


@pytest.mark.slow  # starts another process to hold the lock
def test_a_save_keeps_what_it_does_not_write_and_refuses_someone_elses_model(trained, world, tmp_path):
    model, tokenizer = trained
    out = tmp_path / "out"
    out.mkdir()
    for name, text in (("README.md", "# mine"), ("config.json", "{}"), ("vocab.json", "{}")):
        (out / name).write_text(text)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")

    def trainer(**kw):
        args = small_args(tmp_path, objective="grad_diff", mask_method="random", max_steps=1, **kw)
        return WagleTrainer(model=copy.deepcopy(model), args=args, forget_dataset=world["forget"],
                            retain_dataset=world["retain"], processing_class=tokenizer, peft_config=lora)

    with pytest.raises(ValueError, match="holds a model that no earlier save there wrote"):
        trainer()
    run = trainer(overwrite_output_dir=True)
    run.train()
    run.save_model()
    assert json.loads((out / "config.json").read_text()) == {} and (out / "vocab.json").exists()
    assert (out / "adapter_model.safetensors").exists()
    # a second run while another process holds the folder fails before it trains
    second = trainer(overwrite_output_dir=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom hf_wagle.io import output_lock\n"
                               f"with output_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match="another save into"):
            second.train()
    finally:
        holder.kill()
        holder.wait()
    assert second.state.global_step == 0
    with output_lock(out):  # free again once the holder is gone
        pass
    # the base model's own folder is never an output folder
    with pytest.raises(ValueError, match="saving there would replace it"):
        WagleTrainer(model=copy.deepcopy(model), args=small_args(tmp_path, output_dir=model.config._name_or_path),
                     forget_dataset=world["forget"], retain_dataset=world["retain"], processing_class=tokenizer)


def test_a_full_disk_is_one_line_and_leaves_the_last_save(runs, tmp_path, monkeypatch, capsys):
    import errno

    from hf_wagle.export import EXPORT_REPORT

    out = tmp_path / "exported"
    argv = ["export", str(runs / "full" / "saved"), "--base", str(runs / "base"), "--out", str(out)]
    assert main(argv) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import hf_wagle.mask

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hf_wagle.mask, "save_file", full)
    assert main(argv + ["--format", "lora", "--rank", "2"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the loaders' progress bars
    assert last.startswith("hf-wagle export: error:") and "no space left" in last
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and EXPORT_REPORT in before


def test_plan_names_no_winner_that_one_seed_cannot_separate():
    from hf_wagle.cli.plan import choose

    def result(ci):
        runs = [{"method": m, "seed": 0, "matched": {"within_tolerance": True}, "curve": [{"step": 4}]}
                for m in ("grin:ratio=0.5", "random:ratio=0.5")]
        summary = {m: {"matched_utility": {"mean": u, "ci95_half_width": ci}, "changeable_fraction": 0.5,
                       "matched_step": {"mean": 3}} for m, u in (("grin:ratio=0.5", 0.8), ("random:ratio=0.5", 0.7))}
        return {"base": {}, "runs": runs, "summary": summary}

    assert choose(result(None), [])[0] is None  # one seed: no interval, no winner
    assert choose(result(0.01), [])[0] == "grin:ratio=0.5"  # separated by its interval


def test_plan_takes_the_target_it_matched_on_as_met_at_the_matched_point():
    """Matched within the comparison's tolerance (0.25 against a strict bound of 0.2475): not a failure of the very
    target it was matched on; the whole step after must still meet it strictly."""
    from hf_wagle.cli.plan import choose
    from hf_wagle.evaluation.targets import parse_targets

    targets = parse_targets(["forget_answered <= 0.275x", "heldout_answered >= 0.5x"])

    def result(after):
        run = {"method": "grin", "seed": 0, "curve": [{"step": 3, "forget_answered": after, "heldout_answered": 0.8}],
               "matched": {"within_tolerance": True, "forget_answered": 0.25, "heldout_answered": 0.8}}
        return {"base": {"forget_answered": 0.9, "heldout_answered": 0.9}, "runs": [run],
                "settings": {"target_metric": "forget_answered", "forget_target": 0.275},
                "summary": {"grin": {"matched_utility": {"mean": 0.8, "ci95_half_width": None},
                                     "changeable_fraction": 0.5, "matched_step": {"mean": 2.5}}}}

    assert choose(result(0.2), targets)[0] == "grin"
    chosen, rows = choose(result(0.3), targets)  # the step after misses it: infeasible
    assert chosen is None and "step 3" in rows[0]["problems"][0]


def test_plan_matched_on_its_targets_judges_where_they_all_held():
    """`--match targets`: a trial is judged at the first evaluation where every target held (as `unlearn` stops),
    not at the step after; a seed with no such evaluation is infeasible and says so."""
    from hf_wagle.cli.plan import choose
    from hf_wagle.evaluation.targets import parse_targets

    targets = parse_targets(["forget_answered <= 0.25", "heldout_answered >= 0.9x"])
    held = {"within_tolerance": True, "forget_answered": 0.1, "heldout_answered": 0.95}
    runs = [{"method": "dense", "seed": 0, "matched": held, "curve": [{"step": 9, "forget_answered": 0.1,
                                                                        "heldout_answered": 0.3}]},
            {"method": "grin", "seed": 0, "matched": None, "curve": [{"step": 12}]}]
    result = {"base": {"forget_answered": 1.0, "heldout_answered": 1.0}, "runs": runs,
              "settings": {"target_metric": "forget_answered", "forget_bound": 0.25, "matched_where": "targets"},
              "summary": {m: {"matched_utility": {"mean": 0.8, "ci95_half_width": None}, "changeable_fraction": 0.5,
                              "matched_step": {"mean": 9}} for m in ("dense", "grin")}}
    chosen, rows = choose(result, targets)
    assert chosen == "dense" and rows[0]["feasible"]  # the curve's last point (heldout 0.3) is not judged
    assert not rows[1]["feasible"] and "no evaluation" in rows[1]["problems"][0]


def test_matched_on_targets_goes_on_past_the_crossing_until_every_target_holds():
    """With `hold`, the callback scores every evaluation from the forget crossing on with `full` and stops at the
    first where `hold` is true, matched at that whole step."""
    from types import SimpleNamespace

    import torch
    from transformers import TrainerControl

    from hf_wagle.experiments.compare import MatchedPointCallback

    forget = {1: 0.8, 2: 0.2, 3: 0.1, 4: 0.1}  # crossed at step 2
    heldout = {2: 0.4, 3: 0.95}  # collapsed at the crossing, back at step 3
    step = SimpleNamespace(global_step=0, max_steps=6)
    tracker = MatchedPointCallback(lambda m, only=None: {"forget_answered": forget[step.global_step]},
                                   lambda m: {"heldout_answered": heldout[step.global_step]}, "forget_answered", 0.25,
                                   {"step": 0, "forget_answered": 1.0}, 1, 0.1,
                                   hold=lambda point: point["heldout_answered"] >= 0.9)
    model = torch.nn.Linear(1, 1)
    tracker.on_train_begin(None, step, None, model=model)
    stopped = []
    for step.global_step in (1, 2, 3):
        control = tracker.on_step_end(None, step, TrainerControl(), model=model)
        stopped.append(control.should_training_stop)
    assert stopped == [False, False, True]
    assert tracker.matched["step"] == 3 and tracker.matched["heldout_answered"] == 0.95
    assert [p["step"] for p in tracker.curve] == [0, 1, 2, 3]


def test_plan_crosses_its_levers_and_says_which_one_decided():
    from hf_wagle.cli.plan import PlanArguments, deciding_levers, plan_recipes, recipe_name

    recipes = plan_recipes(PlanArguments(learning_rates="1e-3,3e-4", objectives="npo,me", retain_terms="kl:5"))
    assert len(recipes) == 4 and recipes[2] == {"learning_rate": 3e-4, "objective": "npo", "retain_loss": "kl",
                                                "retain_weight": 5.0}
    assert recipe_name(recipes[3]) == "lr_0.0003-objective_me-retain_kl_5"
    assert plan_recipes(PlanArguments()) == [{}] and recipe_name({}) == ""
    files = plan_recipes(PlanArguments(retain_files="data/near.jsonl, scenario:country_languages/retain"))
    assert files == [{"retain_file": "data/near.jsonl"}, {"retain_file": "scenario:country_languages/retain"}]
    assert [recipe_name(r) for r in files] == ["retain_data_near", "retain_data_country_languages_retain"]
    with pytest.raises(ValueError, match="would share the folder 'retain_data_near'"):
        plan_recipes(PlanArguments(retain_files="a/near.jsonl,b/near.jsonl"))
    with pytest.raises(ValueError, match="unknown objective 'nope'"):
        plan_recipes(PlanArguments(objectives="npo,nope"))
    with pytest.raises(ValueError, match="loss:weight"):
        plan_recipes(PlanArguments(retain_terms="kl"))

    def row(spec, objective, feasible):
        return {"spec": spec, "learning_rate": 1e-3, "objective": objective, "retain_loss": "kl", "retain_weight": 5.0,
                "feasible": feasible}

    rows = [row("grin", "npo", False), row("dense", "npo", False), row("grin", "me", True), row("dense", "me", True)]
    levers = deciding_levers(rows)
    assert levers["decided"] == ["objective"]  # both masks met them with me, neither with npo
    assert levers["levers"] == {"mask": {"grin": {"met": 1, "tried": 2}, "dense": {"met": 1, "tried": 2}},
                                "objective": {"npo": {"met": 0, "tried": 2}, "me": {"met": 2, "tried": 2}}}
    assert deciding_levers([{**r, "feasible": False} for r in rows])["decided"] == []  # nothing met: nothing decided


def test_plan_holds_a_relearning_limit_on_every_seed():
    from hf_wagle.cli.plan import with_durability

    row = {"spec": "grin", "feasible": True, "problems": []}
    assert with_durability(row, [0.2, 0.4], 0.5) == {**row, "relearn_recovery": pytest.approx(0.3)}
    late = with_durability(row, [0.2, 0.6], 0.5)
    assert not late["feasible"] and late["problems"] == ["seed 1: relearn_recovery 0.6 > 0.5"]
    undefined = with_durability(row, [None, 0.1], 0.5)
    assert undefined["relearn_recovery"] is None and "seed 0: relearn_recovery undefined" in undefined["problems"][0]
    failed = with_durability({**row, "feasible": False, "problems": ["seed 0: no matched point"]}, [0.1], 0.5)
    assert not failed["feasible"] and failed["problems"] == ["seed 0: no matched point"]


def test_audit_warns_about_another_base_and_retain_rows_that_are_forget_rows(runs, world, tmp_path):
    from transformers import AutoModelForCausalLM

    from hf_wagle.cli.audit import _audit_warnings

    record = read_record(runs / "lora" / "saved")
    forget, retain = world["forget"], world["retain"]
    assert _audit_warnings(record, str(runs / "base"), forget, retain) == []
    other = AutoModelForCausalLM.from_pretrained(runs / "base")
    with torch.no_grad():
        next(other.parameters())[0, 0] += 1.0
    other.save_pretrained(tmp_path / "other")
    warned = _audit_warnings(record, str(tmp_path / "other"), forget, forget)
    assert len(warned) == 2 and "not the base" in warned[0] and f"{len(forget)} retain rows" in warned[1]


def test_an_audited_run_exports_to_a_folder_that_verifies(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "full" / "saved", run)
    append_audit(run, {"kind": "robustness", "by": "alice"})
    assert main(["export", str(run), "--base", str(runs / "base"), "--out", str(tmp_path / "out")]) == 0
    assert read_record(tmp_path / "out")["audits"] == [] and main(["verify", str(tmp_path / "out")]) == 0
