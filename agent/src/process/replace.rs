//! Replace mode: the agent becomes the step with `execve` (same PID, same parent, same
//! signal mask, same descriptors listed in `keep_fds`). No threads, no runtime.

use std::convert::Infallible;
use std::os::unix::process::CommandExt;

use nix::sys::signal::Signal;

use super::inherited::{inherited, set_ignored};
use super::program::{self, inherit_fds, pre_exec};
use super::{ExecError, Step};

/// Execs the step in place of the agent; returns only when that failed.
///
/// Signal state the step sees: the mask the agent was started with (std's `exec` does
/// not touch it and the agent never changes it in this mode) and the dispositions it was
/// started with. The one disposition Rust changes is SIGPIPE: the runtime ignores it
/// before `main`, and `Command::exec` sets it to the default right before `execve`.
/// Neither is what the agent's parent gave: the disposition recorded before `main`
/// ([`super::record_inherited_signals`]) is put back last, so `trap '' PIPE` before the
/// agent still means an ignored SIGPIPE in the step, and a default one stays default.
pub(super) fn exec(step: &Step) -> ExecError {
    if let Err(err) = inherit_fds(&step.keep_fds) {
        // A lost lock descriptor only weakens port reservation; the step still runs.
        tracing::warn!(
            "cannot pass descriptors {:?} to the step: {err}",
            step.keep_fds
        );
    }
    let sigpipe_ignored = inherited().map(|state| state.sigpipe_ignored);
    let attempt = |mut command: std::process::Command| {
        if let Some(ignored) = sigpipe_ignored {
            // Runs in this process after std's reset, right before execve: one sigaction.
            pre_exec(&mut command, move || {
                Ok(set_ignored(Signal::SIGPIPE, ignored)?)
            });
        }
        Err::<Infallible, _>(command.exec())
    };
    match program::launch(step, attempt) {
        Ok(never) => match never {},
        Err(err) => err,
    }
}
