import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_wagle import compute_mask
from hf_wagle.data import collate, tokenize_dataset

TEMPLATE = "Question: {question}\nAnswer:"


@pytest.fixture(scope="module")
def tiny(tokenizer):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def direct_gradients(model, dataset, tokenizer):
    """Sum over examples of the gradient of each example's own token-mean loss, one example at a time."""
    total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in model.named_parameters()}
    for ex in tokenize_dataset(dataset, tokenizer, TEMPLATE):
        model.zero_grad()
        b = collate([ex], tokenizer.pad_token_id)
        model(**b).loss.backward()  # the model's own loss: mean over the example's labelled tokens
        for n, p in model.named_parameters():
            total[n] += p.grad.double()
    model.zero_grad()
    return total


def top_k_mask(scores: dict, ratio):
    """Largest scores first; ties (e.g. the zero scores of unused embedding rows) in parameter, then index order."""
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    order = torch.sort(-flat, stable=True).indices
    keep[order[: round(ratio * flat.numel())]] = True
    out, i = {}, 0
    for n, s in scores.items():
        out[n] = keep[i:i + s.numel()].reshape(s.shape)
        i += s.numel()
    return out


def jaccard(a, b):
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    return inter / max(1, union)


@pytest.mark.parametrize("ratio", [0.3, 0.8])
def test_wagle_matches_direct_computation(tiny, world, tokenizer, ratio):
    forget, retain = world["forget"].select(range(6)), world["retain"].select(range(9))
    mu = 1e-3
    gf, gr = direct_gradients(tiny, forget, tokenizer), direct_gradients(tiny, retain, tokenizer)
    theta = {n: p.detach().double() for n, p in tiny.named_parameters()}
    want = top_k_mask({n: (theta[n] * gf[n] - gr[n] * gf[n] / mu).abs() for n in theta}, ratio)
    got = compute_mask(tiny, forget, retain, tokenizer, method="wagle", ratio=ratio, mu=mu, batch_size=4)
    assert got.names() == list(want)
    assert jaccard({n: got[n] for n in want}, want) >= 0.999
    assert got.num_selected == round(ratio * got.num_total)


def test_magnitude_and_batch_size_invariance(tiny, world, tokenizer):
    forget, retain = world["forget"].select(range(5)), world["retain"].select(range(5))
    mag = compute_mask(tiny, forget, retain, tokenizer, method="magnitude", ratio=0.5)
    want = top_k_mask({n: p.detach().abs() for n, p in tiny.named_parameters()}, 0.5)
    assert all(torch.equal(mag[n], want[n]) for n in want)
    a = compute_mask(tiny, forget, retain, tokenizer, ratio=0.5, batch_size=1)
    b = compute_mask(tiny, forget, retain, tokenizer, ratio=0.5, batch_size=5)
    assert jaccard({n: a[n] for n in a.names()}, {n: b[n] for n in b.names()}) >= 0.999


def test_attribution_leaves_the_model_as_it_was(tiny, world, tokenizer):
    before = {n: (p.detach().clone(), p.requires_grad, p.grad) for n, p in tiny.named_parameters()}
    tiny.train()
    compute_mask(tiny, world["forget"].select(range(2)), world["retain"].select(range(2)), tokenizer)
    assert tiny.training
    for n, p in tiny.named_parameters():
        assert torch.equal(p, before[n][0]) and p.requires_grad == before[n][1] and p.grad is None


def test_bad_options_fail_before_work(tiny, world, tokenizer):
    with pytest.raises(ValueError, match="unknown mask method"):
        compute_mask(tiny, world["forget"], world["retain"], tokenizer, method="nope")
    with pytest.raises(ValueError, match="fraction"):
        compute_mask(tiny, world["forget"], world["retain"], tokenizer, ratio=1.5)
