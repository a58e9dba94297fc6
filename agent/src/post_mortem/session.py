# amlx-agent's post-mortem session, on the hook's side (`post_mortem::hook`): compiled
# only when an exception reaches one of the hook's handlers (hook.py), so a step that
# never raises does not pay for it. The hook calls `run_session(...)`, which asks the
# helper (`amlx-agent post-mortem`) for a session, connects debugpy, waits until a
# debugger is configured or the helper ends the session (the deadline is the helper's),
# and stops at the frame that raised. It returns when the session is over; the hook then
# lets Python report the exception as it would have. Everything it says goes to stdout.
import os
import sys

# How long the helper may take to say whether there is a session and to make its
# relay path usable (its own bounds are shorter: 15 s for the relay's answer).
ready_wait_s = 60.0
# How long the helper may take to finish once this process is done with it.
helper_exit_wait_s = 5.0
# Pause between two looks at whether a debugger is configured.
poll_s = 0.05
# How long past the helper's attach deadline the hook waits for the helper to end the
# session before it stops waiting on its own (a helper that hangs must not hold the
# process forever).
deadline_grace_s = 30.0
# The most of the exception's message the helper is told (it shows it in `status`).
message_chars = 2000


def say(line):
    """One line on stdout, never blocking: dropped when stdout is a pipe nobody empties
    (a crashed process must not hang on its own log line)."""
    import select

    data = ("amlx-agent: %s\n" % line).encode("utf-8", "replace")[:4000]
    try:
        _, writable, _ = select.select([], [1], [], 0)
        if writable:
            # Up to PIPE_BUF bytes into a pipe that has room go in whole, at once.
            os.write(1, data)
    except (OSError, ValueError):
        pass


def describe(exc_type, exc):
    name = getattr(exc_type, "__qualname__", None) or getattr(exc_type, "__name__", "?")
    module = getattr(exc_type, "__module__", None)
    if module and module not in ("builtins", "__main__"):
        name = "%s.%s" % (module, name)
    try:
        message = str(exc)
    except BaseException:
        message = "<exception str() failed>"
    return text(name), text(message)[:message_chars]


def text(value):
    """Any str (lone surrogates from undecodable names included) as valid UTF-8 text."""
    try:
        return str(value).encode("utf-8", "replace").decode("utf-8", "replace")
    except BaseException:
        return "?"


def innermost(tb):
    while tb.tb_next is not None:
        tb = tb.tb_next
    return "%s:%d" % (tb.tb_frame.f_code.co_filename, tb.tb_lineno)


def read_line(fd, deadline, pending):
    import select
    import time

    while b"\n" not in pending[0]:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        pending[0] += chunk
    line, _, rest = pending[0].partition(b"\n")
    pending[0] = rest
    return line.decode("utf-8", "replace")


def run_session(exc_type, exc, tb, thread_name, helper_argv, spawn_worker):
    """Holds this process in a post-mortem session, or returns at once."""
    helper = None
    # Once the watching thread owns the helper's stdout (see watch()): its end event.
    watching = [None]
    try:
        import json
        import subprocess
        import threading
        import time

        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        name, message = describe(exc_type, exc)
        helper = subprocess.Popen(
            helper_argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=1,
            close_fds=True,
        )
        crash = {
            "type": name,
            "message": message,
            "thread": text(thread_name),
            "where": text(innermost(tb)),
            "spawn_worker": bool(spawn_worker),
        }
        helper.stdin.write(json.dumps(crash).encode("ascii") + b"\n")
        helper.stdin.flush()
        fd = helper.stdout.fileno()
        pending = [b""]
        deadline = time.monotonic() + ready_wait_s
        words = (read_line(fd, deadline, pending) or "").split()
        if len(words) != 5 or words[0] != "debugpy":
            return
        mode, host, port = words[1], words[2], int(words[3])
        attach_deadline = time.monotonic() + int(words[4]) + deadline_grace_s
        answer = read_line(fd, deadline, pending)
        if answer != "ready":
            why = (answer or "")[len("error "):] if (answer or "").startswith("error ") else (
                "the helper did not answer within %d s" % ready_wait_s if answer is None else answer
            )
            say("no post-mortem session: %s; the process exits as it would have" % why)
            return
        # Not the frozen-modules warning on stderr: stderr stays Python's. (Left set:
        # pydevd reads it when it starts, in the connecting thread.)
        os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        ended = threading.Event()
        try:
            import debugpy

            quiet_pydevd()
            debugpy.configure(subProcess=False)
            if mode == "connect":
                # debugpy.connect() returns only once a debugger has configured the
                # session, and never if none does: it waits in a thread of its own,
                # and this one waits for whichever comes first, that or the end.
                def connect():
                    try:
                        debugpy.connect((host, port))
                    except Exception as error:
                        say("post-mortem session: debugpy could not connect: %s" % (error,))
                        ended.set()

                threading.Thread(target=connect, name="amlx-agent connect", daemon=True).start()
            else:
                debugpy.listen((host, port))
        except ImportError as error:
            say(
                "no post-mortem session: debugpy is not importable by `%s` (%s: %s); "
                "install it in the step's environment%s"
                % (
                    sys.executable,
                    type(error).__name__,
                    error,
                    " (or drop -S / -I, which hide site-packages)" if sys.flags.no_site or sys.flags.isolated else "",
                )
            )
            return

        def watch():
            # The helper ends the session (the deadline passed, the debugger left) by
            # exiting: its stdout reaches EOF. This thread owns the pipe from here on and
            # closes it itself (closed under a blocked read, its number could be reused).
            try:
                while os.read(fd, 4096):
                    pass
            except OSError:
                pass
            try:
                helper.stdout.close()
            except BaseException:
                pass
            ended.set()

        watching[0] = ended
        threading.Thread(target=watch, name="amlx-agent post-mortem", daemon=True).start()
        while not ended.is_set() and not debugpy.is_client_connected():
            if time.monotonic() >= attach_deadline:
                say(
                    "the post-mortem helper did not end the session %d s after its deadline; "
                    "the process exits as it would have" % deadline_grace_s
                )
                # It hangs: waiting for it to end on its own would only add to the bound.
                helper.kill()
                return
            ended.wait(poll_s)
        if ended.is_set():
            return
        trigger = getattr(debugpy, "trigger_exception_handler", None)
        if trigger is not None:
            trigger((exc_type, exc, tb), as_uncaught=False)
        else:
            stop_without_api(exc_type, exc, tb)
    except Exception as error:
        say("post-mortem session failed: %s: %s" % (type(error).__name__, error))
    except BaseException:
        # Ctrl-C (or an exit) while held: the session is over; Python reports the
        # crash as it would have.
        pass
    finally:
        if helper is not None:
            pipes = [helper.stdin] if watching[0] is not None else [helper.stdin, helper.stdout]
            for pipe in pipes:
                try:
                    pipe.close()
                except BaseException:
                    pass
            try:
                helper.wait(helper_exit_wait_s)
            except BaseException:
                try:
                    helper.kill()
                    helper.wait(helper_exit_wait_s)
                except BaseException:
                    pass
            if watching[0] is not None:
                # The helper is gone: its pipe's EOF reaches the watching thread at once.
                try:
                    watching[0].wait(1.0)
                except BaseException:
                    pass


def quiet_pydevd():
    # pydevd reports its own troubles (a refused connection, with a traceback) on
    # stderr, which must stay Python's: its log goes nowhere instead (best effort,
    # for the pydevd inside debugpy 1.8; PYDEVD_DEBUG_FILE, when set, still wins).
    if os.environ.get("PYDEVD_DEBUG_FILE"):
        return
    try:
        import debugpy.server.api  # noqa: F401 (loads pydevd)

        logging_globals = sys.modules["_pydev_bundle.pydev_log"]._LoggingGlobals
        with logging_globals._initialize_lock:
            logging_globals._debug_stream = open(os.devnull, "w")
            logging_globals._debug_stream_initialized = True
    except Exception:
        pass


def stop_without_api(exc_type, exc, tb):
    # debugpy before 1.8.17 has no trigger_exception_handler: pydevd's own
    # post-mortem stop, on the innermost frame.
    import threading

    import pydevd

    py_db = pydevd.get_global_debugger()
    if py_db is None:
        return
    frame = tb
    while frame.tb_next is not None:
        frame = frame.tb_next
    thread = threading.current_thread()
    py_db.set_additional_thread_info(thread)
    py_db.do_stop_on_unhandled_exception(thread, frame.tb_frame, None, (exc_type, exc, tb))

original_excepthook = sys.excepthook
