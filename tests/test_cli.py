"""The command line starts without the model stack: `--help` and `--version` import neither torch nor transformers."""

import subprocess
import sys

from hf_wagle import __version__


def test_cli_parser_imports_no_torch():
    code = ("import sys, hf_wagle.cli as c; c.build_parser(); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_version_flag(capsys):
    import pytest

    from hf_wagle.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"hf-wagle {__version__}"
