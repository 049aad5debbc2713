"""Weight averaging (stochastic weight averaging, Izmailov et al. 2018; a smoothing option of Fan et al. 2025): the
model the run keeps is the mean of the weights after each optimizer step from `weight_averaging_start` on,

    avg_n = avg_{n-1} + (theta_n - avg_{n-1}) / n,    n = 1, 2, ... counting the steps averaged,

a point in the middle of the region the unlearning crossed rather than its last, sharpest step. Each trainable
parameter's average is kept beside it in float32; a weight that no step changed has `theta_n - avg_{n-1} = 0` exactly,
so it keeps its bits (off-mask weights stay bit-identical). From the first averaged step on, the model holds the
average between steps, where evaluations, targets and the best-evaluation restore see it, and the steps train on the
weights themselves (swapped back in when a step begins): memory of the average in float32 and one more copy of
the trainable weights.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from .modeling import local_tensor

logger = logging.get_logger(__name__)


@torch.no_grad()
def update_average(average: torch.Tensor, value: torch.Tensor, n: int) -> None:
    """`average += (value - average) / n` in place (`average` in float32)."""
    average.add_((value.float() - average) / n)


class WeightAveraging(TrainerCallback):
    """Keeps the average of the trainable parameters from step `start` on and holds it in the model between steps.

    Register it before any callback that should see the average at a step's end (`WagleTrainer` does, before its
    evaluation callback)."""

    def __init__(self, start: int):
        self.start = start
        self.averaged = 0  # steps in the average
        self._average: dict[torch.Tensor, torch.Tensor] = {}  # parameter -> its average (local shard)
        self._weights: dict[torch.Tensor, torch.Tensor] = {}  # parameter -> the weights a step trains on

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.restore_weights()

    def on_train_end(self, args, state, control, **kwargs):
        """The model keeps the average (or the best evaluation's weights); the trained weights are let go."""
        self._weights.clear()
        if self.averaged == 0:
            logger.warning(f"weight_averaging_start={self.start}: training ended at step {state.global_step}, before "
                           "any step was averaged; the model is the last step's")

    @torch.no_grad()
    def restore_weights(self) -> None:
        """The weights the steps train on back into the model (the average stays beside it); nothing when the model
        holds them already."""
        for p, weights in self._weights.items():
            local_tensor(p).copy_(weights)
        self._weights.clear()

    @torch.no_grad()
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step < self.start:
            return
        self.averaged += 1
        for p in (p for p in model.parameters() if p.requires_grad):
            value = local_tensor(p)
            if p not in self._average:
                self._average[p] = value.detach().to(torch.float32, copy=True)
            else:
                update_average(self._average[p], value, self.averaged)
            self._weights[p] = value.detach().clone()
            value.copy_(self._average[p])
