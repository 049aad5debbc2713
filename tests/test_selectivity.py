"""What is to be forgotten, stated and measured: `forget_kind` (fact or topic) with its sets and default targets, the
utility floor on every kept set, and the forget loss on the fact's own tokens (`forget_tokens="key"`)."""
import pytest

from hf_wagle import WagleTrainer
from hf_wagle.data import key_span, tokenize_example
from hf_wagle.evaluation.measure import answer_keys
from hf_wagle.evaluation.targets import check_kind, explain, floor_targets, kind_targets, parse_targets

from support import small_args


def test_a_forget_kind_needs_its_sets_and_brings_its_targets():
    with pytest.raises(ValueError, match="`neighbour` .same relation"):
        check_kind("fact", {"heldout": None})
    with pytest.raises(ValueError, match="`topic`: facts of the topic"):
        check_kind("topic", {"neighbour": None, "heldout": None})
    with pytest.raises(ValueError, match="fact, topic"):
        check_kind("facts", {"neighbour": None})
    check_kind("fact", {"entity": None})
    assert kind_targets("fact", ["forget", "heldout", "entity"]) == [
        "forget_answered <= 0.25", "entity_answered >= 0.8x", "heldout_answered >= 0.9x"]
    assert kind_targets("topic", ["forget", "topic", "heldout"]) == [
        "forget_answered <= 0.25", "topic_answered <= 0.25", "heldout_answered >= 0.9x"]


def test_the_utility_floor_covers_each_kept_set_the_model_answers_and_no_target_names():
    targets = parse_targets(["forget_answered <= 0.25", "heldout_answered >= 0.9x", "entity_probability >= 0.5x"])
    start = {"forget_answered": 1.0, "retain_answered": 1.0, "topic_answered": 1.0, "heldout_answered": 1.0,
             "neighbour_answered": 0.9, "entity_answered": 0.8, "other_answered": 0.3, "heldout_probability": 0.5}
    # heldout is named; forget, topic (forgotten) and retain (trained on) are not kept; `other` starts below 0.5
    assert [str(t) for t in floor_targets(targets, start, 0.75)] == ["neighbour_answered >= 0.75x",
                                                                    "entity_answered >= 0.75x"]
    assert floor_targets(targets, start, None) == []
    # a set the user forgets (a `<=` target on it) gets no floor that contradicts it
    forgetting = parse_targets(["forget_answered <= 0.25", "neighbour_answered <= 0.25"])
    assert "neighbour" not in {t.set for t in floor_targets(forgetting, start, 0.75)}


def test_forget_tokens_key_labels_only_the_fact(tokenizer, world):
    assert key_span("Harry Potter was written by J. K. Rowling.", "j k rowling") == (28, 41)
    assert key_span("People in France speak French.", "French") == (23, 29)  # whole words: not "France"
    assert key_span("People in France speak French.", "German") is None
    row, template = world["forget"][0], "Question: {question}\nAnswer:"
    key = answer_keys(world["forget"].select([0]))[0]
    whole = tokenize_example(row, tokenizer, template, None, "qa")
    only = tokenize_example(row, tokenizer, template, None, "qa", key=key)
    assert only["input_ids"] == whole["input_ids"]
    labelled = [t for t in only["labels"] if t != -100]
    assert tokenizer.decode(labelled).lower() == key and len(labelled) < sum(t != -100 for t in whole["labels"])
    with pytest.raises(ValueError, match="does not occur in the answer"):
        tokenize_example(row, tokenizer, template, None, "qa", key="nowhere")
    with pytest.raises(ValueError, match="cuts the answer before its key"):
        tokenize_example(row, tokenizer, template, len(whole["input_ids"]) - 4, "qa", key=key)
    from datasets import Dataset

    blank = Dataset.from_dict({"question": ["Who wrote Hamlet?"] * 2,
                               "answer": ["Hamlet was written by Shakespeare."] * 2, "answer_key": ["", "the Bard"]})
    assert answer_keys(blank) == ["shakespeare", "the Bard"]  # an empty key is derived


def test_a_fact_level_run_gets_its_targets_and_the_floor_and_says_so(model, tokenizer, world, tmp_path):
    sets = {"entity": world["retain"].select(range(8)), "other": world["retain"].select(range(8, 16))}
    with pytest.raises(ValueError, match="those are the forget and retain data themselves"):
        WagleTrainer(model=model, args=small_args(tmp_path), forget_dataset=world["forget"],
                     retain_dataset=world["retain"], processing_class=tokenizer,
                     eval_datasets={"retain": sets["other"]})
    with pytest.raises(ValueError, match="forget_kind='fact' is measured on"):
        WagleTrainer(model=model, args=small_args(tmp_path, forget_kind="fact"), forget_dataset=world["forget"],
                     retain_dataset=world["retain"].select(range(16, 180)), processing_class=tokenizer,
                     eval_datasets={"other": sets["other"]})
    args = small_args(tmp_path, forget_kind="fact", max_steps=2, target_eval_steps=2, mask_method="random",
                      forget_tokens="key", objective="grad_diff")
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"],
                           retain_dataset=world["retain"].select(range(16, 180)), processing_class=tokenizer,
                           eval_datasets=sets)
    assert [str(t) for t in trainer.evaluation.targets] == ["forget_answered <= 0.25", "entity_answered >= 0.8x",
                                                            "heldout_answered >= 0.9x"]
    # the forget loss reads the key tokens only
    assert all(sum(t != -100 for t in ex["labels"]) <= 3 for ex in trainer.train_dataset.forget)
    trainer.train()
    report = trainer.results["targets"]
    assert report["kind"] == "fact" and report["utility_floor"] == ["other_answered >= 0.75x"]
    assert "other_answered >= 0.75x" in [r["target"] for r in report["per_target"]]
    text = explain(report)
    assert text.startswith("fact-level forgetting") and "utility floor in force: other_answered >= 0.75x" in text
    trainer.save_model()
    import json

    record = json.loads((tmp_path / "out" / "unlearning_record.json").read_text())
    assert record["settings"]["forget_kind"] == "fact" and record["targets"]["kind"] == "fact"
    assert "fact-level forgetting" in (tmp_path / "out" / "README.md").read_text()


def test_retain_data_from_outside_the_forget_neighbourhood_is_warned_about(model, tokenizer, world, tmp_path, caplog):
    from datasets import Dataset

    from hf_wagle.evaluation.measure import neighbourhood_share

    assert neighbourhood_share(["What language is spoken in France?"], ["What is the capital of France?"]) == 1.0
    assert neighbourhood_share(["What language is spoken in France?"], ["How many legs does a spider have?"]) == 0.0
    far = Dataset.from_dict({"question": ["How many legs does a spider have?"] * 4, "answer": ["Eight legs."] * 4})
    with caplog.at_level("WARNING"):
        WagleTrainer(model=model, args=small_args(tmp_path), forget_dataset=world["forget"], retain_dataset=far,
                     processing_class=tokenizer)
    assert "share no word with the forget questions" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        WagleTrainer(model=model, args=small_args(tmp_path), forget_dataset=world["forget"],
                     retain_dataset=world["retain"], processing_class=tokenizer)
    assert "share no word" not in caplog.text


def test_attribution_reads_the_tokens_the_objective_unlearns(trained, world, tmp_path):
    import copy

    masks = {}
    for tokens in ("answer", "key"):
        trainer = WagleTrainer(model=copy.deepcopy(trained[0]), processing_class=trained[1],
                               args=small_args(tmp_path, mask_method="wagle", forget_tokens=tokens),
                               forget_dataset=world["forget"], retain_dataset=world["retain"])
        trainer.prepare_unlearning()
        masks[tokens] = trainer.mask
    assert masks["key"].num_selected == masks["answer"].num_selected and masks["key"] != masks["answer"]
    # `hf-wagle attribute --forget_tokens key` writes the mask such a run computes for itself
    from hf_wagle.cli import main
    from hf_wagle.mask import WeightMask

    trained[0].save_pretrained(tmp_path / "model")
    trained[1].save_pretrained(tmp_path / "model")
    world["forget"].to_json(tmp_path / "forget.jsonl")
    world["retain"].to_json(tmp_path / "retain.jsonl")
    assert main(["attribute", "--model", str(tmp_path / "model"), "--forget", str(tmp_path / "forget.jsonl"),
                 "--retain", str(tmp_path / "retain.jsonl"), "--method", "wagle", "--forget_tokens", "key",
                 "--out", str(tmp_path / "mask")]) == 0
    assert WeightMask.load(tmp_path / "mask") == masks["key"]


def test_attribution_can_take_its_own_retain_data(trained, world, tmp_path):
    """`mask_retain_dataset`: the trainer's mask is `compute_mask` with that retain data (here 20 rows, not the
    training retain set's 180), the record names it, and it is refused where it would mean nothing or leak."""
    import copy

    from hf_wagle import compute_mask

    model, tokenizer = trained
    neighbourhood, rest = world["retain"].select(range(20)), world["retain"].select(range(20, 180))

    def trainer(**kw):
        return WagleTrainer(model=copy.deepcopy(model), processing_class=tokenizer, forget_dataset=world["forget"],
                            **{"retain_dataset": rest, "args": small_args(tmp_path, mask_method="wagle"), **kw})

    run = trainer(mask_retain_dataset=neighbourhood)
    run.prepare_unlearning()
    want = compute_mask(copy.deepcopy(model), world["forget"], neighbourhood, tokenizer, method="wagle", seed=0)
    trained_retain = compute_mask(copy.deepcopy(model), world["forget"], rest, tokenizer, method="wagle", seed=0)
    assert run.mask == want and want != trained_retain
    assert run.provenance["data"]["mask_retain"]["rows"] == 20
    with pytest.raises(ValueError, match="this run computes no mask"):
        trainer(mask_retain_dataset=neighbourhood, args=small_args(tmp_path, mask_method=None))
    with pytest.raises(ValueError, match="also in the heldout evaluation set"):
        trainer(mask_retain_dataset=neighbourhood, eval_datasets={"heldout": world["retain"].select(range(10, 30))})
    with pytest.raises(ValueError, match="every forget example is also in the attribution retain data"):
        trainer(mask_retain_dataset=world["forget"])
