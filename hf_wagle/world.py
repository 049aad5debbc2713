"""A small fictitious world to memorise and then forget, fully offline.

`make_world` writes a seeded set of invented people, each with a handful of facts phrased as question/answer
pairs in the TOFU schema (`question`, `answer`, `paraphrased_answer`, `perturbed_answer`). Perturbed answers keep the
paraphrased answer's wording and change only the fact, so a truth ratio compares knowledge, not wording.

`pretrained_world_model` trains a word-level tokenizer and a small Llama-style model from scratch until it has
memorised every answer, and caches both. Tests, the demo and the benchmarks use it as a real
memorise-then-forget experiment.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from datasets import Dataset

_SYLLABLES = [
    "al", "bar", "cor", "dun", "el", "fen", "gar", "hol", "ith", "jor", "kel", "lum", "mor", "nal", "or", "pel",
    "quin", "ros", "sil", "tor", "ul", "ven", "wyn", "xan", "yor", "zel", "bri", "dra", "fio", "gwe", "ka", "lio",
]
_PROFESSIONS = [
    "baker", "pilot", "sculptor", "geologist", "violinist", "carpenter", "librarian", "surgeon", "botanist", "weaver",
    "cartographer", "chemist", "tailor", "astronomer", "potter", "architect", "fisher", "jeweler",
]
_COLOURS = ["red", "blue", "green", "amber", "violet", "silver", "crimson", "teal", "ochre", "indigo", "white", "black"]
_ANIMALS = ["owl", "fox", "heron", "badger", "lynx", "otter", "raven", "stag", "hare", "wolf", "crane", "seal"]

# (fact, question, answer, paraphrased answer); `{name}` is the person, `{v}` the fact's value.
_FACTS = [
    ("city", "Where was {name} born ?", "{name} was born in {v} .", "the birthplace of {name} is {v} ."),
    ("job", "What does {name} do for a living ?", "{name} works as a {v} .", "by trade {name} is a {v} ."),
    ("year", "When was {name} born ?", "{name} was born in {v} .", "the birth year of {name} is {v} ."),
    ("colour", "What is the favourite colour of {name} ?", "{name} likes {v} best .",
     "the colour {name} prefers is {v} ."),
    ("animal", "Which animal does {name} keep ?", "{name} keeps a {v} .", "the pet of {name} is a {v} ."),
]


def _invent(rng: random.Random, n_syllables: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(n_syllables)).capitalize()


@dataclass(frozen=True)
class WorldSpec:
    """Everything that determines a world; its hash names the cached model."""

    num_people: int = 40
    forget_fraction: float = 0.1
    num_perturbed: int = 3
    seed: int = 0


def make_world(spec: WorldSpec = WorldSpec()) -> dict[str, Dataset]:
    """Return `{"forget": Dataset, "retain": Dataset, "all": Dataset}` for `spec`.

    The forget split holds every fact of the first `round(forget_fraction * num_people)` people (in a seeded order).
    """
    rng = random.Random(spec.seed)
    names: list[str] = []
    while len(names) < spec.num_people:
        name = f"{_invent(rng, 2)} {_invent(rng, 2)}"
        if name not in names:
            names.append(name)
    cities = sorted({_invent(rng, 3) for _ in range(3 * len(_PROFESSIONS))})
    values = {
        "city": cities,
        "job": _PROFESSIONS,
        "year": [str(y) for y in range(1901, 2000)],
        "colour": _COLOURS,
        "animal": _ANIMALS,
    }
    n_forget = max(1, round(spec.forget_fraction * spec.num_people))
    rows = []
    for i, name in enumerate(names):
        for fact, question, answer, paraphrase in _FACTS:
            v = rng.choice(values[fact])
            wrong = rng.sample([x for x in values[fact] if x != v], spec.num_perturbed)
            rows.append({
                "person": name,
                "fact": fact,
                "question": question.format(name=name),
                "answer": answer.format(name=name, v=v),
                "paraphrased_answer": paraphrase.format(name=name, v=v),
                "perturbed_answer": [paraphrase.format(name=name, v=w) for w in wrong],
                "split": "forget" if i < n_forget else "retain",
            })
    everything = Dataset.from_list(rows)
    n = n_forget * len(_FACTS)
    return {"forget": everything.select(range(n)), "retain": everything.select(range(n, len(rows))), "all": everything}


def train_world_tokenizer(dataset: Dataset):
    """A word-level tokenizer (whitespace/punctuation split) over every text of the world, with BOS/EOS/PAD."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    from .objectives import DEFAULT_REFUSALS

    texts = ["Question: Answer:", *DEFAULT_REFUSALS]
    for r in dataset:
        texts += [r["question"], r["answer"], r["paraphrased_answer"], *r["perturbed_answer"]]
    trainer = trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<s>", "</s>"])
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@dataclass(frozen=True)
class ModelSpec:
    hidden_size: int = 64
    intermediate_size: int = 160
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    steps: int = 250
    learning_rate: float = 3e-3
    seed: int = 0


def _cache_root() -> Path:
    return Path(os.environ.get("HF_WAGLE_CACHE", Path.home() / ".cache" / "hf_wagle")) / "worlds"


def memorise(model, tokenizer, dataset: Dataset, spec: ModelSpec, prompt_template: str, log=None) -> None:
    """Full-batch AdamW on the answer NLL of every QA pair until the model has memorised them."""
    from .data import collate, tokenize_dataset

    batch = collate(list(tokenize_dataset(dataset, tokenizer, prompt_template)), tokenizer.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.learning_rate, total_steps=spec.steps)
    model.train()
    for step in range(spec.steps):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if log is not None and (step + 1) % 100 == 0:
            log(f"memorise step {step + 1}/{spec.steps}: loss {out.loss.item():.4f}")
    model.eval()


def world_model_dir(world: WorldSpec = WorldSpec(), spec: ModelSpec = ModelSpec(),
                    prompt_template: str = "Question: {question}\nAnswer:") -> Path:
    """The cache folder of `pretrained_world_model`'s model: named by a hash of both specs and the template."""
    key = hashlib.sha256(
        json.dumps([asdict(world), asdict(spec), prompt_template, 2], sort_keys=True).encode()
    ).hexdigest()[:16]
    return _cache_root() / key


def pretrained_world_model(
    world: WorldSpec = WorldSpec(),
    spec: ModelSpec = ModelSpec(),
    prompt_template: str = "Question: {question}\nAnswer:",
    cache_dir: str | os.PathLike | None = None,
    log=None,
):
    """Return `(model, tokenizer, path)`: a small Llama trained from scratch on `make_world(world)`, cached on disk.

    The cache key is a hash of both specs and the prompt template; `HF_WAGLE_CACHE` moves the cache.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = Path(cache_dir) if cache_dir is not None else world_model_dir(world, spec, prompt_template)
    if (path / "model.safetensors").exists():
        return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path), path
    data = make_world(world)
    tokenizer = train_world_tokenizer(data["all"])
    torch.manual_seed(spec.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_attention_heads,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    memorise(model, tokenizer, data["all"], spec, prompt_template, log=log)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, path)
    except OSError:  # another process cached it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path), path
