"""`forget_folds`: layered unlearning, stage by stage exactly as `hf_wagle.layered` states it."""

import copy

import pytest
import torch

from hf_wagle import WagleConfig, WagleTrainer, compute_mask
from hf_wagle.data import IGNORE_INDEX, collate
from hf_wagle.layered import rows_through, stage_at, staged_batch

from support import small_args, snapshot


def test_stages_and_folds_split_steps_and_rows_as_documented():
    assert [stage_at(t, 6, 3) for t in range(6)] == [1, 1, 2, 2, 3, 3]
    assert [stage_at(t, 7, 2) for t in range(7)] == [1, 1, 1, 1, 2, 2, 2]
    assert [stage_at(t, 4, 1) for t in range(4)] == [1] * 4
    assert [rows_through(s, 10, 3) for s in (1, 2, 3)] == [4, 7, 10]


def _example(n: int, token: int) -> dict:
    return {"input_ids": [token] * n, "attention_mask": [1] * n, "labels": [IGNORE_INDEX] + [token] * (n - 1)}


def test_a_stage_moves_later_folds_to_the_retain_batch_and_refills_the_forget_batch():
    forget = [_example(3 + i, 10 + i) for i in range(6)]  # row i: length 3 + i, every token 10 + i
    refusal = [_example(2, 50 + i) for i in range(6)]
    retain = [_example(4, 90), _example(2, 91)]
    order = [0, 3, 5, 1]
    inputs = {"forget": collate([{**forget[i], "index": i} for i in order], 0),
              "refusal": collate([{**refusal[i], "index": i} for i in order], 0), "retain": collate(retain, 0)}
    out = staged_batch(inputs, stage=1, folds=3, forget=forget, pad_token_id=0, refusal=refusal)
    # stage 1 of 3 over 6 rows: rows 0 and 1 are forgotten; 3 and 5 are kept, their places go to rows 3 % 2, 5 % 2
    assert out["forget"]["index"].tolist() == [0, 1, 1, 1] == out["refusal"]["index"].tolist()
    assert out["forget"]["input_ids"][1, :4].tolist() == [11] * 4 and out["refusal"]["input_ids"][2, 0] == 51
    r = out["retain"]
    assert r["input_ids"].shape == (4, 8)  # two retain rows, then rows 3 and 5, padded to the longest (8 tokens)
    assert r["input_ids"][:2, :4].tolist() == inputs["retain"]["input_ids"].tolist()
    assert r["input_ids"][2].tolist() == [13] * 6 + [0] * 2 and r["input_ids"][3].tolist() == [15] * 8
    assert r["labels"][2].tolist() == [IGNORE_INDEX] + [13] * 5 + [IGNORE_INDEX] * 2
    assert r["attention_mask"].sum(1).tolist() == [4, 2, 6, 8]
    assert staged_batch(inputs, stage=3, folds=3, forget=forget, pad_token_id=0, refusal=refusal) is inputs


class Staged(WagleTrainer):
    """Keeps, per loss call, the step, the forget rows the objective saw and the retain batch's size, beside the
    rows the data loader gave."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.loaded.append(inputs["forget"]["index"].tolist())
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen.append((self.state.global_step, len(self.loaded) - 1, inputs["forget"]["index"].tolist(),
                          len(inputs["retain"]["input_ids"])))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def test_each_stage_forgets_its_folds_keeps_the_rest_and_off_mask_bits(model, tokenizer, world, tmp_path):
    mask = compute_mask(model, world["forget"], world["retain"], tokenizer, method="random", ratio=0.3)
    before = snapshot(model)
    args = small_args(tmp_path, objective="npo", forget_folds=3, max_steps=6, gradient_accumulation_steps=2,
                      forget_perturbation="sam", sam_rho=0.05, learning_rate=5e-3)
    trainer = Staged(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                     processing_class=tokenizer, mask=mask)
    trainer.loaded, trainer.seen = [], []
    trainer.train()
    n = len(world["forget"])
    assert {step for step, *_ in trainer.seen} == set(range(6))
    for step, batch, rows, retain_rows in trainer.seen:
        through = rows_through(stage_at(step, 6, 3), n, 3)
        loaded = trainer.loaded[batch]
        assert rows == [i if i < through else i % through for i in loaded]
        assert retain_rows == 4 + sum(i >= through for i in loaded)  # 4 retain rows, and the later folds' rows
    assert any(retain_rows > 4 for *_, retain_rows in trainer.seen) and trainer.seen[-1][3] == 4
    for name, p in model.named_parameters():
        assert torch.equal(p.detach()[~mask[name]], before[name][~mask[name]]), f"{name} moved off-mask"
    assert trainer.save_model() is None
    record = (tmp_path / "out" / "unlearning_record.json").read_text()
    assert '"forget_folds": 3' in record


@pytest.mark.parametrize("bad, message", [
    (dict(forget_folds=0), "forget_folds is a number of folds >= 1"),
    (dict(forget_folds=2, objective="ga"), "objective 'ga' has none"),
    (dict(forget_folds=3, max_steps=2), "gives some no step"),
    (dict(forget_folds=4, max_steps=6), "needs at least as many forget rows, and there are 3"),
])
def test_bad_layering_is_refused_before_any_work(model, tokenizer, world, tmp_path, bad, message):
    start = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=message):
        args = WagleConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", **bad)
        WagleTrainer(model=model, args=args, forget_dataset=world["forget"].select(range(3)),
                     retain_dataset=world["retain"], processing_class=tokenizer)
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    assert not (tmp_path / "out").exists()
