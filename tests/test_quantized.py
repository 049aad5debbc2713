"""Masked LoRA over a bitsandbytes-quantised base (QLoRA): a mask computed on the full-precision model, trained
through over the 8-bit base, confined, recorded and named as such. (4-bit NF4 packs weights in blocks of 64 values,
which the world model's layers do not fill; the NF4 path is the same code.)"""
import json

import pytest
import torch

from hf_wagle import WagleTrainer, compute_mask
from hf_wagle.masking.config import MaskConfig

from support import small_args


def test_masked_lora_over_an_int8_base_is_confined_and_recorded(trained, world, tmp_path):
    from peft import LoraConfig
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
    lora = LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM")
    with pytest.raises(ValueError, match="attribution needs a full-precision gradient"):
        WagleTrainer(model=quantized, args=small_args(tmp_path, mask_method="wagle"), forget_dataset=world["forget"],
                     retain_dataset=world["retain"], processing_class=tokenizer, peft_config=lora)
    assert "model.layers.0.self_attn.q_proj.weight" in dict(quantized.named_parameters())  # refused before wrapping
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
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    from hf_wagle.modeling import logical_shape
    from hf_wagle.verify import verify

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "base")
    full = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    mask = compute_mask(full, world["forget"], world["retain"], tokenizer, MaskConfig(method="grin", ratio=0.5),
                        progress=False)
    nf4 = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32, quantization_config=(
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)))
    packed = dict(nf4.named_parameters())["model.layers.0.mlp.up_proj.weight"]
    assert tuple(packed.shape) == (256 * 128 // 2, 1) and logical_shape(packed) == (256, 128)
    trainer = WagleTrainer(model=nf4, args=small_args(tmp_path, objective="grad_diff", max_steps=2), mask=mask,
                           forget_dataset=world["forget"], retain_dataset=world["retain"], processing_class=tokenizer,
                           peft_config=LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer.train()
    batch = tokenizer(["Where was Yorbri Corquin born ?"], return_tensors="pt")
    with torch.no_grad():  # before saving: bitsandbytes' CPU state dict puts the packed weights back in another layout
        trained_logits = trainer.model.eval()(**batch).logits
    trainer.save_model()
    assert verify(tmp_path / "out")["confined"]
    record = json.loads((tmp_path / "out" / "unlearning_record.json").read_text())
    assert record["base_model"]["quantization"]["bnb_4bit_quant_type"] == "nf4"
    # stock PEFT loads it over a fresh NF4 copy (the trained model's outputs) and over the float32 base
    from peft import PeftModel

    with torch.no_grad():
        fresh = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32, quantization_config=(
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)))
        reloaded = PeftModel.from_pretrained(fresh, str(tmp_path / "out")).eval()
        assert torch.allclose(reloaded(**batch).logits, trained_logits, atol=1e-5)
        over_full = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                                              str(tmp_path / "out")).eval()
        assert torch.isfinite(over_full(**batch).logits).all()
