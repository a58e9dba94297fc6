//! Finding and starting the step's program like a shell: `PATH` lookup, the `/bin/sh`
//! fallback for scripts without `#!`, and one-line 127 / 126 errors.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::unistd::{AccessFlags, access};

use super::{ExecError, Step};

/// Exit code when the command does not exist (shell convention).
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit code when the command exists but cannot be executed (shell convention).
pub const EXIT_NOT_EXECUTABLE: i32 = 126;

/// Search path when neither the step nor the agent has `PATH` (what shells fall back to).
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Runs files the kernel refuses with `ENOEXEC` (no `#!`), as `execvp` and shells do.
const FALLBACK_SHELL: &str = "/bin/sh";

/// Whether the step's program can be found and run at all (`PATH` lookup, as
/// [`launch`] does): a debug session for a step that cannot start is set up for nothing.
pub(super) fn findable(step: &Step) -> bool {
    step.argv.first().is_some_and(|name| {
        // A name with a slash is taken as given, found or not.
        find(name, step_path(step).as_deref()).is_ok_and(|program| program.exists())
    })
}

/// Resolves the step's program and hands a ready [`Command`] to `attempt` (which execs or
/// spawns it). A file without `#!` that the kernel refuses is retried through `/bin/sh`.
pub(super) fn launch<T>(
    step: &Step,
    mut attempt: impl FnMut(Command) -> io::Result<T>,
) -> Result<T, ExecError> {
    let Some((name, args)) = step.argv.split_first() else {
        return Err(exec_error(OsStr::new(""), EXIT_NOT_FOUND, "empty command"));
    };
    let program = find(name, step_path(step).as_deref())?;
    let mut command = Command::new(&program);
    command.arg0(name).args(args);
    step_env(&mut command, step);
    match attempt(command) {
        Ok(started) => Ok(started),
        Err(err) if err.raw_os_error() == Some(Errno::ENOEXEC as i32) => {
            let mut command = Command::new(FALLBACK_SHELL);
            command.arg(&program).args(args);
            step_env(&mut command, step);
            attempt(command).map_err(|_| classify(name, &program, &err))
        }
        Err(err) => Err(classify(name, &program, &err)),
    }
}

/// The step's environment: the agent's, minus `env_remove`, plus `env`.
fn step_env(command: &mut Command, step: &Step) {
    for key in &step.env_remove {
        command.env_remove(key);
    }
    command.envs(step.env.iter().cloned());
}

/// Registers `body` to run in the child between std's own setup (process group, SIGPIPE
/// reset to the default) and `execve`; with [`CommandExt::exec`] that is this process.
/// The caller guarantees `body` is async-signal-safe (no allocation, no locks): after a
/// fork of a threaded process nothing else is sound.
#[allow(unsafe_code)]
pub(super) fn pre_exec(
    command: &mut Command,
    body: impl FnMut() -> io::Result<()> + Send + Sync + 'static,
) {
    // SAFETY: both callers pass closures that only make async-signal-safe system calls
    // (tcsetpgrp, fcntl, sigaction, pthread_sigmask) on values prepared before the fork.
    unsafe { command.pre_exec(body) };
}

/// Clears close-on-exec on `fds` so the step inherits them. Async-signal-safe (no
/// allocation), so it may run in a `pre_exec` closure.
#[allow(unsafe_code)]
pub(super) fn inherit_fds(fds: &[RawFd]) -> io::Result<()> {
    for &fd in fds {
        if fd < 0 {
            return Err(Errno::EBADF.into());
        }
        // SAFETY: `fd` is non-negative (never the -1 niche) and the borrow lives only for
        // the two fcntl calls below; `Step::keep_fds` requires the descriptors to be open,
        // and fcntl on a number that is not open fails with EBADF without touching memory.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let flags = FdFlag::from_bits_truncate(fcntl(borrowed, FcntlArg::F_GETFD)?);
        fcntl(borrowed, FcntlArg::F_SETFD(flags - FdFlag::FD_CLOEXEC))?;
    }
    Ok(())
}

/// The `PATH` the step will see: its own override, else the agent's.
fn step_path(step: &Step) -> Option<OsString> {
    step.env
        .iter()
        .rev()
        .find(|(key, _)| key == "PATH")
        .map(|(_, value)| value.clone())
        .or_else(|| std::env::var_os("PATH"))
}

/// Shell lookup: a name with `/` is used as is; otherwise the first executable regular
/// file in `PATH` (an empty entry is the current directory). A match that is not
/// executable is remembered, so "permission denied" (126) beats "not found" (127).
fn find(name: &OsStr, path_var: Option<&OsStr>) -> Result<PathBuf, ExecError> {
    if name.is_empty() {
        return Err(exec_error(name, EXIT_NOT_FOUND, "command not found"));
    }
    if name.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(name));
    }
    let path_var = path_var.unwrap_or(OsStr::new(DEFAULT_PATH));
    let mut not_executable = None;
    for dir in std::env::split_paths(path_var) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let candidate = dir.join(name);
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        if access(&candidate, AccessFlags::X_OK).is_ok() {
            return Ok(candidate);
        }
        not_executable.get_or_insert(candidate);
    }
    match not_executable {
        Some(_) => Err(exec_error(name, EXIT_NOT_EXECUTABLE, "permission denied")),
        None => Err(exec_error(name, EXIT_NOT_FOUND, "command not found")),
    }
}

/// Names why `execve(program)` failed, with the shell's exit code.
fn classify(name: &OsStr, program: &Path, err: &io::Error) -> ExecError {
    let errno = err.raw_os_error().map(Errno::from_raw);
    let exists = program.symlink_metadata().is_ok();
    let (code, reason) = match errno {
        // ENOENT for a file that exists: its `#!` interpreter or ELF loader is missing.
        Some(Errno::ENOENT) if exists => (
            EXIT_NOT_FOUND,
            "required file not found (missing #! interpreter or loader?)".to_owned(),
        ),
        Some(Errno::ENOENT | Errno::ENOTDIR) => {
            (EXIT_NOT_FOUND, "no such file or directory".to_owned())
        }
        Some(Errno::EACCES | Errno::EPERM) if program.is_dir() => {
            (EXIT_NOT_EXECUTABLE, "is a directory".to_owned())
        }
        Some(Errno::EACCES | Errno::EPERM) => (EXIT_NOT_EXECUTABLE, "permission denied".to_owned()),
        Some(Errno::ENOEXEC) => (EXIT_NOT_EXECUTABLE, "exec format error".to_owned()),
        _ => (EXIT_NOT_EXECUTABLE, err.to_string()),
    };
    ExecError {
        too_long: errno == Some(Errno::E2BIG),
        ..exec_error(name, code, &reason)
    }
}

fn exec_error(name: &OsStr, exit_code: i32, reason: &str) -> ExecError {
    ExecError {
        exit_code,
        message: format!("cannot run '{}': {reason}", name.to_string_lossy()),
        too_long: false,
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn file(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, "#!/bin/sh\n").expect("write test file");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod test file");
        path
    }

    #[test]
    fn path_lookup_like_a_shell() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        file(a.path(), "plain", 0o644);
        let exe_b = file(b.path(), "plain", 0o755);
        let only_plain = file(a.path(), "only-plain", 0o644);
        fs::create_dir(a.path().join("dir")).expect("mkdir");
        let path_var = std::env::join_paths([a.path(), b.path()]).expect("join PATH");
        let path_var = Some(path_var.as_os_str());

        let cases: &[(&str, Result<PathBuf, i32>)] = &[
            // A non-executable earlier match is skipped in favour of a later executable one.
            ("plain", Ok(exe_b)),
            // Only non-executable matches: 126, like bash.
            ("only-plain", Err(EXIT_NOT_EXECUTABLE)),
            // Directories in PATH are skipped.
            ("dir", Err(EXIT_NOT_FOUND)),
            ("does-not-exist", Err(EXIT_NOT_FOUND)),
            ("", Err(EXIT_NOT_FOUND)),
            // A name with a slash is not looked up; execve decides.
            ("./x/y", Ok(PathBuf::from("./x/y"))),
        ];
        for (name, want) in cases {
            let got = find(OsStr::new(name), path_var).map_err(|e| e.exit_code);
            assert_eq!(&got, want, "find({name:?})");
        }
        assert!(only_plain.exists());
    }

    #[test]
    fn errno_to_exit_code_and_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let existing = file(dir.path(), "script", 0o755);
        let missing = dir.path().join("missing");
        let cases: &[(&Path, Errno, i32, &str)] = &[
            (&missing, Errno::ENOENT, 127, "no such file or directory"),
            (&existing, Errno::ENOENT, 127, "required file not found"),
            (dir.path(), Errno::EACCES, 126, "is a directory"),
            (&existing, Errno::EACCES, 126, "permission denied"),
            (&existing, Errno::ENOEXEC, 126, "exec format error"),
            (&existing, Errno::ETXTBSY, 126, "busy"),
        ];
        for (program, errno, code, reason) in cases {
            let err = io::Error::from_raw_os_error(*errno as i32);
            let got = classify(OsStr::new("step"), program, &err);
            assert_eq!(got.exit_code, *code, "{errno}");
            assert!(got.message.starts_with("cannot run 'step': "), "{got}");
            assert!(got.message.contains(reason), "{errno}: {got}");
            assert!(!got.message.contains('\n'), "one line: {got:?}");
        }
    }

    #[test]
    fn step_path_prefers_the_step_override() {
        let step = Step {
            env: vec![("PATH".into(), "/x".into()), ("PATH".into(), "/y".into())],
            ..Step::default()
        };
        assert_eq!(step_path(&step), Some(OsString::from("/y")));
    }

    #[test]
    fn inherit_fds_clears_close_on_exec_only_on_listed_fds() {
        let kept = tempfile::tempfile().expect("tempfile");
        let other = tempfile::tempfile().expect("tempfile");
        let cloexec = |fd: &fs::File| {
            let flags = fcntl(fd, FcntlArg::F_GETFD).expect("F_GETFD");
            FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC)
        };
        assert!(
            cloexec(&kept) && cloexec(&other),
            "std opens files close-on-exec"
        );
        inherit_fds(&[kept.as_raw_fd()]).expect("inherit_fds");
        assert!(!cloexec(&kept), "listed descriptor survives execve");
        assert!(
            cloexec(&other),
            "unlisted descriptor still closes on execve"
        );
        assert!(inherit_fds(&[-1]).is_err(), "negative descriptor rejected");
    }
}
