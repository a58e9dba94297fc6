//! Replace mode: the agent becomes the step with `execve` (same PID, same parent, same
//! signal mask, same descriptors listed in `keep_fds`). No threads, no runtime.

use std::convert::Infallible;
use std::os::unix::process::CommandExt;

use super::program::{self, inherit_fds};
use super::{ExecError, Step};

/// Execs the step in place of the agent; returns only when that failed.
///
/// Signal state the step sees: the mask the agent was started with (std's `exec` does
/// not touch it and the agent never changes it in this mode); dispositions as received,
/// except SIGPIPE. Rust's runtime sets SIGPIPE to "ignore" before `main`, and std's
/// `Command::exec` sets it back to the default right before `execve` (what we rely on
/// here, so the step gets the default SIGPIPE every program expects). The one thing lost
/// is a parent that deliberately started us with SIGPIPE ignored: the step gets the
/// default instead, as with any program a Rust process starts.
pub(super) fn exec(step: &Step) -> ExecError {
    if let Err(err) = inherit_fds(&step.keep_fds) {
        // A lost lock descriptor only weakens port reservation; the step still runs.
        tracing::warn!(
            "cannot pass descriptors {:?} to the step: {err}",
            step.keep_fds
        );
    }
    match program::launch(step, |mut command| Err::<Infallible, _>(command.exec())) {
        Ok(never) => match never {},
        Err(err) => err,
    }
}
