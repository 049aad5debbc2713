"""`python -m hf_wagle.cli ...`, as `torchrun -m hf_wagle.cli attribute --fsdp ...` and `accelerate launch -m
hf_wagle.cli unlearn ...` run it."""

import os
import sys

from hf_wagle.cli import main

if __name__ == "__main__":
    status = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under a launcher, leave without the interpreter's teardown. The work is done and written, and the process
        # group destroyed, but a thread left by a finished gloo/FSDP2 run can still abort a rank at exit
        # ("terminate called without an active exception"), which the launcher reports as a failed run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
