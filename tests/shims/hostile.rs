//! Hostile cases for the shims: each test is a way a job could run a Python process or a
//! launcher that the shims must survive without changing what the job sees (exit code,
//! interpreter, environment) and without hanging. Every test here failed when written;
//! the reproduction is in the test's doc comment.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{path_with, shims_dir, with_python_hook};
use crate::util;

/// The interpreter `python3` on PATH really runs (resolving pyenv-style shims).
fn real_python() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .env("AMLX_SHIM", "off")
        .output()
        .expect("python3 runs");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A scratch folder with the agent's locks and state in it and debugging on.
fn debug_on(cmd: &mut Command, dir: &Path) {
    cmd.env("AMLX_DEBUG", "1")
        .env("AMLX_RANKS", "99")
        .env("AMLX_LOCK_DIR", dir.join("locks"))
        .env("AMLX_STATE_DIR", dir.join("state"))
        .env("NO_COLOR", "1");
}

fn write_exe(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// `bash -c 'exec -a weird python3 -c "import sys; sys.exit(3)"'` with the hook and
/// AMLX_DEBUG=1 exits 127 ("amlx-agent: cannot run 'weird'"): with an argv[0] Python
/// cannot resolve, `sys.executable` is empty and the hook re-executes argv[0].
#[test]
fn an_argv0_that_is_not_a_path_to_python_does_not_lose_the_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = with_python_hook(real_python());
    debug_on(&mut cmd, dir.path());
    cmd.arg0("weird-name-not-on-path")
        .args(["-c", "import sys; sys.exit(3)"]);
    let out = util::output_bounded(&mut cmd);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the step did not run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `bash -c 'exec -a python3 /usr/bin/python3.11 x.py'` with another `python3` first on
/// PATH: the hook re-executes `sys.executable`, which CPython derived from argv[0] by a
/// PATH lookup, so the step runs under a *different* interpreter (here: a stand-in that
/// exits 42).
#[test]
fn the_hook_re_executes_the_interpreter_that_was_running_not_the_one_argv0_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let decoy_dir = dir.path().join("decoy");
    std::fs::create_dir(&decoy_dir).expect("mkdir");
    write_exe(
        &decoy_dir.join("python3"),
        "#!/bin/sh\necho 'WRONG INTERPRETER' >&2\nexit 42\n",
    );
    let mut path = OsString::from(&decoy_dir);
    path.push(":");
    path.push(path_with(None));
    let mut cmd = with_python_hook(real_python());
    debug_on(&mut cmd, dir.path());
    cmd.env("PATH", path)
        .arg0("python3")
        .args(["-c", "import sys; sys.exit(3)"]);
    let out = util::output_bounded(&mut cmd);
    assert_eq!(
        out.status.code(),
        Some(3),
        "another interpreter ran the step: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two copies of the shim script on PATH (a copy "installed under the name", plus the
/// bundle's `bin/`; or the bundle reached through two bind mounts):
/// `PATH=/a:/b:/usr/bin python3 -c pass` with `cp amlx-shim /a/python3; cp amlx-shim
/// /b/python3` never ends: each copy's "next python3 that is not me" is the other one.
#[test]
fn two_copies_of_the_python_shim_on_path_do_not_exec_each_other_forever() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = std::fs::read_to_string(shims_dir().join("bin/amlx-shim")).expect("shim");
    let mut path = OsString::new();
    for copy in ["a", "b"] {
        let bin = dir.path().join(copy);
        std::fs::create_dir(&bin).expect("mkdir");
        write_exe(&bin.join("python3"), &script);
        path.push(&bin);
        path.push(":");
    }
    path.push(path_with(None));
    let mut cmd = util::clean(Command::new("python3"));
    debug_on(&mut cmd, dir.path());
    cmd.env("PATH", path)
        .env("AMLX_DEBUG", "0")
        .args(["-c", "import sys; sys.exit(3)"]);
    let out = util::output_within(&mut cmd, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

/// Open MPI 3.x/4.x `mpirun` refuses to start when `-x VAR` is given and
/// `OMPI_MCA_mca_base_env_list` is set ("orterun:conflict-env-set", ORTE_ERR_FATAL).
/// The mpirun shim always sets the latter, even with debugging off, so
/// `mpirun -x NCCL_DEBUG -n 2 python train.py` stops working when the shims are on PATH.
/// The stand-in `mpirun` below makes Open MPI's check.
#[test]
fn mpirun_with_dash_x_still_starts_under_open_mpi() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("ompi");
    std::fs::create_dir(&fake).expect("mkdir");
    write_exe(
        &fake.join("mpirun"),
        "#!/bin/sh\n\
         for a in \"$@\"; do\n\
           if [ \"$a\" = -x ] && [ -n \"${OMPI_MCA_mca_base_env_list+set}\" ]; then\n\
             echo 'ERROR: You have attempted to pass environment variables to Open MPI with both the \"-x\" method and by setting the MCA parameter \"mca_base_env_list\".' >&2\n\
             exit 1\n\
           fi\n\
         done\n\
         exit 0\n",
    );
    for debug in ["0", "1"] {
        let mut path = OsString::from(shims_dir().join("bin"));
        path.push(":");
        path.push(&fake);
        path.push(":");
        path.push(path_with(None));
        let mut cmd = util::clean(Command::new("mpirun"));
        debug_on(&mut cmd, dir.path());
        cmd.env("PATH", path).env("AMLX_DEBUG", debug).args([
            "-x",
            "NCCL_DEBUG",
            "-n",
            "2",
            "python3",
            "train.py",
        ]);
        let out = util::output_bounded(&mut cmd);
        assert!(
            out.status.success(),
            "AMLX_DEBUG={debug}: Open MPI's mpirun would refuse to start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `AMLX_DEBUG=0 PATH=launcher-shims/bin:$PATH python3 -c 'import os;
/// print(os.environ["PYTHONPATH"], os.environ["OMPI_MCA_mca_base_env_list"])'`: with
/// debugging off the python shim still rewrites PYTHONPATH and sets
/// OMPI_MCA_mca_base_env_list for the program and all its children.
#[test]
fn with_debugging_off_the_python_shim_leaves_the_environment_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut path = OsString::from(shims_dir().join("bin"));
    path.push(":");
    path.push(path_with(None));
    let mut cmd = util::clean(Command::new("python3"));
    debug_on(&mut cmd, dir.path());
    cmd.env("PATH", path)
        .env("AMLX_DEBUG", "0")
        .env_remove("PYTHONPATH")
        .args([
            "-c",
            "import os; print(repr(os.environ.get('PYTHONPATH')), \
             repr(os.environ.get('OMPI_MCA_mca_base_env_list')))",
        ]);
    let out = util::output_bounded(&mut cmd);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "None None",
        "the environment changed with debugging off"
    );
}

/// The shims once appended PYTHONPATH and every AMLX_* name to Open MPI's
/// OMPI_MCA_mca_base_env_list at every nested `python3`, forwarding PID-bound variables to
/// other nodes (and making Open MPI refuse `-x`). They leave it alone now: nested
/// interpreters with debugging on see it exactly as the user set it (here: unset).
#[test]
fn nested_python_shims_leave_the_mpi_forwarding_list_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The real interpreter's folder right after the shims: a pyenv-style `python3`
    // would put it first on PATH and hide the shims from the inner `python3`.
    let mut path = OsString::from(shims_dir().join("bin"));
    path.push(":");
    path.push(real_python().parent().expect("a folder"));
    path.push(":");
    path.push(path_with(None));
    let inner = "import os; print(repr(os.environ.get('OMPI_MCA_mca_base_env_list')))";
    let outer =
        format!("import subprocess; subprocess.run(['python3', '-c', {inner:?}], check=True)");
    let mut cmd = util::clean(Command::new("python3"));
    debug_on(&mut cmd, dir.path());
    cmd.env("PATH", path).args(["-c", &outer]);
    let out = util::output_bounded(&mut cmd);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "None",
        "{out:?}"
    );
}

/// Near ARG_MAX: a command line the kernel accepts for python is re-executed as
/// `amlx-agent exec -- <sys.executable> ...`; the agent then adds its AMLX_* variables
/// and its own `execve` fails with E2BIG: "amlx-agent: cannot run '...python3':
/// Argument list too long (exit 126)". The step is gone; unhooked it exits 7.
#[test]
fn a_command_line_near_arg_max_still_runs_the_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let python = real_python();
    // `len` bytes of arguments: 999-byte words and one shorter word for the rest.
    let run = |len: usize, hook: bool| -> Option<i32> {
        let mut cmd = with_python_hook(&python);
        debug_on(&mut cmd, dir.path());
        if !hook {
            cmd.env("AMLX_SHIM", "off");
        }
        cmd.env("PAD", "x".repeat(100_000))
            .args(["-c", "import sys; sys.exit(7)"])
            .args(std::iter::repeat_n("a".repeat(999), len / 1000));
        if !len.is_multiple_of(1000) {
            cmd.arg("b".repeat(len % 1000 - 1));
        }
        match cmd.output() {
            Ok(out) => out.status.code(),
            Err(_) => None, // E2BIG at spawn: too long even unhooked
        }
    };
    // The longest command line that python accepts unhooked.
    let (mut lo, mut hi) = (1000usize, 8_000_000usize);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if run(mid, false) == Some(7) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    eprintln!("longest unhooked command line: {lo} bytes of arguments");
    assert_eq!(run(lo, false), Some(7));
    // Right at the limit the hook's own execv fails and it falls back; a few hundred
    // bytes below it, that execv succeeds and the agent's fails.
    for len in (lo.saturating_sub(1000)..=lo).step_by(16) {
        assert_eq!(
            run(len, true),
            Some(7),
            "{len} bytes of arguments (limit {lo}): the step runs unhooked, not with the hook"
        );
    }
}

/// An older agent that supervises its step (runs it as a child) and does not export
/// AMLX_AGENT_PID: the loop breaker (AMLX_SHIM_REEXEC_PID) compares PIDs, the child
/// has a new PID, so every level wraps itself again without end. The stand-in agent
/// stops at depth 10.
#[test]
fn an_old_supervising_agent_does_not_make_the_hook_wrap_without_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("old-agent");
    write_exe(
        &fake,
        "#!/bin/sh\n\
         d=$(( ${OLD_AGENT_DEPTH:-0} + 1 )); export OLD_AGENT_DEPTH=$d\n\
         [ $d -gt 10 ] && { echo \"runaway: depth $d\" >&2; exit 111; }\n\
         shift 2; \"$@\"; exit $?\n",
    );
    let mut cmd = with_python_hook(real_python());
    debug_on(&mut cmd, dir.path());
    cmd.env("AMLX_AGENT_BIN", &fake)
        .args(["-c", "import sys; sys.exit(3)"]);
    let out = util::output_bounded(&mut cmd);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PATH with the shims and an interpreter's folder and nothing else (no coreutils):
/// `env -i PATH=<shims>/bin:<venv>/bin <shims>/bin/python3 -c 'print(1)'` exec'd itself
/// for ever, debugging off or on, because the shim told itself from the next program on
/// PATH with readlink, head and grep. Without an interpreter after it, it looped too,
/// instead of exiting 127 with a message. So did the mpiexec shim.
#[test]
fn a_path_without_coreutils_runs_the_program_and_never_loops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let python_dir = real_python()
        .parent()
        .expect("the interpreter has a folder")
        .to_owned();
    let only = dir.path().join("only");
    std::fs::create_dir(&only).expect("mkdir");
    write_exe(&only.join("mpiexec"), "#!/bin/sh\nexit 5\n");
    let bin = shims_dir().join("bin");
    // (program, PATH after the shims, AMLX_DEBUG, expected exit code, expected stderr)
    let cases: [(&str, &Path, &str, i32, &str); 5] = [
        ("python3", &python_dir, "0", 3, ""),
        ("python3", &python_dir, "1", 3, ""),
        (
            "python3",
            Path::new("/nonexistent"),
            "0",
            127,
            "no python3 on PATH after the shim",
        ),
        ("mpiexec", &only, "0", 5, ""),
        (
            "mpiexec",
            Path::new("/nonexistent"),
            "1",
            127,
            "no mpiexec on PATH after the shim",
        ),
    ];
    for (program, after, debug, code, said) in cases {
        let mut path = OsString::from(&bin);
        path.push(":");
        path.push(after);
        let mut cmd = Command::new(bin.join(program));
        cmd.env_clear();
        debug_on(&mut cmd, dir.path());
        cmd.env("PATH", path)
            .env("AMLX_DEBUG", debug)
            .env("AMLX_AGENT_BIN", util::agent_bin())
            .args(["-c", "import sys; sys.exit(3)"]);
        let out = util::output_within(&mut cmd, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{program} {after:?} {debug}: {stderr}"
        );
        assert!(
            stderr.contains(said),
            "{program} {after:?} {debug}: {stderr}"
        );
        assert!(
            stderr.lines().count() <= 3,
            "{program} {after:?} {debug}: {stderr}"
        );
    }
}

/// `AMLX_SHIM=off` turns every shim off (README), but the entrypoint shim still put the
/// hook on PYTHONPATH and ran the command under `amlx-agent exec`.
/// (`OFF` and spaces around it count, as for the Python hook; the shell shims compared
/// with `off` exactly.) With no command at all it says what to give it.
#[test]
fn the_entrypoint_shim_switched_off_runs_the_command_plainly() {
    let dir = tempfile::tempdir().expect("tempdir");
    for off in ["off", " OFF "] {
        let mut cmd = util::clean(Command::new(shims_dir().join("bin/amlx-entrypoint")));
        debug_on(&mut cmd, dir.path());
        cmd.env("PATH", path_with(None))
            .env("AMLX_SHIM", off)
            .env_remove("PYTHONPATH")
            .args([
                "sh",
                "-c",
                "echo \"[$PYTHONPATH] [${AMLX_AGENT_PID:-}]\"; exit 6",
            ]);
        let out = util::output_bounded(&mut cmd);
        assert_eq!(out.status.code(), Some(6), "{off:?}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "[] []",
            "{off:?}: {out:?}"
        );
    }
    let mut cmd = util::clean(Command::new(shims_dir().join("bin/amlx-entrypoint")));
    cmd.env("PATH", path_with(None)).env("AMLX_SHIM", "off");
    let out = util::output_bounded(&mut cmd);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("give the command to run"),
        "{out:?}"
    );
}

/// A program that embeds Python (uwsgi, gdb, Triton's backend stub) with the hook on
/// PYTHONPATH and debugging on: the hook re-executed the host itself under the agent,
/// so whatever the host did before starting Python ran twice (and read stdin twice). An
/// embedded interpreter starts with no original command line: the hook leaves it be.
/// Played here by an interpreter whose `sys.orig_argv` is emptied before the hook acts.
#[test]
fn a_program_that_embeds_python_is_not_re_executed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = with_python_hook("python3");
    debug_on(&mut cmd, dir.path());
    cmd.env("AMLX_SHIM", "off").args([
        "-c",
        "import os, sys, amlx_shim\n\
         print('host work', flush=True)\n\
         sys.orig_argv = []\n\
         env = dict(os.environ, AMLX_SHIM='on', AMLX_AGENT_BIN=sys.argv[1])\n\
         amlx_shim._activated = False\n\
         amlx_shim.activate(env)\n\
         print('left alone', flush=True)",
    ]);
    cmd.arg(util::agent_bin());
    let out = util::output_bounded(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.matches("host work").count(),
        1,
        "re-executed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("left alone"), "{out:?}");
}

/// With debugging off the hook costs its own import and nothing else (README): the
/// modules loaded at start are the plain interpreter's plus the hook's own. Chaining to
/// another sitecustomize (Debian ships one) imported importlib.util, and with it
/// contextlib, functools and more: ~6 ms on every Python start on the node.
#[test]
fn with_debugging_off_the_hook_loads_no_module_but_its_own() {
    let modules = |hooked: bool| -> std::collections::BTreeSet<String> {
        let mut cmd = util::clean(Command::new("python3"));
        cmd.env("AMLX_DEBUG", "0")
            .args(["-c", "import sys; print('\\n'.join(sorted(sys.modules)))"]);
        if hooked {
            cmd.env("PYTHONPATH", shims_dir().join("python"));
        } else {
            cmd.env_remove("PYTHONPATH");
        }
        let out = util::output_bounded(&mut cmd);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let plain = modules(false);
    let added: Vec<String> = modules(true)
        .difference(&plain)
        .filter(|m| !matches!(m.as_str(), "amlx_shim" | "sitecustomize"))
        .cloned()
        .collect();
    assert!(added.is_empty(), "the hook loaded {added:?}");
}
