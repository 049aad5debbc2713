"""WagleTrainer on two CPU ranks (torchrun, gloo): DDP keeps the ranks in step, the mask is identical on both,
off-mask weights stay bit-identical, the ranks draw different retain examples, and the evaluation callback gives
every rank the same numbers."""
import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hf_wagle.evaluation import WagleEvalCallback

SCRIPT = Path(__file__).with_name("ddp_trainer_script.py")
TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))


@pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not installed")
@pytest.mark.parametrize("objective", ["npo"])
def test_two_ranks_unlearn_in_step_inside_the_mask(trained, world, tmp_path, objective):
    model, tokenizer = trained
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    world["forget"].save_to_disk(str(tmp_path / "forget"))
    world["retain"].save_to_disk(str(tmp_path / "retain"))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(tmp_path / "model"),
                           str(tmp_path), objective], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"trainer_rank{r}.pt") for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    original = dict(model.named_parameters())
    moved = 0
    for name, p0 in r0["params"].items():
        assert torch.equal(p0, r1["params"][name]), f"ranks diverged on {name}"
        m = r0["mask"][name]
        assert torch.equal(m, r1["mask"][name])
        assert torch.equal(p0[~m], original[name].detach()[~m]), f"{name} moved off-mask"
        moved += int((p0[m] != original[name].detach()[m]).sum())
    assert moved > 0
    assert r0["retain_draws"] != r1["retain_draws"]
    # loss terms are logged every step, averaged over the ranks (so both ranks hold the same numbers)
    assert len(r0["logged"]) == 3 and r0["logged"] == r1["logged"]

    # the evaluation callback ran on both ranks together and gives what one process computes on the final weights
    assert r0["eval_history"] == r1["eval_history"] and [h["step"] for h in r0["eval_history"]] == [1, 2, 3]
    final = copy.deepcopy(model)
    final.load_state_dict(r0["params"])
    single = WagleEvalCallback(world["forget"].select(range(5)), world["retain"].select(range(7))).evaluate(
        final, tokenizer, SimpleNamespace(device="cpu", prompt_template="Question: {question}\nAnswer:"))
    last = r0["eval_history"][-1]
    assert all(last[k] == pytest.approx(v, rel=1e-5) for k, v in single.items())


ACCELERATE = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))


@pytest.mark.skipif(not Path(ACCELERATE).exists(), reason="accelerate CLI not installed")
def test_accelerate_launch_runs_unlearn_on_two_processes(trained, world, tmp_path):
    """`accelerate launch --config_file examples/accelerate/ddp.yaml -m hf_wagle.cli unlearn --config ...`: two
    processes (gloo on CPU) train one adapter; the main process alone writes and verifies it."""
    import json

    import yaml

    model, tokenizer = trained
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    world["forget"].to_json(tmp_path / "forget.jsonl")
    world["retain"].to_json(tmp_path / "retain.jsonl")
    config = {"model_name_or_path": str(tmp_path / "model"), "forget_file": str(tmp_path / "forget.jsonl"),
              "retain_file": str(tmp_path / "retain.jsonl"), "output_dir": str(tmp_path / "out"),
              "objective": "grad_diff", "mask_ratio": 0.5, "learning_rate": 5e-3, "max_steps": 3,
              "per_device_train_batch_size": 4, "lora_r": 4, "report_to": "none", "save_strategy": "no",
              "evaluate": True}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    accelerate_config = Path(__file__).resolve().parents[1] / "examples" / "accelerate" / "ddp.yaml"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([ACCELERATE, "launch", "--config_file", str(accelerate_config), "--main_process_port",
                           "0", "-m", "hf_wagle.cli", "unlearn", "--config", str(tmp_path / "cfg.yaml")],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "unlearn_results.json").read_text())
    assert results["processes"] == 2 and results["steps"] == 3 and results["confined"]
    assert results["evaluation"]["after"]["forget"] < results["evaluation"]["before"]["forget"]
    assert proc.stdout.count("confined to its mask: yes") == 1  # the summary comes from the main process only
