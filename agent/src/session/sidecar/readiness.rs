//! The readiness pipe: the sidecar says once, before the step starts, whether the debug
//! path is usable (`ready`, or `error <why>`), and the agent waits for that line within a
//! bound.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};

use crate::poll_deadline::poll_timeout;

/// What the sidecar reported before the step starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// The sidecar could not make the debug path usable; the message says why.
    Failed(String),
}

/// The child's end of the readiness pipe.
#[derive(Debug)]
pub struct ReadySignal(pub(super) Option<File>);

impl ReadySignal {
    /// A readiness signal written to `pipe` (a post-mortem helper answers its hook so).
    pub fn new(pipe: File) -> ReadySignal {
        ReadySignal(Some(pipe))
    }

    /// Tells the parent the relay path is usable.
    pub fn ready(&mut self) {
        self.send("ready");
    }

    /// Tells the parent why the debug path is not usable.
    pub fn failed(&mut self, why: &str) {
        self.send(&format!("error {}", why.replace('\n', " ")));
    }

    fn send(&mut self, line: &str) {
        if let Some(mut pipe) = self.0.take() {
            // The parent may have given up waiting; nothing useful to do about that here.
            let _ = writeln!(pipe, "{line}");
        }
    }
}

/// The sidecar's report, read from `read_end` within `timeout`.
pub(super) fn wait_ready(read_end: OwnedFd, timeout: Duration) -> Readiness {
    let deadline = Instant::now() + timeout;
    let mut pipe = File::from(read_end);
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Readiness::Failed(format!(
                "the relay sidecar was not ready within {} (stopped, or stuck in its setup)",
                humantime::format_duration(timeout)
            ));
        }
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout(left)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(err) => return Readiness::Failed(format!("readiness pipe: {err}")),
        }
        let mut byte = [0u8; 1];
        match pipe.read(&mut byte) {
            Ok(0) => {
                return Readiness::Failed("the relay sidecar exited before it was ready".into());
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Readiness::Failed(format!("readiness pipe: {err}")),
        }
    }
    let line = String::from_utf8_lossy(&line);
    match line.strip_prefix("error ") {
        Some(why) => Readiness::Failed(why.to_owned()),
        None if line == "ready" => Readiness::Ready,
        None => Readiness::Failed(format!("unexpected readiness report {line:?}")),
    }
}
