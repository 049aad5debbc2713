import copy

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, TrainerCallback

from hf_wagle import WagleTrainer, WeightMask, compute_mask

from support import small_args, snapshot


class GradientProbe(TrainerCallback):
    """Records, right before each optimizer step (after clipping), the off-mask gradient mass and the grad norm."""

    def __init__(self, model, mask):
        self.params = [(p, mask[n]) for n, p in model.named_parameters()]
        self.off_mask, self.norms = [], []

    def on_pre_optimizer_step(self, args, state, control, **kw):
        grads = [(p.grad, m) for p, m in self.params if p.grad is not None]
        self.off_mask.append(sum(float(g[~m].abs().sum()) for g, m in grads))
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g, _ in grads]))))


def test_off_mask_weights_bit_identical_with_decay_clipping_accumulation(model, tokenizer, world, tmp_path):
    mask = compute_mask(model, world["forget"], world["retain"], tokenizer, method="random", ratio=0.5)
    before = snapshot(model)
    args = small_args(tmp_path, objective="grad_diff", learning_rate=5e-3, weight_decay=0.1, max_grad_norm=1e-3,
                      gradient_accumulation_steps=2, max_steps=4)
    probe = GradientProbe(model, mask)
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer, mask=mask, callbacks=[probe])
    trainer.train()
    moved = 0
    for n, p in model.named_parameters():
        m = mask[n]
        assert torch.equal(p.detach()[~m], before[n][~m]), f"{n} moved off-mask"
        moved += int((p.detach()[m] != before[n][m]).sum())
    assert moved > 0.9 * mask.num_selected
    assert probe.off_mask == [0.0] * 4
    # clipping acted on the masked gradient: its norm is exactly the clipping threshold
    assert probe.norms == pytest.approx([1e-3] * 4, rel=1e-4)


def test_masked_lora_reloads_with_stock_peft_and_is_confined(trained, tokenizer, world, tmp_path):
    base = copy.deepcopy(trained[0])
    args = small_args(tmp_path, objective="npo", mask_method="wagle", learning_rate=5e-3, max_steps=8,
                      weight_decay=0.1)
    trainer = WagleTrainer(model=base, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer,
                           peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    trainer.train()
    out = tmp_path / "adapter"
    trainer.save_model(str(out))
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "wagle_mask.safetensors", "README.md"} <= names
    assert not any(n.endswith((".bin", ".pt")) and n != "training_args.bin" for n in names)

    # stock PEFT reproduces the trained model
    batch = tokenizer(["Question: Where was Yorbri Corquin born ?\nAnswer:"], return_tensors="pt")
    trainer.model.eval()
    with torch.no_grad():
        want = trainer.model(**batch).logits
        reloaded = PeftModel.from_pretrained(copy.deepcopy(trained[0]), str(out))
        assert torch.allclose(reloaded(**batch).logits, want, atol=1e-5, rtol=0)
        merged = reloaded.merge_and_unload()
    assert not torch.allclose(want, trained[0](**batch).logits, atol=1e-3)

    # the merged change is exactly zero outside the saved mask, and the saved mask is what LoRA could reach
    saved = WeightMask.load(out)
    original = dict(trained[0].named_parameters())
    changed = 0
    for n, p in merged.named_parameters():
        m = saved[n]
        assert torch.equal(p[~m], original[n][~m]), f"{n} changed outside the saved mask"
        changed += int((p[m] != original[n][m]).sum())
    assert changed > 0
    assert 0 < saved.ratio < trainer.mask.ratio
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and "- unlearning" in card and "- wagle" in card and "`npo`" in card
    assert "Yorbri" not in card


def test_full_parameter_save_reload(model, tokenizer, world, tmp_path):
    args = small_args(tmp_path, objective="grad_diff", mask_method="magnitude", mask_ratio=0.5, max_steps=3)
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(tmp_path / "full"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "full")
    for n, p in reloaded.named_parameters():
        assert torch.equal(p, dict(model.named_parameters())[n])
    assert WeightMask.load(tmp_path / "full").ratio == pytest.approx(0.5, abs=1e-5)
    assert "library_name: transformers" in (tmp_path / "full" / "README.md").read_text()


def test_non_finite_weights_are_never_saved(model, tokenizer, world, tmp_path):
    args = small_args(tmp_path, mask_method=None, objective="grad_diff")
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        trainer.save_model(str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()


def test_bad_input_fails_before_work(model, tokenizer, world, tmp_path):
    with pytest.raises(ValueError, match="unknown objective"):
        small_args(tmp_path, objective="forget_everything")
    with pytest.raises(ValueError, match="mask_ratio"):
        small_args(tmp_path, mask_ratio=0.0)
    with pytest.raises(ValueError, match="optim"):
        WagleTrainer(model=model, args=small_args(tmp_path, optim="adafactor"), forget_dataset=world["forget"],
                     retain_dataset=world["retain"], processing_class=tokenizer)
    with pytest.raises(TypeError, match="forget_dataset"):
        WagleTrainer(model=model, args=small_args(tmp_path), train_dataset=world["forget"],
                     forget_dataset=world["forget"], retain_dataset=world["retain"], processing_class=tokenizer)
    wrong = WeightMask({"not.a.param": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="does not fit"):
        WagleTrainer(model=model, args=small_args(tmp_path), forget_dataset=world["forget"],
                     retain_dataset=world["retain"], processing_class=tokenizer, mask=wrong)
    with pytest.raises(TypeError, match="WagleEvalCallback"):
        WagleTrainer(model=model, args=small_args(tmp_path), forget_dataset=world["forget"],
                     retain_dataset=world["retain"], processing_class=tokenizer, eval_dataset=world["retain"])
    for bad, message in [(dict(init_lora_weights="pissa"), "init_lora_weights"), (dict(lora_bias=True), "lora_bias"),
                         (dict(trainable_token_indices=[1, 2]), "trainable_token_indices")]:
        with pytest.raises(ValueError, match=message):
            WagleTrainer(model=model, args=small_args(tmp_path), forget_dataset=world["forget"],
                         retain_dataset=world["retain"], processing_class=tokenizer,
                         peft_config=LoraConfig(r=2, target_modules=["q_proj"], **bad))
    with pytest.raises(ValueError, match="use_dora"):
        WagleTrainer(model=model, args=small_args(tmp_path), forget_dataset=world["forget"],
                     retain_dataset=world["retain"], processing_class=tokenizer,
                     peft_config=LoraConfig(r=2, target_modules="all-linear", use_dora=True))


def test_confinement_holds_in_bf16_with_gradient_checkpointing(model, tokenizer, world, tmp_path):
    model = model.to(torch.bfloat16)
    mask = compute_mask(model, world["forget"], world["retain"], tokenizer, method="wagle", ratio=0.3)
    before = snapshot(model)
    args = small_args(tmp_path, objective="npo", retain_loss="kl", weight_decay=0.1, gradient_checkpointing=True,
                      learning_rate=1e-2, max_steps=3)
    WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                 processing_class=tokenizer, mask=mask).train()
    moved = 0
    for n, p in model.named_parameters():
        m = mask[n]
        assert p.dtype == torch.bfloat16
        assert torch.equal(p.detach()[~m].view(torch.int16), before[n][~m].view(torch.int16)), n  # same bits
        moved += int((p.detach()[m] != before[n][m]).sum())
    assert moved > 0


def test_masked_lora_with_gradient_checkpointing_stays_confined(trained, tokenizer, world, tmp_path):
    from hf_wagle.verify import verify

    args = small_args(tmp_path, objective="grad_diff", mask_method="wagle", gradient_checkpointing=True, max_steps=3,
                      learning_rate=5e-3)
    trainer = WagleTrainer(model=copy.deepcopy(trained[0]), args=args, forget_dataset=world["forget"],
                           retain_dataset=world["retain"], processing_class=tokenizer,
                           peft_config=LoraConfig(r=4, target_modules="all-linear"))
    trainer.train()
    trainer.save_model(str(tmp_path / "gc"))
    report = verify(tmp_path / "gc")
    assert report["confined"] and report["changed_inside_mask"] > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_on_mask_weight_decay_is_adamws_own_on_mask_and_nothing_off_mask(dtype, monkeypatch):
    """The step pre-hook's `p *= 1 + mask * (f - 1)` equals AdamW's `p *= f` bit for bit on-mask and leaves
    off-mask weights (-0.0 included) as they were, across chunks of the factor buffer."""
    import hf_wagle.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "_DECAY_CHUNK", 64)  # several chunks and a partial last one
    torch.manual_seed(0)
    start = torch.randn(13, 17).to(dtype)
    start[0, :4] = -0.0
    mask = torch.rand(13, 17) < 0.6
    grad = torch.randn(13, 17).to(dtype) * mask

    def run(masked: bool) -> torch.Tensor:
        p = torch.nn.Parameter(start.clone())
        opt = torch.optim.AdamW([p], lr=0.05, weight_decay=0.5)  # f = 0.975, visible in bf16
        if masked:
            trainer_module._move_weight_decay_on_mask(opt, {p: mask})
            assert opt.param_groups[0]["weight_decay"] == 0.0
        for _ in range(3):
            p.grad = grad.clone()
            opt.step()
        return p.detach()

    plain, masked = run(False), run(True)
    assert torch.equal(masked[mask], plain[mask])
    off = start[~mask]
    assert torch.equal(masked[~mask], off) and torch.equal(torch.signbit(masked[~mask]), torch.signbit(off))
    assert not torch.equal(plain[~mask], off)  # plain AdamW would have decayed them
