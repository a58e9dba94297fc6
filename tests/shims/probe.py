"""A step for the shim tests: records how it runs, then does what argv says.

Appends one JSON line to $SHIM_PROBE_OUT: its pid, the agent's marks (AMLX_AGENT_PID,
AMLX_AGENT_PROCESS, AMLX_DEBUG_TARGET), whether debugpy is loaded and its rank (MPI's or torchrun's).

  probe.py exit N         exit with code N
  probe.py chain N CODE   start itself N more times, alternating `sys.executable` (the
                          hook's reach) and `python3` looked up on PATH (the shim's),
                          and exit with the innermost one's code CODE
  probe.py kill           end by SIGTERM to itself
"""

import json
import os
import signal
import subprocess
import sys


def record():
    with open(os.environ["SHIM_PROBE_OUT"], "a") as f:
        f.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "agent_pid": os.environ.get("AMLX_AGENT_PID"),
                    "process": os.environ.get("AMLX_AGENT_PROCESS"),
                    "target": os.environ.get("AMLX_DEBUG_TARGET"),
                    "debugpy": "debugpy" in sys.modules,
                    "rank": os.environ.get("PMI_RANK") or os.environ.get("RANK"),
                }
            )
            + "\n"
        )


record()
what = sys.argv[1] if len(sys.argv) > 1 else "exit"
if what == "exit":
    sys.exit(int(sys.argv[2]))
if what == "chain":
    left, code = int(sys.argv[2]), sys.argv[3]
    if left == 0:
        sys.exit(int(code))
    interpreter = sys.executable if left % 2 else "python3"
    sys.exit(subprocess.call([interpreter, os.path.abspath(__file__), "chain", str(left - 1), code]))
if what == "kill":
    os.kill(os.getpid(), signal.SIGTERM)
sys.exit(99)
