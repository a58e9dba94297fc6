"""A training step that crashes, for the post-mortem tests: no debugpy, no flags.

The ranks named in CRASH_RANKS (comma-separated; every rank when unset) raise ValueError
on RAISE_LINE (tests/session/post_mortem.rs), where `scale` is a local variable; CRASH_IN
says where: "main" (default), "thread" (a worker thread), "exit" (sys.exit(3), not a
crash), "unprintable" (an exception whose str() fails). The others print their result
and exit 0.
"""

import os
import sys
import threading


def train(rank):
    batch = [rank, 7]
    scale = sum(batch) * 6
    if os.environ.get("CRASH_RANKS") is None or str(rank) in os.environ["CRASH_RANKS"].split(","):
        raise ValueError("loss is nan at scale %d (é)" % scale)
    return scale


def rank_of_this_process():
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no text")


rank = rank_of_this_process()
where = os.environ.get("CRASH_IN", "main")
if where == "exit":
    sys.exit(3)
if where == "unprintable":
    raise Unprintable()
if where == "thread":
    worker = threading.Thread(target=train, args=(rank,), name="loader")
    worker.start()
    worker.join()
    print("rank", rank, "main thread done", flush=True)
else:
    print("rank", rank, "result", train(rank), flush=True)
