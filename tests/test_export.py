"""A full-parameter run exported as a stock-PEFT adapter: SHiRA exact, LoRA by truncated SVD with its fidelity."""
import copy
import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from hf_wagle import WagleTrainer
from hf_wagle.formats.shira import nearest_delta
from hf_wagle.verify import verify

from support import small_args


@pytest.fixture(scope="module")
def full_run(trained, tmp_path_factory):
    """A masked full-parameter GradDiff run on the world model, linear projections only, and its base folder."""
    from hf_wagle.world import make_world

    tmp = tmp_path_factory.mktemp("export")
    model, tokenizer = trained
    model.save_pretrained(tmp / "base")
    tokenizer.save_pretrained(tmp / "base")
    world = make_world()
    args = small_args(tmp, objective="grad_diff", mask_method="wagle", mask_ratio=0.3, learning_rate=2e-3,
                      max_steps=4, mask_include=["*proj.weight"])
    trainer = WagleTrainer(model=copy.deepcopy(model), args=args, forget_dataset=world["forget"],
                           retain_dataset=world["retain"], processing_class=tokenizer)
    trainer.model.name_or_path = str(tmp / "base")
    trainer.train()
    return trainer, tmp


def _load(base_dir, adapter_dir):
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter_dir))


def test_nearest_delta_reproduces_every_weight_float_arithmetic_can_reach():
    base = torch.tensor([1.0, 3e-8, -2.0, 0.0, 1e30, 5.0, 0.5])
    trained = torch.tensor([1.0000001, -7e-3, 3.0, 1e-40, 1e30 * 1.0000001, 5.0, 1e-9])
    d = nearest_delta(base, trained)
    assert torch.equal((base + d)[:-1], trained[:-1]) and d[5] == 0
    # 0.5 -> 1e-9: base + d lands on multiples of 2**-25, so the nearest is 0 (1e-9 away), not worse
    assert (base + d)[-1] == 0.0
    half = nearest_delta(base.bfloat16(), trained.bfloat16())
    assert torch.equal((base.bfloat16().float() + half).bfloat16()[:-1], trained.bfloat16()[:-1])


def test_shira_export_is_exact_with_stock_peft_and_tampering_is_caught(full_run, world):
    trainer, tmp = full_run
    report = trainer.export_adapter(tmp / "shira", format="shira")
    # weights driven near zero cannot be reached as base + delta in float32: counted, and off by at most an ulp
    assert report["changed_weights"] > 0 and report["inexact_weights"] < 0.1 * report["changed_weights"]
    assert report["max_abs_error"] < 1e-6
    config = json.loads((tmp / "shira" / "adapter_config.json").read_text())
    assert config["peft_type"] == "SHIRA" and config["r"] == report["rank"]

    loaded = _load(tmp / "base", tmp / "shira").eval()
    batch = {"input_ids": torch.tensor([[2, 5, 9, 11, 7, 3]])}
    trainer.model.eval()
    with torch.no_grad():
        assert (loaded(**batch).logits - trainer.model(**batch).logits).abs().max() <= 1e-4
    merged = loaded.merge_and_unload()
    inexact = 0
    for (name, p), (_, q) in zip(merged.named_parameters(), trainer.model.named_parameters()):
        assert (p - q).abs().max() <= report["max_abs_error"], name
        inexact += int((p != q).sum())
    assert inexact == report["inexact_weights"]  # the report counts exactly the weights float32 cannot reach
    assert verify(tmp / "shira")["confined"]

    # a non-zero value at a padding position outside the mask is caught
    weights = load_file(tmp / "shira" / "adapter_model.safetensors")
    mask = trainer.enforced_mask
    key = next(k for k in weights if k.endswith("shira_weight"))
    module = key.removeprefix("base_model.model.").removesuffix(".shira_weight")
    index = weights[key.replace("shira_weight", "shira_indices")].long()
    outside = ~mask[f"{module}.weight"][index[0], index[1]]
    assert outside.any(), "the padding should include weights outside the mask"
    weights[key][outside.nonzero()[0, 0]] = 0.5
    save_file(weights, tmp / "shira" / "adapter_model.safetensors")
    report = verify(tmp / "shira")
    assert not report["confined"] and report["changed_outside_mask"] == 1


def test_lora_export_reports_fidelity_and_stays_in_its_rows_and_columns(full_run):
    trainer, tmp = full_run
    report = trainer.export_adapter(tmp / "lora", format="lora", rank=4, scales=[0.5, 1.0])
    assert not report["exact"] and 0 < report["relative_error"] < 1
    for layer in report["layers"].values():
        assert layer["energy_kept"] == pytest.approx(1 - layer["relative_error"] ** 2)
    full = trainer.export_adapter(tmp / "lora_full", format="lora", rank=64)  # rank 64 holds any 64-wide change
    assert full["max_relative_error"] < 1e-6
    for scale in ("0.5", "1"):
        folder = tmp / "lora" / f"scale_{scale}"
        exported = json.loads((folder / "export_report.json").read_text())
        assert exported["scale"] == float(scale)
        # judged against the run's own mask, which it ships: the SVD's spill outside it is counted, and refused
        checked = verify(folder)
        assert checked["changed_outside_mask"] == exported["outside_run_mask"]
        assert checked["confined"] == (exported["outside_run_mask"] == 0)
    loaded = _load(tmp / "base", tmp / "lora_full").eval()
    batch = {"input_ids": torch.tensor([[2, 5, 9, 11, 7, 3]])}
    with torch.no_grad():
        assert (loaded(**batch).logits - trainer.model(**batch).logits).abs().max() <= 1e-4
    # what lies outside the run's own mask is counted, by the export and by verify
    from safetensors.torch import load_file

    weights, run_mask = load_file(tmp / "lora_full" / "adapter_model.safetensors"), trainer.enforced_mask
    outside = 0
    for key in [k for k in weights if k.endswith("lora_A.weight")]:
        name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        delta = weights[key.replace("lora_A", "lora_B")] @ weights[key]
        outside += int(((delta != 0) & ~run_mask[name]).sum())
    assert full["outside_run_mask"] == outside > 0 and full["run_mask_weights"] == run_mask.num_selected
    assert verify(tmp / "lora_full")["changed_outside_mask"] == outside
    assert not verify(tmp / "lora_full")["confined"]
    with pytest.raises(ValueError, match="needs a rank"):
        trainer.export_adapter(tmp / "bad", format="lora")
    assert not (tmp / "bad").exists()


def test_export_lists_what_an_adapter_cannot_hold_or_refuses_it_when_strict(trained, world, tmp_path):
    """A default full-parameter run also changes norms and embeddings: the export holds the linear changes exactly and
    names every other changed tensor with how much it changed (strict: refused, nothing written)."""
    model, tokenizer = trained
    args = small_args(tmp_path, objective="grad_diff", mask_method="wagle", mask_ratio=0.3, max_steps=2)
    trainer = WagleTrainer(model=copy.deepcopy(model), args=args, forget_dataset=world["forget"],
                           retain_dataset=world["retain"], processing_class=tokenizer)
    trainer.train()
    with pytest.raises(ValueError, match="not untied linear weights"):
        trainer.export_adapter(tmp_path / "x", base=copy.deepcopy(model), strict=True)
    assert not (tmp_path / "x").exists()
    report = trainer.export_adapter(tmp_path / "x", base=copy.deepcopy(model), format="lora", rank=64)
    base = dict(model.named_parameters())
    for name, p in trainer.model.named_parameters():
        delta = (p.detach() - base[name].detach()).double()
        if name in report["dropped"]:
            assert report["dropped"][name]["changed"] == int((p != base[name]).sum())
            assert report["dropped"][name]["relative_change"] == pytest.approx(
                float(delta.norm() / base[name].double().norm()))
        elif delta.abs().max() > 0:
            assert name.endswith(("proj.weight", "lm_head.weight"))  # linear: held by the adapter
    assert any("norm" in n for n in report["dropped"]) and any("embed" in n for n in report["dropped"])
    assert report["dropped_weights"] == sum(d["changed"] for d in report["dropped"].values())
    assert "Not held by this adapter" in (tmp_path / "x" / "README.md").read_text()
    assert verify(tmp_path / "x")["changed_outside_mask"] == report["outside_run_mask"]


def test_export_command_on_a_saved_run(full_run, capsys):
    from hf_wagle.cli import main

    trainer, tmp = full_run
    trainer.save_model(str(tmp / "run"))
    argv = ["export", str(tmp / "run"), "--base", str(tmp / "base"), "--out", str(tmp / "cli_shira")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "as shira" in out and "confined to its mask: yes" in out
    assert main(["verify", str(tmp / "cli_shira")]) == 0
    assert main(["export", str(tmp / "run"), "--base", str(tmp / "base"), "--format", "lora", "--out",
                 str(tmp / "cli_lora")]) == 2
    assert "needs --rank" in capsys.readouterr().err
