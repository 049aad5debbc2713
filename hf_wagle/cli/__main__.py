"""`python -m hf_wagle.cli ...`, as `torchrun -m hf_wagle.cli attribute --fsdp ...` and `accelerate launch -m
hf_wagle.cli unlearn ...` run it."""

import sys

from hf_wagle.cli import main

if __name__ == "__main__":
    sys.exit(main())
