"""Brings Python processes that amlx-agent did not start under `amlx-agent exec`.

Loaded at interpreter start by `sitecustomize.py` (a `PYTHONPATH` entry) or by
`amlx_shim.pth` (baked into site-packages). A process that is not already the step of
an agent is re-executed in place, same PID and same open descriptors, as
`amlx-agent exec -- <this interpreter> <its arguments>`: multiprocessing *spawn*
workers, `subprocess` children running Python, ParallelRunStep's `worker_main`.
The agent then decides whether the process is a debug target.

The guard is per process: the agent exports the PID it ran as (`AMLX_AGENT_PID`) and
how it runs its step (`AMLX_AGENT_PROCESS`); only that one process counts as wrapped.
An inherited flag would stop the wrapping of every child too.

Nothing here may break the interpreter: any failure is one line on stderr and the
process goes on unwrapped.
"""

import os
import sys

# Set once this interpreter asked to be wrapped. Seen again in the same process (replace)
# or in its child (supervise), the agent did not mark its step (an old agent), and
# wrapping again would never end. The step itself drops it, so its children start clean.
_REEXEC_VAR = "AMLX_SHIM_REEXEC_PID"
# Room left on the command line for what the agent adds before its own execve (its
# AMLX_* variables, debugpy's arguments): a command line the kernel takes for Python
# must not fail with E2BIG one exec later.
_ARG_ROOM = 64 * 1024
_activated = False


def _flag(value):
    """True / False for the usual spellings, None for anything else."""
    word = value.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    return None


def enabled(env):
    """Whether to wrap at all: not when switched off, and only when debugging may be on
    (AMLX_POST_MORTEM or AMLX_DEBUG true, or AMLX_DEBUG unset with a config file that may
    turn it on), so an image with the hook baked in pays nothing when nobody debugs."""
    if env.get("AMLX_SHIM", "").strip().lower() == "off":
        return False
    if _flag(env.get("AMLX_POST_MORTEM", "")) is True:
        return True
    debug = env.get("AMLX_DEBUG", "")
    if debug.strip():
        return _flag(debug) is True
    return bool(env.get("AMLX_CONFIG", "").strip()) or os.path.isfile("/etc/amlx/agent.toml")


def _canonical_pid(text):
    """A PID as the agent writes it: ASCII digits, no sign, no leading zero, not zero, no
    spaces (the agent's lineage.rs and the shell shim apply the same rule)."""
    if not text or text[0] == "0" or any(c not in "0123456789" for c in text):
        return None
    return int(text)


def is_step(env, pid, ppid):
    """Whether this process is already the step of an agent (see the module doc)."""
    agent_pid = _canonical_pid(env.get("AMLX_AGENT_PID", ""))
    if agent_pid is None:
        return False
    how = env.get("AMLX_AGENT_PROCESS", "")
    return (how == "replace" and pid == agent_pid) or (how == "supervise" and ppid == agent_pid)


def find_agent(env):
    """AMLX_AGENT_BIN, else the bundle's bin/amlx-agent next to this folder, else PATH."""
    explicit = env.get("AMLX_AGENT_BIN", "").strip()
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    here = os.path.dirname(os.path.abspath(__file__))
    bundled = os.path.join(os.path.dirname(here), "bin", "amlx-agent")
    if os.access(bundled, os.X_OK):
        return bundled
    import shutil

    return shutil.which("amlx-agent")


def _program(argv):
    """The interpreter that is running: `sys.executable` when it is that very file (a
    venv's `bin/python` symlink keeps the venv), else /proc/self/exe. `sys.executable`
    is worked out from argv[0] and PATH, and can name another interpreter or nothing."""
    running = os.readlink("/proc/self/exe")
    if sys.executable:
        try:
            if os.path.samefile(sys.executable, running):
                return os.fsencode(sys.executable)
        except OSError:
            pass
    return os.fsencode(running)


def _is_interpreter():
    """Whether this process is a Python interpreter started as one, not a program that
    embeds Python (uwsgi, gdb, Triton's backend stub): re-executing such a host would run
    what it did before starting Python a second time. The program's own file must be
    named like an interpreter (`python3.11`, `pypy3`), and on 3.10+ it must have been
    given a command line (`sys.orig_argv`, empty for a host that starts Python without
    one)."""
    name = os.path.basename(os.readlink("/proc/self/exe")).lower()
    if not (name.startswith("python") or name.startswith("pypy")):
        return False
    orig_argv = getattr(sys, "orig_argv", None)
    return orig_argv is None or len(orig_argv) > 0


def _fits(argv, env):
    """Whether argv and env leave the agent room under the kernel's ARG_MAX."""
    try:
        limit = os.sysconf("SC_ARG_MAX")
    except (OSError, ValueError):
        return True
    pointer = 8
    size = sum(len(word) + 1 + pointer for word in argv)
    size += sum(len(os.fsencode(k)) + len(os.fsencode(v)) + 2 + pointer for k, v in env.items())
    return size + _ARG_ROOM <= limit


def _own_argv():
    """This process's argv exactly as exec'd (bytes; not decoded, not rewritten)."""
    with open("/proc/self/cmdline", "rb") as f:
        words = f.read().split(b"\0")
    if words and words[-1] == b"":
        words.pop()
    return words


def _warn(message):
    try:
        sys.stderr.write("amlx-agent shim: %s\n" % message)
        sys.stderr.flush()
    except Exception:
        pass


def activate(env=None):
    """Re-executes this interpreter under `amlx-agent exec` when it should be; returns
    only when it should not (or could not)."""
    global _activated
    if _activated:
        return
    _activated = True
    env = os.environ if env is None else env
    try:
        if not enabled(env):
            return
        if sys.version_info[0] < 3:
            # Python 2: debugpy and the agent's hooks need Python 3; the step runs as it is.
            return
        if not _is_interpreter():
            return
        if is_step(env, os.getpid(), os.getppid()):
            env.pop(_REEXEC_VAR, None)
            return
        if env.get(_REEXEC_VAR, "") in (str(os.getpid()), str(os.getppid())):
            env.pop(_REEXEC_VAR, None)
            _warn(
                "the agent did not mark this process as its step (AMLX_AGENT_PID); "
                "running unwrapped (is amlx-agent older than the shim?)"
            )
            return
        agent = find_agent(env)
        if agent is None:
            _warn("amlx-agent not found (set AMLX_AGENT_BIN or put it on PATH); running unwrapped")
            return
        argv = _own_argv()
        if not argv:
            return
        command = [os.fsencode(agent), b"exec", b"--", _program(argv)] + argv[1:]
        if not _fits(command, env):
            _warn("the command line is too long to wrap (near ARG_MAX); running unwrapped")
            return
        os.environ[_REEXEC_VAR] = str(os.getpid())
        os.execv(agent, command)
    except Exception as err:  # never break the interpreter over debugging
        # A failed execv must not leave the loop breaker set for this process's children.
        os.environ.pop(_REEXEC_VAR, None)
        _warn("not wrapped: %s" % (err,))


def chain_sitecustomize(own_file):
    """Runs the next `sitecustomize` on sys.path after the one in own_file's folder, as
    Python would have without ours, and makes it the `sitecustomize` module."""
    here = os.path.dirname(os.path.abspath(own_file))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    if sys.version_info[0] < 3:
        # Python 2 has neither finder: its own `imp` finds and loads the next one.
        import imp

        try:
            found = imp.find_module("sitecustomize", rest)
        except ImportError:
            return
        try:
            imp.load_module("sitecustomize", *found)
        finally:
            if found[0] is not None:
                found[0].close()
        return
    # The import system's own finder and module factory, loaded at every start (what
    # importlib.machinery and importlib.util export): importing importlib.util pulls in
    # contextlib, functools and types, ~6 ms on every interpreter start.
    finder = getattr(sys.modules.get("_frozen_importlib_external"), "PathFinder", None)
    make = getattr(sys.modules.get("_frozen_importlib"), "module_from_spec", None)
    if finder is None or make is None:
        import importlib.machinery
        import importlib.util

        finder, make = importlib.machinery.PathFinder, importlib.util.module_from_spec
    spec = finder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = make(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)
