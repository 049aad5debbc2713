import pytest
from datasets import Dataset

from hf_wagle.data import IGNORE_INDEX, ForgetRetainPairs, PairCollator, dataset_shape, tokenize_dataset

TEMPLATE = "Question: {question}\nAnswer:"


def labelled(ex):
    return [t for t, label in zip(ex["input_ids"], ex["labels"]) if label != IGNORE_INDEX]


def test_qa_labels_cover_answer_and_eos_only(world, tokenizer):
    ex = tokenize_dataset(world["forget"].select(range(3)), tokenizer, TEMPLATE)
    for e, row in zip(ex, world["forget"].select(range(3))):
        answer_ids = tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
        assert labelled(e) == answer_ids + [tokenizer.eos_token_id]
        assert e["input_ids"][-1] == tokenizer.eos_token_id
        prompt_ids = tokenizer(TEMPLATE.format(question=row["question"]))["input_ids"]
        assert e["input_ids"][: len(prompt_ids)] == prompt_ids


def test_eos_keeps_its_label_when_pad_is_eos(world, tokenizer):
    ex = tokenize_dataset(world["forget"].select(range(2)), tokenizer, TEMPLATE)
    batch = PairCollator(tokenizer.eos_token_id)([{"forget": e, "retain": e} for e in ex])["forget"]
    for row, e in zip(batch["labels"].tolist(), ex):
        assert row[len(e["labels"]) - 1] == tokenizer.eos_token_id
        assert all(v == IGNORE_INDEX for v in row[len(e["labels"]):])


def test_text_shape_labels_every_token(tokenizer):
    ds = Dataset.from_dict({"text": ["Yorbri Corquin keeps a owl ."]})
    (e,) = tokenize_dataset(ds, tokenizer, TEMPLATE)
    assert dataset_shape(ds) == "text"
    assert e["labels"] == e["input_ids"] and e["input_ids"][0] == tokenizer.bos_token_id


def test_pretokenised_used_exactly():
    ds = Dataset.from_dict({"input_ids": [[5, 6, 7, 8]], "attention_mask": [[1, 1, 1, 0]],
                            "labels": [[-100, 6, 7, -100]]})
    (e,) = tokenize_dataset(ds, None, TEMPLATE)
    assert e == {"input_ids": [5, 6, 7, 8], "attention_mask": [1, 1, 1, 0], "labels": [-100, 6, 7, -100]}
    (e,) = tokenize_dataset(ds.remove_columns("labels"), None, TEMPLATE)
    assert e["labels"] == [5, 6, 7, -100]


def test_bad_columns_are_a_clear_error():
    with pytest.raises(ValueError, match="accepted shapes"):
        dataset_shape(Dataset.from_dict({"prompt": ["a"], "completion": ["b"]}), "forget dataset")


def test_prompt_filling_max_length_is_an_error(world, tokenizer):
    with pytest.raises(ValueError, match="max_length"):
        tokenize_dataset(world["forget"].select(range(1)), tokenizer, TEMPLATE, max_length=4)


def test_pairs_are_seeded_and_differ_per_rank():
    forget = [{"input_ids": [i], "attention_mask": [1], "labels": [i]} for i in range(8)]
    retain = [{"input_ids": [100 + i], "attention_mask": [1], "labels": [i]} for i in range(50)]
    draw = lambda rank: [ForgetRetainPairs(forget, retain, 0, rank)[i]["retain"]["input_ids"][0] for i in range(8)]
    assert draw(0) == draw(0)
    assert draw(0) != draw(1)
    pairs = ForgetRetainPairs(forget, retain, 0, 0)
    epochs = []
    for epoch in (0, 1, 0):
        pairs.epoch = epoch
        epochs.append([pairs[i]["retain"]["input_ids"][0] for i in range(8)])
    assert epochs[0] != epochs[1]
    assert epochs[2] == epochs[0]  # nothing kept in memory: reading again (as a resumed run does) draws the same
