"""`hf-wagle attribute` end to end, and WagleTrainer passing the mask options through."""
import json

import pytest
import torch

from hf_wagle import WagleTrainer, WeightMask, compute_mask
from hf_wagle.cli import main

from support import small_args


def test_attribute_command_writes_mask_stats_and_heatmap(trained, world, tmp_path, capsys):
    model, tokenizer = trained
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    forget, retain = world["forget"].select(range(6)), world["retain"].select(range(6))
    forget.to_json(tmp_path / "forget.jsonl")
    retain.save_to_disk(str(tmp_path / "retain"))
    out = tmp_path / "mask"
    assert main(["attribute", "--model", str(tmp_path / "model"), "--forget", str(tmp_path / "forget.jsonl"),
                 "--retain", str(tmp_path / "retain"), "--method", "wagle", "--ratio", "0.8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "layer" in printed and "o_proj" in printed and "bits per weight" in printed
    mask = WeightMask.load(out, model=model)
    want = compute_mask(model, forget, retain, tokenizer, method="wagle", ratio=0.8, progress=False)
    assert mask == want
    assert mask.metadata["forget_sha256"] == want.metadata["forget_sha256"]
    stats = json.loads((out / "mask_stats.json").read_text())
    assert stats["stats"]["selected"] == round(0.8 * mask.num_total)
    assert (out / "mask_heatmap.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # starts another process
def test_attribute_command_rejects_bad_input_before_loading(tmp_path, capsys):
    assert main(["attribute", "--model", "nowhere", "--forget", str(tmp_path / "missing.jsonl"), "--out",
                 str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "f.txt").write_text("x")
    assert main(["attribute", "--model", "nowhere", "--forget", str(tmp_path / "f.txt"), "--out", str(tmp_path)]) == 2
    assert "expected a .json" in capsys.readouterr().err
    assert main(["attribute", "--model", "nowhere", "--ratio", "2", "--out", str(tmp_path)]) == 2
    assert "ratio" in capsys.readouterr().err
    assert main(["attribute", "--model", "nowhere", "--fsdp", "--out", str(tmp_path)]) == 2
    assert "launch with torchrun" in capsys.readouterr().err


def test_trainer_passes_mask_options_and_adds_noise_on_mask_only(model, tokenizer, world, tmp_path):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = small_args(tmp_path, mask_method="magnitude", mask_ratio=0.5, mask_scope="per_tensor",
                      mask_include=["*layers*"], mask_exclude=["*norm*"], mask_granularity="row", mask_noise_std=0.05)
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer)
    trainer.prepare_unlearning()
    md = trainer.mask.metadata
    assert (md["scope"], md["granularity"], md["include"], md["exclude"]) == ("per_tensor", "row", ["*layers*"],
                                                                              ["*norm*"])
    for n, p in model.named_parameters():
        m = trainer.enforced_mask[n]
        if "layers" not in n or "norm" in n:
            assert not m.any() and torch.equal(p, before[n]), n
            continue
        assert m.sum() == round(0.5 * p.shape[0]) * p.shape[1] and torch.equal(m, m.all(1, keepdim=True).expand_as(m))
        assert torch.equal(p[~m], before[n][~m]) and (p[m] != before[n][m]).all(), n


def test_trainer_refuses_noise_on_an_adapter(model, tokenizer, world, tmp_path):
    from peft import LoraConfig

    args = small_args(tmp_path, mask_method="magnitude", mask_noise_std=0.1)
    with pytest.raises(ValueError, match="adapter cannot carry"):  # before any work
        WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                     processing_class=tokenizer, peft_config=LoraConfig(r=4, target_modules="all-linear"))
