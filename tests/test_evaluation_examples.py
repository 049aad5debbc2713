"""The example scripts' --dry-run: the real-benchmark code path, on SmolLM2-135M-Instruct and real facts."""

import json
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def examples(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield
    for name in ("_common", "unlearn_tofu", "unlearn_wmdp"):
        sys.modules.pop(name, None)


def test_unlearn_tofu_dry_run(examples, smollm2, tmp_path):
    import unlearn_tofu

    out = tmp_path / "tofu"
    result = unlearn_tofu.main(["--dry-run", "--model-dir", str(smollm2[2]), "--output-dir", str(out)])
    saved = json.loads((out / "results.json").read_text())
    before, after = (saved["runs"][k]["report"]["table"] for k in ("before", "after"))
    assert before == result["before"]["table"]
    assert after["forget"]["probability"] < 0.7 * before["forget"]["probability"]
    assert (out / "adapter_config.json").exists() or (out / "model.safetensors").exists()


def test_unlearn_wmdp_dry_run_rmu(examples, smollm2, tmp_path):
    import unlearn_wmdp

    out = tmp_path / "wmdp"
    result = unlearn_wmdp.main(["--dry-run", "--model-dir", str(smollm2[2]), "--output-dir", str(out),
                                "--objective", "rmu"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["objective"] == "rmu" and saved["after"] == result["after"]
    assert set(saved["before"]) == {"wmdp_elements", "utility_accuracy"}
    assert saved["before"]["wmdp_elements"] >= 0.5  # cloze scoring: well above chance (0.25) before unlearning
