"""The user's entry script, as ParallelRunStep runs it: init() once per worker, then
run(mini_batch) per mini-batch. A debug target that finds the file named by
PRS_MODEL_DIE_FILE claims it (once, across all workers) and dies inside run(), so the
manager replaces it. Any worker that finds the file named by PRS_MODEL_RAISE_FILE claims
it (once) and raises ValueError inside run() (the post-mortem tests' LINE_OF_RAISE)."""

import json
import os
import time


def init():
    pass


def run(mini_batch):
    total = sum(mini_batch)
    record(total)  # the tests' breakpoint line (LINE_IN_RUN)
    die_if_chosen()
    if claimed("PRS_MODEL_RAISE_FILE"):
        raise ValueError("bad mini-batch %r" % (mini_batch,))  # LINE_OF_RAISE
    return [total]


def claimed(variable):
    path = os.environ.get(variable, "")
    if not path:
        return False
    try:
        os.rename(path, path + ".claimed")
    except OSError:
        return False
    return True


def record(total):
    with open(os.environ["PRS_MODEL_RESULTS"], "a") as f:
        f.write(json.dumps({"event": "run", "pid": os.getpid(), "total": total, "t": time.time()}) + "\n")


def die_if_chosen():
    die_file = os.environ.get("PRS_MODEL_DIE_FILE", "")
    if not die_file or os.environ.get("AMLX_DEBUG_TARGET") != "true":
        return
    try:
        os.rename(die_file, die_file + ".claimed")
    except OSError:
        return
    os._exit(17)
