"""Publishing. The Hub's network is the one boundary faked here: a recorder stands in for `HfApi`."""
import copy

import pytest
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from hf_wagle import WagleTrainer
from hf_wagle.hub import push_to_hub

from conftest import small_args


class RecordingApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw["repo_id"], kw))
        return "commit"


@pytest.fixture
def saved_adapter(trained, tokenizer, world, tmp_path):
    args = small_args(tmp_path, objective="npo", mask_method="wagle", max_steps=2)
    trainer = WagleTrainer(model=copy.deepcopy(trained[0]), args=args, forget_dataset=world["forget"],
                           retain_dataset=world["retain"], processing_class=tokenizer,
                           peft_config=LoraConfig(r=4, target_modules="all-linear"))
    trainer.train()
    trainer.save_model()
    return trainer, tmp_path / "out"


def test_push_uploads_the_audited_folder_with_its_card(saved_adapter):
    trainer, out = saved_adapter
    api = RecordingApi()
    assert push_to_hub(out, "org/unlearned", private=True, api=api) == "commit"
    (create, repo, kw), (upload, repo2, up) = api.calls
    assert (create, repo, kw["exist_ok"], kw["private"]) == ("create_repo", "org/unlearned", True, True)
    assert upload == "upload_folder" and repo2 == "org/unlearned" and up["folder_path"] == str(out)
    assert "training_args.bin" in up["ignore_patterns"]

    # Trainer.push_to_hub writes its card through create_model_card: ours must survive
    (out / "README.md").unlink()
    trainer.create_model_card(model_name="x")
    assert "- wagle" in (out / "README.md").read_text()


def test_push_refuses_a_folder_that_leaves_its_mask(saved_adapter):
    _, out = saved_adapter
    weights = load_file(out / "adapter_model.safetensors")
    key = next(k for k in weights if k.endswith("lora_A.weight") and (weights[k] == 0).any())
    weights[key] = weights[key] + 1.0
    save_file(weights, str(out / "adapter_model.safetensors"))
    api = RecordingApi()
    with pytest.raises(ValueError, match="refusing to publish"):
        push_to_hub(out, "org/unlearned", api=api)
    assert api.calls == []
