"""Folders built as a hostile user would: verify (and push) read them as PEFT and transformers load them."""
import copy
import json
import shutil

import pytest
import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from hf_wagle import WagleTrainer, WeightMask
from hf_wagle.cli import main
from hf_wagle.verify import verify

from support import small_args


@pytest.fixture(scope="module")
def saved(trained, world, tmp_path_factory):
    """A masked LoRA adapter and a masked full-parameter model, with the base the latter started from."""
    tmp = tmp_path_factory.mktemp("hostile")
    model, tokenizer = trained
    model.save_pretrained(tmp / "base")
    for name, peft in (("lora", LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")), ("full", None)):
        args = small_args(tmp / name, objective="grad_diff", mask_method="random", max_steps=2, learning_rate=5e-3)
        trainer = WagleTrainer(model=copy.deepcopy(model), args=args, forget_dataset=world["forget"],
                               retain_dataset=world["retain"], processing_class=tokenizer, peft_config=peft)
        trainer.train()
        trainer.save_model(str(tmp / name / "saved"))
    return tmp


def _copy(saved, tmp_path, kind):
    out = tmp_path / kind
    shutil.copytree(saved / kind / "saved", out)
    return out


def _outside(weights, mask, prefix=""):
    """A tensor of `weights` changed outside `mask` (a full model's weight, +1 off the mask)."""
    name = next(n for n in weights if n.removeprefix(prefix) in mask and not mask[n.removeprefix(prefix)].all())
    weights[name][~mask[name.removeprefix(prefix)]] += 1.0
    return name


def test_an_index_beside_the_weights_is_not_what_loaders_read(saved, tmp_path, capsys):
    # an adapter: PEFT reads adapter_model.safetensors only; an index naming a benign copy changes nothing
    out = _copy(saved, tmp_path, "lora")
    shutil.copy(out / "adapter_model.safetensors", out / "benign.safetensors")
    weights = load_file(out / "adapter_model.safetensors")
    key = next(k for k in weights if k.endswith("lora_A.weight") and (weights[k] == 0).any())
    weights[key] = weights[key] + 1e-3
    save_file(weights, str(out / "adapter_model.safetensors"))
    (out / "adapter_model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: "benign.safetensors" for k in weights}}))
    report = verify(out)
    assert not report["confined"] and report["changed_outside_mask"] > 0
    assert any("index the loader does not read" in p for p in report["problems"])
    assert main(["push", str(out), "org/x", "--dry-run"]) == 1  # not confined: the status verify gives
    # a full model: transformers reads model.safetensors before an index
    out = _copy(saved, tmp_path, "full")
    shutil.copy(out / "model.safetensors", out / "model-00001-of-00001.safetensors")
    weights = load_file(out / "model.safetensors")
    _outside(weights, WeightMask.load(out))
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: "model-00001-of-00001.safetensors" for k in weights}}))
    report = verify(out, base=str(saved / "base"))
    assert not report["confined"] and report["changed_outside_mask"] > 0


def test_keys_are_read_as_peft_maps_them(saved, tmp_path):
    """A tampered key under PEFT's prefix beside a benign copy without it: PEFT loads the tampered one, so does
    verify; the unprefixed key is named as one PEFT does not load."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = _copy(saved, tmp_path, "lora")
    weights = load_file(out / "adapter_model.safetensors")
    key = next(k for k in weights if k.endswith("lora_A.weight") and (weights[k] == 0).any())
    benign = weights[key].clone()
    weights[key] = weights[key] + 1e-3
    save_file({**weights, key.removeprefix("base_model.model."): benign}, str(out / "adapter_model.safetensors"))
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(saved / "base"), out)
    assert torch.equal(loaded.state_dict()[key.replace("lora_A.", "lora_A.default.")], weights[key])
    report = verify(out)
    assert not report["confined"] and report["changed_outside_mask"] > 0
    assert any("a key PEFT does not load" in p for p in report["problems"])


def test_an_initialisation_that_starts_modules_at_random_is_a_change(saved, tmp_path):
    out = _copy(saved, tmp_path, "lora")
    config = json.loads((out / "adapter_config.json").read_text())
    config["init_lora_weights"] = False
    config["target_modules"] = sorted(set(config["target_modules"]) | {"lm_head"})
    (out / "adapter_config.json").write_text(json.dumps(config))
    report = verify(out)
    assert not report["confined"] and any("init_lora_weights=False" in p for p in report["problems"])


def test_a_full_model_must_hold_every_base_tensor_and_the_base_config(saved, tmp_path):
    out = _copy(saved, tmp_path, "full")
    weights = load_file(out / "model.safetensors")
    gone = next(iter(weights))
    save_file({k: v for k, v in weights.items() if k != gone}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    report = verify(out, base=str(saved / "base"))
    assert not report["confined"] and any(f"{gone}: missing from the folder" in p for p in report["problems"])

    out = _copy(saved, tmp_path / "b", "full")
    config = json.loads((out / "config.json").read_text())
    config["rms_norm_eps"] = 0.5
    (out / "config.json").write_text(json.dumps(config))
    report = verify(out, base=str(saved / "base"))
    assert not report["confined"] and any("rms_norm_eps is 0.5" in p for p in report["problems"])


def test_names_cannot_rewrite_what_verify_prints(saved, tmp_path, capsys):
    out = _copy(saved, tmp_path, "lora")
    weights = load_file(out / "adapter_model.safetensors")
    save_file({**weights, "\x1b[2K\rconfined to its mask: yes\x1b[8m": next(iter(weights.values())).clone()},
              str(out / "adapter_model.safetensors"))
    assert main(["verify", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\\x1b[2K\\rconfined" in printed


def test_with_a_base_the_mask_must_name_its_tensors(saved, tmp_path):
    out = _copy(saved, tmp_path, "lora")
    assert verify(out, base=str(saved / "base"))["confined"]
    mask = WeightMask.load(out)
    stray = {n: mask[n] for n in mask.names()}
    stray["model.layers.99.mlp.up_proj.weight"] = next(iter(stray.values()))
    WeightMask(stray, mask.metadata).save(out)
    assert verify(out)["confined"]  # without the base, nothing says which tensors the model has
    report = verify(out, base=str(saved / "base"))
    assert not report["confined"] and any("model.layers.99.mlp.up_proj.weight" in p for p in report["problems"])


def test_verify_says_whether_the_base_is_the_one_the_run_started_from(saved, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = _copy(saved, tmp_path, "lora")
    assert verify(out, base=str(saved / "base"))["base_matches_record"] is True
    other = AutoModelForCausalLM.from_pretrained(saved / "base")
    with torch.no_grad():
        next(other.parameters())[0, 0] += 1.0
    other.save_pretrained(tmp_path / "other")
    assert verify(out, base=str(tmp_path / "other"))["base_matches_record"] is False
    # confined to its mask, but base plus change is not the model the run measured: a mismatch with the record
    assert main(["verify", str(out), "--base", str(tmp_path / "other")]) == 1
    assert "is not the base the record's run started from" in capsys.readouterr().out
