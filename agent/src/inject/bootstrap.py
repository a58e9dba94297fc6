# The start of a debug target's Python, in the step's own interpreter (amlx-agent's
# `inject::bootstrap`). The agent runs `python <options> -c <LAUNCHER> <target> <args>`,
# the launcher executes this text from the environment, and this text starts debugpy's
# command line exactly as `python -m debugpy <args> <target> <args>` would, or, when
# debugpy cannot be imported, runs the target without it in this same interpreter and
# says why. One interpreter either way: asking a second one first cost ~80 ms a start.
# The agent fills in the six values below; everything else is fixed text.
import os
import sys


_amlx_stderr_waited = []


def _amlx_say(text):
    # One line for the step's stderr (fd 2). A stderr that is closed, gone, or a pipe or
    # terminal nobody reads or empties any more must neither end the step nor hold it:
    # without the agent nothing would have been written. A pipe or a terminal is written
    # through an open file of its own, non-blocking (the step's fd 2 stays blocking; one
    # written after select said there was room still blocked: a terminal until the whole
    # line fit, a pipe another writer filled first), a socket with MSG_DONTWAIT. The
    # first line that finds no room waits up to AMLX_STDERR_WAIT seconds for some; after
    # that a line that finds none is dropped. Opened and closed each time: the step may
    # close descriptors it did not open, and a number kept here could name its file.
    try:
        import select
        import stat
        import time

        data = text.encode("utf-8", "backslashreplace")
        deadline = time.monotonic() + (0.0 if _amlx_stderr_waited else AMLX_STDERR_WAIT)
        mode = os.fstat(2).st_mode
        fd, sock = 2, None
        if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            try:
                fd = os.open(
                    "/proc/self/fd/2",
                    os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY,
                )
            except OSError:
                fd = 2
        elif stat.S_ISSOCK(mode):
            import socket

            sock = socket.socket(fileno=os.dup(2))
        try:
            while data:
                left = max(0.0, deadline - time.monotonic())
                if not select.select([], [fd if sock is None else sock], [], left)[1]:
                    _amlx_stderr_waited.append(True)
                    return
                try:
                    if sock is None:
                        written = os.write(fd, data[:4096])
                    else:
                        written = sock.send(data[:4096], socket.MSG_DONTWAIT)
                except BlockingIOError:
                    if left == 0.0:
                        _amlx_stderr_waited.append(True)
                        return
                    continue
                data = data[written:]
        finally:
            if fd != 2:
                os.close(fd)
            if sock is not None:
                sock.close()
    except Exception:
        pass


def _amlx_not_run(fail):
    # What the sidecar's record adds when the step will not run at all.
    return "; the step does not run (--on-debug-failure fail)" if fail else ""


def _amlx_bootstrap(report_fd, debugpy_args, fail):
    said = []

    def report(line):
        # One line to the sidecar (the session's status), then the pipe is gone, so no
        # child of the step inherits it. Only the first call writes: the descriptor's
        # number may belong to another file after the close.
        if report_fd < 0 or said:
            return
        said.append(line)
        try:
            os.write(report_fd, line.encode("utf-8", "replace")[:4000] + b"\n")
        except OSError:
            pass
        try:
            os.close(report_fd)
        except OSError:
            pass

    try:
        from debugpy.server import cli
    except Exception as error:  # not installed, or installed but broken
        why = "debugpy is not importable by `%s` (%s: %s)" % (
            sys.executable,
            type(error).__name__,
            error,
        )
        report("missing " + why + _amlx_not_run(fail))
        fix = "install it in the step's environment (`%s -m pip install debugpy`)" % (
            sys.executable,
        )
        if fail:
            _amlx_say(
                "amlx-agent: %s: %s; not running the step (--on-debug-failure fail)\n"
                % (why, fix)
            )
            os._exit(1)
        _amlx_say(
            "amlx-agent: debugging disabled for this run: %s: %s or use --inject none; "
            "running the step without a debugger\n" % (why, fix)
        )
        return None
    if "--listen" not in debugpy_args:
        report("ok")
    # else: said once debugpy listens, or why it could not (`_amlx_guard_the_listen`).
    sys.argv[1:1] = debugpy_args
    return cli, report


def _amlx_release_at(bound):
    # When the agent's own wait is let go (time.monotonic()): the agent's AMLX_RELEASE_AT,
    # counted from the session's start, or `bound` from now without it.
    import time

    now = time.monotonic()
    if AMLX_RELEASE_AT is None:
        return now + bound
    return min(AMLX_RELEASE_AT, now + bound)


def _amlx_let_go_at(at, done, release_after, let_go):
    # The last resort of both guards below: once `at` (time.monotonic()) has passed
    # without `done` being set, says so once, then calls `let_go` until the wait ends
    # (debugpy may not be ready to be let go at first: it is tried every 0.1 s).
    import time

    if done.wait(max(0.0, at - time.monotonic())):
        return
    _amlx_say(
        "amlx-agent: no debugger finished attaching within %g s (the attach timeout and "
        "the agent's release grace); the step runs on without one\n" % release_after
    )
    while not done.is_set():
        try:
            let_go()
        except Exception:
            pass
        done.wait(0.1)


def _amlx_bound_the_wait(release_after, agents_wait):
    # debugpy's `wait_for_client` holds the step until a client finishes its setup: the
    # agent's own (`--wait-for-client`) and a step's own call alike (prior-art code:
    # `debugpy.listen(5678)`, then `debugpy.wait_for_client()`, which in connect mode, with
    # the listen answered by `_amlx_answer_the_steps_listen`, no debugger ever ends). The
    # sidecar releases the agent's wait at the attach deadline over DAP, which needs
    # debugpy's adapter to play along; one that a client left half set up may not. So
    # every wait is also cancelled from here once `release_after` has passed, if it still
    # waits: since this start for the first (the agent's own), since its call for later
    # ones (a step that waits late in its run gets its own count). A last resort that
    # needs nothing but this process.
    import threading
    import time

    import debugpy

    bound = min(release_after, threading.TIMEOUT_MAX / 2)
    # The agent's own wait ends at the session's time (AMLX_RELEASE_AT, on this machine's
    # monotonic clock), however late this interpreter started.
    first = [_amlx_release_at(bound)] if agents_wait else []
    wait = debugpy.wait_for_client

    def bounded_wait(*args, **kwargs):
        steps_own = not first
        at = first.pop() if first else time.monotonic() + bound
        done = threading.Event()

        def cancel_at_the_deadline():
            # debugpy makes its cancel hook when the wait begins: tried until it ends.
            _amlx_let_go_at(at, done, release_after, wait.cancel)

        threading.Thread(
            target=cancel_at_the_deadline, name="amlx-agent release", daemon=True
        ).start()
        try:
            return wait(*args, **kwargs)
        except RuntimeError as error:
            # The session debugpy was started for is over (its connection closed after a
            # release): debugpy says no listen() or connect() was made. Nobody is coming;
            # the step's own wait ends here instead of ending the step.
            if not steps_own or "must be called first" not in str(error):
                raise
            _amlx_say(
                "amlx-agent: the step's own debugpy.wait_for_client() returns at once: the "
                "debug session is over (%s)\n" % error
            )
            return None
        finally:
            done.set()

    debugpy.wait_for_client = bounded_wait


class _AmlxNoDebugger(Exception):
    pass


def _amlx_guard_the_connect(release_after):
    # debugpy's `--connect` holds the step until a debugger finishes its setup, with no
    # bound of its own and nothing to cancel it with. The sidecar releases it at the
    # attach deadline over debugpy's connection, and the sidecar's keeper does if the
    # sidecar dies; with both gone (`pkill -9 amlx-agent`) nothing would. So past
    # `release_after` since this start, if the connect still waits, pydevd is told to
    # run, as a debugger's configurationDone would: a last resort that needs nothing but
    # this process.
    # And when nothing listens at all (the sidecar and its keeper gone before debugpy
    # started), debugpy's connect ends the whole step with a traceback: the CLI's call
    # raises `_AmlxNoDebugger` instead, and the step runs without debugpy.
    # One call only: a later `debugpy.connect` of the step's own is the step's business.
    import threading
    import time

    import debugpy

    connect = debugpy.connect
    at = None
    if release_after is not None:
        at = _amlx_release_at(min(release_after, threading.TIMEOUT_MAX / 2))

    def debugger():
        try:
            return sys.modules["pydevd"].get_global_debugger()
        except Exception:  # not imported yet, or half way
            return None

    def run_at_the_deadline(done):
        # pydevd forgets its debugger when its connection closes, while the step still
        # waits on that debugger: take hold of it first (it exists within milliseconds).
        held = [None]
        while held[0] is None and time.monotonic() < at and not done.wait(0.05):
            held[0] = debugger()

        def run():
            # As a debugger's configurationDone would.
            held[0] = held[0] or debugger()
            held[0].ready_to_run = True
            held[0]._py_db_command_thread_event.set()

        _amlx_let_go_at(at, done, release_after, run)

    def guarded_connect(*args, **kwargs):
        debugpy.connect = connect
        done = threading.Event()
        if at is not None:
            threading.Thread(
                target=run_at_the_deadline,
                args=(done,),
                name="amlx-agent release",
                daemon=True,
            ).start()
        try:
            return connect(*args, **kwargs)
        except OSError as error:
            raise _AmlxNoDebugger(
                "debugpy could not connect to the debug sidecar (%s: %s)"
                % (type(error).__name__, error)
            )
        finally:
            done.set()

    debugpy.connect = guarded_connect


# The longest the agent's debugpy.listen() may take to start debugpy's adapter before the
# step runs without debugpy: listen() waits for the adapter's first process with no bound,
# then up to 30 s for its endpoints, then reads them with none, so an adapter whose
# interpreter hung or crawled (a network file system, a stopped process) held the step,
# waiting for a debugger or not, for as long. Twice this interpreter's own start when that
# is longer: a slow environment slows the adapter's interpreter as much.
_AMLX_ADAPTER_START_BOUND = 15.0


class _AmlxAlarm(BaseException):
    # Raised into debugpy's listen() by the alarm of `_amlx_listen_within`: a BaseException
    # passes its `except Exception` handlers (which would wrap or swallow it) untouched.
    pass


def _amlx_own_start():
    # Seconds since this process started (its interpreter's start among them), or 0.
    try:
        with open("/proc/self/stat") as stat:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as uptime:
            up = float(uptime.read().split()[0])
        return max(0.0, up - start_ticks / os.sysconf("SC_CLK_TCK"))
    except Exception:
        return 0.0


def _amlx_listen_within(seconds, listen, *args, **kwargs):
    # debugpy's `listen(*args, **kwargs)`, ended after `seconds` by a SIGALRM timer: the
    # late adapter is ended (`_amlx_end_the_late_adapter`) and RuntimeError says so.
    # Only where the alarm is free: in the main thread (where Python runs handlers), with
    # no handler, timer or block of the step's own on SIGALRM; else the call is unbounded,
    # as without the agent. The handler and the timer are put back as they were.
    import signal
    import threading

    try:
        free = (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)
            and signal.SIGALRM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
            and signal.getitimer(signal.ITIMER_REAL)[0] == 0.0
        )
    except Exception:
        free = False
    if not free:
        return listen(*args, **kwargs)
    returned = []
    armed = [True]

    def alarm(signum, frame):
        if armed[0] and not returned:
            raise _AmlxAlarm()

    signal.signal(signal.SIGALRM, alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
        try:
            returned.append(listen(*args, **kwargs))
        except _AmlxAlarm:
            _amlx_end_the_late_adapter()
            raise RuntimeError("debugpy's adapter did not start within %g s" % seconds)
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    return returned[0]


def _amlx_end_the_late_adapter():
    # The adapter process of a listen() given up on: ended, and reaped if it goes at once, so
    # it neither starts listening later nor stays a zombie child of the step.
    try:
        adapter = sys.modules["debugpy.server.api"]._adapter_process
        adapter.kill()
        adapter.wait(timeout=1)
    except Exception:
        pass


def _amlx_guard_the_listen(report, fail):
    # debugpy's `--listen` ends the whole step with a traceback when it cannot listen
    # (another process took the port after the agent chose it, say): the CLI's call
    # raises `_AmlxNoDebugger` instead, and the step runs without debugpy. The sidecar
    # hears "ok" once debugpy listens, or why it does not, and records it.
    # One call only: later ones are the step's own (`_amlx_answer_the_steps_listen`).
    import debugpy

    listen = debugpy.listen

    def guarded_listen(*args, **kwargs):
        debugpy.listen = listen
        bound = max(_AMLX_ADAPTER_START_BOUND, 2.0 * _amlx_own_start())
        try:
            endpoint = _amlx_listen_within(bound, listen, *args, **kwargs)
        except Exception as error:
            where = args[0] if args else kwargs.get("address")
            if isinstance(where, tuple) and len(where) == 2:
                where = "%s:%s" % where
            why = "debugpy could not listen on %s (%s: %s)" % (
                where,
                type(error).__name__,
                error,
            )
            report("missing " + why + _amlx_not_run(fail))
            raise _AmlxNoDebugger(why)
        # With the port the adapter listens on: the agent may have let it pick one.
        try:
            report("ok %d" % int(endpoint[1]))
        except Exception:
            report("ok")
        _amlx_answer_the_steps_listen(endpoint)
        return endpoint

    debugpy.listen = guarded_listen


# debugpy's own `listen`, while `_amlx_answer_the_steps_listen` stands in for it.
_amlx_listen_of_debugpy = []


def _amlx_answer_the_steps_listen(endpoint):
    # A step's own `debugpy.listen(5678)` (the prior art's code: listen, then
    # `wait_for_client()`) after the agent started debugpy raised "listen() has already
    # been called", or "Address already in use" on the agent's port in connect mode, and
    # ended the step. debugpy already serves this process: the call is answered with its
    # endpoint (`endpoint`, or the address asked for when debugpy connected out) and a
    # note, and changes nothing.
    import debugpy

    _amlx_listen_of_debugpy.append(debugpy.listen)

    def steps_listen(address, *args, **kwargs):
        answer = endpoint
        if answer is None:
            answer = address if isinstance(address, tuple) else ("127.0.0.1", address)
        _amlx_say(
            "amlx-agent: the step's own debugpy.listen(%r) does nothing: debugpy already "
            "serves this process (started by amlx-agent)\n" % (address,)
        )
        return answer

    debugpy.listen = steps_listen


def _amlx_run_plain(target):
    # The target as `python <target>` runs it, but in this interpreter.
    import runpy

    if os.environ.get("PYTHONBREAKPOINT") == "debugpy.breakpoint":
        del os.environ["PYTHONBREAKPOINT"]
    # What the agent exports for a step it does not debug (its `mark_undebugged`).
    os.environ.pop("AMLX_DEBUG_PORT", None)
    os.environ["AMLX_DEBUG_TARGET"] = "false"
    os.environ["AMLX_AGENT_STEP_KIND"] = "other"
    if target[0] == "-m":
        sys.argv[:] = ["-m"] + target[2:]
        runpy._run_module_as_main(target[1])
    elif target[0] == "-c":
        import __main__

        sys.argv[:] = ["-c"] + target[2:]
        exec(compile(target[1], "<string>", "exec"), __main__.__dict__)
    else:
        sys.argv[:] = target
        sys.path[0] = os.path.dirname(os.path.realpath(target[0]))
        runpy.run_path(target[0], run_name="__main__")


def _amlx_exit_unless_openable(target):
    # `python FILE` with a FILE it cannot open says why and exits 2. debugpy's runner
    # raised a traceback and exited 1 instead: a missing script changed the step's exit
    # code. Only looked at, never opened: opening a FIFO would take the one write a
    # writer makes. A directory (or zip) with `__main__.py` is Python's to judge.
    import stat

    if not target or target[0] in ("-m", "-c"):
        return
    path = target[0]
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISREG(mode) and not os.access(path, os.R_OK):
            raise PermissionError(13, os.strerror(13))
    except OSError as error:
        program = (getattr(sys, "orig_argv", None) or [sys.executable])[0]
        sys.stderr.write(
            "%s: can't open file %r: [Errno %s] %s\n"
            % (program, os.path.abspath(path), error.errno, error.strerror)
        )
        sys.stderr.flush()
        os._exit(2)


_amlx_target = sys.argv[1:]
_amlx_exit_unless_openable(_amlx_target)
_amlx_started = _amlx_bootstrap(AMLX_REPORT_FD, AMLX_DEBUGPY_ARGS, AMLX_FAIL)
if _amlx_started is not None:
    _amlx_cli, _amlx_report = _amlx_started
    try:
        if "--listen" in AMLX_DEBUGPY_ARGS:
            _amlx_guard_the_listen(_amlx_report, AMLX_FAIL)
        else:
            _amlx_answer_the_steps_listen(None)
    except Exception as error:
        _amlx_report("ok")
        _amlx_say("amlx-agent: cannot guard debugpy's listen (%s)\n" % error)
    if AMLX_RELEASE_AFTER is not None:
        try:
            _amlx_bound_the_wait(
                AMLX_RELEASE_AFTER, "--wait-for-client" in AMLX_DEBUGPY_ARGS
            )
        except Exception as error:
            _amlx_say("amlx-agent: cannot bound debugpy's wait (%s)\n" % error)
    # debugpy's CLI connects only when no debugpy runs yet (its own guard, the same test).
    if (
        "--connect" in AMLX_DEBUGPY_ARGS
        and os.environ.get("DEBUGPY_RUNNING", "false") != "true"
    ):
        try:
            _amlx_guard_the_connect(AMLX_RELEASE_AFTER)
        except Exception as error:
            _amlx_say("amlx-agent: cannot guard debugpy's connect (%s)\n" % error)
    try:
        _amlx_cli.main()
    except _AmlxNoDebugger as error:
        # debugpy does not serve this process after all: the step's own listen is its own.
        if _amlx_listen_of_debugpy:
            import debugpy

            debugpy.listen = _amlx_listen_of_debugpy[0]
        if AMLX_FAIL:
            _amlx_say(
                "amlx-agent: %s; not running the step (--on-debug-failure fail)\n" % error
            )
            os._exit(1)
        _amlx_say(
            "amlx-agent: debugging disabled for this run: %s; running the step without "
            "a debugger\n" % error
        )
        _amlx_run_plain(_amlx_target)
else:
    _amlx_run_plain(_amlx_target)
