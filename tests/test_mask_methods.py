"""Mask methods by name: a user's method registered with the decorator is used end to end, computing only the
gradients it declares."""

import pytest
import torch

from hf_wagle import WagleConfig, WagleTrainer, compute_mask, register_mask_method
from hf_wagle.cli import main
from hf_wagle.masking import MASK_METHODS

from support import small_args, snapshot

CALLS = []


@register_mask_method("squared_forget_gradient", needs="forget")
def squared_forget_gradient(param, grad_forget=None, grad_retain=None, **options):
    CALLS.append((options["name"], grad_forget is not None, grad_retain is not None))
    return grad_forget.pow(2)


@pytest.fixture(autouse=True)
def clear_calls():
    CALLS.clear()


def test_registered_method_scores_with_only_the_gradients_it_declares(model, tokenizer, world):
    mask = compute_mask(model, world["forget"], None, tokenizer, method="squared_forget_gradient", ratio=0.3,
                        progress=False)
    assert {n for n, _, _ in CALLS} == {n for n, _ in model.named_parameters()}
    assert all(has_f and not has_r for _, has_f, has_r in CALLS)  # no retain pass: retain=None is accepted
    assert mask.metadata["method"] == "squared_forget_gradient"
    assert mask.num_selected == round(0.3 * mask.num_total)
    # the same selection as |G_f| (a monotone transform of the score ranks the same)
    gradient = compute_mask(model, world["forget"], None, tokenizer, method="gradient", ratio=0.3, progress=False)
    agree = sum(int((mask[n] == gradient[n]).sum()) for n in mask.names())
    assert agree >= mask.num_total - 16  # ties of squared values may reorder a few threshold elements


def test_registered_method_unlearns_through_wagle_trainer(model, tokenizer, world, tmp_path):
    before = snapshot(model)
    args = small_args(tmp_path, objective="grad_diff", mask_method="squared_forget_gradient", mask_ratio=0.4,
                      learning_rate=5e-3, max_steps=3)
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer)
    trainer.train()
    assert CALLS and trainer.mask.metadata["method"] == "squared_forget_gradient"
    for n, p in model.named_parameters():
        m = trainer.enforced_mask[n]
        assert torch.equal(p.detach()[~m], before[n][~m])
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def test_bad_registrations_and_scores_are_clear_errors(model, tokenizer, world):
    with pytest.raises(ValueError, match="needs must be one of"):
        register_mask_method("x", needs="everything")
    with pytest.raises(ValueError, match="unknown mask_method 'nope'"):
        WagleConfig(output_dir="unused", mask_method="nope")

    @register_mask_method("signed_gradient", needs="forget")
    def signed(param, grad_forget=None, **options):
        return grad_forget

    try:
        with pytest.raises(ValueError, match="negative or non-finite"):
            compute_mask(model, world["forget"], None, tokenizer, method="signed_gradient", progress=False)
    finally:
        MASK_METHODS.pop("signed_gradient")


def test_cli_uses_a_method_from_a_plugin_module(trained, world, tmp_path, monkeypatch, capsys):
    model, tokenizer = trained
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    world["forget"].to_json(tmp_path / "forget.jsonl")
    (tmp_path / "my_methods.py").write_text(
        "from hf_wagle import register_mask_method\n\n"
        "@register_mask_method('plugin_magnitude', needs='none')\n"
        "def score(param, grad_forget=None, grad_retain=None, **options):\n"
        "    return param.detach().abs().float()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["attribute", "--model", str(tmp_path / "model"), "--method", "plugin_magnitude", "--ratio", "0.5",
            "--out", str(tmp_path / "mask")]
    assert main(args) == 2 and "unknown mask method 'plugin_magnitude'" in capsys.readouterr().err
    assert main(args + ["--plugin", "my_methods"]) == 0
    MASK_METHODS.pop("plugin_magnitude")
    assert (tmp_path / "mask" / "wagle_mask.safetensors").exists()
