"""unlearning_record.json: written with every run, export and checkpoint; verify and push check the folder (and data
files) against it; it never holds data text."""
import json

import pytest
from safetensors.torch import load_file, save_file

from hf_wagle import WagleTrainer
from hf_wagle.cli import main
from hf_wagle.record import RECORD_FILE, check_record, read_record

from support import small_args


@pytest.fixture
def lora_run(model, tokenizer, world, tmp_path):
    from peft import LoraConfig

    args = small_args(tmp_path, objective="grad_diff", max_steps=2, mask_method="random", do_eval=True)
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer,
                           peft_config=LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer.train()
    trainer.save_model()
    world["forget"].to_json(tmp_path / "forget.jsonl")
    world["retain"].to_json(tmp_path / "retain.jsonl")
    return tmp_path / "out"


def test_the_record_names_data_settings_scores_and_files_without_text(lora_run, world):
    record = read_record(lora_run)
    assert record["digest"] and not check_record(lora_run)
    assert record["data"]["forget"]["rows"] == 20 and record["data"]["retain"]["rows"] == 144
    assert record["data"]["retain"]["held_out"] == {"fraction": 0.2, "seed": 0}
    assert record["data"]["heldout"]["rows"] == 36 and len(record["base_model"]["weights_sha256"]) == 64
    # every file a loader reads: weights, mask, adapter config, tokenizer
    assert set(record["artifacts"]) == {"adapter_model.safetensors", "wagle_mask.safetensors", "adapter_config.json",
                                        "tokenizer.json", "tokenizer_config.json"}
    assert record["settings"]["objective"] == "grad_diff" and record["settings"]["mask"]["method"] == "random"
    assert record["evaluation"]["before"]["forget_probability"] > record["evaluation"]["after"]["forget_probability"]
    assert {"torch", "transformers", "peft", "hf_wagle"} <= set(record["versions"])
    card = (lora_run / "README.md").read_text()
    assert f"digest `{record['digest']}`" in card
    text = (lora_run / RECORD_FILE).read_text() + card
    assert not any(row["answer"] in text or row["question"] in text for row in world["forget"])


def test_verify_fails_on_every_edited_part_and_names_it(lora_run, tmp_path, capsys):
    folder = str(lora_run)
    assert main(["verify", folder, "--forget", str(tmp_path / "forget.jsonl"),
                 "--retain", str(tmp_path / "retain.jsonl")]) == 0
    assert "matches this folder and the forget and retain data" in capsys.readouterr().out

    # a data file that is not the one the run used (one answer changed)
    rows = [json.loads(line) for line in (tmp_path / "forget.jsonl").read_text().splitlines()]
    rows[3]["answer"] = rows[3]["answer"] + " Really."
    (tmp_path / "edited.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert main(["verify", folder, "--forget", str(tmp_path / "edited.jsonl")]) == 1
    assert "is not the forget data of the record" in capsys.readouterr().out

    # an edited record (not sealed again)
    path = lora_run / RECORD_FILE
    original = path.read_text()
    edited = json.loads(original)
    edited["steps"] = 1000
    path.write_text(json.dumps(edited))
    assert main(["verify", folder]) == 1
    assert "its digest does not match its content" in capsys.readouterr().out
    path.write_text(original)

    # an edited adapter tensor, inside the mask's rows (so confinement alone would not notice)
    weights = load_file(lora_run / "adapter_model.safetensors")
    key = next(k for k in weights if "lora_B" in k)
    weights[key] = weights[key] * 1.01
    original_weights = (lora_run / "adapter_model.safetensors").read_bytes()
    save_file(weights, str(lora_run / "adapter_model.safetensors"))
    assert main(["verify", folder]) == 1
    assert "adapter_model.safetensors: its content differs from what the record names" in capsys.readouterr().out
    (lora_run / "adapter_model.safetensors").write_bytes(original_weights)

    # another mask in its place
    from hf_wagle.mask import WeightMask

    mask = WeightMask.load(lora_run)
    mask.metadata["method"] = "wagle"
    mask.save(lora_run)
    assert main(["verify", folder]) == 1
    assert "wagle_mask.safetensors: its content differs" in capsys.readouterr().out
    from hf_wagle.hub import push_to_hub

    with pytest.raises(ValueError, match="does not match its record"):
        push_to_hub(lora_run, "org/x", dry_run=True)


def test_a_full_parameter_run_and_its_export_carry_a_checked_record(model, tokenizer, world, tmp_path):
    args = small_args(tmp_path, objective="grad_diff", max_steps=2, mask_method="wagle", mask_ratio=0.3,
                      mask_include=["self_attn"])
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
    record = read_record(tmp_path / "out")
    assert set(record["artifacts"]) == {"model.safetensors", "wagle_mask.safetensors", "config.json",
                                        "generation_config.json", "tokenizer.json", "tokenizer_config.json"}
    assert not check_record(tmp_path / "out")
    base = tmp_path / "base"
    from hf_wagle.world import pretrained_world_model

    pretrained_world_model()[0].save_pretrained(base)
    trainer.export_adapter(str(tmp_path / "exported"), format="shira", base=str(base))
    exported = read_record(tmp_path / "exported")
    assert exported["export"]["format"] == "shira" and exported["settings"] == record["settings"]
    assert set(exported["artifacts"]) == {"adapter_model.safetensors", "wagle_mask.safetensors",
                                          "adapter_config.json", "export_report.json"}
    assert not check_record(tmp_path / "exported")
    card = (tmp_path / "exported" / "README.md").read_text()
    assert "## The run" in card and exported["digest"] in card and "grad_diff" in card


def test_verify_knows_the_data_of_a_run_that_read_key_tokens_and_subjects(model, tokenizer, world, tmp_path, capsys):
    """The record's data digest is the rows' own, however the run read them (`forget_tokens="key"`, RMU on each
    row's subject): `verify --forget` accepts the file the run was given, and names what differs in another."""
    forget = world["forget"].rename_column("person", "subject")
    args = small_args(tmp_path, objective="rmu", rmu_positions="subject", rmu_layer=1, rmu_train_layers=[1],
                      forget_tokens="key", max_steps=1, mask_method="random")
    from peft import LoraConfig

    trainer = WagleTrainer(model=model, args=args, forget_dataset=forget, retain_dataset=world["retain"],
                           processing_class=tokenizer,
                           peft_config=LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer.train()
    trainer.save_model()
    folder = str(tmp_path / "out")
    forget.to_json(tmp_path / "forget.jsonl")
    assert main(["verify", folder, "--forget", str(tmp_path / "forget.jsonl")]) == 0
    forget.map(lambda row: {"subject": row["subject"].split()[0]}).to_json(tmp_path / "other_subjects.jsonl")
    world["forget"].to_json(tmp_path / "no_subjects.jsonl")
    capsys.readouterr()
    assert main(["verify", folder, "--forget", str(tmp_path / "other_subjects.jsonl")]) == 1
    assert "but other subjects than the run read" in capsys.readouterr().out
    assert main(["verify", folder, "--forget", str(tmp_path / "no_subjects.jsonl")]) == 1
    assert "has no `subject` column" in capsys.readouterr().out
