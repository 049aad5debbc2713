"""Bad input is refused with one clear line before any work; saves publish whole folders; resume is exact."""
import json

import pytest
import yaml

from hf_wagle import WagleConfig, WagleTrainer
from hf_wagle.cli import main

from support import small_args


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(n in err for n in needles), err


def test_a_yaml_alias_bomb_is_refused_unread(tmp_path, capsys):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines + ["mask_exclude: *i"]) + "\n")
    assert main(["unlearn", "--config", str(tmp_path / "bomb.yaml")]) == 2
    _one_line_error(capsys, "YAML aliases")


def test_devices_checkpoints_and_empty_runs_are_checked_first(tmp_path, capsys):
    import torch

    if not torch.cuda.is_available():
        assert main(["attribute", "--model", str(tmp_path / "nothing-loaded"), "--forget", "x.jsonl",
                     "--retain", "y.jsonl", "--device", "cuda:0", "--out", str(tmp_path / "m")]) == 2
        err = capsys.readouterr().err
        assert "CUDA is not available" in err or "nothing-loaded" in err
    with pytest.raises(ValueError, match="0 steps"):
        WagleConfig("x", max_steps=0)
    with pytest.raises(ValueError, match="0 steps"):
        WagleConfig("x", num_train_epochs=0)


def test_forget_data_inside_the_retain_data_is_refused(model, tokenizer, world, tmp_path):
    with pytest.raises(ValueError, match="every forget example is also in the retain data"):
        WagleTrainer(model=model, args=small_args(tmp_path), forget_dataset=world["forget"],
                     retain_dataset=world["forget"], processing_class=tokenizer)


def test_unlearn_resumes_exactly_from_a_checkpoint_and_refuses_a_path_that_is_not_one(trained, world, tmp_path,
                                                                                       capsys):
    from safetensors.torch import load_file

    model, tokenizer = trained
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    world["forget"].to_json(tmp_path / "forget.jsonl")
    world["retain"].to_json(tmp_path / "retain.jsonl")
    config = {"model_name_or_path": str(tmp_path / "model"), "forget_file": str(tmp_path / "forget.jsonl"),
              "retain_file": str(tmp_path / "retain.jsonl"), "objective": "grad_diff", "mask_method": "random",
              "learning_rate": 1e-3, "max_steps": 4, "per_device_train_batch_size": 4, "lora_r": 4, "use_cpu": True,
              "report_to": "none", "save_strategy": "steps", "save_steps": 2, "seed": 3}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    assert main(["unlearn", "--config", str(tmp_path / "cfg.yaml"), "--output_dir", str(tmp_path / "whole")]) == 0
    capsys.readouterr()
    assert main(["unlearn", "--config", str(tmp_path / "cfg.yaml"), "--output_dir", str(tmp_path / "resumed"),
                 "--resume_from_checkpoint", str(tmp_path / "missing")]) == 2
    _one_line_error(capsys, "not a checkpoint folder")
    assert main(["unlearn", "--config", str(tmp_path / "cfg.yaml"), "--output_dir", str(tmp_path / "resumed"),
                 "--resume_from_checkpoint", str(tmp_path / "whole" / "checkpoint-2")]) == 0
    whole = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert all(whole[k].equal(resumed[k]) for k in whole)  # the same 4 steps, resumed after 2
    state = json.loads((tmp_path / "resumed" / "unlearn_results.json").read_text())
    assert state["steps"] == 4
    # the final save published one whole folder, and kept the checkpoints it found there
    assert (tmp_path / "whole" / "checkpoint-2").is_dir() and not list(tmp_path.glob(".whole.*"))
