"""Shared by the benchmark scripts: peak resident memory of a call, random-init Llama models, random token data, and
the table cell of values over seeds."""

import ctypes
import gc

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM


def _trim():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_extra_bytes(fn):
    """`(result, peak resident bytes above the starting resident size while fn runs)`."""
    _trim()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    start = _status("VmRSS")
    result = fn()
    return result, _status("VmHWM") - start


def make_model(layers: int, vocab: int, hidden: int, intermediate: int, seed: int = 0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                      num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, max_position_embeddings=512,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def make_data(n: int, length: int, vocab: int, seed: int) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=g).tolist()
    return Dataset.from_dict({"input_ids": [torch.randint(0, vocab, (k,), generator=g).tolist() for k in lengths]})


def cell(values) -> str:
    """`mean` of the values that are not None, and `(min to max)` when there are several; `n/a` when none is."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = sum(values) / len(values)
    return f"{mean:.3g}" if len(values) == 1 else f"{mean:.3g} ({min(values):.3g} to {max(values):.3g})"
