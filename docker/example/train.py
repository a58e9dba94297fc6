"""A tiny stand-in for a training step: no dependencies, about a second long.

It prints what amlx-agent told it (rank, debug port) and runs a toy loop whose
local variables are worth a breakpoint. `amlx-agent demo` embeds this file and
suggests the breakpoint on the line its comment marks.
"""

import os
import time


def train(steps: int) -> float:
    loss = 1.0
    for step in range(steps):
        loss = loss * 0.9  # breakpoint: inspect `step` and `loss`
        time.sleep(0.05)
    return loss


def main() -> None:
    rank = os.environ.get("AMLX_RANK") or "?"
    target = os.environ.get("AMLX_DEBUG_TARGET", "false")
    port = os.environ.get("AMLX_DEBUG_PORT", "-")
    print(f"train.py: rank {rank} pid {os.getpid()} debug target {target} port {port}", flush=True)
    final = train(20)
    print(f"train.py: rank {rank} done, loss {final:.4f}", flush=True)


if __name__ == "__main__":
    main()
