"""The benchmark registry: the contract's example registered from a file outside the package and run end to end, the
one result type, and registration without torch."""
import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest

import hf_wagle.evaluation
from hf_wagle.evaluation import (
    BENCHMARKS,
    BenchmarkResult,
    answer_metrics,
    register_benchmark,
    run_benchmark,
    summarise,
)


def _docstring_example() -> str:
    doc = hf_wagle.evaluation.__doc__
    block = doc.split("Adding a benchmark is one file.", 1)[1].split("\n\n", 1)[1].split("\nOnce the file is", 1)[0]
    return textwrap.dedent(block)


@pytest.mark.slow  # starts another process
def test_registry_names_import_without_torch():
    code = ("import sys; from hf_wagle.evaluation.benchmarks import BENCHMARKS; "
            "from hf_wagle.evaluation import register_benchmark, BenchmarkResult; "
            "assert list(BENCHMARKS) == ['tofu', 'wmdp', 'muse', 'offline'], list(BENCHMARKS); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_documented_example_runs_end_to_end(trained, world, tmp_path):
    model, tokenizer = trained
    plugin = tmp_path / "qa_folder_benchmark.py"
    plugin.write_text(_docstring_example())
    for split in ("forget", "retain"):
        rows = world[split].select(range(5))
        (tmp_path / f"{split}.jsonl").write_text(
            "".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n" for r in rows))
    spec = importlib.util.spec_from_file_location("qa_folder_benchmark", plugin)
    try:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        assert "qa_folder" in BENCHMARKS and BENCHMARKS["qa_folder"].description.startswith("Answer probability")
        result = run_benchmark("qa_folder", model, tokenizer, data=str(tmp_path), limit=4, batch_size=2)
    finally:
        BENCHMARKS.pop("qa_folder", None)
    assert isinstance(result, BenchmarkResult) and result.benchmark == "qa_folder"
    expected = {split: summarise(answer_metrics(model, tokenizer, world[split].select(range(4))))["probability"]
                for split in ("forget", "retain")}
    assert result.forget == pytest.approx(expected["forget"], rel=1e-5)
    assert result["summary"]["utility"] == pytest.approx(expected["retain"], rel=1e-5)
    data = json.loads(json.dumps(result.to_dict()))
    assert list(data) == ["benchmark", "probability", "summary"]
    assert data["summary"]["forget_label"] == "forget probability"


def test_offline_keeps_its_result_shape(trained):
    model, tokenizer = trained
    result = run_benchmark("offline", model, tokenizer, limit=2, max_new_tokens=4, batch_size=2)
    assert list(result.to_dict()) == ["benchmark", "report", "summary"]
    assert result["summary"] == {"forget": result["report"]["table"]["forget"]["probability"],
                                 "forget_label": "forget probability",
                                 "utility": result["report"]["model_utility_partial"], "utility_label": "model utility"}


def test_registration_and_results_are_checked():
    with pytest.raises(ValueError, match="already registered"):
        register_benchmark("tofu")
    with pytest.raises(ValueError, match="must be one of"):
        run_benchmark("nosuch", None, None)
    with pytest.raises(ValueError, match="summary"):
        BenchmarkResult(forget=0.0, forget_label="f", utility=None, utility_label="u", details={"summary": 1})

    @register_benchmark("returns_a_dict")
    def returns_a_dict(model, tokenizer, args):
        return {"summary": {}}

    try:
        with pytest.raises(TypeError, match="not a BenchmarkResult"):
            run_benchmark("returns_a_dict", None, None)
    finally:
        BENCHMARKS.pop("returns_a_dict")
