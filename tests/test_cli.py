"""The command line starts without the model stack: `--help` and `--version` import neither torch nor transformers."""

import subprocess
import sys

from hf_wagle import __version__


def test_cli_parser_imports_no_torch():
    code = ("import sys, hf_wagle.cli as c; c.build_parser(); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_version_flag(capsys):
    import pytest

    from hf_wagle.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"hf-wagle {__version__}"


def test_unlearn_command_from_yaml_with_flags_winning(trained, world, tmp_path, capsys):
    import json

    import yaml

    from hf_wagle.adapters import verify
    from hf_wagle.cli import main
    from hf_wagle.mask import WeightMask

    model, tokenizer = trained
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    world["forget"].to_json(tmp_path / "forget.jsonl")
    world["retain"].to_json(tmp_path / "retain.jsonl")
    config = {"model_name_or_path": str(tmp_path / "model"), "forget_file": str(tmp_path / "forget.jsonl"),
              "retain_file": str(tmp_path / "retain.jsonl"), "output_dir": str(tmp_path / "out"),
              "objective": "grad_diff", "mask_method": "wagle", "mask_ratio": 0.5, "learning_rate": 5e-3,
              "max_steps": 50, "per_device_train_batch_size": 8, "lora_r": 4, "use_cpu": True, "report_to": "none",
              "save_strategy": "no", "evaluate": True}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert main(["unlearn", "--config", str(tmp_path / "cfg.yaml"), "--max_steps", "4", "--mask_ratio", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "confined to its mask: yes" in out and "forget answer probability" in out
    results = json.loads((tmp_path / "out" / "unlearn_results.json").read_text())
    assert results["steps"] == 4 and results["confined"]  # the flag won over the file's 50 steps
    assert results["evaluation"]["after"]["forget"] < results["evaluation"]["before"]["forget"]
    assert WeightMask.load(tmp_path / "out").metadata["ratio"] == 0.3
    assert verify(tmp_path / "out")["confined"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Results" in card and "| forget |" in card and "LoRA r=4" in card and "hf-wagle verify" in card

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**config, "learnin_rate": 1.0}))
    assert main(["unlearn", "--config", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "unknown keys ['learnin_rate']" in err and len(err.strip().splitlines()) == 1


def test_example_config_for_the_real_model_runs(smollm2, tmp_path, capsys):
    import json
    from pathlib import Path

    from hf_wagle.cli import main

    config = Path(__file__).resolve().parent.parent / "examples" / "unlearn_smollm2.yaml"
    argv = ["unlearn", "--config", str(config), "--model_name_or_path", str(smollm2[2]),
            "--output_dir", str(tmp_path / "out"), "--max_steps", "2"]
    assert main(argv) == 0
    results = json.loads((tmp_path / "out" / "unlearn_results.json").read_text())
    assert results["confined"] and results["steps"] == 2
    assert results["evaluation"]["after"]["forget"] < results["evaluation"]["before"]["forget"]
