"""Evaluation metrics against values computed by hand (one example at a time, without the library's helpers)."""

import math
import re

import pytest
import torch
from datasets import Dataset
from scipy.stats import ks_2samp

from hf_wagle.config import DEFAULT_PROMPT_TEMPLATE
from hf_wagle.evaluation import (
    answer_metrics,
    auc,
    forget_quality,
    forget_truth_ratio,
    kept_truth_ratio,
    mcq_accuracy,
    mcq_predictions,
    mcq_prompt,
    min_k_score,
    model_utility,
    privleak,
    qa_metrics,
    summarise,
    tofu_summary,
    verbmem,
)
from hf_wagle.evaluation.scoring import token_logprobs


def answer_logprobs(model, tokenizer, question, answer):
    """Token log-probs of the answer words + EOS after the prompt (the world tokenizer is word-level)."""
    prompt = DEFAULT_PROMPT_TEMPLATE.format(question=question)
    n_prompt = len(tokenizer(prompt)["input_ids"])
    ids = tokenizer(prompt + " " + answer)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return [float(logp[t - 1, ids[t]]) for t in range(n_prompt, len(ids))]


def mean_nll(model, tokenizer, q, a):
    lp = answer_logprobs(model, tokenizer, q, a)
    return -sum(lp) / len(lp)


def greedy(model, tokenizer, question, max_new_tokens):
    ids = tokenizer(DEFAULT_PROMPT_TEMPLATE.format(question=question))["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            out.append(nxt)
    return tokenizer.decode(out, skip_special_tokens=True)


def lcs(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


@pytest.fixture(scope="module")
def damaged(trained):
    """The world model with noise added, so probabilities, truth ratios and generations are far from trivial."""
    import copy

    model = copy.deepcopy(trained[0])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.6 * p.std() * torch.randn(p.shape, generator=gen))
    return model.eval()


def test_qa_metrics_equal_hand_computation_and_batching(damaged, tokenizer, world):
    rows = world["forget"].select(range(6))
    got = qa_metrics(damaged, tokenizer, rows, batch_size=4, max_new_tokens=12)
    one = qa_metrics(damaged, tokenizer, rows, batch_size=1, max_new_tokens=12)
    assert set(got) == {"probability", "probability_normalised", "truth_ratio", "rougeL_recall"}
    for key in got:
        assert got[key] == pytest.approx(one[key], rel=1e-5), key
    assert len(set(round(x, 6) for x in got["truth_ratio"])) > 1
    for i, r in enumerate(rows):
        q = r["question"]
        p = math.exp(-mean_nll(damaged, tokenizer, q, r["answer"]))
        assert got["probability"][i] == pytest.approx(p, rel=1e-4)
        perturbed = [mean_nll(damaged, tokenizer, q, a) for a in r["perturbed_answer"]]
        para = mean_nll(damaged, tokenizer, q, r["paraphrased_answer"])
        geo_perturbed = math.exp(-sum(perturbed) / len(perturbed))
        assert got["truth_ratio"][i] == pytest.approx(geo_perturbed / math.exp(-para), rel=1e-4)
        assert got["probability_normalised"][i] == pytest.approx(
            p / (p + sum(math.exp(-x) for x in perturbed)), rel=1e-4)
        # ROUGE-L recall: LCS over the reference's lower-cased words (the world's words need no stemming)
        gen = re.findall(r"[a-z0-9]+", greedy(damaged, tokenizer, q, 12).lower())
        ref = re.findall(r"[a-z0-9]+", r["answer"].lower())
        assert got["rougeL_recall"][i] == pytest.approx(lcs(ref, gen) / len(ref), rel=1e-6)
    assert len(set(got["rougeL_recall"])) > 1


def test_answer_metrics_unchanged(trained, world):
    model, tokenizer = trained
    m = answer_metrics(model, tokenizer, world["retain"].select(range(5)), batch_size=2)
    r = world["retain"][0]
    assert m["probability"][0] == pytest.approx(math.exp(-mean_nll(model, tokenizer, r["question"], r["answer"])),
                                                rel=1e-4)
    assert summarise({"a": [1.0, 2.0]}) == {"a": 1.5}


def test_tofu_numbers_by_hand():
    assert forget_truth_ratio([0.5, 2.0, 1.0]) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert kept_truth_ratio([0.25, 1.5]) == pytest.approx((0.75 + 0.0) / 2)
    assert model_utility([1.0, 0.5, 0.25]) == pytest.approx(3 / 7)
    assert model_utility({"a": 0.3, "b": 0.0}) == 0.0
    # disjoint samples of 3 and 3: KS statistic 1, exact two-sided p = 2 / C(6, 3)
    assert forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)
    assert forget_quality([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    for bad in ([], [1.0, float("nan")]):
        with pytest.raises(ValueError):
            forget_quality(bad, [1.0])
    with pytest.raises(ValueError):
        forget_truth_ratio([1.0, 0.0])

    split = lambda p, r, t, n=None: {"probability": p, "rougeL_recall": r, "truth_ratio": t,
                                     "probability_normalised": n or p}
    metrics = {
        "forget": split([0.2, 0.4], [0.5, 0.0], [0.5, 4.0]),
        "retain": split([0.9, 0.7], [1.0, 0.5], [0.2, 0.6]),
        "real_authors": split([0.9, 0.1], [0.6, 0.8], [0.5, 0.5], [0.6, 0.4]),
        "world_facts": split([0.3, 0.3], [1.0, 1.0], [1.2, 0.0001], [0.8, 0.9]),
    }
    retain_model = [1.0, 0.9, 1.1]
    report = tofu_summary(metrics, retain_model)
    t = report["table"]
    assert t["forget"] == pytest.approx({"probability": 0.3, "rougeL_recall": 0.25, "truth_ratio": (0.5 + 0.25) / 2})
    assert t["retain"] == pytest.approx({"probability": 0.8, "rougeL_recall": 0.75, "truth_ratio": (0.8 + 0.4) / 2})
    assert t["real_authors"]["probability"] == pytest.approx(0.5)  # normalised over the options
    assert t["world_facts"] == pytest.approx({"probability": 0.85, "rougeL_recall": 1.0,
                                              "truth_ratio": (0 + 0.9999) / 2})
    nine = [0.8, 0.75, 0.6, 0.5, 0.7, 0.5, 0.85, 1.0, 0.49995]
    assert report["model_utility"] == pytest.approx(9 / sum(1 / x for x in nine))
    assert report["forget_quality"] == pytest.approx(ks_2samp([0.5, 4.0], retain_model).pvalue)
    assert report["forget_truth_ratios"] == [0.5, 4.0]
    assert set(report["explanations"]) >= {"forget_quality", "model_utility", "truth_ratio"}
    partial = tofu_summary({"forget": metrics["forget"], "retain": metrics["retain"]})
    assert partial["model_utility"] is None and partial["forget_quality"] is None
    assert partial["model_utility_partial"] == pytest.approx(3 / (1 / 0.8 + 1 / 0.75 + 1 / 0.6))


def test_qa_metrics_rejects_bad_input_before_work(tokenizer):
    with pytest.raises(ValueError, match="answer"):
        qa_metrics(None, tokenizer, Dataset.from_dict({"question": ["q"]}))
    bad = Dataset.from_dict({"question": ["q"], "answer": ["a"], "perturbed_answer": [[]]})
    with pytest.raises(ValueError, match="perturbed_answer"):
        qa_metrics(None, tokenizer, bad)
    with pytest.raises(ValueError, match="question"):
        qa_metrics(None, tokenizer, Dataset.from_dict({"question": ["q"], "answer": ["a"]}), prompt_template="x")


@pytest.fixture(scope="module")
def lettered(trained):
    """The world model with the letters A-D added to its word-level vocabulary (new embedding rows)."""
    import copy

    model, tokenizer = copy.deepcopy(trained[0]), copy.deepcopy(trained[1])
    tokenizer.add_tokens(["A", "B", "C", "D"])
    torch.manual_seed(0)
    model.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        for emb in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            emb[-4:] = torch.randn(4, emb.shape[1]) * emb[:-4].std()
    return model.eval(), tokenizer


def test_mcq_accuracy_wmdp_format(lettered, world):
    model, tokenizer = lettered
    rows = world["retain"].select(range(12))
    data = Dataset.from_dict({
        "question": rows["question"],
        "choices": [[r["paraphrased_answer"], *r["perturbed_answer"]][::-1] for r in rows],
        "answer": [i % 4 for i in range(12)],
    })
    assert mcq_prompt("Q?", ["x", "y", "z", "w"]) == "Q?\nA. x\nB. y\nC. z\nD. w\nAnswer:"
    expected = []
    for r in data:
        ids = tokenizer(mcq_prompt(r["question"], r["choices"]))["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)
        letters = [tokenizer.convert_tokens_to_ids(c) for c in "ABCD"]
        expected.append(max(range(4), key=lambda i: float(logp[letters[i]])))
    assert len(set(expected)) > 1
    assert mcq_predictions(model, tokenizer, data, batch_size=5) == expected
    assert mcq_accuracy(model, tokenizer, data) == sum(e == a for e, a in zip(expected, data["answer"])) / 12
    with pytest.raises(ValueError, match="index"):
        mcq_accuracy(None, tokenizer, Dataset.from_dict({"question": ["q"], "choices": [["a", "b"]], "answer": [2]}))
    with pytest.raises(ValueError, match="choices"):
        mcq_accuracy(None, tokenizer, Dataset.from_dict({"question": ["q"], "answer": [0]}))


def test_acc_norm_divides_by_the_choice_length_in_characters(trained, world):
    """lm-eval 0.4's `acc_norm`: argmax of `ll_i / len(choice_i)`, the choice's characters without the delimiter
    (not its UTF-8 bytes: "é" counts once)."""
    from hf_wagle.evaluation import mcq_scores

    model, tokenizer = trained
    rows = world["retain"].select(range(8))
    data = Dataset.from_dict({
        "question": rows["question"],
        "choices": [[r["answer"], "é" + r["perturbed_answer"][0], r["perturbed_answer"][1][:3]] for r in rows],
        "answer": [0] * 8})
    scores = mcq_scores(model, tokenizer, data, style="cloze")
    expected = [max(range(3), key=lambda i: (s[i] / len(c[i]), -i)) for s, c in zip(scores, data["choices"])]
    assert mcq_predictions(model, tokenizer, data, style="cloze", length_normalized=True) == expected
    assert mcq_accuracy(model, tokenizer, data, style="cloze", length_normalized=True) == expected.count(0) / 8


def test_muse_pieces_by_hand(trained, world):
    assert min_k_score([-1.0, -5.0, -3.0, -2.0, -4.0], k=0.4) == pytest.approx(-4.5)
    assert min_k_score([-1.0, -2.0], k=0.4) == pytest.approx(-2.0)  # at least one token
    assert auc([3.0, 2.0], [1.0, 2.0]) == pytest.approx(3.5 / 4)
    assert privleak(0.875, 0.5) == pytest.approx(75.0)  # MUSE: percent
    model, tokenizer = trained
    texts = [f"{r['question']} {r['answer']}" for r in world["retain"].select(range(5))]
    batched = token_logprobs(model, tokenizer, texts, batch_size=5)
    for text, lp in zip(texts, batched):
        ids = tokenizer(text)["input_ids"]
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        assert lp == pytest.approx([float(ref[t - 1, ids[t]]) for t in range(1, len(ids))], rel=1e-4)
    rows = world["retain"].select(range(4))
    prompts = [DEFAULT_PROMPT_TEMPLATE.format(question=q) for q in rows["question"]]
    vm = verbmem(model, tokenizer, Dataset.from_dict({"prompt": prompts, "gt": rows["answer"]}), max_new_tokens=16)
    assert vm["rougeL_f1"] == pytest.approx([1.0] * 4)  # the memorised model reproduces its answers
