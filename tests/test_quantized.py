"""Masked LoRA over a bitsandbytes-quantised base (QLoRA): a mask computed on the full-precision model or on the
quantised base itself (gradient sums from activations, under a memory budget), trained through over the 8-bit or
4-bit base, confined, recorded and named as such. (4-bit NF4 packs weights in blocks of 64 values, which the world
model's layers do not fill: those tests use a small random Llama.)"""
import json

import pytest
import torch

from hf_wagle import WagleTrainer, compute_mask
from hf_wagle.masking.config import MaskConfig

from support import small_args


def test_masked_lora_over_an_int8_base_is_confined_and_recorded(trained, world, tmp_path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from hf_wagle.cli import main
    from hf_wagle.modeling import logical_shape
    from hf_wagle.verify import verify

    model, tokenizer = trained
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    mask = compute_mask(model, world["forget"], world["retain"], tokenizer, MaskConfig(method="wagle", ratio=0.5),
                        progress=False)
    mask.save(tmp_path / "mask")
    quantized = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32,
                                                     quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    names = dict(quantized.named_parameters())
    assert logical_shape(names["model.layers.0.self_attn.q_proj.weight"]) == tuple(
        mask["model.layers.0.self_attn.q_proj.weight"].shape)
    # the unlearn command: quantised base, the mask from the full-precision model, verified
    config = {"model_name_or_path": str(tmp_path / "base"), "forget_file": "f.jsonl", "retain_file": "r.jsonl",
              "output_dir": str(tmp_path / "out"), "objective": "grad_diff", "learning_rate": 1e-3, "max_steps": 3,
              "per_device_train_batch_size": 4, "lora_r": 4, "use_cpu": True, "report_to": "none",
              "save_strategy": "no", "quantization": "int8", "mask_dir": str(tmp_path / "mask")}
    world["forget"].to_json(tmp_path / "f.jsonl")
    world["retain"].to_json(tmp_path / "r.jsonl")
    config.update(forget_file=str(tmp_path / "f.jsonl"), retain_file=str(tmp_path / "r.jsonl"))
    argv = ["unlearn", *[x for k, v in config.items() for x in (f"--{k}", str(v))]]
    assert main(argv) == 0
    report = verify(tmp_path / "out")
    assert report["confined"]
    record = json.loads((tmp_path / "out" / "unlearning_record.json").read_text())
    assert record["base_model"]["quantization"]["load_in_8bit"] and record["base_model"]["weights_sha256"] is None
    assert "quantised by bitsandbytes (8-bit)" in (tmp_path / "out" / "README.md").read_text()
    assert main([*argv, "--use_peft", "false", "--output_dir", str(tmp_path / "out2")]) == 2  # an adapter only
    assert not (tmp_path / "out2").exists()


def test_masked_lora_over_an_nf4_base_reads_the_packed_weights_logical_shape(world, tokenizer, tmp_path):
    """NF4 stores two weights per byte (`(rows * columns / 2, 1)`): a small random Llama whose layers fill
    bitsandbytes' 64-value blocks, a mask from its float32 copy, masked LoRA over its NF4 copy, confined."""
    from peft import LoraConfig

    from hf_wagle.modeling import keep_4bit_differentiable, logical_shape
    from hf_wagle.verify import verify

    _small_llama(tokenizer, tmp_path / "base")
    mask = compute_mask(_load(tmp_path / "base"), world["forget"], world["retain"], tokenizer,
                        MaskConfig(method="grin", ratio=0.5), progress=False)
    nf4 = _load(tmp_path / "base", "nf4")
    packed = dict(nf4.named_parameters())["model.layers.0.mlp.up_proj.weight"]
    assert tuple(packed.shape) == (256 * 128 // 2, 1) and logical_shape(packed) == (256, 128)
    trainer = WagleTrainer(model=nf4, args=small_args(tmp_path, objective="grad_diff", max_steps=2), mask=mask,
                           forget_dataset=world["forget"], retain_dataset=world["retain"], processing_class=tokenizer,
                           peft_config=LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer.train()
    batch = tokenizer(["Where was Yorbri Corquin born ?"], return_tensors="pt")
    with torch.no_grad():
        trained_logits = trainer.model.eval()(**batch).logits
    trainer.save_model()
    assert verify(tmp_path / "out")["confined"]
    record = json.loads((tmp_path / "out" / "unlearning_record.json").read_text())
    assert record["base_model"]["quantization"]["bnb_4bit_quant_type"] == "nf4"
    # stock PEFT loads it over a fresh NF4 copy (the trained model's outputs) and over the float32 base
    from peft import PeftModel

    with torch.no_grad():
        fresh = _load(tmp_path / "base", "nf4")
        keep_4bit_differentiable(fresh)  # the layers compute as in training, not in bitsandbytes' bf16 CPU kernel
        reloaded = PeftModel.from_pretrained(fresh, str(tmp_path / "out")).eval()
        assert torch.allclose(reloaded(**batch).logits, trained_logits, atol=1e-5)
        over_full = PeftModel.from_pretrained(_load(tmp_path / "base"),
                                              str(tmp_path / "out")).eval()
        assert torch.isfinite(over_full(**batch).logits).all()


def _small_llama(tokenizer, path):
    """A small random Llama whose linear layers fill bitsandbytes' 64-value blocks, saved to `path`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(path)


def _load(path, quantization=None):
    """The model at `path` in float32, or quantised as `hf-wagle unlearn --quantization` loads it."""
    from transformers import AutoModelForCausalLM

    from hf_wagle.cli.common import QuantizedBase

    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, quantization_config=QuantizedBase(quantization=quantization).bnb_config("float32"))


def _dequantized_twin(quantized, path):
    """The full-precision model whose every weight is the dequantised weight of `quantized`."""
    from hf_wagle.modeling import dequantized

    twin = _load(path)
    weights = dict(quantized.named_parameters())
    with torch.no_grad():
        for name, p in twin.named_parameters():
            p.copy_(dequantized(weights[name]))
    return twin


def _jaccard(a, b) -> float:
    inter = sum(int((a[n] & b[n]).sum()) for n in a.names())
    union = sum(int((a[n] | b[n]).sum()) for n in a.names())
    return inter / union


def test_attribution_of_an_nf4_base_equals_its_dequantised_twin(world, tokenizer, tmp_path):
    """A 4-bit weight holds no gradient: its G_f and G_r come from its layer's inputs and output gradients
    (`sum_t dy_t^T x_t`). On NF4, whose layers compute with the dequantised weight, those sums equal autograd's on
    the float32 model holding the same dequantised weights, and so does the mask."""
    from hf_wagle.data import tokenize_dataset
    from hf_wagle.masking import accumulate_gradients
    from hf_wagle.options import DEFAULT_PROMPT_TEMPLATE

    _small_llama(tokenizer, tmp_path / "base")
    nf4 = _load(tmp_path / "base", "nf4")
    twin = _dequantized_twin(nf4, tmp_path / "base")
    examples = tokenize_dataset(world["forget"], tokenizer, DEFAULT_PROMPT_TEMPLATE)[:12]
    name = "model.layers.1.mlp.down_proj.weight"
    for p in twin.parameters():
        p.requires_grad_(False)
    dict(twin.named_parameters())[name].requires_grad_(True)
    expected = accumulate_gradients(twin.eval(), [dict(twin.named_parameters())[name]], examples, 4,
                                    pad_token_id=tokenizer.pad_token_id)[0]
    got = accumulate_gradients(nf4.eval(), [dict(nf4.named_parameters())[name]], examples, 4,
                               pad_token_id=tokenizer.pad_token_id)[0]
    assert got.shape == (128, 256) and expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)

    config = MaskConfig(method="wagle", ratio=0.3)
    on_nf4 = compute_mask(nf4, world["forget"], world["retain"], tokenizer, config, progress=False)
    on_twin = compute_mask(twin, world["forget"], world["retain"], tokenizer, config, progress=False)
    assert on_nf4.metadata["param_sha256"] == on_twin.metadata["param_sha256"]  # the logical shapes
    assert {n: on_nf4.shape(n) for n in on_nf4.names()} == {n: on_twin.shape(n) for n in on_twin.names()}
    assert _jaccard(on_nf4, on_twin) > 0.999  # equal up to rounding at the threshold
    # the methods that read the weight itself score the dequantised weight
    for method in ("magnitude", "wanda"):
        config = MaskConfig(method=method, ratio=0.3)
        assert _jaccard(compute_mask(nf4, world["forget"], None, tokenizer, config, progress=False),
                        compute_mask(twin, world["forget"], None, tokenizer, config, progress=False)) > 0.999


@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_masked_lora_trains_over_a_quantised_base_with_its_own_mask(world, tokenizer, tmp_path, quantization):
    """The trainer computes the mask on the quantised base itself (no full-precision copy in memory), close to the
    mask of the full-precision model, in several passes under a memory budget, and trains confined to it."""
    from peft import LoraConfig

    from hf_wagle.verify import verify

    _small_llama(tokenizer, tmp_path / "base")
    full = _load(tmp_path / "base")
    reference = compute_mask(full, world["forget"], world["retain"], tokenizer, MaskConfig(method="wagle", ratio=0.5),
                             progress=False)
    model = _load(tmp_path / "base", quantization)
    budget = 2 * 128 * 256 * 8  # the sums of two MLP matrices: several passes
    args = small_args(tmp_path, objective="grad_diff", max_steps=2, mask_method="wagle", mask_ratio=0.5,
                      mask_memory_budget=budget)
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer,
                           peft_config=LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer.train()
    assert trainer.mask.metadata["passes"] > 3
    overlap = _jaccard(trainer.mask, reference)
    # the same weights up to quantisation error (measured: 0.98 int8, 0.85 nf4 on this random model)
    assert overlap > (0.95 if quantization == "int8" else 0.8), overlap
    trainer.save_model(tmp_path / "out")
    assert verify(tmp_path / "out")["confined"]


def test_memory_budget_gives_the_one_pass_mask_in_several_passes(model, world, tokenizer):
    """The weights taken in groups that fit the budget, one pass over the data each: the same mask, bit for bit."""
    from hf_wagle.masking import included_parameters

    sizes = [p.numel() * 8 for _, p in included_parameters(model)[0]]
    one = compute_mask(model, world["forget"], world["retain"], tokenizer, MaskConfig(method="wagle", ratio=0.2),
                       progress=False)
    grouped = compute_mask(model, world["forget"], world["retain"], tokenizer,
                           MaskConfig(method="wagle", ratio=0.2, memory_budget=f"{max(sizes)}B"), progress=False)
    assert one.metadata["passes"] == 1 and grouped.metadata["passes"] >= sum(sizes) // max(sizes)
    assert all(torch.equal(one[n], grouped[n]) for n in one.names())
    with pytest.raises(ValueError, match="smaller than the gradient sums of"):
        compute_mask(model, world["forget"], world["retain"], tokenizer,
                     MaskConfig(method="wagle", memory_budget=max(sizes) - 1), progress=False)
    with pytest.raises(ValueError, match="memory size"):
        MaskConfig(memory_budget="lots")


def test_attribute_command_scores_a_quantised_model_under_a_budget(world, tokenizer, tmp_path, capsys):
    """`hf-wagle attribute --quantization nf4 --memory_budget ...`: the mask of the 4-bit model in several passes,
    with the full-precision weights' names and shapes; a budget below one weight's sums is refused before any pass
    over the data, and nothing is written."""
    from hf_wagle.cli import main
    from hf_wagle.mask import WeightMask

    _small_llama(tokenizer, tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    world["forget"].to_json(tmp_path / "f.jsonl")
    world["retain"].to_json(tmp_path / "r.jsonl")
    argv = ["attribute", "--model", str(tmp_path / "base"), "--forget", str(tmp_path / "f.jsonl"), "--retain",
            str(tmp_path / "r.jsonl"), "--method", "wagle", "--quantization", "nf4", "--out", str(tmp_path / "mask")]
    assert main([*argv, "--memory_budget", "500KiB"]) == 0
    mask = WeightMask.load(tmp_path / "mask", model=_load(tmp_path / "base"))
    assert mask.shape("model.layers.0.mlp.up_proj.weight") == (256, 128)
    assert json.loads((tmp_path / "mask" / "mask_stats.json").read_text())["metadata"]["passes"] > 1
    assert main([*argv, "--memory_budget", "1KB", "--out", str(tmp_path / "mask2")]) == 2
    assert "smaller than the gradient sums of model.embed_tokens.weight" in capsys.readouterr().err
    assert not (tmp_path / "mask2").exists()
