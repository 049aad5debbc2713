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

import time

# The default relearning attack. Published ones fine-tune on forget data for epochs, not steps: WMDP's, 3 epochs
# at lr 1e-5 on a 7B model (Fan et al., ICML 2025). On SmolLM2-135M and the shipped element-symbols scenario, 2
# steps at lr 2e-5 restored 0.004 of what NPO removed where 10 steps at 1e-4 restored all of it (recovery 1.16 to
# 1.25): an attack too weak to find anything is no audit. So: 3 epochs over the attacker's half, at least 10 steps,
# at lr 1e-4 (a small model needs a larger rate than a 7B one for the same change).
RELEARN_EPOCHS, RELEARN_MIN_STEPS, RELEARN_LR = 3, 10, 1e-4


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
