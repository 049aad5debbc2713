from peft import PeftConfig

from hf_wagle.demo import run_demo, run_real_demo
from hf_wagle.verify import verify


def test_demo_runs_end_to_end_and_writes_adapters(trained, tmp_path):
    lines = []
    rows = run_demo(output_dir=str(tmp_path), steps=3, methods=("dense", "wagle"), objectives=("npo",),
                    log=lines.append)
    assert [name for name, _ in rows] == ["before unlearning", "dense+npo", "wagle+npo"]
    text = "\n".join(lines)
    assert "forget prob" in text and "wagle+npo" in text and str(tmp_path / "wagle+npo") in text
    before = rows[0][1]
    assert before["forget prob"] > 0.9 and before["retain exact"] == 1.0
    for name in ("dense+npo", "wagle+npo"):
        assert PeftConfig.from_pretrained(str(tmp_path / name)).peft_type == "LORA"
    assert verify(tmp_path / "wagle+npo")["confined"]
    assert not (tmp_path / "dense+npo" / "wagle_mask.safetensors").exists()  # a dense run claims no mask
    assert rows[2][1]["changeable"] != rows[1][1]["changeable"]


def test_real_demo_forgets_the_topic_and_keeps_the_rest(smollm2, tmp_path):
    lines = []
    result = run_real_demo(output_dir=str(tmp_path / "smol"), model_dir=smollm2[2], log=lines.append)
    before, after = result["before"], result["after"]
    assert after["forget prob"] <= before["forget prob"] / 5
    assert after["retain prob"] >= 0.75 * before["retain prob"]
    assert after["holdout prob"] >= 0.75 * before["holdout prob"]  # knowledge never trained on is kept too
    assert result["verify"]["confined"] and result["verify"]["changed_inside_mask"] > 0
    assert PeftConfig.from_pretrained(str(tmp_path / "smol")).task_type == "CAUSAL_LM"
    text = "\n".join(lines)
    assert "after / before" in text and "What is the chemical symbol for" in text
    assert len(result["answers"]["forget"]) == 4


def test_demo_cli_rejects_full_for_the_real_model(capsys):
    from hf_wagle.cli import main

    assert main(["demo", "--model", "smollm2", "--full"]) == 2
    assert "--full applies to the world demo" in capsys.readouterr().err
