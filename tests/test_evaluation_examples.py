"""The example scripts' --dry-run: the real-benchmark code path, on the offline world."""

import json
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def world_dir(trained, tmp_path):
    model, tokenizer = trained
    path = tmp_path / "world_model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def examples(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield
    for name in ("_common", "unlearn_tofu", "unlearn_wmdp"):
        sys.modules.pop(name, None)


def test_unlearn_tofu_dry_run(examples, world_dir, tmp_path, world):
    import unlearn_tofu

    out = tmp_path / "tofu"
    result = unlearn_tofu.main(["--dry-run", "--world-cache", str(world_dir), "--output-dir", str(out)])
    saved = json.loads((out / "results.json").read_text())
    before, after = (saved["runs"][k]["report"]["table"] for k in ("before", "after"))
    assert before == result["before"]["table"]
    assert after["forget"]["probability"] < 0.7 * before["forget"]["probability"]
    assert (out / "adapter_config.json").exists() or (out / "model.safetensors").exists()


def test_unlearn_wmdp_dry_run_rmu(examples, world_dir, tmp_path):
    import unlearn_wmdp

    out = tmp_path / "wmdp"
    result = unlearn_wmdp.main(["--dry-run", "--world-cache", str(world_dir), "--output-dir", str(out),
                                "--objective", "rmu"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["objective"] == "rmu" and saved["after"] == result["after"]
    assert set(saved["before"]) == {"wmdp_world", "utility_accuracy"}
