"""A confined result cannot be passed off when it is not, and bad input is refused before any work."""

import copy
import json

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from hf_wagle import WagleTrainer, WeightMask, compute_mask
from hf_wagle.cli import main
from hf_wagle.mask import MASK_FILE
from hf_wagle.record import RECORD_FILE
from hf_wagle.verify import verify

from support import small_args


@pytest.fixture(scope="module")
def adapter_dir(trained, world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapter")
    args = small_args(tmp, objective="grad_diff", mask_method="wagle", mask_ratio=0.5, max_steps=2,
                      learning_rate=5e-3)
    trainer = WagleTrainer(model=copy.deepcopy(trained[0]), args=args, forget_dataset=world["forget"],
                           retain_dataset=world["retain"], processing_class=trained[1],
                           peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    trainer.train()
    trainer.save_model(str(tmp / "saved"))
    return tmp / "saved"


@pytest.fixture
def copy_of(adapter_dir, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(adapter_dir, out)
    return out


@pytest.mark.parametrize("key,value", [("use_dora", True), ("init_lora_weights", "pissa"),
                                       ("init_lora_weights", "olora"), ("layer_replication", [[0, 2], [1, 3]]),
                                       ("bias", "all"), ("fan_in_fan_out", True)])
def test_verify_reads_adapter_config_and_flags_settings_that_move_base_weights(copy_of, capsys, key, value):
    assert verify(copy_of)["confined"]
    config = json.loads((copy_of / "adapter_config.json").read_text())
    config[key] = value
    (copy_of / "adapter_config.json").write_text(json.dumps(config))
    report = verify(copy_of)
    assert not report["confined"] and any(key in p for p in report["problems"])
    assert main(["verify", str(copy_of)]) == 1 and "confined to its mask: NO" in capsys.readouterr().out


def test_what_cannot_be_verified_is_exit_2_not_a_traceback(copy_of, capsys):
    config = json.loads((copy_of / "adapter_config.json").read_text())
    (copy_of / "adapter_config.json").write_text(json.dumps({**config, "some_future_knob": 3}))
    assert main(["verify", str(copy_of)]) == 2 and "some_future_knob" in capsys.readouterr().err
    (copy_of / "adapter_config.json").write_text(json.dumps(config))

    weights = load_file(copy_of / "adapter_model.safetensors")
    a_key = next(k for k in weights if k.endswith("lora_A.weight"))
    save_file({k: v for k, v in weights.items() if k != a_key}, str(copy_of / "adapter_model.safetensors"))
    assert main(["verify", str(copy_of)]) == 2 and "PEFT would start the rest" in capsys.readouterr().err

    data = (copy_of / MASK_FILE).read_bytes()
    (copy_of / MASK_FILE).write_bytes(data[: len(data) // 2])  # truncated
    assert main(["verify", str(copy_of)]) == 2
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and "Traceback" not in err

    (copy_of / "adapter_config.json").unlink()
    (copy_of / MASK_FILE).write_bytes(data)
    assert main(["verify", str(copy_of)]) == 2 and "no adapter_config.json" in capsys.readouterr().err


def test_mask_file_bit_flip_and_inflated_index_are_refused(model, tmp_path):
    mask = compute_mask(model, None, None, method="random", ratio=0.5)
    path = mask.save(tmp_path)
    assert WeightMask.load(tmp_path) == mask
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta, bits = f.metadata(), f.get_tensor("bits")
    flipped = bits.clone()
    flipped[3] ^= 1
    save_file({"bits": flipped}, str(path), metadata=meta)
    with pytest.raises(ValueError, match="sha256 does not match"):
        WeightMask.load(tmp_path)

    import base64
    import zlib

    bomb = base64.b64encode(zlib.compress(b"[" + b" " * (64 << 20) + b"]", 9)).decode()
    save_file({"bits": bits}, str(path), metadata={**meta, "wagle.index_z": bomb})
    with pytest.raises(ValueError, match="inflates beyond"):
        WeightMask.load(tmp_path)


@pytest.mark.parametrize("rows,what", [([{"text": ""}], "no token carries a label"),
                                       ([{"input_ids": [5, 6, 7], "labels": [-100, -100, -100]}],
                                        "no token carries a label"),
                                       ([{"question": None, "answer": "x"}], "`question` is NoneType")])
def test_forget_rows_that_teach_nothing_are_refused(model, tokenizer, world, rows, what):
    forget = Dataset.from_list(rows)
    with pytest.raises(ValueError, match=f"forget dataset, row 0: {what}"):
        compute_mask(model, forget, world["retain"], tokenizer, method="gradient")


@pytest.mark.parametrize("template,msg", [("Tell me about it", "must contain"), ("{question} {foo}", "field other")])
def test_prompt_templates_are_checked_by_attribution_and_the_cli(model, tokenizer, world, tmp_path, capsys,
                                                                 template, msg):
    with pytest.raises(ValueError, match=msg):
        compute_mask(model, world["forget"], world["retain"], tokenizer, method="wagle", prompt_template=template)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    world["forget"].to_json(tmp_path / "f.jsonl")
    world["retain"].to_json(tmp_path / "r.jsonl")
    code = main(["attribute", "--model", str(tmp_path / "m"), "--forget", str(tmp_path / "f.jsonl"), "--retain",
                 str(tmp_path / "r.jsonl"), "--method", "wagle", "--prompt-template", template, "--out",
                 str(tmp_path / "o")])
    assert code == 2 and msg in capsys.readouterr().err


def test_a_mask_that_selects_nothing_is_refused_before_work(model, tokenizer, world, tmp_path):
    with pytest.raises(ValueError, match="selects no weight"):
        compute_mask(model, world["forget"], world["retain"], tokenizer, ratio=1e-9)
    with pytest.raises(ValueError, match="selects no weight"):
        WagleTrainer(model=model, args=small_args(tmp_path, mask_ratio=1e-9), forget_dataset=world["forget"],
                     retain_dataset=world["retain"], processing_class=tokenizer)
    # a mask LoRA cannot hold at all: only the embeddings selected
    mask = compute_mask(model, None, None, method="magnitude", ratio=0.5, include=["embed_tokens"])
    trainer = WagleTrainer(model=model, args=small_args(tmp_path, objective="grad_diff"), mask=mask,
                           forget_dataset=world["forget"], retain_dataset=world["retain"], processing_class=tokenizer,
                           peft_config=LoraConfig(r=4, target_modules="all-linear"))
    with pytest.raises(ValueError, match="nothing can change"):
        trainer.train()


def test_save_model_is_all_or_nothing(model, tokenizer, world, tmp_path, monkeypatch):
    trainer = WagleTrainer(model=model, args=small_args(tmp_path, objective="grad_diff", max_steps=1),
                           forget_dataset=world["forget"], retain_dataset=world["retain"], processing_class=tokenizer,
                           peft_config=LoraConfig(r=4, target_modules="all-linear"))
    trainer.train()

    def full_disk(self, directory):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(WeightMask, "save", full_disk)
    out = tmp_path / "result"
    with pytest.raises(OSError, match="No space left"):
        trainer.save_model(str(out))
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".saving-" in p.name]
    monkeypatch.undo()
    trainer.save_model(str(out))
    written = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", MASK_FILE, "README.md"} <= written
    assert verify(out)["confined"]
    # a dense run saved over it: no file of the masked save is left beside its adapter; folders (checkpoints) stay
    (out / "checkpoint-1").mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "unlearn_results.json").write_text("{}")
    dense = WagleTrainer(model=model, args=small_args(tmp_path, objective="grad_diff", max_steps=1, mask_method=None),
                         forget_dataset=world["forget"], retain_dataset=world["retain"], processing_class=tokenizer,
                         peft_config=LoraConfig(r=4, target_modules="all-linear"))
    dense.train()
    dense.save_model(str(out))
    assert not (out / MASK_FILE).exists() and (out / "checkpoint-1").is_dir() and (out / "notes.txt").exists()
    assert not (out / "unlearn_results.json").exists()  # the earlier run's
    assert json.loads((out / RECORD_FILE).read_text())["masked"] is False


@pytest.mark.parametrize("lora", [False, True])
def test_resumed_run_equals_the_uninterrupted_one(trained, world, tmp_path, lora):
    """8 steps of 5 per epoch: the resumed run crosses an epoch boundary, and an interrupted newer checkpoint is
    skipped by `resume_from_checkpoint=True`."""
    def run(out, **kw):
        args = small_args(tmp_path, output_dir=str(tmp_path / out), objective="npo", mask_method="wagle",
                          mask_ratio=0.5, max_steps=8, learning_rate=5e-3, weight_decay=0.1, save_strategy="steps",
                          save_steps=4, **kw)
        trainer = WagleTrainer(model=copy.deepcopy(trained[0]), args=args, forget_dataset=world["forget"],
                               retain_dataset=world["retain"], processing_class=trained[1],
                               peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear") if lora else None)
        return trainer

    whole = run("whole")
    whole.train()
    resumed = run("whole")
    (tmp_path / "whole" / "checkpoint-99").mkdir()  # killed while writing: no trainer_state.json
    (tmp_path / "whole" / "checkpoint-99" / "model.safetensors").write_bytes(b"partial")
    import shutil

    shutil.rmtree(tmp_path / "whole" / "checkpoint-8")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 8
    want = dict(whole.model.named_parameters())
    for name, p in resumed.model.named_parameters():
        assert torch.equal(p, want[name]), name


def test_privleak_follows_muse_for_a_model_that_memorised_its_forget_texts(trained, world):
    """The world model memorised every answer; the perturbed answers (same wording, other facts) were never
    trained on. MUSE's orientation puts the AUC near 0 and PrivLeak near -100."""
    from hf_wagle.evaluation import mia_auc, privleak

    model, tokenizer = trained
    forget = [f"{q} {a}" for q, a in zip(world["forget"]["question"], world["forget"]["answer"])]
    holdout = [f"{q} {p[0]}" for q, p in zip(world["forget"]["question"], world["forget"]["perturbed_answer"])]
    area = mia_auc(model, tokenizer, forget, holdout)
    assert area < 0.2 and privleak(area, 0.5) < -60


@pytest.mark.parametrize("field,value,msg", [
    ("forget_weight", float("nan"), "forget_weight must be a finite"), ("retain_weight", float("inf"), "retain_weight"),
    ("simnpo_beta", 0.0, "simnpo_beta must be a finite number > 0"), ("simnpo_beta", float("nan"), "simnpo_beta"),
    ("mu", float("inf"), "mu must be a finite"), ("mask_batch_size", 0, "mask_batch_size"),
    ("rmu_layer", -1, "RMU layers"), ("rmu_train_layers", [-2], "RMU layers"),
])
def test_bad_settings_are_refused_with_their_name(tmp_path, field, value, msg):
    from hf_wagle import WagleConfig

    with pytest.raises(ValueError, match=msg):
        WagleConfig(output_dir=str(tmp_path), use_cpu=True, **{field: value})


def test_token_ids_and_lengths_must_fit_the_model(model, tokenizer, world, tmp_path):
    vocab = model.get_input_embeddings().num_embeddings
    for rows, msg in [([{"input_ids": [1, 2, vocab + 5]}], "outside the model's vocabulary"),
                      ([{"input_ids": list(range(1, 300))}], "more than the model's 128 positions")]:
        with pytest.raises(ValueError, match=f"forget dataset, row 0: .*{msg}"):
            WagleTrainer(model=model, args=small_args(tmp_path), forget_dataset=Dataset.from_list(rows),
                         retain_dataset=world["retain"], processing_class=tokenizer)
        with pytest.raises(ValueError, match=msg):
            compute_mask(model, Dataset.from_list(rows), world["retain"], tokenizer, method="gradient")


def test_cli_failures_are_one_line_and_status_2(trained, world, tmp_path, capsys):
    model, tokenizer = trained
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    world["forget"].to_json(tmp_path / "f.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"question": "a", "answer": \n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "file").write_text("x")
    (tmp_path / "results.json").write_text('{"runs": {}}')
    attribute = ["attribute", "--model", str(tmp_path / "m"), "--method", "gradient"]
    capsys.readouterr()
    cases = [
        (["attribute", "--model", str(tmp_path / "no_model"), "--method", "magnitude", "--out", str(tmp_path / "o")],
         "no_model"),
        (attribute + ["--forget", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o")], "cannot read it"),
        (attribute + ["--forget", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "o")], "empty.jsonl"),
        (attribute + ["--forget", str(tmp_path / "f.jsonl"), "--out", str(tmp_path / "file")], "is a file"),
        (["evaluate", "--model", str(tmp_path / "m"), "--benchmark", "offline", "--retain-results",
          str(tmp_path / "results.json")], "not a results.json"),
        (["demo", "--steps", "-1"], "--steps must be >= 1"),
        (["demo", "--mask-ratio", "0"], "ratio"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_push_without_the_hub_is_one_line_and_status_2(adapter_dir, capsys):
    """No network here: `HfApi` fails (offline mode or no route), and the command says so in one line."""
    assert main(["push", str(adapter_dir), "org/unlearned"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-wagle push: error:") and len(err.strip().splitlines()) == 1


def test_full_model_trained_in_fp32_from_a_bf16_base_verifies(trained, world, tmp_path):
    """An exact upcast is not a change: a bf16 checkpoint loaded in fp32, unlearned and saved in fp32."""
    base = copy.deepcopy(trained[0]).to(torch.bfloat16)
    base.save_pretrained(tmp_path / "base")
    model = copy.deepcopy(base).to(torch.float32)
    args = small_args(tmp_path, objective="grad_diff", mask_method="random", mask_ratio=0.5, max_steps=2,
                      learning_rate=5e-3)
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=trained[1])
    trainer.train()
    trainer.save_model(str(tmp_path / "full"))
    report = verify(tmp_path / "full", base=str(tmp_path / "base"))
    assert report["confined"] and report["changed_inside_mask"] > 0, report["problems"]
    weights = load_file(tmp_path / "full" / "model.safetensors")
    name = next(n for n in weights if n.endswith("q_proj.weight"))
    weights[name] = weights[name].to(torch.bfloat16)  # saved below the base's precision elsewhere: not confined
    weights = {k: v.to(torch.float16) if k == name else v for k, v in weights.items()}
    save_file(weights, str(tmp_path / "full" / "model.safetensors"), metadata={"format": "pt"})
    report = verify(tmp_path / "full", base=str(tmp_path / "base"))
    assert not report["confined"] and any("cannot hold" in p for p in report["problems"])


def test_mask_metadata_is_covered_by_the_checksum(model, tmp_path):
    from safetensors import safe_open

    path = compute_mask(model, None, None, method="random", ratio=0.5).save(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        meta, bits = f.metadata(), f.get_tensor("bits")
    meta["wagle.metadata"] = meta["wagle.metadata"].replace('"random"', '"wagle"')
    save_file({"bits": bits}, str(path), metadata=meta)
    with pytest.raises(ValueError, match="sha256 does not match"):
        WeightMask.load(tmp_path)


def test_unlearn_config_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("objective: [npo\n")
    for argv, needle in [(["unlearn", "--config", str(tmp_path / "bad.yaml")], "not valid YAML"),
                         (["unlearn", f"--config={tmp_path / 'missing.yaml'}"], "no such file"),
                         (["unlearn", "--config"], "bad arguments")]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and err.strip().splitlines()[-1].startswith("hf-wagle unlearn: error:"), (argv, err)


def test_a_mask_method_name_is_taken_once():
    from hf_wagle import register_mask_method

    with pytest.raises(ValueError, match="already registered"):
        register_mask_method("wagle")(lambda param, **kw: param.abs())
