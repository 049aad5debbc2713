"""Run by test_distributed_trainer under torchrun: WagleTrainer (npo, wagle mask computed by the trainer, GRIN
noise, weight decay) on CPU ranks, under FSDP2 or DDP, optionally resuming from a checkpoint or with a given mask;
with `robust=gnp` or `robust=smooth`, that forget perturbation with weight averaging from step 3 and 2 accumulated
micro-batches per step, without checkpoints; "gnp" with disruption masking and an evaluation every 2 steps too (the
closest evaluation's weights are kept). Writes `<out>/final` and `<out>/engine.json`.

    torchrun --standalone --nproc_per_node 2 fsdp_trainer_script.py MODEL DATA OUT fsdp|ddp [resume=DIR] [mask=DIR]
        [robust=gnp|smooth]
"""
import json
import sys

from datasets import load_from_disk
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_wagle import WagleConfig, WagleTrainer, WeightMask
from hf_wagle.modeling import is_sharded

model_dir, data_dir, out, mode = sys.argv[1:5]
if mode == "fsdp":
    # Accelerate turns FSDP on only for accelerator devices (its CPU distributed type ignores the FSDP plugin);
    # PyTorch's fully_shard itself runs on CPU ranks with gloo. Let Accelerate's own FSDP2 path run here.
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init_with_fsdp_on_cpu
options = dict(arg.split("=", 1) for arg in sys.argv[5:])
fsdp = dict(fsdp="full_shard", fsdp_config={"fsdp_version": 2, "reshard_after_forward": True,
                                            "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
                                            "state_dict_type": "FULL_STATE_DICT"}) if mode == "fsdp" else {}
robust = dict(forget_perturbation=options["robust"], sam_rho=0.1, gnp_gamma=0.02, smooth_sigma=1e-3,
              weight_averaging_start=3, gradient_accumulation_steps=2, per_device_train_batch_size=2,
              save_strategy="no") if "robust" in options else {}
if options.get("robust") == "gnp":  # the forget gradient taken apart, and evaluations between steps
    robust.update(disruption_masking=True, targets=["forget_probability <= 0.01x"], target_eval_steps=2,
                  stop_at_targets=False)
args = WagleConfig(**{**dict(output_dir=f"{out}/run", objective="npo", mask_method="wagle", mask_ratio=0.3,
                             learning_rate=2e-3, max_steps=4, per_device_train_batch_size=4, weight_decay=0.1,
                             use_cpu=True, report_to="none", save_strategy="steps", save_steps=2, disable_tqdm=True,
                             seed=0, mask_noise_std=0.05, max_grad_norm=0.0), **fsdp, **robust})
trainer = WagleTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args,
                       forget_dataset=load_from_disk(f"{data_dir}/forget"),
                       retain_dataset=load_from_disk(f"{data_dir}/retain"),
                       processing_class=AutoTokenizer.from_pretrained(model_dir),
                       mask=WeightMask.load(options["mask"]) if "mask" in options else None)
trainer.train(resume_from_checkpoint=options.get("resume"))
trainer.save_model(f"{out}/final")
if trainer.is_world_process_zero():
    with open(f"{out}/engine.json", "w") as f:
        json.dump({"sharded": all(is_sharded(p) for p in trainer._grad_masks), "fsdp": trainer.is_fsdp_enabled,
                   "steps": trainer.state.global_step,
                   "averaged": trainer.averaging.averaged if trainer.averaging is not None else None,
                   "restored": (trainer.evaluation.report or {}).get("restored") if trainer.evaluation else None}, f)
# every rank is done with its collectives before any closes its connections
trainer.accelerator.wait_for_everyone()
trainer.accelerator.end_training()
