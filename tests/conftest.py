import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported, which reads it once
if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers share the cores: one torch thread each, before torch
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # is imported (and in the processes a test starts)
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
from transformers.utils import logging  # noqa: E402

from hf_wagle.world import make_world, pretrained_world_model, world_model_dir  # noqa: E402

logging.set_verbosity_error()


def pytest_configure(config):
    """Build the cached models the tests share before any test starts, side by side, one thread each: the world
    model, and SmolLM2 when the whole suite runs with its slow tier. Under pytest-xdist this runs in the controller
    before the workers start, which would otherwise each build both at once. A failed build is left to the fixture
    that needs the model, which reports it."""
    if hasattr(config, "workerinput") or config.option.collectonly:
        return
    from hf_wagle.real_model import smollm2_dir

    world_dir = os.environ.get("HF_WAGLE_TEST_MODEL") or world_model_dir()
    builds = [] if os.path.exists(os.path.join(world_dir, "model.safetensors")) else [
        "import os; from hf_wagle.world import pretrained_world_model; "
        "pretrained_world_model(cache_dir=os.environ.get('HF_WAGLE_TEST_MODEL'))"]
    whole_suite = config.args_source == pytest.Config.ArgsSource.TESTPATHS
    if whole_suite and "not slow" not in (config.option.markexpr or "") \
            and not (smollm2_dir() / "model.safetensors").exists():
        builds.append("from hf_wagle.real_model import smollm2_path; smollm2_path()")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for proc in [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for code in builds]:
        proc.wait()


@pytest.fixture(scope="session")
def world():
    return make_world()


@pytest.fixture(scope="session")
def trained():
    """The memorised world model and its tokenizer, trained from scratch once and cached (`HF_WAGLE_CACHE`)."""
    model, tokenizer, _ = pretrained_world_model(cache_dir=os.environ.get("HF_WAGLE_TEST_MODEL"))
    return model, tokenizer


@pytest.fixture
def model(trained):
    return copy.deepcopy(trained[0])


@pytest.fixture(scope="session")
def tokenizer(trained):
    return trained[1]


@pytest.fixture(scope="session")
def smollm2():
    """`(model, tokenizer, path)`: the real pretrained SmolLM2-135M-Instruct (fp32), converted once and cached."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_wagle.real_model import smollm2_path

    path = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path), path


@pytest.fixture(scope="session")
def scenario():
    from hf_wagle.real_model import load_scenario

    return load_scenario("element_symbols")


# The fast tier, `pytest -m "not slow"`, runs no real model and starts no other process.
_SLOW_MODULES = {"test_distributed_attribution", "test_distributed_trainer", "test_real_model"}


# The files that take longest (`--durations`, two workers), run first: pytest-xdist hands out whole files in
# collection order (`--dist loadfile --no-loadscope-reorder`), so the short ones left at the end even out the workers.
_LONGEST_FIRST = ("docs/index.md", "tests/test_distributed_trainer.py", "tests/test_real_model.py",
                  "tests/test_demo.py", "tests/test_compare.py", "tests/test_evaluation_examples.py",
                  "tests/test_cli.py", "tests/test_extending.py")


def pytest_collection_modifyitems(config, items):
    """Mark `slow` every test that uses SmolLM2 (the `smollm2` fixture) or lives in a module that launches ranks;
    put the files of `_LONGEST_FIRST` first, in its order."""
    for item in items:
        module = getattr(getattr(item, "module", None), "__name__", "")
        if "smollm2" in getattr(item, "fixturenames", ()) or module.rsplit(".", 1)[-1] in _SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
