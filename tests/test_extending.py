"""The "Extending hf_wagle" pages run as written: each extension is written out as its own file, outside the
package, and used end to end from Python, YAML and the command line, on the offline world model.

Sybil reads the pages' code blocks. A block whose first line is `# NAME.py` or `# NAME.yaml` is a file the page
asks the reader to write; it is written into a fresh folder. Other Python blocks run there, with `MODEL` (a model
folder) in their namespace; shell blocks run there in bash, with `$MODEL` set and the package's `hf-wagle` first on
`PATH`. `forget.jsonl` and `retain.jsonl` are a slice of the world's forget and retain sets.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser

from hf_wagle.cli import COMMANDS
from hf_wagle.evaluation import BENCHMARKS
from hf_wagle.formats import FORMATS
from hf_wagle.masking import MASK_METHODS
from hf_wagle.objectives import OBJECTIVES

PAGES = Path(__file__).resolve().parent.parent / "docs" / "extending"
FILE = re.compile(r"#\s*([\w.-]+\.(?:py|yaml))\s*\n")


def _write_file(example) -> bool:
    found = FILE.match(example.parsed)
    if found:
        (example.namespace["dir"] / found.group(1)).write_text(example.parsed)
    return bool(found)


def _python(example):
    if _write_file(example):
        return
    cwd = os.getcwd()
    os.chdir(example.namespace["dir"])
    sys.path.insert(0, str(example.namespace["dir"]))
    try:
        exec(compile(example.parsed, str(example.path), "exec"), example.namespace)
    finally:
        sys.path.remove(str(example.namespace["dir"]))
        os.chdir(cwd)


def _bash(example):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MODEL": example.namespace["MODEL"], "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", example.parsed], cwd=example.namespace["dir"], env=env,
                          capture_output=True, text=True, timeout=600)
    example.namespace.setdefault("stdout", []).append(proc.stdout)
    assert proc.returncode == 0, f"{example.path}:{example.line}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def _ignore(example):
    _write_file(example)  # a config file is written; a toml fragment is only shown


SYBIL = Sybil(parsers=[CodeBlockParser("python", _python), CodeBlockParser("bash", _bash),
                       CodeBlockParser("yaml", _ignore), CodeBlockParser("toml", _ignore)])


@pytest.fixture
def run_page(trained, world, tmp_path, monkeypatch):
    """Run one page's blocks in order in `tmp_path`; returns the page's namespace."""
    monkeypatch.delitem(sys.modules, "floored_gradient", raising=False)
    path = trained_path()
    world["forget"].select(range(16)).to_json(tmp_path / "forget.jsonl")
    world["retain"].select(range(32)).to_json(tmp_path / "retain.jsonl")

    def run(page: str) -> dict:
        document = SYBIL.parse(PAGES / page)
        document.namespace.update(dir=tmp_path, MODEL=str(path))
        for example in document.examples():
            example.evaluate()
        return document.namespace

    return run


def trained_path() -> Path:
    from hf_wagle.world import pretrained_world_model

    return pretrained_world_model(cache_dir=os.environ.get("HF_WAGLE_TEST_MODEL"))[2]


def test_every_page_block_is_run_or_written():
    """No page has a code block of a language the runner would silently skip."""
    for page in PAGES.glob("*.md"):
        languages = set(re.findall(r"^```(\w*)", page.read_text(), re.M)) - {""}
        assert languages <= {"python", "bash", "yaml", "toml", "text"}, (page.name, languages)


@pytest.mark.slow  # starts hf-wagle processes
def test_a_mask_method_with_an_option_of_its_own(run_page, tmp_path):
    from hf_wagle import WeightMask

    try:
        ns = run_page("mask_methods.md")
    finally:
        MASK_METHODS.pop("floored_gradient", None)
    for folder in ("mask_floored", "unlearned_floored"):
        meta = WeightMask.load(tmp_path / folder).metadata
        assert meta["method"] == "floored_gradient" and meta["options"] == {"floor": 0.02}, folder
    assert ns["trainer"].mask.metadata["options"] == {"floor": 0.02}
    assert "confined to its mask: yes" in ns["stdout"][-1]


@pytest.mark.slow  # starts hf-wagle processes
def test_an_objective_with_a_hyperparameter_of_its_own(run_page, tmp_path):
    import json

    try:
        run_page("objectives.md")
    finally:
        OBJECTIVES.pop("capped_grad_diff", None)
    results = json.loads((tmp_path / "unlearned_capped" / "unlearn_results.json").read_text())
    assert results["confined"] and results["steps"] == 3
    card = (tmp_path / "unlearned_capped" / "README.md").read_text()
    assert "objective:capped_grad_diff" in card and "cap" in card


@pytest.mark.slow  # starts hf-wagle processes
def test_a_benchmark(run_page, tmp_path):
    import json

    try:
        run_page("benchmarks.md")
    finally:
        BENCHMARKS.pop("answer_recall", None)
    result = json.loads((tmp_path / "recall.json").read_text())
    summary = result["runs"]["before"]["summary"]
    assert summary["forget_label"] == "forget answer recall" and 0 <= summary["forget"] <= 1
    assert summary["forget"] > 0.5  # the world model memorised its forget answers
    assert (tmp_path / "recall.png").exists()


@pytest.mark.slow  # starts hf-wagle processes
def test_a_command(run_page):
    try:
        ns = run_page("commands.md")
    finally:
        COMMANDS.pop("mask-overlap", None)
    found = re.search(r"Jaccard index (\d\.\d+)", ns["stdout"][-1])
    assert found and 0 < float(found.group(1)) < 1


@pytest.mark.slow  # starts hf-wagle processes
def test_a_format(run_page, tmp_path):
    try:
        ns = run_page("formats.md")
    finally:
        FORMATS.pop("exact_lora", None)
    out = ns["stdout"][-1]
    assert "relative error of the change 0 " in out and "exported: confined to its mask: NO" in out
    assert "verify: exit 1" in out
