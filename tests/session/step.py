"""An unchanged training step for the end-to-end tests: no debugpy import, no flags.

BREAKPOINT_LINE in tests/session/harness.rs names the line of `marker = ...`.
"""

import os
import sys


def train(steps):
    total = 0
    for step in range(steps):
        total += step
    marker = "breakpoint here"
    return total, marker


if __name__ == "__main__":
    total, _ = train(4)
    rank = os.environ.get("AMLX_RANK") or "?"
    print(f"step.py rank {rank} done total {total}", flush=True)
    sys.exit(int(os.environ.get("STEP_EXIT_CODE", "0")))
