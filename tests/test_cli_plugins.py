"""The command line finds a user's extensions: `--plugins` (module names or .py files), `plugins:` in a YAML
config, the `hf_wagle.plugins` entry points; and a plugin adds a command with `register_command`."""

import json
import textwrap
from importlib.metadata import EntryPoint

import pytest
import yaml

from hf_wagle import compute_mask
from hf_wagle.cli import COMMANDS, main
from hf_wagle.cli.plugins import load_plugin
from hf_wagle.masking import MASK_METHODS
from hf_wagle.objectives import OBJECTIVES

METHOD_PLUGIN = textwrap.dedent('''
    """A mask method with an option of its own, and an objective with a hyperparameter of its own."""
    from dataclasses import dataclass, field

    from hf_wagle import register_mask_method
    from hf_wagle.objectives import Objective, register_objective, sequence_nll

    SEEN = []


    @dataclass
    class FloorOptions:
        floor: float = field(default=0.0, metadata={"help": "scores below this count as 0"})


    @register_mask_method("plugin_floored", needs="none", options=FloorOptions)
    def floored(param, grad_forget=None, grad_retain=None, floor=0.0, **_):
        import torch

        SEEN.append(("floor", floor))
        s = param.detach().abs().float()
        return torch.where(s >= floor, s, torch.zeros_like(s))


    @dataclass
    class CapArgs:
        cap: float = 5.0


    @register_objective("plugin_capped", args=CapArgs)
    class Capped(Objective):
        def forget_loss(self, trainer, model, inputs):
            SEEN.append(("cap", self.args.cap))
            out = sequence_nll(model, inputs["forget"])
            return -out.token_mean.clamp(max=self.args.cap), {"forget_nll": out.token_mean.detach()}
    ''')


@pytest.fixture
def method_plugin(tmp_path):
    path = tmp_path / "my_unlearning.py"
    path.write_text(METHOD_PLUGIN)
    yield path
    MASK_METHODS.pop("plugin_floored", None)
    OBJECTIVES.pop("plugin_capped", None)


@pytest.fixture
def saved_model(trained, tmp_path):
    model, tokenizer = trained
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return model, str(tmp_path / "model")


def test_attribute_uses_a_mask_method_and_its_option_from_a_plugin_file(method_plugin, saved_model, tmp_path,
                                                                         capsys):
    model, folder = saved_model
    args = ["attribute", "--model", folder, "--method", "plugin_floored", "--ratio", "0.3", "--options", "floor=0.05"]
    assert main(args + ["--out", str(tmp_path / "none")]) == 2
    assert "unknown mask method 'plugin_floored'" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "flag"), "--plugins", str(method_plugin)]) == 0
    module = load_plugin(str(method_plugin))  # loaded once: the same module
    assert set(module.SEEN) == {("floor", 0.05)}
    want = compute_mask(model, None, None, method="plugin_floored", ratio=0.3, floor=0.05, progress=False)
    from hf_wagle.mask import WeightMask

    flag = WeightMask.load(tmp_path / "flag", model=model)
    assert flag == want and flag.metadata["method"] == "plugin_floored" and flag.metadata["options"] == {"floor": 0.05}
    assert want != compute_mask(model, None, None, method="plugin_floored", ratio=0.3, progress=False)

    # the same from a YAML file that names the plugin; a flag still wins over the file
    (tmp_path / "attr.yaml").write_text(yaml.safe_dump({
        "plugins": [str(method_plugin)], "model": folder, "method": "plugin_floored", "ratio": 0.9,
        "options": {"floor": 0.05}, "out": str(tmp_path / "yaml")}))
    assert main(["attribute", "--config", str(tmp_path / "attr.yaml"), "--ratio", "0.3"]) == 0
    assert WeightMask.load(tmp_path / "yaml", model=model) == want
    capsys.readouterr()
    assert main(args[:-1] + ["floor=0.05,celing=1", "--out", str(tmp_path / "bad")]) == 2
    assert "no option 'celing' (its options: floor)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_unlearn_loads_the_plugins_its_yaml_names_before_checking_the_config(method_plugin, saved_model, world,
                                                                            tmp_path, capsys):
    from hf_wagle.mask import WeightMask

    _, folder = saved_model
    world["forget"].to_json(tmp_path / "forget.jsonl")
    world["retain"].to_json(tmp_path / "retain.jsonl")
    config = {"plugins": [str(method_plugin)], "model_name_or_path": folder,
              "forget_file": str(tmp_path / "forget.jsonl"), "retain_file": str(tmp_path / "retain.jsonl"),
              "output_dir": str(tmp_path / "out"), "objective": "plugin_capped", "objective_args": {"cap": 0.001},
              "mask_method": "plugin_floored", "mask_ratio": 0.5, "mask_options": {"floor": 0.01},
              "max_steps": 2, "per_device_train_batch_size": 4, "lora_r": 4, "use_cpu": True, "report_to": "none",
              "save_strategy": "no"}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    assert main(["unlearn", "--config", str(tmp_path / "cfg.yaml")]) == 0
    module = load_plugin(str(method_plugin))
    assert ("floor", 0.01) in module.SEEN and ("cap", 0.001) in module.SEEN
    assert {k for k, _ in module.SEEN} == {"floor", "cap"} and {v for k, v in module.SEEN if k == "cap"} == {0.001}
    mask = WeightMask.load(tmp_path / "out")
    assert mask.metadata["method"] == "plugin_floored" and mask.metadata["options"] == {"floor": 0.01}
    assert json.loads((tmp_path / "out" / "unlearn_results.json").read_text())["confined"]

    capsys.readouterr()  # without the plugin, the config names an objective nobody registered: one line
    (tmp_path / "no_plugin.yaml").write_text(yaml.safe_dump({**config, "plugins": []}))
    OBJECTIVES.pop("plugin_capped")
    MASK_METHODS.pop("plugin_floored")
    assert main(["unlearn", "--config", str(tmp_path / "no_plugin.yaml")]) == 2
    err = capsys.readouterr().err
    assert "plugin_capped" in err and len(err.strip().splitlines()) == 1


COMMAND_PLUGIN = textwrap.dedent('''
    from dataclasses import dataclass, field

    from hf_wagle.cli import Command, register_command


    @register_command("hello")
    class Hello(Command):
        """Say hello."""

        help = "say hello"

        def add_arguments(self, parser):
            parser.add_argument("--name", default="world", help="whom to greet")

        def run(self, args):
            print(f"hello {args.name}")
            return 0


    @dataclass
    class GreetArguments:
        name: str = field(metadata={"help": "whom to greet"})
        times: int = field(default=1, metadata={"help": "how often"})


    @register_command("greet")
    class Greet(Command):
        """Greet, from flags or a YAML file."""

        help = "greet someone"

        def arguments(self):
            return {"greeting": GreetArguments}

        def run(self, args):
            print(" ".join(["hi " + args.greeting.name] * args.greeting.times))
            return 0 if args.greeting.times < 3 else 1
    ''')


@pytest.fixture
def command_plugin(tmp_path):
    path = tmp_path / "hello_command.py"
    path.write_text(COMMAND_PLUGIN)
    yield path
    COMMANDS.pop("hello", None)
    COMMANDS.pop("greet", None)


def test_a_plugin_file_adds_commands(command_plugin, tmp_path, capsys):
    assert main(["hello", "--plugins", str(command_plugin), "--name", "you"]) == 0
    assert capsys.readouterr().out == "hello you\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "hello" in out and "say hello" in out and "greet someone" in out

    assert main(["greet", "--name", "ada", "--times", "2"]) == 0
    assert capsys.readouterr().out == "hi ada hi ada\n"
    (tmp_path / "greet.yaml").write_text("name: bob\ntimes: 3\n")
    assert main(["greet", "--config", str(tmp_path / "greet.yaml"), "--times", "1"]) == 0
    assert capsys.readouterr().out == "hi bob\n"
    assert main(["greet", "--config", str(tmp_path / "greet.yaml")]) == 1
    (tmp_path / "bad.yaml").write_text("nmae: bob\n")
    capsys.readouterr()
    assert main(["greet", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown keys ['nmae']" in capsys.readouterr().err


def test_register_command_checks_its_class_and_name():
    from hf_wagle.cli import Command, register_command

    with pytest.raises(ValueError, match="already registered"):
        register_command("verify")(type("Other", (Command,), {}))
    with pytest.raises(TypeError, match="subclass of hf_wagle.cli.Command"):
        register_command("plain")(object)
    with pytest.raises(ValueError, match="does not start with '-'"):
        register_command("--x")


def test_entry_points_of_installed_packages_load_first(tmp_path, monkeypatch, capsys):
    import hf_wagle.cli.plugins as plugins

    (tmp_path / "installed_plugin.py").write_text(COMMAND_PLUGIN.replace('"hello"', '"hello_installed"')
                                                  .replace('"greet"', '"greet_installed"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    point = EntryPoint(name="mine", value="installed_plugin", group=plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [point] if group == plugins.ENTRY_POINT_GROUP else [])
    try:
        assert main(["hello_installed", "--name", "pkg"]) == 0
        assert capsys.readouterr().out == "hello pkg\n"
    finally:
        COMMANDS.pop("hello_installed", None)
        COMMANDS.pop("greet_installed", None)
    broken = EntryPoint(name="broken", value="no_such_plugin_module", group=plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [broken])
    assert main(["verify", "x"]) == 2
    err = capsys.readouterr().err
    assert "plugin 'broken'" in err and "hf_wagle.plugins" in err and len(err.strip().splitlines()) == 1


def test_yaml_values_are_checked_against_the_flag_choices(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("model: m\nout: o\ndtype: bogus\n")
    assert main(["attribute", "--config", str(tmp_path / "a.yaml")]) == 2
    err = capsys.readouterr().err
    assert "dtype must be one of float32, bfloat16, float16, got 'bogus'" in err and len(err.strip().splitlines()) == 1
