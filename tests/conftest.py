import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported, which reads it once
if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers share the cores: one torch thread each, before torch
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # is imported (and in the processes a test starts)
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
from transformers.utils import logging  # noqa: E402

from hf_wagle.world import make_world, pretrained_world_model  # noqa: E402

logging.set_verbosity_error()


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


def pytest_collection_modifyitems(config, items):
    """Mark `slow` every test that uses SmolLM2 (the `smollm2` fixture) or lives in a module that launches ranks."""
    for item in items:
        module = getattr(getattr(item, "module", None), "__name__", "")
        if "smollm2" in getattr(item, "fixturenames", ()) or module.rsplit(".", 1)[-1] in _SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
