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
