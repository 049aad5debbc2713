"""Experiments: things that train in order to measure.

`hf_wagle.evaluation` only measures a model it is given; the experiments here unlearn models themselves (through
`WagleTrainer`) and measure what each run did.

Modules: `compare` (`compare_masks`: unlearn the same model and data through several masks and seeds, and compare the
utility each keeps at matched forgetting; the library side of `hf-wagle compare-masks`), and `robustness` (`audit`:
whether a run's forgetting survives quantisation, relearning and another prompt format; the library side of
`hf-wagle audit`).

Both report progress through `Progress`: runs (or audit stages) done of those planned, time elapsed and an estimate
of the time left.
"""

import math
import time
from dataclasses import dataclass

# The default relearning attack. Published ones fine-tune on forget data for epochs, not steps: WMDP's, 3 epochs
# at lr 1e-5 on a 7B model (Fan et al., ICML 2025). On SmolLM2-135M and the shipped element-symbols scenario, 2
# steps at lr 2e-5 restored 0.004 of what NPO removed where 10 steps at 1e-4 restored all of it (recovery 1.16 to
# 1.25): an attack too weak to find anything is no audit. So: 3 epochs over the attacker's half, at least 10 steps,
# at lr 1e-4 (a small model needs a larger rate than a 7B one for the same change).
RELEARN_EPOCHS, RELEARN_MIN_STEPS, RELEARN_LR = 3, 10, 1e-4


@dataclass(frozen=True)
class RelearnProtocol:
    """A relearning attack: `epochs` passes over the attacker's rows (at least `min_steps` steps), or a fixed number
    of `steps`, of AdamW at `learning_rate` with `batch_size` rows per step (None: the audit's batch size)."""

    learning_rate: float
    epochs: int | None = None
    steps: int | None = None
    min_steps: int = 1
    batch_size: int | None = None
    source: str = ""

    def steps_for(self, rows: int, batch_size: int) -> int:
        """`steps`, else `max(min_steps, epochs * ceil(rows / batch_size))`."""
        if self.steps is not None:
            return self.steps
        return max(self.min_steps, self.epochs * math.ceil(rows / batch_size))


# The published attacks as Fan et al. (ICML 2025) ran them on 7B models, for numbers comparable with theirs (their
# learning rate moves a small model less than a 7B one), and this package's default.
RELEARN_PROTOCOLS = {
    "default": RelearnProtocol(RELEARN_LR, epochs=RELEARN_EPOCHS, min_steps=RELEARN_MIN_STEPS,
                               source="3 epochs over the attacker's rows, at least 10 steps, lr 1e-4"),
    "wmdp": RelearnProtocol(1e-5, epochs=3, batch_size=16,
                            source="WMDP's (Fan et al., ICML 2025): 3 epochs at lr 1e-5, batch 16, on forget rows"),
    "muse": RelearnProtocol(1e-5, steps=100,
                            source="MUSE's (Fan et al., ICML 2025: 50 to 150 steps at lr 1e-5): 100 steps"),
}


def duration(seconds: float) -> str:
    """`42 s`, `3.5 min` or `1.2 h`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class Progress:
    """Prints `[done/total] message (elapsed, about L left)` after each of `total` units of work, where
    `L = elapsed / done * (total - done)`: the mean time of a finished unit times the units left (units of unequal
    cost make it rough, which `about` says)."""

    def __init__(self, total: int, out=print):
        self.total, self.done, self.out, self.start = total, 0, out, time.monotonic()

    def step(self, message: str) -> None:
        self.done += 1
        if self.out is None:
            return
        elapsed = time.monotonic() - self.start
        left = elapsed / self.done * (self.total - self.done)
        tail = f"about {duration(left)} left" if self.done < self.total else "done"
        self.out(f"[{self.done}/{self.total}] {message} ({duration(elapsed)} elapsed, {tail})")
