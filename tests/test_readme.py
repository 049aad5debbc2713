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
