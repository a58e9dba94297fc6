"""A model of ParallelRunStep's worker manager (driver/worker_main.py): switches
multiprocessing to *spawn* (as the real one does, force=True), starts N workers that
each import the entry script, call init() once and run(mini_batch) per mini-batch, and
replaces a worker that dies (once), as the real manager does.

Usage: worker_main.py ENTRY_SCRIPT RESULTS_FILE WORKERS BATCHES
"""

import importlib.util
import json
import multiprocessing
import os
import sys
import time

# How long the manager waits for all workers before giving up (a test bound).
MANAGER_DEADLINE_S = 240


def record(results, **fields):
    fields["pid"] = os.getpid()
    fields["t"] = time.time()
    with open(results, "a") as f:
        f.write(json.dumps(fields) + "\n")


def worker(index, entry, results, batches):
    record(
        results,
        event="start",
        index=index,
        target=os.environ.get("AMLX_DEBUG_TARGET"),
        port=os.environ.get("AMLX_DEBUG_PORT"),
        debugpy="debugpy" in sys.modules,
    )
    spec = importlib.util.spec_from_file_location("entry_script", entry)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.init()
    for batch in range(batches):
        module.run([index, batch, 1])
    record(results, event="done", index=index)


def main():
    entry, results, workers, batches = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    multiprocessing.set_start_method("spawn", force=True)
    running = {}
    for index in range(workers):
        process = multiprocessing.Process(target=worker, args=(index, entry, results, batches))
        process.start()
        running[index] = process
    replaced = False
    deadline = time.time() + MANAGER_DEADLINE_S
    failed = 0
    while running and time.time() < deadline:
        for index, process in list(running.items()):
            if process.exitcode is None:
                continue
            del running[index]
            if process.exitcode == 0:
                continue
            record(results, event="died", index=index, exitcode=process.exitcode)
            if replaced:
                failed += 1
                continue
            replaced = True
            new_index = workers + index
            replacement = multiprocessing.Process(
                target=worker, args=(new_index, entry, results, batches)
            )
            replacement.start()
            running[new_index] = replacement
        time.sleep(0.05)
    for process in running.values():
        process.kill()
    sys.exit(1 if running or failed else 0)


if __name__ == "__main__":
    main()
