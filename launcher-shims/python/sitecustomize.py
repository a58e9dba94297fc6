"""amlx-agent's hook for processes it does not start itself (see amlx_shim.py).

Enable it with one setting a job definition can carry: put this folder first on
PYTHONPATH. Any other `sitecustomize` on the path still runs, after this one.
"""

import amlx_shim

amlx_shim.activate()
amlx_shim.chain_sitecustomize(__file__)
