"""The README's script runs as written (offline, CPU) and produces a verified adapter."""

import re
from pathlib import Path

from hf_wagle.adapters import verify

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_script_runs_and_writes_a_confined_adapter(smollm2, tmp_path, monkeypatch):
    text = README.read_text()
    section = text[text.index("## Use it in your script"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert verify(tmp_path / "unlearned")["confined"]
    logged = [h for h in namespace["trainer"].state.log_history if "forget_loss" in h]
    assert logged and all("retain_nll" in h and "log_ratio" in h for h in logged)


def test_readme_walkthrough_runs_as_written(smollm2, tmp_path):
    """The "From zero" shell block, line by line in bash, with the package's python and hf-wagle first on PATH."""
    import os
    import subprocess
    import sys

    text = README.read_text()
    section = text[text.index("## From zero"):]
    script = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    root = README.parent
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1"}
    (tmp_path / "examples").symlink_to(root / "examples")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "mask_out" / "mask_heatmap.png").exists()
    assert "confined to its mask: yes" in proc.stdout and "would upload to my-org/smollm2-no-element-symbols" in proc.stdout
    assert verify(tmp_path / "unlearned_smollm2")["confined"]
    card = (tmp_path / "unlearned_smollm2" / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and str(tmp_path) not in card
