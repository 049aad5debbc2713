"""Options of a mask method and hyperparameters of an objective are declared by the extension itself, and reach it
from `compute_mask`, `MaskConfig` and `WagleConfig` (the command line and YAML read the same fields)."""

from dataclasses import dataclass, field

import pytest
import torch

from hf_wagle import MaskConfig, WagleConfig, WagleTrainer, compute_mask, register_mask_method
from hf_wagle.masking import MASK_METHODS
from hf_wagle.objectives import OBJECTIVES, Objective, register_objective, sequence_nll

from support import small_args, snapshot

SEEN = []


@dataclass
class FloorOptions:
    floor: float = field(default=0.0, metadata={"help": "scores below this count as 0"})

    def __post_init__(self):
        if not self.floor >= 0:
            raise ValueError(f"floor must be >= 0, got {self.floor}")


@pytest.fixture
def floored():
    @register_mask_method("floored_magnitude", needs="none", options=FloorOptions)
    def floored_magnitude(param, grad_forget=None, grad_retain=None, floor=0.0, **_):
        SEEN.append(floor)
        s = param.detach().abs().float()
        return torch.where(s >= floor, s, torch.zeros_like(s))

    SEEN.clear()
    yield
    MASK_METHODS.pop("floored_magnitude")


def test_a_method_option_reaches_the_score_from_every_entry_point(floored, model, tokenizer, world, tmp_path):
    plain = compute_mask(model, None, None, method="floored_magnitude", ratio=0.3, progress=False)
    assert set(SEEN) == {0.0} and "options" in plain.metadata and plain.metadata["options"] == {"floor": 0.0}
    SEEN.clear()
    by_kw = compute_mask(model, None, None, method="floored_magnitude", ratio=0.3, floor=0.05, progress=False)
    by_config = compute_mask(model, None, None, config=MaskConfig(method="floored_magnitude", ratio=0.3,
                                                                  options={"floor": 0.05}), progress=False)
    assert set(SEEN) == {0.05} and by_kw == by_config != plain
    assert by_kw.metadata["options"] == {"floor": 0.05}

    SEEN.clear()
    before = snapshot(model)
    args = small_args(tmp_path, objective="grad_diff", mask_method="floored_magnitude", mask_ratio=0.3,
                      mask_options="floor=0.05", max_steps=2)
    assert args.mask_config.options == {"floor": 0.05}
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer)
    trainer.train()
    assert set(SEEN) == {0.05} and trainer.mask == by_kw
    for n, p in model.named_parameters():
        assert torch.equal(p.detach()[~trainer.enforced_mask[n]], before[n][~trainer.enforced_mask[n]])


def test_method_options_are_checked_before_any_work(floored, model):
    with pytest.raises(ValueError, match=r"no option 'celing' \(its options: floor\)"):
        WagleConfig(output_dir="unused", mask_method="floored_magnitude", mask_options={"celing": 1})
    with pytest.raises(ValueError, match="floor must be >= 0"):
        WagleConfig(output_dir="unused", mask_method="floored_magnitude", mask_options={"floor": -1})
    with pytest.raises(ValueError, match="takes no option|has no option 'floor'"):
        compute_mask(model, None, None, method="magnitude", floor=1.0)
    with pytest.raises(ValueError, match="key=value"):
        MaskConfig(options="floor")


def test_grin_eps_is_grin_s_own_option(model, tokenizer, world):
    forget, retain = world["forget"].select(range(8)), world["retain"].select(range(8))
    default = compute_mask(model, forget, retain, tokenizer, method="grin", ratio=0.3, progress=False)
    wide = compute_mask(model, forget, retain, tokenizer, method="grin", ratio=0.3, eps=1.0, progress=False)
    assert default.metadata["options"] == {"eps": 1e-12} and wide.metadata["options"] == {"eps": 1.0}
    assert default != wide  # eps = 1 ranks |G_f| / (|G_r| + 1), close to |G_f|: a different selection
    assert WagleConfig(output_dir="unused", mask_method="grin", mask_options={"eps": 1e-6}).mask_config.options == {
        "eps": 1e-6}
    with pytest.raises(ValueError, match="grin's eps must be a finite number > 0"):
        WagleConfig(output_dir="unused", mask_method="grin", mask_options={"eps": 0})


@dataclass
class CapArgs:
    cap: float = 5.0

    def __post_init__(self):
        if not self.cap > 0:
            raise ValueError(f"cap must be > 0, got {self.cap}")


def test_an_objective_s_hyperparameter_is_set_through_objective_args(model, tokenizer, world, tmp_path):
    @register_objective("capped_ascent", args=CapArgs)
    class CappedAscent(Objective):
        def forget_loss(self, trainer, model, inputs):
            out = sequence_nll(model, inputs["forget"])
            return -out.token_mean.clamp(max=self.args.cap), {"forget_nll": out.token_mean.detach()}

    try:
        args = small_args(tmp_path, objective="capped_ascent", objective_args={"cap": 1e-3}, mask_method=None,
                          max_steps=2, logging_steps=1)
        trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"],
                               retain_dataset=world["retain"], processing_class=tokenizer)
        assert trainer.objective.args == CapArgs(cap=1e-3)
        trainer.train()
        assert trainer.state.log_history[0]["forget_loss"] == pytest.approx(-1e-3)  # the cap took effect
        with pytest.raises(ValueError, match=r"no argument 'kap' \(its arguments: cap\)"):
            WagleConfig(output_dir="unused", objective="capped_ascent", objective_args="kap=1")
        with pytest.raises(ValueError, match="cap must be > 0"):
            WagleConfig(output_dir="unused", objective="capped_ascent", objective_args="cap=0")
    finally:
        OBJECTIVES.pop("capped_ascent")


def test_built_in_arguments_read_their_flat_fields_and_objective_args():
    assert WagleConfig(output_dir="unused", npo_beta=0.2).objective_arguments.beta == 0.2
    both = WagleConfig(output_dir="unused", npo_beta=0.2, objective_args={"beta": 0.5})
    assert both.objective_arguments.beta == 0.5
    assert WagleConfig(output_dir="unused", objective="rmu", objective_args="layer=3,train_layers=[2,3]") \
        .objective_arguments.train_layers == [2, 3]
    assert WagleConfig(output_dir="unused", objective="ga").objective_arguments is None
    with pytest.raises(ValueError, match="takes no objective_args"):
        WagleConfig(output_dir="unused", objective="ga", objective_args={"beta": 1})


def test_grin_eps_from_the_command_line_and_from_yaml(trained, world, tmp_path, capsys):
    import json

    import yaml

    from hf_wagle import WeightMask
    from hf_wagle.cli import main

    model, tokenizer = trained
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    world["forget"].select(range(8)).to_json(tmp_path / "forget.jsonl")
    world["retain"].select(range(16)).to_json(tmp_path / "retain.jsonl")
    data = ["--forget", str(tmp_path / "forget.jsonl"), "--retain", str(tmp_path / "retain.jsonl")]
    assert main(["attribute", "--model", str(tmp_path / "model"), *data, "--method", "grin", "--options", "eps=1e-3",
                 "--ratio", "0.3", "--out", str(tmp_path / "mask")]) == 0
    assert WeightMask.load(tmp_path / "mask").metadata["options"] == {"eps": 1e-3}
    assert main(["attribute", "--model", str(tmp_path / "model"), *data, "--method", "grin", "--options", "eps=0",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "grin's eps must be a finite number > 0" in capsys.readouterr().err and not (tmp_path / "bad").exists()

    (tmp_path / "run.yaml").write_text(
        "mask_method: grin\nmask_options: {eps: 1e-10}\n"  # YAML reads 1e-10 as text: it is read as a number
        + yaml.safe_dump({"model_name_or_path": str(tmp_path / "model"), "forget_file": data[1],
                          "retain_file": data[3], "output_dir": str(tmp_path / "out"), "objective": "grad_diff",
                          "mask_ratio": 0.3, "max_steps": 1, "per_device_train_batch_size": 4, "lora_r": 4,
                          "use_cpu": True, "report_to": "none", "save_strategy": "no"}))
    assert main(["unlearn", "--config", str(tmp_path / "run.yaml")]) == 0
    assert WeightMask.load(tmp_path / "out").metadata["options"] == {"eps": 1e-10}
    assert "eps=1e-10" in (tmp_path / "out" / "README.md").read_text()
    assert json.loads((tmp_path / "out" / "unlearn_results.json").read_text())["confined"]


def test_config_keeps_training_arguments_first_and_checks_rmu_only_when_it_runs():
    assert WagleConfig("positional_out").output_dir == "positional_out"  # TrainingArguments' first field
    assert WagleConfig("o", objective="npo", rmu_layer=3).rmu_layer == 3  # RMU's relation is RMU's business
    merged = WagleConfig("o", objective="rmu", rmu_layer=3, objective_args={"train_layers": [2, 3]})
    assert merged.objective_arguments.train_layers == [2, 3]
    with pytest.raises(ValueError, match="rmu_train_layers entry must be <= rmu_layer=3"):
        WagleConfig("o", objective="rmu", rmu_layer=3)


def test_a_user_objective_that_needs_refusals_gets_the_config_s(model, tokenizer, world, tmp_path):
    @register_objective("refusal_nll")
    class RefusalNLL(Objective):
        needs_refusal = True

        def forget_loss(self, trainer, model, inputs):
            out = sequence_nll(model, inputs["refusal"])
            return out.token_mean, {}

    try:
        args = small_args(tmp_path, objective="refusal_nll", refusals=["No idea ."], mask_method=None, max_steps=1)
        trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"],
                               retain_dataset=world["retain"], processing_class=tokenizer)
        assert trainer.objective.refusals == ["No idea ."]
        trainer.train()
    finally:
        OBJECTIVES.pop("refusal_nll")
