"""Publishing. The Hub's network is the one boundary faked here: a recorder stands in for `HfApi`."""
import copy
import json
from pathlib import Path

import pytest
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from hf_wagle import WagleTrainer
from hf_wagle.hub import push_to_hub

from support import small_args


class RecordingApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, **kw):
        folder = Path(kw["folder_path"])
        self.uploaded = {p.name: p.read_bytes() for p in folder.iterdir()}
        self.calls.append(("upload_folder", kw["repo_id"], kw))
        return "commit"


@pytest.fixture
def saved_adapter(trained, tokenizer, world, tmp_path):
    args = small_args(tmp_path, objective="npo", mask_method="wagle", max_steps=2)
    model = copy.deepcopy(trained[0])
    model.config._name_or_path = str(tmp_path / "local_base")  # as after from_pretrained of a local folder
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"],
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
    assert upload == "upload_folder" and repo2 == "org/unlearned"
    assert set(api.uploaded) == {"README.md", "adapter_config.json", "adapter_model.safetensors",
                                 "wagle_mask.safetensors", "tokenizer.json", "tokenizer_config.json",
                                 "unlearning_record.json"}
    assert api.uploaded["adapter_model.safetensors"] == (out / "adapter_model.safetensors").read_bytes()

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


def test_push_uploads_an_allow_list_without_local_paths_or_links(saved_adapter, tmp_path):
    _, out = saved_adapter
    (out / "notes.txt").write_text("private")
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (out / "mask_heatmap.png").symlink_to(secret)  # a published name, but a link out of the folder
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "local_base")
    (out / "adapter_config.json").write_text(json.dumps(config))
    api = RecordingApi()
    push_to_hub(out, "org/unlearned", api=api)
    assert "notes.txt" not in api.uploaded and "mask_heatmap.png" not in api.uploaded
    assert "training_args.bin" not in api.uploaded
    assert json.loads(api.uploaded["adapter_config.json"])["base_model_name_or_path"] is None
    assert check_record_of(api.uploaded) == []  # what was uploaded still matches its record
    assert str(tmp_path) not in api.uploaded["wagle_mask.safetensors"].decode("latin-1")
    assert str(tmp_path) not in api.uploaded["README.md"].decode()

    # weights behind a link are not staged, so the staged copy is incomplete: refused, nothing sent
    weights = out / "adapter_model.safetensors"
    weights.rename(tmp_path / "elsewhere.safetensors")
    weights.symlink_to(tmp_path / "elsewhere.safetensors")
    api = RecordingApi()
    with pytest.raises(ValueError, match="neither an adapter"):
        push_to_hub(out, "org/unlearned", api=api)
    assert api.calls == []


def check_record_of(uploaded: dict) -> list:
    import tempfile
    from pathlib import Path

    from hf_wagle.record import check_record

    with tempfile.TemporaryDirectory() as folder:
        for name, data in uploaded.items():
            Path(folder, name).write_bytes(data)
        return check_record(folder)


def test_push_dry_run_lists_the_upload_without_the_hub(saved_adapter, capsys):
    from hf_wagle.cli import main

    _, out = saved_adapter
    (out / "notes.txt").write_text("private")
    assert main(["push", str(out), "org/unlearned", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "would upload to org/unlearned" in printed and "adapter_model.safetensors" in printed
    assert "not uploaded: notes.txt" in printed and "training_args.bin" in printed


def test_card_of_a_dense_run_names_no_mask_and_the_cached_base(trained, tokenizer, world, tmp_path):
    """A dense run's card says no mask was enforced; a base loaded from a Hub-cache snapshot is named by its id."""
    from huggingface_hub import ModelCard

    args = small_args(tmp_path, objective="grad_diff", mask_method=None, max_steps=1)
    model = copy.deepcopy(trained[0])
    model.config._name_or_path = str(tmp_path / "hub" / "models--my-org--tiny" / "snapshots" / "0123abcd")
    trainer = WagleTrainer(model=model, args=args, forget_dataset=world["forget"], retain_dataset=world["retain"],
                           processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.base_model == "my-org/tiny" and card.data.eval_results is None
    assert "dense: no mask was enforced" in card.text and "only through" not in card.text
    assert "ships no mask" in card.text and not (tmp_path / "out" / "wagle_mask.safetensors").exists()
    assert str(tmp_path) not in card.content
