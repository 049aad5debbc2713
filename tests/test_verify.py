import copy

import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from hf_wagle import WagleTrainer, WeightMask
from hf_wagle.cli import main
from hf_wagle.verify import verify

from support import small_args


def train_and_save(base, tokenizer, world, tmp_path, peft_config=None):
    args = small_args(tmp_path, objective="grad_diff", mask_method="wagle", mask_ratio=0.5, max_steps=3,
                      learning_rate=5e-3)
    trainer = WagleTrainer(model=base, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer, peft_config=peft_config)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    return tmp_path / "saved"


def test_verify_accepts_a_masked_adapter_and_catches_tampering(trained, tokenizer, world, tmp_path, capsys):
    out = train_and_save(copy.deepcopy(trained[0]), tokenizer, world, tmp_path,
                         LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    report = verify(out)
    assert report["confined"] and report["kind"] == "lora" and report["changed_inside_mask"] > 0
    assert main(["verify", str(out)]) == 0 and "confined to its mask: yes" in capsys.readouterr().out

    weights = load_file(out / "adapter_model.safetensors")
    key = next(k for k in weights if k.endswith("lora_A.weight") and (weights[k] == 0).any())
    weights[key] = weights[key] + 1e-3  # fill A's zeroed columns: the change leaves the mask
    save_file(weights, str(out / "adapter_model.safetensors"))
    report = verify(out)
    assert not report["confined"] and report["changed_outside_mask"] > 0
    assert main(["verify", str(out)]) == 1

    weights = load_file(out / "adapter_model.safetensors")  # a LoRA bias shifts every output row
    weights[key] = torch.zeros_like(weights[key])
    weights[key.replace("lora_A.weight", "lora_B.bias")] = torch.ones(1)
    save_file(weights, str(out / "adapter_model.safetensors"))
    report = verify(out)
    assert not report["confined"] and any("lora_B.bias" in p for p in report["problems"])


def test_verify_full_model_against_its_base(trained, tokenizer, world, tmp_path):
    base_dir = tmp_path / "base"
    trained[0].save_pretrained(base_dir)
    out = train_and_save(copy.deepcopy(trained[0]), tokenizer, world, tmp_path)
    assert verify(out, base=str(base_dir))["confined"]
    weights = load_file(out / "model.safetensors")
    mask = WeightMask.load(out)
    name = next(n for n in weights if n in mask and not mask[n].all())
    weights[name][~mask[name]] += 1.0
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    report = verify(out, base=str(base_dir))
    assert not report["confined"] and any(name in p for p in report["problems"])


def test_an_adapter_no_format_reads_is_refused_beside_a_full_model(trained, tokenizer, world, tmp_path):
    """A folder whose adapter file no registered format reads is not audited as the full model beside it."""
    import json

    import pytest

    base_dir = tmp_path / "base"
    trained[0].save_pretrained(base_dir)
    out = train_and_save(copy.deepcopy(trained[0]), tokenizer, world, tmp_path)
    save_file({"base_model.model.lm_head.lora_A.weight": torch.ones(2, 64),
               "base_model.model.lm_head.lora_B.weight": torch.ones(314, 2)}, str(out / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="adapter_config.json"):
        verify(out, base=str(base_dir))
    (out / "adapter_config.json").write_text(json.dumps({"peft_type": "VERA"}))
    with pytest.raises(ValueError, match="no registered format reads"):
        verify(out, base=str(base_dir))


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    assert main(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "hf-wagle verify: error:" in err and "wagle_mask.safetensors" in err and "Traceback" not in err
