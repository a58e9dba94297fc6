"""A model of ParallelRunStep's driver (the step's command): it starts the per-node
worker manager as a fresh process, `python .../driver/worker_main.py <args>`, as the
real driver does locally (or over ssh). Exits with the manager's exit code."""

import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.exit(subprocess.call([sys.executable, os.path.join(here, "worker_main.py")] + sys.argv[1:]))
