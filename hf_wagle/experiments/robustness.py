"""Does the forgetting last? An unlearned model scored as deployment and other users change it.

Interventions, each applied to the unlearned model (merged, when it is an adapter) and scored per item:

* `nf4`, `int8`: the weights as bitsandbytes stores them when transformers loads the model with
  `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")` (blocks of 64 weights, an absmax scale per
  block, 16 levels) or `load_in_8bit=True` (a row-wise absmax scale, int8): every `nn.Linear` but the output head is
  quantised with bitsandbytes' own functions and dequantised again: the stored values exactly (tested against
  transformers' own loading), computed in float32 (an int8 layer also rounds its inputs, which this leaves out). The
  original model is quantised the same way, so the comparison is deployment against deployment.
* `nf4_adapter` (`adapter=True`): the QLoRA way of serving an adapter, the base's linear weights in NF4 and the
  adapter's change on top in full precision, `Q(o) + (u - o)`, against `Q(o)`.
* `relearn`: `steps` AdamW steps of answer-only fine-tuning on one half of the forget rows (the attacker's), scored
  on the other half; `relearn_related`: the same steps on related rows that are not forget rows (neighbour facts,
  paraphrases: the "jogging" attack of Hu et al., ICLR 2025); `relearn_retain`: the same steps on retain rows, the
  control (benign fine-tuning).
* `prompt`: the other prompt format (the tokenizer's chat template when the run used a plain template, the default
  plain template when it used the chat one); `paraphrase`: the forget rows' `paraphrased_question` column in place of
  `question`, when the data has it.

The score `s` is the forget answer probability, `exp(-mean NLL)` of each answer's tokens and EOS, mean over the
scored rows; with `tokens="key"` (the default of `hf-wagle audit` for a run with `forget_tokens: key`) of its key
tokens alone, the part of the answer a key-token run unlearns (a whole-answer score also counts wording every answer
shares, which relearning teaches back). Recovery for an intervention `I`:

    recovery = (s(I(unlearned)) - s(unlearned)) / (s(I(original)) - s(unlearned))

(for relearning the denominator is `s(original) - s(unlearned)`: relearning would teach the original too). 0: the
intervention brings nothing back; 1: the model knows as much as the original does. Its 95% interval is a percentile
bootstrap over rows (`scipy.stats.bootstrap`, 2000 resamples).

Beside the recoveries: `distance` (how far the weights moved: `||u - o||`) and the straight path from the original to
the unlearned model (`interpolated_model`): the mean answer NLL of the forget (and retain) rows at `o + alpha (u - o)`
for alpha 0, 0.25, 0.5, 0.75, 1, and its `barrier` above the straight line between the ends. Relearning resistance
is reported to follow both (farther, and not linearly connected, is harder to undo).

Beside the recovery fraction, open-unlearning's robustness of the score (Dorna et al. 2025, "OpenUnlearning",
meta-evaluation; `openunlearning_robustness`), with `m` the mean forget answer probability (higher: more known):

    Q = min(m(unlearned) / m(NF4(unlearned)), 1)
    R = min((m(R_relearned) - m(R)) / (m(unlearned_relearned) - m(unlearned)), 1)    on the held-back rows
    robustness = 2 Q R / (Q + R)

R compares the relearning attack on the unlearned model with the same attack on a retain model `R`: one never
trained on the forget data (TOFU's retain models). 1: relearning teaches the unlearned model no more than a model
that never knew (also when it raises nothing); R is clipped to [0, 1], Q is at most 1. Without a retain model R and
the harmonic mean are None (not measured).

`update_survival` predicts the quantisation result from the weights alone: of the weights the unlearning changed,
the fraction whose quantised value differs from the original's quantised value (an update smaller than half a
quantisation step rounds back to the original code), and the norm of the quantised change over the norm of the
change.
"""

from __future__ import annotations

import copy
import math

import torch

from . import RELEARN_PROTOCOLS, Progress

SCHEMES = ("nf4", "int8")
INTERVENTIONS = (*SCHEMES, "nf4_adapter", "relearn", "relearn_related", "relearn_retain", "prompt", "paraphrase")


def openunlearning_robustness(unlearned: float, quantised: float | None = None, held_back: float | None = None,
                              relearned: float | None = None, retain_model: float | None = None,
                              retain_relearned: float | None = None) -> dict:
    """Q, R and their harmonic mean from mean scores (module docstring): Q from the unlearned model's score on every
    forget row and after NF4; R from the held-back rows' scores (`held_back`: the unlearned model's) before and after
    relearning, of the unlearned and the retain model. Q is 1 when quantisation does not raise the score; R is 1 when
    relearning does not raise the unlearned model's score, and 0 when it lowers the retain model's while raising the
    unlearned one's; each is None when its scores are missing (`why` says which)."""
    q = r = None
    why = []
    if quantised is None:
        why.append("Q needs the nf4 scheme")
    else:
        q = 1.0 if quantised <= unlearned else unlearned / quantised
    if None in (held_back, relearned, retain_model, retain_relearned):
        why.append("R needs the relearning attack and a retain model never trained on the forget rows")
    else:
        gained = relearned - held_back
        r = 1.0 if gained <= 0 else min(max((retain_relearned - retain_model) / gained, 0.0), 1.0)
    hm = None if q is None or r is None else (0.0 if q + r == 0 else 2 * q * r / (q + r))
    return {"Q": q, "R": r, "robustness": hm, "why": "; ".join(why) or None}


def parse_limits(text: str | None) -> dict[str, float]:
    """`"relearn=0.3,nf4=0.1"` -> `{"relearn": 0.3, "nf4": 0.1}`: the largest recovery each intervention may show."""
    limits = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in INTERVENTIONS:
            raise ValueError(f"recovery limit {item.strip()!r}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(INTERVENTIONS)}")
        try:
            limits[name] = float(value)
        except ValueError:
            raise ValueError(f"recovery limit {item.strip()!r}: {value!r} is not a number") from None
    return limits


def exceeded(report: dict, limits: dict[str, float]) -> list[str]:
    """The limits a report breaks: an intervention that was run and whose recovery (point estimate) is above its
    limit, or a limited intervention the audit did not run or could not measure (it cannot be shown to hold)."""
    out = []
    for name, limit in limits.items():
        entry = report["recovery"].get(name)
        if entry is None:
            out.append(f"{name}: not run, so recovery <= {limit:g} is not shown")
        elif entry["recovery"] is None:
            out.append(f"{name}: recovery undefined ({entry.get('undefined', 'not measurable')}), so recovery <= "
                       f"{limit:g} is not shown")
        elif entry["recovery"] > limit:
            out.append(f"{name}: recovery {entry['recovery']:.3g} > {limit:g}")
    return out


def quantised_weight(weight: torch.Tensor, scheme: str) -> torch.Tensor:
    """`weight` as bitsandbytes stores it under `scheme`, dequantised back to `weight`'s dtype."""
    try:
        import bitsandbytes.functional as bnb
    except ImportError as e:
        raise ImportError("quantisation audits need bitsandbytes: pip install 'hf-wagle[audit]'") from e

    w = weight.detach().float().cpu()
    if scheme == "nf4":
        codes, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4")
        out = bnb.dequantize_4bit(codes, state)
    elif scheme == "int8":  # transformers hands bitsandbytes the weight in float16 for int8
        codes, scales, _ = bnb.int8_vectorwise_quant(w.half())
        out = codes.float() * (scales.float()[:, None] / 127.0)
    else:
        raise ValueError(f"unknown quantisation scheme {scheme!r}; choose from {SCHEMES}")
    return out.to(weight.dtype).to(weight.device)


def quantised_linears(model) -> list[str]:
    """Names of the `nn.Linear` modules transformers' bitsandbytes integration quantises: all but the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]


def quantised_model(model, scheme: str):
    """A copy of `model` whose quantised linear weights (`quantised_linears`) hold their `scheme` values."""
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    with torch.no_grad():
        for name in quantised_linears(out):
            modules[name].weight.copy_(quantised_weight(modules[name].weight, scheme))
    return out


def adapter_on_quantised_base(original, unlearned, scheme: str = "nf4"):
    """A copy of `unlearned` whose quantised linear weights are `Q(o) + (u - o)`: the base rounded, the change kept
    in full precision (an unmerged adapter over a quantised base computes exactly this sum)."""
    out = copy.deepcopy(unlearned)
    before = dict(original.named_parameters())
    with torch.no_grad():
        for name in quantised_linears(out):
            w = out.get_submodule(name).weight
            o = before[f"{name}.weight"].to(w.device)
            w.copy_(quantised_weight(o, scheme) + (w - o))
    return out


@torch.no_grad()
def update_survival(original, unlearned, schemes=SCHEMES) -> dict:
    """Per scheme: `changed` (weights of the quantised linears the unlearning changed), `surviving` (those whose
    quantised value differs from the original's), `fraction = surviving / changed`, and `norm_fraction =
    ||Q(u) - Q(o)|| / ||u - o||` over the same layers."""
    before = dict(original.named_parameters())
    out = {}
    for scheme in schemes:
        changed = surviving = 0
        change_sq = kept_sq = 0.0
        for name in quantised_linears(unlearned):
            u = unlearned.get_submodule(name).weight
            o = before[f"{name}.weight"].to(u.device)
            moved = u != o
            n = int(moved.sum())
            if not n:
                continue
            qu, qo = quantised_weight(u, scheme), quantised_weight(o, scheme)
            changed += n
            surviving += int(((qu != qo) & moved).sum())
            change_sq += float((u.double() - o.double()).pow(2).sum())
            kept_sq += float((qu.double() - qo.double()).pow(2).sum())
        out[scheme] = {"changed": changed, "surviving": surviving,
                       "fraction": surviving / changed if changed else None,
                       "norm_fraction": math.sqrt(kept_sq / change_sq) if change_sq else None}
    return out


@torch.no_grad()
def distance(original, unlearned) -> dict:
    """How far the unlearning moved the weights: `l2 = ||u - o||` over every parameter (float64), `relative =
    l2 / ||o||`, and `changed`, the number of weights that differ. Relearning undoes small, close changes most
    easily (the farther from the original, the more an attacker has to move)."""
    before = dict(original.named_parameters())
    sq = base_sq = 0.0
    changed = 0
    for name, u in unlearned.named_parameters():
        o = before[name].to(u.device)
        diff = u.double() - o.double()
        sq += float(diff.pow(2).sum())
        base_sq += float(o.double().pow(2).sum())
        changed += int((u != o).sum())
    return {"l2": math.sqrt(sq), "relative": math.sqrt(sq / base_sq) if base_sq else None, "changed": changed}


INTERPOLATION = (0.0, 0.25, 0.5, 0.75, 1.0)


@torch.no_grad()
def interpolated_model(original, unlearned, alpha: float):
    """A copy of `unlearned` whose weights are `o + alpha * (u - o)`: alpha 0 the original, 1 the unlearned."""
    out = copy.deepcopy(unlearned)
    before = dict(original.named_parameters())
    for name, p in out.named_parameters():
        o = before[name].to(p.device)
        p.copy_(o + alpha * (p - o))
    return out


def barrier(values: list[float], alphas=INTERPOLATION) -> float:
    """`max_alpha [L(alpha) - ((1 - alpha) L(0) + alpha L(1))]` over the path's points: how far the loss along the
    straight line from the original to the unlearned model rises above the chord (0 or less: no barrier, the two
    are linearly connected on this data)."""
    return max(v - ((1 - a) * values[0] + a * values[-1]) for a, v in zip(alphas, values))


def relearning_halves(forget):
    """`(held, attack)`: the relearning attack trains on the odd rows of `forget` and scores the even ones."""
    return forget.select(range(0, len(forget), 2)), forget.select(range(1, len(forget), 2))


def relearned_model(model, tokenizer, data, steps: int, learning_rate: float, batch_size: int = 8,
                    prompt_template: str | None = None, seed: int = 0, on_step=None):
    """A float32 copy of `model` after `steps` AdamW steps (no weight decay, every weight trainable) of the
    answer-only NLL on `data`, batches taken in order and cycled. `on_step(k, model)`, when given, is called after
    step k with the copy in eval mode (the attack stopped after k steps: a relearning curve from one attack)."""
    from ..data import collate, pad_id, tokenize_dataset
    from ..losses import sequence_nll
    from ..options import DEFAULT_PROMPT_TEMPLATE

    torch.manual_seed(seed)
    out = copy.deepcopy(model).float().train()  # in bf16 most small updates would round away: a weaker attack
    for p in out.parameters():  # every weight: what someone holding the merged model can fine-tune
        p.requires_grad_(True)
    examples = tokenize_dataset(data, tokenizer, prompt_template or DEFAULT_PROMPT_TEMPLATE, None)
    optimizer = torch.optim.AdamW(out.parameters(), lr=learning_rate, weight_decay=0.0)
    device = next(out.parameters()).device
    n = len(examples)
    for step in range(steps):
        chunk = [examples[(step * batch_size + i) % n] for i in range(min(batch_size, n))]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id(tokenizer)).items()}
        loss = sequence_nll(out, batch).per_example_mean.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if on_step is not None:
            with torch.no_grad():
                on_step(step + 1, out.eval())
            out.train()
    return out.eval()


def recovery(original: list[float], unlearned: list[float], after: list[float]) -> dict:
    """`(mean(after) - mean(unlearned)) / (mean(original) - mean(unlearned))` over paired rows, with a 95% percentile
    bootstrap interval over rows. None, with the reason under `undefined`, where the unlearned mean is not below the
    original's (`original`: the original under the same intervention): nothing was removed from this measure (a run
    that unlearned only the fact's tokens can raise the whole answer's probability, its wording trained by the
    retain term), so no share of it can come back."""
    import numpy as np
    from scipy.stats import bootstrap

    o, u, a = (np.asarray(x, dtype=float) for x in (original, unlearned, after))
    if not len(o) == len(u) == len(a) or not len(o):
        raise ValueError("recovery needs the same non-empty rows scored three times")

    def ratio(index, axis=-1):
        index = np.asarray(index, dtype=int)
        gap = o[index].mean(axis) - u[index].mean(axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (a[index].mean(axis) - u[index].mean(axis)) / gap

    if not o.mean() > u.mean():
        return {"recovery": None, "ci95": None,
                "undefined": f"the unlearned mean answer probability ({u.mean():.3g}) is not below the original's "
                             f"under the same intervention ({o.mean():.3g}): nothing was removed from it; read the "
                             "answered shares"}
    value = float(ratio(np.arange(len(o))))
    if not math.isfinite(value):
        return {"recovery": None, "ci95": None}
    if len(o) < 2:
        return {"recovery": value, "ci95": None}
    result = bootstrap((np.arange(len(o)),), ratio, n_resamples=2000, method="percentile", random_state=0,
                       vectorized=True)
    low, high = result.confidence_interval
    return {"recovery": value, "ci95": [float(low), float(high)] if math.isfinite(low + high) else None}


def _probabilities(model, tokenizer, data, prompt_template, batch_size, tokens: str = "answer") -> list[float]:
    from ..evaluation.answers import answer_metrics
    from ..evaluation.measure import answer_keys

    keys = answer_keys(data) if tokens == "key" else None
    return answer_metrics(model, tokenizer, data, prompt_template, batch_size, keys=keys)["probability"]


def relearn_steps_for(rows: int, batch_size: int, steps: int | None = None, protocol: str = "default") -> int:
    """`steps` when given, else the `protocol`'s (`RELEARN_PROTOCOLS`; the default: `max(RELEARN_MIN_STEPS,
    RELEARN_EPOCHS * ceil(rows / batch_size))`)."""
    return steps if steps is not None else RELEARN_PROTOCOLS[protocol].steps_for(rows, batch_size)


def audit(original, unlearned, tokenizer, forget, retain=None, schemes=SCHEMES, relearn_steps: int | None = None,
          relearn_lr: float | None = None, batch_size: int = 8, prompt_template: str | None = None, seed: int = 0,
          adapter: bool = False, answers: bool = True, progress=None, relearn_only: bool = False,
          related=None, protocol: str = "default", retain_model=None, tokens: str = "answer") -> dict:
    """The interventions of the module docstring on `unlearned` (a plain model: merge an adapter first) against
    `original`, scored by the answer probability of the forget rows (the relearning ones on the held-back half).

    Relearning follows `protocol` (`RELEARN_PROTOCOLS`: its steps, learning rate and batch size), where
    `relearn_steps` and `relearn_lr` do not say otherwise; `relearn_steps=0` skips it. `progress`: a function of one
    line, told each stage as it ends (`hf_wagle.experiments.Progress`). `adapter`: the run is an adapter, so also
    audit it unmerged over an NF4 base. Returns `{"scores":
    {model: mean forget probability}, "recovery": {intervention: {...}}, "survival": update_survival(...)}`; with
    `retain`, also each model's mean retain probability under `"retain_scores"`; with `answers`, `"answered"`: the
    share of scored rows each model still answers (greedy generation; the relearned models and
    `unlearned_held_back` on the held-back half). `relearn_only`: the relearning alone (with `schemes=()`), as a
    run's `relearn_recovery` target checks it. `related`: rows to relearn on for `relearn_related`. `retain_model`: a
    model never trained on the forget rows, attacked as the unlearned one is, for open-unlearning's R; the report's
    `"openunlearning"` holds Q, R and their harmonic mean (`openunlearning_robustness`). `tokens="key"`: every
    probability is of each answer's key tokens alone (`answer_keys`: `answer_key`, else derived), as a run with
    `forget_tokens="key"` unlearns them; the default, "answer", scores the whole answer and EOS."""
    from ..evaluation.measure import measure
    from ..options import DEFAULT_PROMPT_TEMPLATE

    template = prompt_template or DEFAULT_PROMPT_TEMPLATE
    if len(forget) < 2:
        raise ValueError("the robustness audit needs at least 2 forget rows (relearning holds half of them back)")
    if tokens not in ("answer", "key"):
        raise ValueError(f"tokens must be 'answer' or 'key', got {tokens!r}")
    if tokens == "key":
        from ..data import dataset_shape

        for name, data in (("forget", forget), ("retain", retain), ("related", related)):
            if data is not None and dataset_shape(data, name) != "qa":
                raise ValueError(f"key tokens are found in QA rows (question, answer, optionally answer_key); the "
                                 f"{name} data is not QA: score whole answers (tokens='answer')")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if retain_model is not None and (retain_model.get_input_embeddings().weight.shape
                                     != original.get_input_embeddings().weight.shape):
        raise ValueError("the retain model's vocabulary differs from the base's: it must be the same architecture "
                         "and tokenizer, trained without the forget rows")

    def score(model, data, tmpl=None):
        return _probabilities(model, tokenizer, data, tmpl or template, batch_size, tokens)

    def mean(values):
        return sum(values) / len(values)

    def answered(name, model, data, tmpl=None):
        """The share of `data` whose greedy answer still contains the answer (`measure`'s `answered`)."""
        if answers:
            report["answered"][name] = measure(model, tokenizer, {"forget": data}, tmpl or template,
                                               answers={"forget"}, batch_size=batch_size)["forget_answered"]

    other = None if relearn_only else _other_template(tokenizer, template)
    paraphrased = not relearn_only and "paraphrased_question" in forget.column_names
    stages = Progress(2 - relearn_only + len(schemes) + adapter + (other is not None) + paraphrased
                      + (relearn_steps != 0) * (1 + (retain is not None) + (related is not None)
                                               + (retain_model is not None)), progress)
    report = {"scores": {}, "recovery": {}, "retain_scores": None, "answered": {} if answers else None,
              "survival": update_survival(original, unlearned, schemes), "distance": distance(original, unlearned),
              "rows": len(forget), "tokens": tokens}
    base_o, base_u = score(original, forget), score(unlearned, forget)
    answered("original", original, forget)
    answered("unlearned", unlearned, forget)
    report["scores"].update(original=mean(base_o), unlearned=mean(base_u))
    if retain is not None:
        report["retain_scores"] = {"original": mean(score(original, retain)),
                                   "unlearned": mean(score(unlearned, retain))}
    stages.step("the base and the unlearned model scored")
    if not relearn_only:  # each set's mean answer NLL, mean(-log probability), along the straight path
        sets = {name: data for name, data in (("forget", forget), ("retain", retain)) if data is not None}
        nll = {name: [] for name in sets}
        for alpha in INTERPOLATION:
            between = (original if alpha == 0 else unlearned if alpha == 1
                       else interpolated_model(original, unlearned, alpha))
            for name, data in sets.items():
                nll[name].append(mean([-math.log(max(v, 1e-45)) for v in score(between, data)]))
        report["interpolation"] = {"alphas": list(INTERPOLATION), **{f"{n}_nll": v for n, v in nll.items()},
                                   **{f"{n}_barrier": barrier(v) for n, v in nll.items()}}
        stages.step("the straight path from the base to the unlearned model")
    quantised_original = {}  # per scheme, the original's scores once quantised
    for scheme in schemes:
        q_o, q_u = quantised_model(original, scheme), quantised_model(unlearned, scheme)
        after_o = quantised_original[scheme] = score(q_o, forget)
        after_u = score(q_u, forget)
        report["scores"][f"original_{scheme}"], report["scores"][scheme] = mean(after_o), mean(after_u)
        report["recovery"][scheme] = recovery(after_o, base_u, after_u)
        answered(scheme, q_u, forget)
        if retain is not None:
            report["retain_scores"][scheme] = mean(score(q_u, retain))
        del q_o, q_u
        stages.step(f"{scheme} quantisation")
    if adapter:
        if "nf4" not in quantised_original:
            quantised_original["nf4"] = score(quantised_model(original, "nf4"), forget)
        after_o = quantised_original["nf4"]
        served = adapter_on_quantised_base(original, unlearned, "nf4")
        after_u = score(served, forget)
        answered("nf4_adapter", served, forget)
        report["scores"]["nf4_adapter"] = mean(after_u)
        report["recovery"]["nf4_adapter"] = recovery(after_o, base_u, after_u)
        stages.step("the adapter over an NF4 base")
    if other is not None:
        after_o, after_u = score(original, forget, other), score(unlearned, forget, other)
        report["scores"].update(original_prompt=mean(after_o), prompt=mean(after_u))
        report["recovery"]["prompt"] = {**recovery(after_o, base_u, after_u), "template": other}
        answered("prompt", unlearned, forget, other)
        stages.step("the other prompt format")
    if paraphrased:
        rephrased = forget.remove_columns("question").rename_column("paraphrased_question", "question")
        after_o, after_u = score(original, rephrased), score(unlearned, rephrased)
        report["scores"].update(original_paraphrase=mean(after_o), paraphrase=mean(after_u))
        report["recovery"]["paraphrase"] = recovery(after_o, base_u, after_u)
        answered("paraphrase", unlearned, rephrased)
        stages.step("paraphrased questions")

    if relearn_steps != 0:
        held, attack = relearning_halves(forget)
        attack_protocol = RELEARN_PROTOCOLS[protocol]
        relearn_batch = attack_protocol.batch_size or batch_size
        relearn_lr = attack_protocol.learning_rate if relearn_lr is None else relearn_lr
        steps = relearn_steps_for(len(attack), relearn_batch, relearn_steps, protocol)
        o_held, u_held = score(original, held), score(unlearned, held)
        report["scores"]["unlearned_held_back"] = mean(u_held)
        answered("unlearned_held_back", unlearned, held)
        runs = {"relearn": attack, "relearn_related": related, "relearn_retain": retain}
        runs = {name: data for name, data in runs.items() if data is not None}
        for name, data in runs.items():
            relearned = relearned_model(unlearned, tokenizer, data, steps, relearn_lr, relearn_batch, template, seed)
            after = score(relearned, held)
            answered(name, relearned, held)
            report["scores"][name] = mean(after)
            report["recovery"][name] = {**recovery(o_held, u_held, after), "steps": steps, "learning_rate": relearn_lr,
                                        "batch_size": relearn_batch, "protocol": protocol,
                                        "rows_trained": len(data), "rows_scored": len(held)}
            del relearned
            stages.step(f"{name}: {steps} step{'s' * (steps != 1)} at lr {relearn_lr:g} on {len(data)} rows")
        if retain_model is not None:
            report["scores"]["retain_model"] = mean(score(retain_model, held))
            relearned = relearned_model(retain_model, tokenizer, attack, steps, relearn_lr, relearn_batch, template,
                                        seed)
            report["scores"]["retain_model_relearn"] = mean(score(relearned, held))
            del relearned
            stages.step("the retain model, relearned the same way")
    scores = report["scores"]
    report["openunlearning"] = openunlearning_robustness(
        scores["unlearned"], scores.get("nf4"), scores.get("unlearned_held_back"), scores.get("relearn"),
        scores.get("retain_model"), scores.get("retain_model_relearn"))
    return report


def _other_template(tokenizer, template: str) -> str | None:
    """The prompt format the run did not use: chat for a plain template (when the tokenizer has one), else plain."""
    from ..data import CHAT
    from ..options import DEFAULT_PROMPT_TEMPLATE

    if template == CHAT:
        return DEFAULT_PROMPT_TEMPLATE
    return CHAT if getattr(tokenizer, "chat_template", None) else None


def format_audit(report: dict) -> str:
    """The audit as a few lines of text."""
    what = "key-token" if report.get("tokens") == "key" else "answer"
    lines = [f"forget {what} probability (mean over {report['rows']} rows): "
             + ", ".join(f"{k} {v:.4g}" for k, v in report["scores"].items())]
    for name, r in report["recovery"].items():
        ci = f" (95% CI {r['ci95'][0]:.3g} to {r['ci95'][1]:.3g})" if r.get("ci95") else ""
        value = (f"undefined ({r.get('undefined', 'unlearning changed nothing')})" if r["recovery"] is None
                 else f"{r['recovery']:.3g}")
        how = (f" ({r['steps']} step{'s' * (r['steps'] != 1)} at lr {r['learning_rate']:g} on {r['rows_trained']} "
               f"rows, scored on {r['rows_scored']} others; {r.get('protocol', 'default')} protocol)"
               if "steps" in r else "")
        lines.append(f"  recovery after {name}: {value}{ci}{how}")
    for scheme, s in report["survival"].items():
        if s["fraction"] is not None:
            lines.append(f"  {scheme}: {s['surviving']} of {s['changed']} changed weights keep a changed quantised "
                         f"value ({s['fraction']:.3g}); ||Q(u) - Q(o)|| / ||u - o|| = {s['norm_fraction']:.3g}")
    if report.get("openunlearning"):
        ou = report["openunlearning"]
        lines.append("open-unlearning robustness of the forget probability (Dorna et al. 2025): "
                     + ", ".join(f"{k} {ou[k]:.3g}" if ou[k] is not None else f"{k} not measured"
                                 for k in ("Q", "R", "robustness"))
                     + (f" ({ou['why']})" if ou["why"] else ""))
    if report.get("distance"):
        d = report["distance"]
        lines.append(f"distance from the base: ||u - o|| = {d['l2']:.4g} ({d['relative'] or 0:.3g} of ||o||), "
                     f"{d['changed']} weights changed")
    if report.get("interpolation"):
        path = report["interpolation"]
        for name in ("forget", "retain"):
            if f"{name}_nll" in path:
                alphas = ", ".join(f"{a:g}" for a in path["alphas"])
                lines.append(f"{name} answer NLL from base to unlearned (alpha {alphas}): "
                             + ", ".join(f"{v:.3g}" for v in path[f"{name}_nll"])
                             + f"; barrier above the straight line {path[f'{name}_barrier']:.3g}")
    if report.get("answered"):
        lines.append("share of questions still answered: " + ", ".join(f"{k} {v:.3g}"
                                                                       for k, v in report["answered"].items()))
    if report.get("limits"):
        broken = report["limits"]["broken"]
        lines.append("recovery limits: " + ("all met" if not broken else "BROKEN: " + "; ".join(broken)))
    if report.get("retain_scores"):
        lines.append("retain answer probability: " + ", ".join(f"{k} {v:.4g}"
                                                              for k, v in report["retain_scores"].items()))
    return "\n".join(lines)
