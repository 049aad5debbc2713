"""Two CPU ranks (gloo, torchrun): each scores its shard of the data, gradients are all-reduced, every rank ends
with the identical mask, and it matches the single-process mask; then the same with the model sharded by FSDP2."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_wagle import compute_mask, register_mask_method
from hf_wagle.data import tokenize_dataset
from hf_wagle.masking import accumulate_gradients

SCRIPT = Path(__file__).with_name("distributed_mask_script.py")


def jaccard(a, b):
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    return inter / max(1, sum(int((a[n] | b[n]).sum()) for n in a))


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
def test_two_ranks_build_the_single_process_mask(trained, world, tmp_path):
    model, tokenizer = trained
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    forget, retain = world["forget"].select(range(5)), world["retain"].select(range(7))  # uneven shards
    forget.save_to_disk(str(tmp_path / "forget"))
    retain.save_to_disk(str(tmp_path / "retain"))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(tmp_path / "model"),
                           str(tmp_path), str(tmp_path / "forget"), str(tmp_path / "retain")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-12000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0["world"] == r1["world"] == 2

    params = list(model.parameters())
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    examples = tokenize_dataset(forget, tokenizer, "Question: {question}\nAnswer:")
    g_single = accumulate_gradients(model, params, examples, 2)
    for p, s in zip(params, saved):
        p.requires_grad_(s)
    for a, b, c in zip(r0["g_f"], r1["g_f"], g_single):
        assert torch.allclose(a, c, rtol=1e-4, atol=1e-7) and torch.allclose(b, c, rtol=1e-4, atol=1e-7)

    for method in ("wagle", "grin", "wanda", "random"):
        m0, m1 = r0[method], r1[method]
        assert all(torch.equal(m0[n], m1[n]) for n in m0), method  # identical on every rank
        single = compute_mask(model, forget, retain, tokenizer, method=method, ratio=0.3, mu=1e-3, batch_size=2,
                              progress=False)
        assert jaccard(m0, dict(single.items())) >= 0.999, method
        assert sum(int(m.sum()) for m in m0.values()) == single.num_selected

    # FSDP2: G_f exists only as each rank's dim-0 shard; together the shards are the full gradient
    for p, a, b, c in zip(params, r0["fsdp_g_f"], r1["fsdp_g_f"], g_single):
        assert a.shape[0] + b.shape[0] == p.shape[0] and a.shape[0] == -(-p.shape[0] // 2)
        assert torch.allclose(torch.cat([a, b]), c, rtol=1e-4, atol=1e-7)
    single_random_layers = compute_mask(model, forget, retain, tokenizer, method="random", ratio=0.3,
                                        scope="per_layer", seed=3, progress=False)
    register_mask_method("flat", needs="none", override=True)(lambda param, **_: torch.ones(param.shape))
    for method in ("wagle", "grin", "wanda", "random", "magnitude", "flat", "random_per_layer"):
        m0, m1 = r0[f"fsdp_{method}"], r1[f"fsdp_{method}"]
        assert all(torch.equal(m0[n], m1[n]) for n in m0), method
        single = single_random_layers if method == "random_per_layer" else compute_mask(
            model, forget, retain, tokenizer, method=method, ratio=0.3, mu=1e-3, batch_size=2, progress=False)
        if method in ("random", "magnitude", "flat", "random_per_layer"):  # data-free: the selection itself is exact
            assert all(torch.equal(m0[n], single[n]) for n in m0), method
        else:
            assert jaccard(m0, dict(single.items())) >= 0.999, method
            assert sum(int(m.sum()) for m in m0.values()) == single.num_selected


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
def test_attribute_command_shards_the_model_with_fsdp2(trained, world, tmp_path):
    """`torchrun -m hf_wagle.cli attribute --fsdp`: two CPU ranks score FSDP2 shards; rank 0 writes the mask."""
    from hf_wagle import WeightMask

    model, tokenizer = trained
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    forget, retain = world["forget"].select(range(5)), world["retain"].select(range(7))
    forget.to_json(tmp_path / "forget.jsonl")
    retain.to_json(tmp_path / "retain.jsonl")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    for method in ("random", "wagle"):
        proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "hf_wagle.cli", "attribute",
                               "--fsdp", "--model", str(tmp_path / "model"), "--forget", str(tmp_path / "forget.jsonl"),
                               "--retain", str(tmp_path / "retain.jsonl"), "--method", method, "--ratio", "0.3",
                               "--seed", "5", "--batch-size", "2", "--out", str(tmp_path / method)],
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-12000:]
        assert proc.stdout.count("bits per weight") == 1  # written once, by rank 0
        sharded = WeightMask.load(tmp_path / method, model=model)
        single = compute_mask(model, forget, retain, tokenizer, method=method, ratio=0.3, seed=5, batch_size=2,
                              progress=False)
        if method == "random":
            assert sharded == single
        else:
            assert jaccard(dict(sharded.items()), dict(single.items())) >= 0.999
            assert sharded.num_selected == single.num_selected
