"""`forget_perturbation` and `disruption_masking`: the forget term at perturbed weights, and only where it agrees
with the retain term, exactly as `hf_wagle.perturbation` and `hf_wagle.disruption` state them."""

import copy

import pytest
import torch
from transformers import TrainerCallback

from hf_wagle import WagleConfig, WagleTrainer, compute_mask
from hf_wagle.disruption import disruption_masked
from hf_wagle.perturbation import perturbed, sam_perturbation

from support import expected_step, small_args, snapshot


class Recording(WagleTrainer):
    """Keeps every micro-batch it trains on."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen.append(copy.deepcopy(inputs))
        return super().training_step(model, inputs, num_items_in_batch)


@pytest.mark.parametrize("how", [None, "sam", "gnp"])
def test_perturbed_step_is_the_documented_formula_over_the_whole_accumulated_batch(model, tokenizer, world, tmp_path,
                                                                                    how):
    """One SGD step (2 micro-batches accumulated) moves the weights by exactly the formula: the perturbation from the
    whole step's forget gradient, the forget gradient taken at theta + eps (for gnp, mixed with the gradient at
    theta), the retain gradient at theta. None is the plain step through the same harness."""
    start = copy.deepcopy(model)
    rho, gamma = (0.5 if how else 0.0), (0.1 if how == "gnp" else None)
    mask = compute_mask(model, world["forget"], world["retain"], tokenizer, method="random", ratio=0.5)
    args = small_args(tmp_path, objective="grad_diff", optim="sgd", learning_rate=0.5, weight_decay=0.0,
                      max_grad_norm=0.0, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=1,
                      forget_perturbation=how, sam_rho=rho or 0.01, gnp_gamma=gamma or 0.01, logging_steps=1)
    trainer = Recording(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                        processing_class=tokenizer, mask=mask)
    trainer.seen = []
    trainer.train()
    assert len(trainer.seen) == 2
    masks = {k: v.float() for k, v in mask.items()}
    want = expected_step(start, masks, trainer.seen, rho, lr=0.5, gamma=gamma)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), want[name], rtol=0, atol=2e-6)
    # the perturbation changes the step by far more than the tolerance, and gnp's mixing changes sam's
    others = {"plain": 0.0, "sam": rho} if how == "gnp" else {"plain": 0.0} if how else {}
    for r in others.values():
        other = expected_step(copy.deepcopy(start), masks, trainer.seen, r, lr=0.5)
        assert max(float((want[k] - other[k]).abs().max()) for k in want) > 1e-3
    if how == "gnp":  # c is logged, and here far from 1 (where gnp would equal sam)
        c = trainer.state.log_history[0]["gnp_scale"]
        assert abs(c - 1) > 0.1


@pytest.mark.parametrize("rho", [0.0, 0.5])
def test_disruption_masked_step_is_the_documented_formula(model, tokenizer, world, tmp_path, rho):
    """With `disruption_masking`, one SGD step over 2 accumulated micro-batches moves the weights by the formula, the
    signs compared on the whole step's gradients; alone and with `sam` (the forget gradient then taken at
    theta + eps). The agreement mask is neither all nor nothing, so the step differs from the plain one."""
    start = copy.deepcopy(model)
    mask = compute_mask(model, world["forget"], world["retain"], tokenizer, method="random", ratio=0.5)
    args = small_args(tmp_path, objective="grad_diff", optim="sgd", learning_rate=0.5, weight_decay=0.0,
                      max_grad_norm=0.0, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=1,
                      disruption_masking=True, forget_perturbation="sam" if rho else None, sam_rho=rho or 0.01)
    trainer = Recording(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                        processing_class=tokenizer, mask=mask)
    trainer.seen = []
    trainer.train()
    masks = {k: v.float() for k, v in mask.items()}
    want = expected_step(start, masks, trainer.seen, rho, lr=0.5, disruption=True)
    plain = expected_step(copy.deepcopy(start), masks, trainer.seen, rho, lr=0.5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), want[name], rtol=0, atol=2e-6)
    assert max(float((want[k] - plain[k]).abs().max()) for k in want) > 1e-3
    assert not trainer._forget_grads  # handed over to the step, nothing kept for the next one


def test_disruption_masked_keeps_the_forget_gradient_only_where_the_signs_agree():
    g_f = torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0, 0.0])
    g_r = torch.tensor([0.5, 0.5, -1.0, -1.0, 0.0, 2.0])
    assert torch.equal(disruption_masked(g_f, g_r), torch.tensor([1.5, 0.5, -1.0, -5.0, 0.0, 2.0]))
    assert disruption_masked(g_f, None) is None


@pytest.mark.parametrize("how", ["sam", "gnp", "smooth", "disruption"])
def test_perturbed_runs_keep_off_mask_weights_bit_identical(model, tokenizer, world, tmp_path, how):
    mask = compute_mask(model, world["forget"], world["retain"], tokenizer, method="random", ratio=0.3)
    before = snapshot(model)
    args = small_args(tmp_path, objective="npo", learning_rate=5e-3, weight_decay=0.1, max_grad_norm=1.0,
                      gradient_accumulation_steps=2, max_steps=3, sam_rho=0.05, smooth_sigma=0.01,
                      **(dict(disruption_masking=True) if how == "disruption" else dict(forget_perturbation=how)))
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer, mask=mask)
    trainer.train()
    moved = 0
    for n, p in model.named_parameters():
        assert torch.equal(p.detach()[~mask[n]], before[n][~mask[n]]), f"{n} moved off-mask"
        moved += int((p.detach()[mask[n]] != before[n][mask[n]]).sum())
    assert moved > 0.9 * mask.num_selected
    assert not trainer._perturbation or all(torch.equal(e[~mask[n]], torch.zeros_like(e[~mask[n]]))
                                            for n, p in model.named_parameters()
                                            for e in [trainer._perturbation.get(p)] if e is not None)


def test_perturbed_block_restores_the_exact_bits():
    p = torch.nn.Parameter(torch.tensor([0.1, -0.0, 3.0, 1e-8]))
    bits = p.detach().clone()
    eps = sam_perturbation({p: torch.tensor([1.0, 0.0, -2.0, 0.5])}, rho=0.3)
    with perturbed(eps):
        assert not torch.equal(p.detach(), bits)
    assert torch.equal(p.detach().view(torch.int32), bits.view(torch.int32))  # -0.0 keeps its sign bit too
    assert float(torch.linalg.vector_norm(eps[p])) == pytest.approx(0.3)
    assert sam_perturbation({p: torch.zeros(4)}, rho=0.3) == {}


@pytest.mark.parametrize("bad, message", [
    (dict(forget_perturbation="sharp"), "forget_perturbation must be one of"),
    (dict(forget_perturbation="sam", sam_rho=0.0), "sam_rho must be a finite number > 0"),
    (dict(forget_perturbation="smooth", smooth_sigma=float("nan")), "smooth_sigma must be a finite number > 0"),
    (dict(forget_perturbation="gnp", gnp_gamma=-1.0), "gnp_gamma must be a finite number > 0"),
    (dict(disruption_masking=True, objective="ga"), "objective 'ga' has no retain term"),
])
def test_bad_perturbation_options_are_refused_before_any_work(model, tokenizer, world, tmp_path, bad, message):
    with pytest.raises((ValueError, NotImplementedError), match=message):
        args = WagleConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", **bad)
        WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                     processing_class=tokenizer)


class Iterates(TrainerCallback):
    """The weights right after each optimizer step (before any step-end callback)."""

    def __init__(self):
        self.seen = []

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.seen.append(snapshot(model))


def test_weight_averaging_keeps_the_mean_of_the_iterates_and_trains_as_without(model, tokenizer, world, tmp_path):
    """`weight_averaging_start=2` over 4 steps (AdamW with decay, clipping, 2 micro-batches, sam): the steps are bit for
    bit those of the same run without averaging (each trains on its own weights, its perturbation taken there), the
    model kept is the mean of the weights after steps 2, 3 and 4, and off-mask weights keep their bits."""
    start = copy.deepcopy(model)
    mask = compute_mask(model, world["forget"], world["retain"], tokenizer, method="random", ratio=0.3)
    runs = {}
    for averaging in (None, 2):
        args = small_args(tmp_path / str(averaging), objective="npo", learning_rate=5e-3, weight_decay=0.1,
                          max_grad_norm=1.0, gradient_accumulation_steps=2, max_steps=4, forget_perturbation="sam",
                          sam_rho=0.05, weight_averaging_start=averaging)
        iterates = Iterates()
        trainer = WagleTrainer(model=copy.deepcopy(start), args=args, forget_dataset=world["forget"],
                               retain_dataset=world["retain"], processing_class=tokenizer, mask=mask,
                               callbacks=[iterates])
        trainer.train()
        runs[averaging] = (iterates.seen, snapshot(trainer.model))
    (plain, plain_final), (seen, final) = runs[None], runs[2]
    assert len(seen) == 4
    for name in final:
        for a, b in zip(plain, seen):
            assert torch.equal(a[name], b[name]), f"averaging changed the trajectory of {name}"
        torch.testing.assert_close(final[name], sum(s[name] for s in seen[1:]) / 3, rtol=0, atol=1e-6)
        off = ~mask[name]
        assert torch.equal(final[name][off], start.state_dict()[name][off])
    assert any(not torch.equal(final[n], plain_final[n]) for n in final)  # the mean is not the last step


@pytest.mark.parametrize("bad, message", [
    (dict(weight_averaging_start=0), r"weight_averaging_start is the first optimizer step averaged, in \[1, max_"),
    (dict(weight_averaging_start=7, max_steps=6), "in \\[1, max_steps\\], got 7"),
    (dict(weight_averaging_start=1, save_strategy="steps"), "with checkpoints is not supported"),
])
def test_bad_weight_averaging_is_refused_before_any_work(model, tokenizer, world, tmp_path, bad, message):
    with pytest.raises((ValueError, NotImplementedError), match=message):
        args = WagleConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none",
                           **{"save_strategy": "no", **bad})
        WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                     processing_class=tokenizer)


def test_robust_options_together_on_masked_lora_keep_the_mean_up_to_the_kept_evaluation(trained, tokenizer, world,
                                                                                         tmp_path):
    """gnp, disruption masking and weight averaging together on a masked LoRA adapter, with targets that keep the
    best evaluation: the adapter kept, and saved, is the mean of the trained weights up to the kept step, and
    `verify` finds the saved adapter confined to its mask."""
    from peft import LoraConfig

    from hf_wagle.verify import verify

    args = small_args(tmp_path, objective="npo", retain_loss="nll", mask_method="wagle", max_steps=4,
                      learning_rate=5e-3, forget_perturbation="gnp", sam_rho=0.05, gnp_gamma=0.05,
                      disruption_masking=True, weight_averaging_start=1, targets=["forget_probability <= 0.999x"],
                      target_eval_steps=2, stop_at_targets=False)
    iterates = Iterates()
    trainer = WagleTrainer(model=copy.deepcopy(trained[0]), args=args, forget_dataset=world["forget"],
                           retain_dataset=world["retain"], processing_class=tokenizer, callbacks=[iterates],
                           peft_config=LoraConfig(r=4, target_modules="all-linear"))
    trainer.train()
    kept = trainer.results["targets"]["step"]
    assert trainer.results["targets"]["met"] and kept in (2, 4)
    final = snapshot(trainer.model)
    adapter = [n for n in final if "lora_" in n]
    for name in adapter:
        mean = sum(s[name] for s in iterates.seen[:kept]) / kept
        torch.testing.assert_close(final[name], mean, rtol=0, atol=1e-6)
    trainer.save_model(str(tmp_path / "saved"))
    report = verify(tmp_path / "saved")
    assert report["confined"] and report["changed_inside_mask"] > 0
