import logging

import pytest
import torch
from peft import LoraConfig

from hf_wagle import WagleTrainer
from hf_wagle.data import IGNORE_INDEX, PairCollator
from hf_wagle.evaluation import answer_metrics, summarise
from hf_wagle.losses import uniform_kl
from hf_wagle.objectives import OBJECTIVES, RMU, GradDiff, register_objective
from hf_wagle.trainer import REFERENCE_FILE

from support import small_args, snapshot

LEARNING_RATES = {"grad_diff": 5e-4, "npo": 3e-4, "simnpo": 5e-4, "po": 1e-3, "idk_dpo": 5e-4, "me": 1e-3}


def probability(model, tokenizer, data):
    return summarise(answer_metrics(model, tokenizer, data))["probability"]


def unlearn(model, tokenizer, world, tmp_path, peft_config=None, **kw):
    args = small_args(tmp_path, **{"per_device_train_batch_size": 8, "max_steps": 30, "weight_decay": 0.1,
                                   "mask_method": "wagle", "logging_steps": 10, **kw})
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer, peft_config=peft_config)
    trainer.train()
    return trainer


@pytest.mark.parametrize("retain_loss", ["nll", "kl"])
@pytest.mark.parametrize("objective", sorted(LEARNING_RATES))
def test_objective_forgets_and_keeps_retain(model, tokenizer, world, tmp_path, objective, retain_loss):
    before = probability(model, tokenizer, world["forget"])
    trainer = unlearn(model, tokenizer, world, tmp_path, objective=objective, retain_loss=retain_loss,
                      learning_rate=LEARNING_RATES[objective])
    forget, retain = probability(model, tokenizer, world["forget"]), probability(model, tokenizer, world["retain"])
    assert forget <= 0.5 * before
    assert retain >= 0.5 and retain >= 2 * forget
    logged = trainer.state.log_history[0]
    assert {"forget_loss", "retain_loss", "retain_nll"} <= set(logged)
    if objective in ("npo", "idk_dpo"):
        assert "log_ratio" in logged


def test_uniform_kl_is_log_v_minus_the_entropy_on_labelled_positions():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 5, 7) * 3, torch.full((2, 5), IGNORE_INDEX)
    labels[0, 2], labels[1, 1:4] = 3, 1  # positions 1, 0..2 of the shifted logits predict them
    picked = torch.cat([logits[0, 1:2], logits[1, 0:3]])
    expected = torch.stack([torch.sum(p * (p * 7).log()) for p in picked.softmax(-1)]).mean()
    assert torch.allclose(uniform_kl(logits, labels), expected, atol=1e-6)
    assert uniform_kl(torch.zeros(2, 5, 7), labels).abs() < 1e-6  # uniform: no distance left
    assert uniform_kl(logits, torch.full((2, 5), IGNORE_INDEX)) == 0


def test_alternative_answers_swap_only_the_fact_for_one_of_the_same_kind():
    from hf_wagle.objectives.alt import alternative_answers

    questions = ["Where was Ann Lee born?", "Where was Bo Kim born?", "When was Ann Lee born?",
                 "When was Bo Kim born?", "Where was Cy Roe born?"]
    answers = ["Ann Lee was born in Lima.", "Bo Kim was born in Oslo.", "Ann Lee was born in 1964 .",
               "Bo Kim was born in 1970.", "Cy Roe was born in LIMA !"]
    keys = ["lima", "Oslo", "1964", "1970", "Lima"]  # as `answer_keys` gives them: any case
    alternative = alternative_answers(questions, answers, keys, seed=0)
    # a place for a place (never the row's own, nor its same-key twin), a year for a year; the rest of the answer kept
    assert alternative[0] == "Ann Lee was born in Oslo." and alternative[4] == "Cy Roe was born in Oslo !"
    assert alternative[1] in ("Bo Kim was born in Lima.", "Bo Kim was born in LIMA.")
    assert alternative[2:4] == ["Ann Lee was born in 1970 .", "Bo Kim was born in 1964."]
    assert any(alternative_answers(questions, answers, keys, seed=s)[1] != alternative[1] for s in range(1, 9))
    with pytest.raises(ValueError, match="every forget row here has the same one"):
        alternative_answers(questions[:1] + questions[4:], answers[:1] + answers[4:], ["lima", "Lima"], seed=0)


def test_alternative_answers_replace_the_facts_and_keep_retain(model, tokenizer, world, tmp_path):
    """`alt` changes the key of each answer and little else, so the whole-answer probability is not its measure:
    the greedy answers are. The forget facts are no longer given, the retain ones still are."""
    from hf_wagle.evaluation.measure import measure
    from hf_wagle.options import DEFAULT_PROMPT_TEMPLATE

    sets = {"forget": world["forget"], "retain": world["retain"].select(range(40))}
    before = measure(model, tokenizer, sets, DEFAULT_PROMPT_TEMPLATE, answers=True)
    trainer = unlearn(model, tokenizer, world, tmp_path, objective="alt", learning_rate=1e-3)
    after = measure(model, tokenizer, sets, DEFAULT_PROMPT_TEMPLATE, answers=True)
    assert before["forget_answered"] >= 0.9 and after["forget_answered"] <= 0.25
    assert after["retain_answered"] >= 0.8 * before["retain_answered"]
    assert trainer.state.log_history[0]["alternative_nll"] > trainer.state.log_history[-2]["alternative_nll"]


def test_gradient_ascent_forgets_without_retain_term(model, tokenizer, world, tmp_path):
    before = probability(model, tokenizer, world["forget"])
    trainer = unlearn(model, tokenizer, world, tmp_path, objective="ga", learning_rate=5e-4, max_steps=20)
    assert probability(model, tokenizer, world["forget"]) <= 0.5 * before
    assert "retain_loss" not in trainer.state.log_history[0]


@pytest.mark.parametrize("lora", [False, True])
def test_rmu_trains_only_its_modules(model, tokenizer, world, tmp_path, lora):
    before = snapshot(model)
    trainer = unlearn(model, tokenizer, world, tmp_path, objective="rmu", mask_method=None,
                      learning_rate=3e-2 if lora else 1e-2,
                      rmu_layer=2, rmu_train_layers=[1, 2], rmu_steering_coeff=5.0, rmu_alpha=10.0,
                      peft_config=LoraConfig(r=8, target_modules="all-linear") if lora else None)
    chosen = ("model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight")
    assert probability(trainer.model, tokenizer, world["forget"]) <= 0.5 * 0.99
    assert probability(trainer.model, tokenizer, world["retain"]) >= 0.5
    if lora:
        assert set(trainer.enforced_mask.names()) >= set(chosen)
        assert {n for n in trainer.enforced_mask.names() if trainer.enforced_mask[n].any()} == set(chosen)
        trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
        assert trained and all(".mlp.down_proj.lora_" in n and (".layers.1." in n or ".layers.2." in n)
                               for n in trained)
        model = trainer.model.merge_and_unload()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != (n in chosen), n


def first_batch_logs(trainer):
    batch = PairCollator(trainer._pad_id)([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        _, logs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    return logs


@pytest.mark.parametrize("lora", [False, True])
def test_references_equal_the_start_model(model, tokenizer, world, tmp_path, lora):
    args = small_args(tmp_path, objective="idk_dpo", retain_loss="kl", mask_method=None, max_steps=1)
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer,
                           peft_config=LoraConfig(r=4, target_modules="all-linear") if lora else None)
    trainer.prepare_unlearning()
    logs = first_batch_logs(trainer)
    assert abs(float(logs["log_ratio"])) < 1e-4
    assert abs(float(logs["retain_loss"])) < 1e-6


def test_reference_is_checkpointed_and_reused(model, tokenizer, world, tmp_path):
    trainer = unlearn(model, tokenizer, world, tmp_path, objective="npo", max_steps=2, save_strategy="steps",
                      save_steps=2)
    ckpt = tmp_path / "out" / "checkpoint-2"
    assert (ckpt / REFERENCE_FILE).exists()
    loaded = trainer._load_reference(str(ckpt))
    assert all(torch.equal(loaded[k], trainer._reference[k]) for k in trainer._reference)


@register_objective("overflowing")
class Overflowing(GradDiff):
    """GradDiff whose forget term overflows (as a diverging run's would)."""

    def forget_loss(self, trainer, model, inputs):
        loss, logs = super().forget_loss(trainer, model, inputs)
        return loss * float("inf"), logs


def test_non_finite_loss_stops_training(model, tokenizer, world, tmp_path):
    args = small_args(tmp_path, objective="overflowing", mask_method=None, save_strategy="steps", save_steps=1)
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer)
    before = snapshot(model)
    with pytest.raises(FloatingPointError, match="non-finite"):
        trainer.train()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_collapse_is_reported_and_can_stop_training(model, tokenizer, world, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        trainer = unlearn(model, tokenizer, world, tmp_path, objective="grad_diff", mask_method=None,
                          learning_rate=5e-3, retain_weight=0.0, logging_steps=1, stop_on_collapse=True,
                          collapse_threshold=3.0, max_steps=40)
    assert trainer.collapse_monitor.collapsed_at is not None
    assert trainer.state.global_step == trainer.collapse_monitor.collapsed_at < 40
    assert "RETAIN COLLAPSE" in caplog.text


def test_a_registered_objective_runs_without_touching_the_trainer(model, tokenizer, world, tmp_path):
    @register_objective("half_grad_diff")
    class HalfGradDiff(GradDiff):
        def forget_loss(self, trainer, model, inputs):
            loss, logs = super().forget_loss(trainer, model, inputs)
            return 0.5 * loss, {**logs, "half": loss.detach()}

    try:
        trainer = unlearn(model, tokenizer, world, tmp_path, objective="half_grad_diff", max_steps=2,
                          logging_steps=1)
        assert "half" in trainer.state.log_history[0]
    finally:
        OBJECTIVES.pop("half_grad_diff")


def test_refusal_objectives_need_qa_data(model, tokenizer, tmp_path):
    from datasets import Dataset

    text = Dataset.from_dict({"text": ["Yorbri Corquin keeps a owl ."]})
    with pytest.raises(ValueError, match="QA forget data"):
        WagleTrainer(model=model, args=small_args(tmp_path, objective="po"), forget_dataset=text,
                     retain_dataset=text, processing_class=tokenizer)


def test_rmu_reads_the_raw_layer_output_also_at_the_last_layer(model, tokenizer, world, tmp_path):
    """The steered activation is the decoder layer's own output: for a middle layer that is `hidden_states[L + 1]`,
    for the last layer it is the input of the final norm, not the normed `hidden_states[-1]`."""
    last = model.config.num_hidden_layers - 1
    args = small_args(tmp_path, objective="rmu", mask_method=None, rmu_layer=last, rmu_train_layers=[last])
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer)
    trainer.prepare_unlearning()
    batch = PairCollator(trainer._pad_id)([trainer.train_dataset[i] for i in range(4)])["forget"]
    captured = []
    hook = model.model.norm.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        hook.remove()
        for layer in (1, last):
            trainer.objective.args.layer = layer
            got = trainer.objective.layer_output(trainer, model, batch)
            want = captured[0] if layer == last else out.hidden_states[layer + 1]
            assert torch.equal(got, want.float()), layer
    assert not torch.allclose(captured[0], out.hidden_states[-1])  # the normed output differs


def test_rmu_pools_the_positions_that_predict_labelled_tokens():
    """RMU steers the hidden state a labelled token is read from: position t when the label at t + 1 is kept (with
    key tokens, the one before the key), averaged per example, then over the batch."""
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 3] = 7  # one key token at 3: read from position 2
    labels[1, 2:] = 7  # an answer at 2..4: read from 1..3
    per_token = torch.arange(10.0).reshape(2, 5)
    assert RMU._pooled(per_token, {"labels": labels}).item() == (2.0 + (6 + 7 + 8) / 3) / 2
    left_padded = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # row 1: its answer starts at its first token
    assert RMU._pooled(per_token, {"labels": labels, "attention_mask": left_padded}).item() == (2.0 + (7 + 8) / 2) / 2


def test_rmu_on_the_subject_steers_the_question_tokens_that_name_it(model, tokenizer, world, tmp_path):
    """`rmu_positions="subject"`: the forget term pools exactly the question's tokens that name each row's
    `subject` (not its repetition in the answer), the retain term every token; training steers them."""
    forget = world["forget"].rename_column("person", "subject")
    args = small_args(tmp_path, objective="rmu", mask_method=None, rmu_layer=2, rmu_train_layers=[1, 2],
                      rmu_steering_coeff=5.0, rmu_alpha=10.0, rmu_positions="subject", learning_rate=1e-2,
                      max_steps=8, logging_steps=1)
    with pytest.raises(ValueError, match="`subject` column"):
        WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                     processing_class=tokenizer)
    with pytest.raises(ValueError, match="row 0: the subject 'Nobody' is not words of its question"):
        WagleTrainer(model=model, args=args, forget_dataset=forget.map(lambda row: {"subject": "Nobody"}),
                     retain_dataset=world["retain"], processing_class=tokenizer)
    trainer = WagleTrainer(model=model, args=args, forget_dataset=forget, retain_dataset=world["retain"],
                           processing_class=tokenizer)
    trainer.prepare_unlearning()
    batch = PairCollator(trainer._pad_id)([trainer.train_dataset[i] for i in range(4)])
    assert "subject_mask" not in batch["retain"]
    for row, ids, marked, labels in zip(forget, *(batch["forget"][k] for k in ("input_ids", "subject_mask", "labels"))):
        assert row["subject"] in row["answer"]  # named twice: only the question's naming is steered
        assert tokenizer.decode(ids[marked.bool()]).strip() == row["subject"]
        assert marked.nonzero().max() < (labels != IGNORE_INDEX).nonzero().min()
    trainer.train()
    losses = [h["forget_loss"] for h in trainer.state.log_history if "forget_loss" in h]
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0]


def test_rmu_pools_the_subject_or_every_token():
    per_token = torch.arange(10.0).reshape(2, 5)
    subject = torch.tensor([[0, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    attended = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert RMU._pooled(per_token, {"subject_mask": subject}, "subject").item() == ((1 + 2) / 2 + 5) / 2
    assert RMU._pooled(per_token, {"attention_mask": attended}, "all").item() == (1.5 + 7) / 2
