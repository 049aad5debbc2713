"""`me`: maximum entropy on the forget answers (Yuan et al., "A Closer Look at Machine Unlearning for LLMs", 2025)."""

from ..losses import sequence_nll, uniform_kl
from .base import Objective, register_objective


@register_objective("me")
class MaxEntropy(Objective):
    """Mean over the labelled forget tokens t of `KL(p_theta(. | y_<t, x) || U) = log V - H(p_theta(. | y_<t, x))`.

    Each answer position is pushed towards the uniform distribution over the vocabulary (V tokens) instead of away
    from its answer: the loss is bounded below by 0, so unlike ascent it cannot diverge, and it acts only where a
    forget answer is labelled (with `forget_tokens="key"`, only on the tokens that carry the fact)."""

    def forget_loss(self, trainer, model, inputs):
        batch = inputs["forget"]
        out = sequence_nll(model, batch, keep_logits=True)
        return uniform_kl(out.logits, batch["labels"]), {"forget_nll": out.token_mean.detach()}
