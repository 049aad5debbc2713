"""The documentation cannot drift from the code: what `docs/conftest.py` (Sybil) does not run itself.

Every code block of `docs/**/*.md` runs as a test through Sybil (see `docs/conftest.py`), the assertions of the Quick
start's script and shell walkthrough included. Here: the README's blocks are the Quick start's (so they are tested
there), every fenced block has a language the tests know, the paths and names the pages cite exist, and the site
builds with `mkdocs build --strict`.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
RUN = {"python", "bash", "yaml", "toml"}  # run by docs/conftest.py
SHOWN = {"text"}                          # output samples and plain text: not code


def blocks(path: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(path.read_text())]


def test_readme_blocks_are_the_quick_starts_so_they_are_tested_there():
    quick_start = blocks(DOCS / "index.md")
    for language, code in blocks(README):
        assert (language, code) in quick_start, f"README block not in docs/index.md:\n{code}"
    readme_python = [code for language, code in blocks(README) if language == "python"]
    assert len(readme_python) == 1 and len(readme_python[0].strip().splitlines()) <= 16


def test_readme_is_one_screen_and_keeps_the_ci_command():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(line for line in ci.splitlines() if "pytest" in line)
    assert test_command.strip() in text, "the README's test command is the one .ci/run runs"
    assert ('python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e ".[test]" && .venv/bin/hf-wagle demo'
            in text)


def test_readme_links_point_to_pages():
    for target in re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", README.read_text()):
        assert (ROOT / target).is_file(), f"README links to {target}, which does not exist"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_code_block_runs_or_is_plain_text(page):
    for language, code in blocks(page):
        assert language in RUN | SHOWN, (f"{page.name}: a ```{language or '(no language)'} block; use one the docs "
                                         f"tests run ({', '.join(sorted(RUN))}) or `text` for output:\n{code[:200]}")


def test_paths_the_pages_cite_exist():
    cited = set()
    for page in [README, *PAGES]:
        cited |= set(re.findall(r"\b((?:tests|benchmarks|examples)/[\w./-]+\.(?:py|yaml))\b", page.read_text()))
    missing = sorted(p for p in cited if not (ROOT / p).is_file())
    assert not missing, f"the docs cite files that do not exist: {missing}"


def test_every_registered_method_and_objective_is_in_its_table():
    from hf_wagle.masking.methods import mask_methods
    from hf_wagle.objectives import OBJECTIVES

    methods = (DOCS / "methods-and-cost.md").read_text()
    objectives = (DOCS / "concepts" / "objectives.md").read_text()
    builtin_methods = [n for n, m in mask_methods().items() if m.score.__module__.startswith("hf_wagle.")]
    builtin_objectives = [n for n, cls in OBJECTIVES.items() if cls.__module__.startswith("hf_wagle.")]
    assert all(f"| `{name}` |" in methods for name in builtin_methods)  # tests register methods of their own
    assert all(f"| `{name}`" in objectives for name in builtin_objectives)


@pytest.mark.slow
def test_site_builds_offline_in_strict_mode(tmp_path):
    """`mkdocs build --strict` (the `docs` extra): broken links, anchors, API paths or nav entries fail it."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "results" / "world_wagle_heatmap.png").exists()
    assert "hf-wagle unlearn" in (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "examples").glob("*.yaml")
                                         if "\nuse_cpu: true" in p.read_text()), ids=lambda p: p.name)
def test_every_example_config_is_one_hf_wagle_unlearn_reads(path):
    """The CPU examples (the GPU ones run in tests/test_cli.py on SmolLM2)."""
    import yaml

    from hf_wagle.cli.parser import command_parser
    from hf_wagle.cli.plugins import COMMANDS

    values = yaml.safe_load(path.read_text())
    script, training = command_parser(COMMANDS["unlearn"]()).parse_mapping(values, source=path.name)
    assert script.forget_file and training.output_dir


def test_the_files_run_first_exist():
    """tests/conftest.py's `_LONGEST_FIRST` names files that exist (a renamed file would silently lose its place)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tests_conftest", ROOT / "tests" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    assert [name for name in conftest._LONGEST_FIRST if not (ROOT / name).is_file()] == []
