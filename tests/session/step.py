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
    # One write: the ranks share mpiexec's stdout, and under PYTHONUNBUFFERED print()
    # writes the text and its newline separately, so lines could interleave.
    os.write(1, f"step.py rank {rank} done total {total}\n".encode())
    gate = os.environ.get("STEP_GATE")
    if gate:
        # A test holds the step here to look at its live session (bounded: 60 s).
        import time

        for _ in range(600):
            if os.path.exists(gate):
                break
            time.sleep(0.1)
    sys.exit(int(os.environ.get("STEP_EXIT_CODE", "0")))
