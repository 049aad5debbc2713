"""Run under `torchrun --nproc_per_node 2`: every rank computes masks on its shard of the data (replicated model,
as under DDP), then again with the model sharded by FSDP2's `fully_shard`; writes `rank{r}.pt` to argv[2].

argv: model folder, output folder, forget folder, retain folder.
"""
import sys

import torch
import torch.distributed as dist
from datasets import load_from_disk
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_wagle import compute_mask, register_mask_method
from hf_wagle.data import tokenize_dataset
from hf_wagle.masking import accumulate_gradients


def main():
    model_dir, out, forget_dir, retain_dir = sys.argv[1:5]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    forget, retain = load_from_disk(forget_dir), load_from_disk(retain_dir)
    result = {"world": dist.get_world_size()}
    for method in ("wagle", "grin", "wanda", "random"):
        mask = compute_mask(model, forget, retain, tokenizer, method=method, ratio=0.3, mu=1e-3, batch_size=2,
                            progress=False)
        result[method] = {n: m for n, m in mask.items()}
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    examples = tokenize_dataset(forget, tokenizer, "Question: {question}\nAnswer:")
    result["g_f"] = [g.clone() for g in accumulate_gradients(model, params, examples, 2)]

    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    register_mask_method("flat", needs="none", override=True)(lambda param, **_: torch.ones(param.shape))
    for method in ("wagle", "grin", "wanda", "random", "magnitude", "flat"):  # flat: every weight tied
        mask = compute_mask(model, forget, retain, tokenizer, method=method, ratio=0.3, mu=1e-3, batch_size=2,
                            progress=False)
        result[f"fsdp_{method}"] = {n: m for n, m in mask.items()}
    mask = compute_mask(model, forget, retain, tokenizer, method="random", ratio=0.3, scope="per_layer", seed=3,
                        progress=False)
    result["fsdp_random_per_layer"] = {n: m for n, m in mask.items()}
    params = list(model.parameters())
    result["fsdp_g_f"] = [g.clone() for g in accumulate_gradients(model, params, examples, 2)]
    torch.save(result, f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
