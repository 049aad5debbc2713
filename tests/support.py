"""Helpers the tests import (`from support import ...`); fixtures live in conftest.py."""


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def small_args(tmp_path, **kw):
    from hf_wagle import WagleConfig

    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=6, learning_rate=1e-3,
                report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True, logging_steps=1000, seed=0)
    base.update(kw)
    return WagleConfig(**base)


def expected_step(model, masks, micro_batches, rho, lr, disruption=False, gamma=None):
    """One SGD step of grad_diff as the modules' docstrings define it, computed independently:
    g = sum_i grad(-NLL_f,i(theta)) / n (masked), eps = rho * g / ||g||,
    g_f = sum_i grad(-NLL_f,i(theta + eps)) / n, g_r = sum_i grad(NLL_r,i(theta)) / n,
    theta' = theta - lr * mask * (g_f + g_r), or with disruption masking
    theta' = theta - lr * mask * (g_r + g_f * [sign(g_f) * sign(g_r) > 0]); with the gradient-norm penalty
    (gamma), g_f = c * g_f + (1 - c) * g with c = 2 * gamma * ||g|| / rho."""
    import torch

    from hf_wagle.losses import sequence_nll

    params = dict(model.named_parameters())
    n = len(micro_batches)

    def grads(loss_of):
        model.zero_grad()
        for batch in micro_batches:
            (loss_of(batch) / n).backward()
        return {k: p.grad.clone() * masks[k] for k, p in params.items()}

    g = grads(lambda b: -sequence_nll(model, b["forget"]).token_mean)
    norm = torch.linalg.vector_norm(torch.stack([v.norm() for v in g.values()]))
    eps = {k: rho * v / norm for k, v in g.items()} if rho else {}
    with torch.no_grad():
        for k, e in eps.items():
            params[k].add_(e)
    forget = grads(lambda b: -sequence_nll(model, b["forget"]).token_mean)
    with torch.no_grad():
        for k, e in eps.items():
            params[k].sub_(e)
    retain = grads(lambda b: sequence_nll(model, b["retain"]).token_mean)
    if gamma is not None:
        c = 2 * gamma * float(norm) / rho
        forget = {k: c * forget[k] + (1 - c) * g[k] for k in forget}
    if disruption:
        forget = {k: g * ((g.sign() * retain[k].sign()) > 0) for k, g in forget.items()}
    return {k: (p - lr * (forget[k] + retain[k])).detach() for k, p in params.items()}
