"""Helpers the tests import (`from support import ...`); fixtures live in conftest.py."""


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def small_args(tmp_path, **kw):
    from hf_wagle import WagleConfig

    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=6, learning_rate=1e-3,
                report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True, logging_steps=1000, seed=0)
    base.update(kw)
    return WagleConfig(**base)
