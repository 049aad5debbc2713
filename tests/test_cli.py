"""The command line starts without the model stack: `--help` and `--version` import neither torch nor transformers."""

import os
import subprocess
import sys

import pytest

from hf_wagle import __version__


@pytest.mark.slow  # starts another process
def test_cli_parser_imports_no_torch():
    code = ("import sys, hf_wagle.cli as c; c.build_parser(); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow  # starts another process
def test_every_command_help_imports_no_torch():
    """`hf-wagle X --help` of every command but those that parse the unlearn config (`WagleConfig` is a
    `TrainingArguments`): unlearn, compare-masks, plan."""
    code = ("import contextlib, io, sys\n"
            "from hf_wagle.cli import COMMANDS, main\n"
            "for name in [n for n in COMMANDS if n not in ('unlearn', 'compare-masks', 'plan')]:\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
            "        main([name, '--help'])\n"
            "    assert 'usage: hf-wagle ' + name in out.getvalue(), name\n"
            "    assert 'torch' not in sys.modules, name\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_option_has_help_and_its_default_shown():
    import argparse

    from hf_wagle.cli import COMMANDS, build_parser
    from hf_wagle.cli.parser import command_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(COMMANDS)
    for name, parser in sub.choices.items():
        command = COMMANDS[name]()
        if command.parses_dataclasses:  # its own parser: the dataclasses' fields, with their help
            parser = command_parser(command)
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"hf-wagle {name} {action.option_strings[0]} has no help"
                if action.default not in (None, False):
                    assert "default" in formatter._get_help_string(action), (name, action.dest)


def test_version_flag(capsys):
    from hf_wagle.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"hf-wagle {__version__}"


def test_unlearn_command_from_yaml_with_flags_winning(trained, world, tmp_path, capsys):
    import json

    import yaml

    from hf_wagle.cli import main
    from hf_wagle.mask import WeightMask
    from hf_wagle.verify import verify

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
    assert "confined to its mask: yes" in out and "forget_probability" in out and "heldout: 36 of the 180" in out
    results = json.loads((tmp_path / "out" / "unlearn_results.json").read_text())
    assert results["steps"] == 4 and results["confined"]  # the flag won over the file's 50 steps
    evaluation = results["evaluation"]
    assert evaluation["after"]["forget_probability"] < evaluation["before"]["forget_probability"]
    assert {"forget_answered", "heldout_probability", "heldout_rouge", "retain_probability"} <= set(
        evaluation["after"])
    assert "TRAINS ON" in evaluation["sets"]["retain"]
    assert WeightMask.load(tmp_path / "out").metadata["ratio"] == 0.3
    assert verify(tmp_path / "out")["confined"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Results" in card and "| `forget_probability` |" in card and "LoRA r=4" in card
    assert "hf-wagle verify" in card

    # a mask made beforehand by `hf-wagle attribute` is used as it is
    assert main(["attribute", "--model", str(tmp_path / "model"), "--forget", str(tmp_path / "forget.jsonl"),
                 "--retain", str(tmp_path / "retain.jsonl"), "--method", "snip", "--ratio", "0.2",
                 "--out", str(tmp_path / "mask")]) == 0
    assert main(["unlearn", "--config", str(tmp_path / "cfg.yaml"), "--max_steps", "2", "--evaluate", "false",
                 "--mask_dir", str(tmp_path / "mask"), "--output_dir", str(tmp_path / "premade")]) == 0
    premade = WeightMask.load(tmp_path / "premade")
    assert premade.metadata["method"] == "snip" and premade.metadata["ratio"] == 0.2
    card = (tmp_path / "premade" / "README.md").read_text()
    assert "mask:snip" in card and "| mask method | `snip` |" in card  # the card describes the mask used
    capsys.readouterr()

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**config, "learnin_rate": 1.0}))
    assert main(["unlearn", "--config", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "unknown keys ['learnin_rate']" in err and len(err.strip().splitlines()) == 1


def _hub_layout(folder, configs: dict) -> str:
    """A local folder in a Hub data set's layout: `<folder>/<config>.jsonl` per config."""
    folder.mkdir()
    for config, rows in configs.items():
        rows.to_json(folder / f"{config}.jsonl")
    return str(folder)


def _run_example(name, smollm2, tmp_path, data, *extra):
    """An example `hf-wagle unlearn` config as shipped, pointed at SmolLM2 and local data, for two CPU steps."""
    import json
    from pathlib import Path

    from hf_wagle.cli import main

    config = Path(__file__).resolve().parent.parent / "examples" / name
    argv = ["unlearn", "--config", str(config), "--model_name_or_path", str(smollm2[2]),
            "--forget_file", data, "--retain_file", data, "--output_dir", str(tmp_path / "out"), "--max_steps", "2",
            "--bf16", "false", "--use_cpu", "true", "--max_length", "64", "--gradient_accumulation_steps", "1",
            "--per_device_train_batch_size", "4", *extra]
    assert main(argv) == 0
    return json.loads((tmp_path / "out" / "unlearn_results.json").read_text())


def test_tofu_config_reads_hub_configs_and_unlearns_full_parameters(smollm2, tmp_path):
    """examples/tofu_forget10.yaml: forget/retain by Hub config name (forget10, retain90) from a folder in TOFU's
    layout; full-parameter NPO through the mask, verified against the base, evaluated into the card."""
    from hf_wagle.real_model import load_scenario

    scenario = load_scenario("element_symbols")
    data = _hub_layout(tmp_path / "tofu", {"forget10": scenario["forget"].select(range(8)),
                                           "retain90": scenario["retain"].select(range(12))})
    results = _run_example("tofu_forget10.yaml", smollm2, tmp_path, data, "--base_model",
                           "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert results["confined"] and results["steps"] == 2
    assert results["changeable"] == round(0.95 * results["total"])  # the config's mask ratio
    evaluation = results["evaluation"]
    assert evaluation["after"]["forget_probability"] < evaluation["before"]["forget_probability"]
    card = (tmp_path / "out" / "README.md").read_text()
    from huggingface_hub import ModelCard

    meta = ModelCard(card).data
    assert meta.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    values = {(r.dataset_name, r.metric_type): r.metric_value for r in meta.eval_results}
    assert values[("forget data", "forget_probability_after")] == pytest.approx(
        evaluation["after"]["forget_probability"])
    assert values[("heldout data", "heldout_answered_before")] == pytest.approx(
        evaluation["before"]["heldout_answered"])
    assert "confined: yes" in card and "| `q_proj` |" in card and "only through" in card
    # the base is named as what it is: SmolLM2 dequantised from a 4-bit GGUF file, not the Hub model's weights
    assert "dequantised to float32 from the 4-bit GGUF file" in card and "digest `" in card
    import json

    record = json.loads((tmp_path / "out" / "unlearning_record.json").read_text())
    assert record["base_model"]["source"]["hub_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert len(record["base_model"]["source"]["file_sha256"]) == 64


def test_wmdp_config_unlearns_text_corpora(smollm2, tmp_path):
    """examples/wmdp_cyber.yaml: text corpora by config name (cyber-forget-corpus / cyber-retain-corpus)."""
    from datasets import Dataset

    from hf_wagle.real_model import load_scenario

    scenario = load_scenario("element_symbols")

    def corpus(split):
        return Dataset.from_dict({"text": [f"{q} {a}" for q, a in zip(scenario[split]["question"],
                                                                        scenario[split]["answer"])]})

    data = _hub_layout(tmp_path / "wmdp", {"cyber-forget-corpus": corpus("forget"),
                                           "cyber-retain-corpus": corpus("retain")})
    results = _run_example("wmdp_cyber.yaml", smollm2, tmp_path, data, "--use_peft", "true", "--lora_r", "4")
    assert results["confined"] and results["steps"] == 2
    from hf_wagle.mask import WeightMask

    assert WeightMask.load(tmp_path / "out").metadata["ratio"] == 0.6 and results["evaluation"] is None


def test_hub_dataset_names_load_with_config_and_split(monkeypatch):
    """A Hub name goes to `datasets.load_dataset(name, config, split=...)` (the network is the boundary, so it is
    replaced here); without network the error is one line naming the data set."""
    import datasets

    from hf_wagle.cli.common import load_data

    calls = []
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *a, **k: calls.append((a, k)) or datasets.Dataset.from_dict({"text": ["x"]}))
    assert len(load_data("locuslab/TOFU", "forget_file", "forget10", "train")) == 1
    assert calls == [(("locuslab/TOFU", "forget10"), {"split": "train"})]
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"--forget_file org/absent \(config 'c', split 'test'\): cannot load it"):
        load_data("org/absent", "forget_file", "c", "test")


@pytest.mark.slow  # starts another process
def test_importing_peft_through_hf_wagle_prints_no_kernel_lookup_noise():
    """bitsandbytes' optional kernel lookup (on CPUs with AVX512-BF16, as here) is not the user's business."""
    proc = subprocess.run([sys.executable, "-c", "import hf_wagle, peft, bitsandbytes"], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 0 and "gemm_4bit_forward" not in proc.stderr
    assert "publisher trust" not in proc.stderr


def test_wrapping_with_peft_does_not_raise_the_gradient_checkpointing_deprecation(trained, world, tmp_path):
    """PEFT reads `is_gradient_checkpointing` when it wraps a model; transformers 5 deprecates it. Not the user's
    business around hf_wagle's own wraps (their own use of the attribute still warns)."""
    import copy
    import warnings

    from peft import LoraConfig

    from hf_wagle import WagleTrainer

    from support import small_args

    model, tokenizer = trained
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        WagleTrainer(model=copy.deepcopy(model), args=small_args(tmp_path), forget_dataset=world["forget"],
                     retain_dataset=world["retain"], processing_class=tokenizer,
                     peft_config=LoraConfig(r=4, target_modules="all-linear"))
        with warnings.catch_warnings(record=True) as own:
            warnings.simplefilter("always")
            model.is_gradient_checkpointing  # noqa: B018 - the user's own use
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    assert [w for w in own if "is_gradient_checkpointing" in str(w.message)]


def _command_parsers():
    import argparse

    from hf_wagle.cli import COMMANDS, build_parser
    from hf_wagle.cli.parser import command_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, cls in COMMANDS.items():
        command = cls()
        yield name, command_parser(command) if command.parses_dataclasses else sub.choices[name]


def test_one_vocabulary_across_commands():
    """A name means one thing in every command; a thing the unlearn config names (the model, the data, the mask) is
    taken under its canonical name and its short ones, each with `_` or `-`, wherever a command takes it."""
    from hf_wagle.cli.common import VOCABULARY, concept_of, spellings

    meaning, seen = {}, set()
    for command, parser in _command_parsers():
        for action in parser._actions:
            if not action.option_strings or action.dest in ("help", "help_all") or not action.help:
                continue
            concept = concept_of(action)
            names = [o[2:] for o in action.option_strings if o.startswith("--")]
            if concept is not None:
                seen.add(concept)
                names += [concept, *VOCABULARY[concept]]
            for name in names:
                for option in spellings(name):
                    held = parser._option_string_actions.get(option)
                    if held is None:  # left out: it begins one other option's name, and is refused, not misread
                        others = {parser._option_string_actions[o].dest for o in parser._option_string_actions
                                  if o.startswith(option)}
                        assert len(others) == 1, (command, option, others)
                        continue
                    assert held is action, (command, option, action.dest)
                meaning.setdefault(name.replace("-", "_"), {}).setdefault(concept or action.dest, set()).add(command)
    clashes = {name: uses for name, uses in meaning.items() if len(uses) > 1}
    assert not clashes, clashes
    assert seen == set(VOCABULARY)  # every entry is used by some command
    assert {"unlearn", "attribute", "audit", "verify", "export", "evaluate"} <= meaning["model"][
        "model_name_or_path"]
    from hf_wagle.cli.parser import parse_command
    from hf_wagle.cli.plugins import COMMANDS

    a = parse_command(COMMANDS["attribute"](), ["--model_name_or_path", "m", "--out", "o", "--forget_file", "f",
                                                 "--mask_method", "wagle", "--mask-ratio", "0.2"])
    assert (a.script.model, a.script.forget, a.mask.method, a.mask.ratio) == ("m", "f", "wagle", 0.2)
    u = parse_command(COMMANDS["unlearn"](), ["--model", "m", "--forget", "f", "--retain", "r", "--method", "random",
                                             "--ratio", "0.3", "--output_dir", "o"])
    assert (u.script.model_name_or_path, u.script.retain_file, u.training.mask_method, u.training.mask_ratio) == (
        "m", "r", "random", 0.3)
    for argv in (["--output_d", "o"], ["--base", "org/name"]):  # exact names: no abbreviation of --base_model
        with pytest.raises(ValueError, match="unrecognized arguments"):
            parse_command(COMMANDS["unlearn"](), ["--model", "m", "--forget", "f", "--retain", "r", *argv])
    with pytest.raises(ValueError, match="unrecognized arguments"):  # not --mask_method, which compare-masks ignores
        parse_command(COMMANDS["compare-masks"](), ["--model", "m", "--forget", "f", "--retain", "r", "--out", "o",
                                                    "--method", "wagle"])


def test_help_starts_with_the_commands_own_options(capsys):
    """`--help` of every command shows its own options first and within its first screen; the TrainingArguments
    fields of the commands that read the unlearn config are left to `--help-all`."""
    from hf_wagle.cli import COMMANDS, main

    for name in COMMANDS:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        options = text[text.index("\n\n", text.index("usage:")):]
        first = [line.split()[0] for line in options.splitlines() if line.startswith("  -")][1:4]  # after -h
        assert first, name
        if name in ("unlearn", "compare-masks", "plan"):
            assert "--gradient_checkpointing" not in text and "--help-all" in text
            own = {"unlearn": "--model_name_or_path", "compare-masks": "--out", "plan": "--ratios"}[name]
            assert own in first, (name, first)
            with pytest.raises(SystemExit):
                main([name, "--help-all"])
            assert "--gradient_checkpointing" in capsys.readouterr().out
        assert text.count("\n") < 200, (name, text.count("\n"))
