"""Every code block of the documentation is a test, run by Sybil (https://sybil.readthedocs.io).

Each page under `docs/` (and its code blocks, in order, sharing one namespace) is collected by pytest; the pages of
`docs/extending/` are run by `tests/test_extending.py` instead, which writes each extension out as its own file:

* ```` ```python ```` blocks run as they stand;
* ```` ```bash ```` blocks run with `bash -euo pipefail`, offline (`HF_HUB_OFFLINE=1`), with this environment's
  `python` and `hf-wagle` first on `PATH`; their output is left in the page's namespace as `bash_stdout` and
  `bash_stderr` for a following block to check;
* ```` ```yaml ```` blocks must parse; one whose first line is a comment naming a file (`# unlearn.yaml`) is written
  to that file for the blocks after it, and one with `model_name_or_path` is checked against the keys
  `hf-wagle unlearn` accepts (an unknown key or a bad value fails the page);
* ```` ```toml ```` blocks must parse;
* ```` ```text ```` blocks are output samples and tables: not run.

A page runs in a temporary folder of its own (with `examples/` linked in), so what its blocks write stays there.
Assertions that should not clutter the page go in an invisible block after the one they check
(`<!-- invisible-code-block: python ... -->`). A block that cannot run here (a real Hub upload, a launch on 8 GPUs,
an install from the package registry) is marked `<!-- skip: next "the reason" -->`.

A page is marked `slow` (deselect with `pytest -m "not slow"`) when one of its blocks starts another process
(every bash block) or uses the real SmolLM2 model: its blocks share one namespace, so the page runs whole in one
tier.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported, which reads it once
if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers share the cores: one torch thread each, before torch
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # is imported (and in the processes a test starts)
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from sybil import Sybil  # noqa: E402
from sybil.evaluators.skip import Skipper  # noqa: E402
from sybil.integration.pytest import SybilItem  # noqa: E402
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHELL_TIMEOUT = 1800  # seconds; the walkthrough on SmolLM2 takes about 3.5 minutes on one test worker
_NAMES_FILE = re.compile(r"#\s*(\S+\.ya?ml)\b")


def run_bash(example) -> str | None:
    """Run a bash block in the page's folder; a non-zero exit status fails it with the end of stderr."""
    namespace = example.namespace
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **namespace.get("bash_env", {})}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", example.parsed], cwd=os.getcwd(), env=env,
                          capture_output=True, text=True, timeout=SHELL_TIMEOUT)
    namespace["bash_stdout"], namespace["bash_stderr"] = proc.stdout, proc.stderr
    if proc.returncode != 0:
        return f"bash exited with status {proc.returncode}\n--- stdout (end)\n{proc.stdout[-2000:]}\n" \
               f"--- stderr (end)\n{proc.stderr[-3000:]}"
    return None


def check_yaml(example) -> str | None:
    """Parse a YAML block; write it to the file its first line names; check an `hf-wagle unlearn` config's keys."""
    import yaml

    text = example.parsed
    values = yaml.safe_load(text)
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    named = _NAMES_FILE.fullmatch(first.strip())
    if named:
        Path(named.group(1)).write_text(text)
    if isinstance(values, dict) and "model_name_or_path" in values:
        from hf_wagle.cli.parser import command_parser
        from hf_wagle.cli.plugins import COMMANDS

        values = {k: v for k, v in values.items() if k != "plugins"}
        command_parser(COMMANDS["unlearn"]()).parse_mapping(values, source="this YAML block")
    return None


def check_toml(example) -> str | None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    tomllib.loads(example.parsed)
    return None


def _enter_folder(namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="hf_wagle_docs_"))
    (folder / "examples").symlink_to(ROOT / "examples")
    namespace["_docs_folder"], namespace["_docs_previous_cwd"] = folder, os.getcwd()
    os.chdir(folder)


def _leave_folder(namespace) -> None:
    os.chdir(namespace.pop("_docs_previous_cwd"))
    shutil.rmtree(namespace.pop("_docs_folder"), ignore_errors=True)


pytest_collect_file = Sybil(
    parsers=[
        PythonCodeBlockParser(),
        CodeBlockParser("bash", run_bash),
        CodeBlockParser("yaml", check_yaml),
        CodeBlockParser("toml", check_toml),
        SkipParser(),
    ],
    patterns=["*.md"],
    excludes=["extending/*.md"],  # run by tests/test_extending.py, each extension written out as its own file
    setup=_enter_folder,
    teardown=_leave_folder,
).pytest()


def _is_slow(item: SybilItem) -> bool:
    if item.example.region.evaluator is run_bash:
        return True
    return "smollm2" in str(item.example.parsed).lower()


def pytest_collection_modifyitems(config, items) -> None:
    """Mark `slow` every block of a page that has a block that starts a process or uses SmolLM2: a page's blocks
    share one namespace, so a page runs whole in one tier (`-m slow` and `-m "not slow"` both pass)."""
    slow_pages, skip_next = set(), {}
    pages = [item for item in items if isinstance(item, SybilItem)]
    for item in pages:
        page = item.example.path
        if isinstance(item.example.region.evaluator, Skipper):
            action, reason = item.example.parsed
            skip_next[page] = action == "next" and bool(reason)
        elif not skip_next.pop(page, False) and _is_slow(item):
            slow_pages.add(page)
    for item in pages:
        if item.example.path in slow_pages:
            item.add_marker(pytest.mark.slow)
