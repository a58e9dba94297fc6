"""A training step that crashes, for the post-mortem tests: no debugpy, no flags.

The ranks named in CRASH_RANKS (comma-separated; every rank when unset) raise ValueError
on RAISE_LINE (tests/session/post_mortem.rs), where `scale` is a local variable; CRASH_IN
says where: "main" (default), "thread" (a worker thread), "daemon" (a daemon thread,
the main thread exiting 0.5 s later), "exit" (sys.exit(3), not a crash), "unprintable"
(an exception whose str() fails), "str-exits" (whose str() raises SystemExit(5)),
"handled" (caught, reported through sys.excepthook, exit 0), "handled-thread" (the
same in a worker thread), "handled-atexit" (the same in an atexit handler), "fill" (64000
bytes on stdout first). The others print their result and exit 0. CRASH_LOOKUP_THREADING=1 looks
`threading` up (importlib.util.find_spec) before importing it.
"""

import os
import sys

if os.environ.get("CRASH_LOOKUP_THREADING"):
    # A lookup before the import (as "is it available" probes do) changes nothing.
    import importlib.util

    importlib.util.find_spec("threading")
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


def say(line):
    # One write per line: the ranks share mpiexec's stdout, and under PYTHONUNBUFFERED
    # print() writes each argument and the newline separately, so lines interleave.
    os.write(1, (line + "\n").encode())


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no text")


class StrExits(Exception):
    def __str__(self):
        raise SystemExit(5)


rank = rank_of_this_process()
where = os.environ.get("CRASH_IN", "main")
if where == "exit":
    sys.exit(3)
if where == "unprintable":
    raise Unprintable()
if where == "str-exits":
    raise StrExits()
if where == "handled":
    try:
        train(rank)
    except ValueError:
        sys.excepthook(*sys.exc_info())
    sys.exit(0)
if where in ("handled-thread", "handled-atexit"):
    import atexit

    def report():
        try:
            train(rank)
        except ValueError:
            sys.excepthook(*sys.exc_info())
        say("rank %d reported a handled error" % rank)

    if where == "handled-atexit":
        atexit.register(report)
    else:
        worker = threading.Thread(target=report, name="loader")
        worker.start()
        worker.join()
    sys.exit(0)
if where == "fill":
    os.write(1, b"x" * 64000)
if where == "daemon":
    import time

    threading.Thread(target=train, args=(rank,), name="loader", daemon=True).start()
    time.sleep(0.5)
    sys.exit(0)
if where == "thread":
    worker = threading.Thread(target=train, args=(rank,), name="loader")
    worker.start()
    worker.join()
    say("rank %d main thread done" % rank)
else:
    say("rank %d result %d" % (rank, train(rank)))
