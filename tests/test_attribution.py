import numpy as np
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


def test_every_mask_method_scores_a_tied_tensor_once(tokenizer, world):
    """A tied input embedding and output head are one tensor: every built-in method scores it once, counts it once
    and gives its two names one mask (SmolLM2's tied head: tests/test_real_model.py)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    head, embed = "lm_head.weight", "model.embed_tokens.weight"
    assert model.lm_head.weight is model.model.embed_tokens.weight
    forget, retain = world["forget"].select(range(4)), world["retain"].select(range(4))
    total = sum(p.numel() for p in model.parameters())  # the tied tensor counted once
    for method in ("wagle", "snip", "gradient", "grin", "magnitude", "wanda", "random"):  # the built-ins
        mask = compute_mask(model, forget, retain, tokenizer, method=method, ratio=0.4, batch_size=4,
                            progress=False)
        assert (mask.num_total, mask.num_selected) == (total, round(0.4 * total)), method
        assert mask.metadata["tied"] == {head: embed} and head in mask and head not in mask.names()
        assert torch.equal(mask[head], mask[embed]) and mask.count(head) == mask.count(embed)
    assert f"{head} is tied to {embed}" in mask.format_stats()


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


# -- every method against a direct computation -------------------------------------------------------------------

def direct_wanda_scores(model, dataset, tokenizer):
    """|W_ij| * ||X_j||_2 with X the inputs of each nn.Linear over every token, one unpadded example at a time."""
    sq, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            def hook(m, inputs, output, name=name):
                x = inputs[0].double().reshape(-1, inputs[0].shape[-1])
                sq[name] = sq.get(name, 0) + (x * x).sum(0)
            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        for ex in tokenize_dataset(dataset, tokenizer, TEMPLATE):
            model(**collate([ex], tokenizer.pad_token_id))
    for h in hooks:
        h.remove()
    out = {}
    for n, p in model.named_parameters():
        module = n.rsplit(".", 1)[0]
        linear = n.endswith(".weight") and module in sq
        out[n] = p.detach().double().abs() * sq[module].sqrt() if linear else torch.zeros_like(p, dtype=torch.float64)
    return out


@pytest.fixture(scope="module")
def small_data(world):
    return world["forget"].select(range(6)), world["retain"].select(range(9))


@pytest.fixture(scope="module")
def direct(tiny, small_data, tokenizer):
    forget, retain = small_data
    return {"gf": direct_gradients(tiny, forget, tokenizer), "gr": direct_gradients(tiny, retain, tokenizer),
            "theta": {n: p.detach().double() for n, p in tiny.named_parameters()},
            "wanda": direct_wanda_scores(tiny, forget, tokenizer)}


def direct_scores(method, d):
    gf, gr, theta = d["gf"], d["gr"], d["theta"]
    if method == "snip":
        return {n: (theta[n] * gf[n]).abs() for n in theta}
    if method == "gradient":
        return {n: gf[n].abs() for n in theta}
    if method == "grin":
        return {n: gf[n].abs() / (gr[n].abs() + 1e-12) for n in theta}
    if method == "magnitude":
        return {n: theta[n].abs() for n in theta}
    if method == "wanda":
        return d["wanda"]
    raise ValueError(method)


@pytest.mark.parametrize("method", ["snip", "gradient", "grin", "magnitude", "wanda"])
@pytest.mark.parametrize("ratio", [0.3, 0.8])
def test_each_method_matches_direct_computation(tiny, small_data, tokenizer, direct, method, ratio):
    forget, retain = small_data
    want = top_k_mask(direct_scores(method, direct), ratio)
    got = compute_mask(tiny, forget, retain, tokenizer, method=method, ratio=ratio, batch_size=4, progress=False)
    assert jaccard({n: got[n] for n in want}, want) >= 0.999
    assert got.num_selected == round(ratio * got.num_total)
    assert got.metadata["method"] == method


def test_wanda_leaves_non_linear_parameters_for_last(tiny, small_data, tokenizer):
    linear = {n for n, m in tiny.named_modules() if isinstance(m, torch.nn.Linear)}
    is_linear = {n: n.rsplit(".", 1)[0] in linear for n, _ in tiny.named_parameters()}
    n_linear = sum(p.numel() for n, p in tiny.named_parameters() if is_linear[n])
    total = sum(p.numel() for p in tiny.parameters())
    got = compute_mask(tiny, small_data[0], None, tokenizer, method="wanda", ratio=n_linear / total, progress=False)
    for n in got.names():
        assert bool(got[n].all()) == is_linear[n] and bool(got[n].any()) == is_linear[n], n


def test_random_is_seeded_and_exact(tiny):
    a = compute_mask(tiny, None, None, method="random", ratio=0.4, seed=3)
    b = compute_mask(tiny, None, None, method="random", ratio=0.4, seed=3)
    c = compute_mask(tiny, None, None, method="random", ratio=0.4, seed=4)
    assert a == b and a != c
    assert a.num_selected == round(0.4 * a.num_total)
    # spread evenly: every tensor of >= 1000 weights holds close to 40%
    for n in a.names():
        if a[n].numel() >= 1000:
            assert abs(a[n].float().mean().item() - 0.4) < 0.05


@pytest.mark.parametrize("method", ["wagle", "grin", "snip", "wanda"])
def test_batch_size_does_not_change_the_mask(tiny, small_data, tokenizer, method):
    forget, retain = small_data
    kw = dict(method=method, ratio=0.3, mu=1e-3, progress=False)
    a = compute_mask(tiny, forget, retain, tokenizer, batch_size=1, **kw)
    b = compute_mask(tiny, forget, retain, tokenizer, batch_size=4, **kw)  # padded batches, a short last batch
    assert jaccard(dict(a.items()), dict(b.items())) >= 0.999


def test_mean_reduction_is_sum_with_rescaled_mu(tiny, small_data, tokenizer):
    """With means, S = (1/n_f) |theta G_f - G_r G_f / (n_r mu)|: the ranking of sums with mu' = n_r * mu."""
    forget, retain = small_data
    mean = compute_mask(tiny, forget, retain, tokenizer,
                        method="wagle", ratio=0.3, mu=1e-3, reduction="mean", progress=False)
    summ = compute_mask(tiny, forget, retain, tokenizer,
                        method="wagle", ratio=0.3, mu=1e-3 * len(retain), progress=False)
    plain = compute_mask(tiny, forget, retain, tokenizer, method="wagle", ratio=0.3, mu=1e-3, progress=False)
    assert jaccard(dict(mean.items()), dict(summ.items())) >= 0.999
    assert jaccard(dict(mean.items()), dict(plain.items())) < 0.99  # mu's role really changed


def test_num_samples_is_a_deterministic_subset(tiny, world, tokenizer):
    from hf_wagle.masking import subset_indices

    forget, retain = world["forget"].select(range(20)), world["retain"].select(range(20))
    got = compute_mask(tiny, forget, retain, tokenizer,
                       method="wagle", ratio=0.3, num_samples=5, seed=7, progress=False)
    fi, ri = subset_indices(20, 5, 7, 0), subset_indices(20, 5, 7, 1)
    assert len(fi) == 5 and fi != list(range(5)) and fi != ri
    want = compute_mask(tiny, forget.select(fi), retain.select(ri), tokenizer,
                        method="wagle", ratio=0.3, seed=7, progress=False)
    assert got == want
    assert got.metadata["num_forget"] == 5 and got.metadata["num_retain"] == 5 and got.metadata["num_samples"] == 5


def test_per_tensor_and_per_layer_scopes(tiny):
    scores = {n: p.detach().abs() for n, p in tiny.named_parameters()}
    per_tensor = compute_mask(tiny, None, None, method="magnitude", ratio=0.3, scope="per_tensor")
    for n, s in scores.items():
        assert torch.equal(per_tensor[n], top_k_mask({n: s}, 0.3)[n])
    per_layer = compute_mask(tiny, None, None, method="magnitude", ratio=0.3, scope="per_layer")
    for layer in ("0", "1"):
        group = {n: s for n, s in scores.items() if f"layers.{layer}." in n}
        want = top_k_mask(group, 0.3)
        assert all(torch.equal(per_layer[n], want[n]) for n in group)
    embed = "model.embed_tokens.weight"
    assert torch.equal(per_layer[embed], top_k_mask({embed: scores[embed]}, 0.3)[embed])


def test_include_exclude_patterns(tiny):
    got = compute_mask(tiny, None, None, method="magnitude", ratio=0.5, include=["*self_attn*"], exclude=["q_proj"])
    chosen = {n: p.detach().abs() for n, p in tiny.named_parameters() if "self_attn" in n and "q_proj" not in n}
    want = top_k_mask(chosen, 0.5)
    for n in got.names():
        assert torch.equal(got[n], want[n]) if n in want else not got[n].any(), n
    assert got.num_selected == round(0.5 * sum(s.numel() for s in chosen.values()))
    with pytest.raises(ValueError, match="matches no parameter"):
        compute_mask(tiny, None, None, method="magnitude", include=["layers.7"])
    with pytest.raises(ValueError, match="no parameter to select"):
        compute_mask(tiny, None, None, method="magnitude", include=["q_proj"], exclude=["q_proj"])


@pytest.mark.parametrize("granularity", ["row", "column"])
def test_row_and_column_granularity(tiny, granularity):
    dim = 1 if granularity == "row" else 0  # rows are selected whole: reduce over the other dim
    got = compute_mask(tiny, None, None, method="magnitude", ratio=0.4, granularity=granularity)
    units, unit_mask, k = [], [], round(0.4 * got.num_total)
    for n, p in tiny.named_parameters():
        m = got[n]
        if p.dim() == 2:
            line = m.all(dim)
            assert torch.equal(m, line[:, None].expand_as(m) if granularity == "row" else line[None, :].expand_as(m))
            mean = p.detach().abs().mean(dim)
            length = p.shape[dim]
        else:
            line, mean, length = m, p.detach().abs(), 1
        units += [(float(s), length) for s in mean]
        unit_mask += line.tolist()
    # the kept units are the best-ranked ones (by mean |theta|), holding the count nearest k
    kept = [s for (s, _), keep in zip(units, unit_mask) if keep]
    dropped = [s for (s, _), keep in zip(units, unit_mask) if not keep]
    assert min(kept) >= max(dropped) * (1 - 1e-6)
    assert abs(got.num_selected - k) <= max(length for _, length in units) / 2


def test_metadata_records_how_the_mask_was_made(tiny, small_data, tokenizer):
    from hf_wagle import __version__

    forget, retain = small_data
    m = compute_mask(tiny, forget, retain, tokenizer, method="wagle", ratio=0.3, mu=1e-3, progress=False)
    md = m.metadata
    assert (md["method"], md["ratio"], md["mu"], md["reduction"]) == ("wagle", 0.3, 1e-3, "sum")
    assert (md["num_forget"], md["num_retain"], md["hf_wagle_version"]) == (6, 9, __version__)
    assert len(md["forget_sha256"]) == 64 and md["forget_sha256"] != md["retain_sha256"]
    other = compute_mask(tiny, forget.select(range(5)), retain, tokenizer, method="wagle", ratio=0.3, progress=False)
    assert other.metadata["forget_sha256"] != md["forget_sha256"]
    assert other.metadata["retain_sha256"] == md["retain_sha256"]
    assert other.metadata["param_sha256"] == md["param_sha256"]
    m.check_model(tiny)


def test_progress_bar_over_batches(tiny, small_data, tokenizer, capsys, monkeypatch):
    import hf_wagle.masking.compute as compute

    compute_mask(tiny, small_data[0], small_data[1], tokenizer, method="wagle", ratio=0.3, batch_size=2)
    assert "attribution (wagle)" in capsys.readouterr().err
    bars = []

    class Bar:
        def __init__(self, total, desc):
            self.total, self.n, self.closed = total, 0, False
            bars.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            self.closed = True

    monkeypatch.setattr(compute, "_progress_bar", Bar)
    compute_mask(tiny, small_data[0], small_data[1], tokenizer, method="wagle", ratio=0.3, batch_size=2)
    assert [(b.total, b.n, b.closed) for b in bars] == [(8, 8, True)]  # 3 forget + 5 retain batches
    compute_mask(tiny, small_data[0], small_data[1], tokenizer, ratio=0.3, batch_size=2, progress=False)
    assert len(bars) == 1


def test_more_bad_options_fail_before_work(tiny, world, tokenizer):
    f, r = world["forget"], world["retain"]
    for kw, msg in [(dict(scope="layer"), "scope"), (dict(granularity="block"), "granularity"),
                    (dict(num_samples=0), "num_samples"), (dict(num_samples=2.5), "num_samples"),
                    (dict(mu=0), "mu"), (dict(reduction="max"), "reduction")]:
        with pytest.raises(ValueError, match=msg):
            compute_mask(tiny, f, r, tokenizer, **kw)
    with pytest.raises(ValueError, match="needs a forget"):
        compute_mask(tiny, None, r, tokenizer, method="wanda")
    with pytest.raises(ValueError, match="needs a retain"):
        compute_mask(tiny, f, None, tokenizer, method="grin")


def test_mask_noise_only_on_selected_weights(tiny):
    import copy

    from hf_wagle.masking import add_mask_noise

    mask = compute_mask(tiny, None, None, method="random", ratio=0.5, seed=1)
    a, b = copy.deepcopy(tiny), copy.deepcopy(tiny)
    assert add_mask_noise(a, mask, 0.1, seed=5) > 0
    add_mask_noise(b, mask, 0.1, seed=5)
    for (n, p0), p1, p2 in zip(tiny.named_parameters(), a.parameters(), b.parameters()):
        assert torch.equal(p1, p2)  # same seed, same noise (as on every rank)
        m = mask[n]
        assert torch.equal(p1[~m], p0[~m])
        delta = (p1 - p0)[m]
        if p0.std() > 0 and delta.numel() > 500:
            assert (delta != 0).all()
            assert abs(delta.std().item() / (0.1 * p0.std().item()) - 1) < 0.15


def test_paired_retain_sampling_draws_one_retain_example_per_forget_example(tiny, world, tokenizer):
    """The authors' convention: G_r sums N_f retain examples drawn with replacement (seeded), not the whole set."""
    forget, retain = world["forget"].select(range(6)), world["retain"].select(range(9))
    paired = compute_mask(tiny, forget, retain, tokenizer, method="wagle", ratio=0.3, mu=1e-3, retain_sampling="paired",
                          progress=False)
    assert (paired.metadata["num_forget"], paired.metadata["num_retain"]) == (6, 6)
    assert paired.metadata["retain_sampling"] == "paired"
    drawn = retain.select(np.random.default_rng([0, 2]).integers(9, size=6).tolist())
    # the same mask as "all" over exactly the drawn rows (repeats included)
    same = compute_mask(tiny, forget, drawn, tokenizer, method="wagle", ratio=0.3, mu=1e-3, progress=False)
    assert same == paired
    assert compute_mask(tiny, forget, retain, tokenizer, method="wagle", ratio=0.3, mu=1e-3, progress=False) != paired
    with pytest.raises(ValueError, match="retain_sampling"):
        compute_mask(tiny, forget, retain, tokenizer, method="wagle", retain_sampling="half")


def test_accumulate_device_option_gives_the_same_mask(tiny, world, tokenizer):
    """`accumulate_device="cpu"` selects what the default does. On a CPU-only machine both sums live in host memory,
    so this covers the option's plumbing only; the crossing from an accelerator is not exercised here."""
    kwargs = dict(method="wagle", ratio=0.4, mu=1e-4)
    default = compute_mask(tiny, world["forget"], world["retain"], tokenizer, **kwargs)
    hosted = compute_mask(tiny, world["forget"], world["retain"], tokenizer, accumulate_device="cpu", **kwargs)
    assert all(torch.equal(default[n], hosted[n]) for n in default.names())
