from peft import PeftConfig

from hf_wagle.adapters import verify
from hf_wagle.demo import run_demo


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
        assert verify(tmp_path / name)["confined"]
    assert rows[2][1]["changeable"] != rows[1][1]["changeable"]
