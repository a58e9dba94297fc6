# amlx-agent's post-mortem hook (`post_mortem::hook`), run in the step's own interpreter.
# The agent runs `python <options> -c <LAUNCHER> <target> <args>`; the launcher executes
# this text from the environment. It installs the unhandled-exception hooks, then runs the
# target exactly as `python <target> <args>` would, in `__main__`. Nothing else happens
# until an exception reaches a hook: no debugger is imported on the normal path.
#
# On an unhandled exception (main thread, another thread, a multiprocessing worker's
# run()) the process asks `amlx-agent post-mortem` (the helper, a child) for a session:
# the helper claims this node's post-mortem slot, reserves a port, opens the relay path
# and publishes the session. Then this process connects debugpy, waits until a debugger
# is configured or the helper ends (the attach deadline is the helper's), stops at the
# frame that raised, and once the debugger leaves prints the traceback Python would have
# printed and exits as Python would have. Every message of ours goes to stdout, so the
# process's stderr is exactly Python's.
#
# What happens at the crash is in session.py, whose text arrives in
# AMLX_POST_MORTEM_SESSION and is compiled only then: a step that never raises pays for
# this file alone. The agent fills in AMLX_HELPER_ARGV (the helper's command line) and
# AMLX_SPAWN_WORKER (whether this process is a multiprocessing spawn worker).
import sys


def _amlx_install_post_mortem(helper_argv, spawn_worker):
    import os

    # Popped, like the hook's own text: no child of the step sees it.
    session_text = os.environ.pop("AMLX_POST_MORTEM_SESSION", "")
    state = {"used": False}
    # Code objects where the step's own frames begin: frames above them are ours.
    anchors = []

    def strip(tb):
        here = tb
        while here is not None:
            code = here.tb_frame.f_code
            if any(code is anchor for anchor in anchors):
                return here
            here = here.tb_next
        return tb

    def session(exc_type, exc, tb, thread_name):
        """Holds this process in a post-mortem session (once), or returns at once. Never
        raises, whatever happens meanwhile (Ctrl-C included): its callers report the
        exception as Python would, before it."""
        try:
            if state["used"] or tb is None or issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
                return
            state["used"] = True
            code = compile(session_text, "<amlx-agent post-mortem>", "exec")
            namespace = {"__name__": "amlx_post_mortem_session"}
            exec(code, namespace)
            namespace["run_session"](exc_type, exc, tb, thread_name, helper_argv, spawn_worker)
        except BaseException:
            pass

    def flush_stderr():
        try:
            sys.stderr.flush()
        except BaseException:
            pass

    original_excepthook = sys.excepthook

    def excepthook(exc_type, exc, tb):
        # Python's own hook reports the exception first, exactly as it would have (the
        # log shows the crash at once); then the session holds the process. Nothing here
        # may fail in a way Python would report ("Error in sys.excepthook").
        try:
            tb = strip(tb)
            if exc is not None:
                # Python prints the exception's own traceback when it has one.
                exc.__traceback__ = tb
        except BaseException:
            pass
        original_excepthook(exc_type, exc, tb)
        flush_stderr()
        # Only the exception that ended the step's main module crashed it: the one the
        # interpreter reports after it left the launcher (`escaped`). Anything else is the
        # step's own code calling the hook (a framework reporting an exception it handled,
        # in any thread or in an atexit handler): Python's report, no session. An
        # interrupted step is left at once, importing nothing: a hook that imports a
        # module makes Python forget that KeyboardInterrupt ended the process (exit 1,
        # not a death by SIGINT).
        if exc is None or state.get("escaped") is not exc:
            return
        if issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
            return
        try:
            threading = sys.modules.get("threading")
            name = threading.current_thread().name if threading is not None else "MainThread"
        except BaseException:
            name = "MainThread"
        session(exc_type, exc, tb, name)

    sys.excepthook = excepthook

    def thread_hook_over(original):
        def thread_hook(args):
            # Reported first: the rest of the process goes on, and may end meanwhile.
            original(args)
            flush_stderr()
            if args.exc_type is not SystemExit:
                name = args.thread.name if args.thread is not None else "?"
                session(args.exc_type, args.exc_value, args.exc_traceback, name)

        return thread_hook

    threading = sys.modules.get("threading")
    if threading is not None:
        # A threading without excepthook (before 3.8, or replaced) is left alone: the
        # step must start whatever it finds.
        original = getattr(threading, "excepthook", None)
        if original is not None:
            threading.excepthook = thread_hook_over(original)
    else:
        # Not imported here: `threading` (with collections and functools) would add ~4 ms
        # to every hooked start of a bare interpreter. threading takes its excepthook
        # from `_thread._excepthook` when it is first imported (3.8+), so the hook goes
        # there: the step's own `import threading` picks it up (as `excepthook` and, as
        # in a plain run, `__excepthook__` too), however and whenever it is imported.
        import _thread

        original = getattr(_thread, "_excepthook", None)
        if original is not None:
            _thread._excepthook = thread_hook_over(original)

    if spawn_worker:
        # multiprocessing's Process._bootstrap catches what run() raises and reports it
        # with traceback.print_exc(): the session is held right after that report.
        import traceback

        original_print_exc = traceback.print_exc

        def print_exc(*args, **kwargs):
            result = original_print_exc(*args, **kwargs)
            try:
                caller = sys._getframe(1)
                ours = caller.f_code.co_name == "_bootstrap" and "multiprocessing" in caller.f_code.co_filename
                exc_type, exc, tb = sys.exc_info()
            except BaseException:
                return result
            if ours and exc_type is not None:
                flush_stderr()
                session(exc_type, exc, tb, "process %s" % os.getpid())
            return result

        traceback.print_exc = print_exc

    return anchors, state


def _amlx_run(target, anchors, state):
    """Runs the target as `python <target>` would, in `__main__`."""
    import os

    import __main__

    globals_ = __main__.__dict__
    # The launcher's own import; the step's namespace starts as Python's would (this text
    # runs in a namespace of its own).
    globals_.pop("os", None)
    # -P / -I (Python 3.11+): nothing is put in front of sys.path, so nothing is replaced.
    safe_path = getattr(sys.flags, "safe_path", False)
    if target[0] == "-m":
        import runpy

        anchors.append(runpy._run_module_as_main.__code__)
        sys.argv[:] = ["-m"] + target[2:]
        if not safe_path:
            # `python -m` puts the current directory first, by its full path.
            sys.path[0] = os.getcwd()
        runpy._run_module_as_main(target[1])
        return
    if target[0] == "-c":
        sys.argv[:] = ["-c"] + target[2:]
        code = compile(target[1], "<string>", "exec")
        anchors.append(code)
        exec(code, globals_)
        return
    path = target[0]
    sys.argv[:] = target
    if not safe_path:
        sys.path[0] = os.path.dirname(os.path.realpath(path))
    # Python 3.9+ names the script by its absolute path (tracebacks, __file__), joined
    # to the current directory as given: `./a/../b.py` stays so.
    filename = path
    if sys.version_info >= (3, 9) and not os.path.isabs(path):
        filename = os.path.join(os.getcwd(), path)
    with open(path, "rb") as source:
        text = source.read()
    try:
        code = compile(text, filename, "exec", dont_inherit=True)
    except SyntaxError:
        # As Python reports a script that does not compile: no traceback header.
        error = sys.exc_info()[1]
        error.__traceback__ = None
        sys.__excepthook__(type(error), error, None)
        raise SystemExit(1)
    anchors.append(code)
    globals_["__file__"] = filename
    globals_["__cached__"] = None
    try:
        # The frozen importlib's own class (importlib.machinery's), without importing
        # importlib at start-up.
        external = sys.modules.get("_frozen_importlib_external")
        if external is None:
            import importlib.machinery as external
        globals_["__loader__"] = external.SourceFileLoader("__main__", filename)
    except Exception:
        pass
    exec(code, globals_)


_amlx_anchors, _amlx_state = _amlx_install_post_mortem(AMLX_HELPER_ARGV, AMLX_SPAWN_WORKER)
try:
    _amlx_run(sys.argv[1:], _amlx_anchors, _amlx_state)
except BaseException as _amlx_error:
    # What the interpreter reports next through sys.excepthook is a crash.
    _amlx_state["escaped"] = _amlx_error
    del _amlx_error
    raise
