//! The session's lifeline: a pipe whose write end the agent's process (the step in
//! replace mode, the supervisor otherwise) holds for the session's life, read by the
//! sidecar, which ends the session when every holder closed it or the process is gone.

use std::os::fd::OwnedFd;
use std::time::Duration;

/// How a session's lifeline ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifelineEnd {
    /// The agent's process (the step in replace mode) is gone.
    StepGone,
    /// Every holder closed the write end while the agent's process still ran.
    Closed,
    /// The agent ended the session itself ([`super::sidecar::Sidecar::terminate`]: its step could not
    /// start, or a supervised step has exited).
    Ended,
}

/// What [`super::sidecar::Sidecar::terminate`] writes on the lifeline before closing it: the session
/// ends on purpose, not because a step closed descriptors it inherited.
pub(super) const ENDED_ON_PURPOSE: u8 = b'e';

/// The sidecar's end of the lifeline: resolves [`Lifeline::ended`] at EOF, or when the
/// step is gone.
#[derive(Debug)]
pub struct Lifeline {
    pipe: OwnedFd,
    /// A pidfd of the agent (the step in replace mode, the supervisor otherwise).
    step: OwnedFd,
}

impl Lifeline {
    /// A lifeline read from `pipe`, ending too when the process behind the pidfd `step`
    /// is gone.
    pub fn new(pipe: OwnedFd, step: OwnedFd) -> Lifeline {
        Lifeline { pipe, step }
    }

    /// Resolves once the session is over: every holder of the write end is gone, or the
    /// step (the agent's process) died, and says which. Must run inside a Tokio runtime.
    pub async fn ended(self) -> LifelineEnd {
        use tokio::io::AsyncReadExt as _;
        let interest = tokio::io::Interest::READABLE;
        // SAFETY: the AsyncFd owns the OwnedFd it registers, so the descriptor stays
        // open and the same for the AsyncFd's whole life.
        #[allow(unsafe_code)]
        let registered =
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(self.step, interest) };
        let step = registered
            .inspect_err(|err| {
                tracing::warn!("sidecar cannot watch the step ({err}); the keeper ends it");
            })
            .ok();
        // A pidfd becomes readable when its process is gone.
        let step_gone = async {
            match &step {
                Some(step) => drop(step.readable().await),
                None => std::future::pending::<()>().await,
            }
        };
        let pipe_closed = async {
            let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(self.pipe) else {
                tracing::warn!("sidecar cannot watch its lifeline; it ends with the step");
                return std::future::pending().await;
            };
            let mut sink = [0u8; 64];
            let mut on_purpose = false;
            while let Ok(n) = pipe.read(&mut sink).await
                && n > 0
            {
                on_purpose |= sink.get(..n).is_some_and(|b| b.contains(&ENDED_ON_PURPOSE));
            }
            on_purpose
        };
        let on_purpose = tokio::select! {
            () = step_gone => return LifelineEnd::StepGone,
            on_purpose = pipe_closed => on_purpose,
        };
        if on_purpose {
            return LifelineEnd::Ended;
        }
        // A process that exits closes its descriptors a moment before its pidfd says it
        // is gone: only a step still there after that moment closed the lifeline itself.
        let Some(step) = &step else {
            return LifelineEnd::StepGone;
        };
        match tokio::time::timeout(STEP_EXIT_GRACE, step.readable()).await {
            Ok(_) => LifelineEnd::StepGone,
            Err(_) => LifelineEnd::Closed,
        }
    }
}

/// How long after its lifeline closed a step that is exiting may take to be gone: the
/// kernel closes a process's descriptors among the last steps of its exit, just before
/// it signals the pidfd. Well inside the keeper's [`super::keeper::SIDECAR_EXIT_GRACE`],
/// so the sidecar still logs and publishes its final state.
pub(super) const STEP_EXIT_GRACE: Duration = Duration::from_millis(100);
