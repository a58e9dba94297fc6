//! The attach phase of a debuggee that listens (listen mode, and direct mode when the
//! agent injected debugpy): developer connections reach debugpy only through the DAP
//! gate, and [`hold`] owns the attach deadline.
//!
//! Each developer connection gets its own connection to debugpy's adapter. Until some
//! debugger has sent `configurationDone` the step is held. A developer who leaves (or
//! is cut off) during its setup does not take its adapter connection along: the adapter
//! ends for good once its last session ends, and an adapter that already took an
//! `attach` then leaves the step waiting forever. So that connection is kept, *held*,
//! until the next developer comes (it is ended before that one is connected), and the
//! release at the deadline goes over it (a repeated `initialize`/`attach` is refused,
//! `configurationDone` is honoured). Without a held connection the release uses a fresh
//! one. Either way it is retried until debugpy acknowledges, bounded by
//! [`super::RELEASE_GRACE`]. A developer may still attach after that.
//!
//! The adapter lets one session have the debuggee at a time, and a session whose
//! connection merely closed lets go of it a moment later: a developer whose `attach` came
//! in that moment was refused ("already being debugged"), and the adapter then took no
//! connection at all. So an adapter connection the agent lets go of (a held one when the
//! next developer comes, one the release could not use) is ended in order first
//! ([`super::gate::end_session`]), and so is the connection of a developer whose `attach`
//! debugpy refused: the adapter gives that session the debuggee all the same, where it
//! can be neither configured nor released, so the gate cuts that developer off. The gate
//! also ends the session of a configured developer whose connection dropped, and a new
//! developer waits ([`Shared::handover`]) while a configured one's connection is live.

use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::report::Reporter;
use super::{SessionSpec, deadline_after};
use crate::inject::bootstrap::Report;
use crate::publish::SessionState;
use crate::relay::client::Tunnel;

mod connections;

pub use connections::Shared;

/// What the step's bootstrap has said about debugpy so far (`None`: nothing yet). Until
/// it says debugpy started, whatever accepts on debugpy's port is not known to be debugpy
/// (another process may hold the port, and debugpy's listen then fails): a developer is
/// connected to it only once the bootstrap said so, or when it says nothing usable
/// (`--inject none`: no bootstrap; a step that replaced its process).
pub type BootstrapWord = watch::Receiver<Option<Report>>;

/// How the reason a developer is refused for starts when the step's bootstrap said why
/// debugpy did not start.
pub(super) const DEBUGPY_DID_NOT_START: &str = "debugpy did not start on the target: ";

/// What happened to a developer connection, for the deadline's owner.
#[derive(Debug)]
pub enum Event {
    /// A developer's connection reached debugpy.
    Connected,
    /// The debuggee received `configurationDone`: the step is no longer held.
    Configured,
    /// The developer left before finishing its setup (how far it got).
    LeftDuringSetup(String),
    /// The developer's side is not a debugger (what it sent).
    NotDap(String),
    /// debugpy refused the developer's `attach` (its message); the connection was closed,
    /// which frees the debuggee for the next developer.
    AttachRefused(String),
    /// A configured debugger detached; `ends_debuggee`: it asked debugpy to end the step.
    Detached { ends_debuggee: bool },
    /// debugpy closed (or broke) the connection of a developer who had not finished
    /// its setup (how far it got).
    DebuggeeLeftSetup(String),
    /// The relay listener lost its control channel (or could not open it again), for
    /// this reason: developers cannot reach the target until it is back.
    ListenerOffline(String),
    /// The relay listener's control channel is up again.
    ListenerOnline,
}

/// A developer's connection, as it arrived.
#[derive(Debug)]
pub enum Developer {
    /// Through the relay, preamble done and confirmed.
    Relayed(Tunnel),
    /// Straight to the node (direct mode), with what it sent before debugpy was reached
    /// (its first whole message at least).
    Direct { tcp: TcpStream, sent: Vec<u8> },
}

/// Owns the attach deadline of a listening debuggee until `source` (what brings
/// developer connections: the relay listener, the direct-mode accept loop) ends for
/// good; returns why it ended. `held` says whether the step waits for a debugger.
pub async fn hold<F>(
    spec: &SessionSpec,
    shared: &Shared,
    mut events: mpsc::UnboundedReceiver<Event>,
    reporter: &mut Reporter,
    source: F,
) -> String
where
    F: Future<Output = String>,
{
    // A crashed process is always held; its session ends at the deadline or when its
    // debugger leaves, and its hook (not a release) lets it go.
    let post_mortem = spec.post_mortem.is_some();
    let mut held = spec.wait_for_client || post_mortem;
    let deadline = tokio::time::sleep_until(deadline_after(spec.attach_timeout));
    tokio::pin!(deadline, source);
    let mut cause: Option<String> = None;
    loop {
        tokio::select! {
            Some(event) = events.recv() => match event {
                // Said only over a state that waits for developers: an attached debugger
                // keeps its tunnel, and after the session's end it changes nothing.
                Event::ListenerOffline(why) => {
                    if reporter.state() == Some(SessionState::WaitingForDebugger) {
                        reporter.set(SessionState::RelayUnreachable, Some(&format!(
                            "the relay listener is offline ({why}); developers cannot reach \
                             this target until it is back (it keeps trying)"
                        )));
                    }
                }
                Event::ListenerOnline => {
                    if reporter.state() == Some(SessionState::RelayUnreachable) {
                        reporter.set(SessionState::WaitingForDebugger, Some(LISTENING_AGAIN));
                    }
                }
                Event::Connected => {
                    reporter.set(SessionState::Attached, None);
                    cause.get_or_insert_with(|| {
                        "a connection from the developer's side did not finish its DAP setup"
                            .to_owned()
                    });
                }
                Event::Configured => held = false,
                Event::Detached { ends_debuggee } if post_mortem => {
                    let why = if ends_debuggee {
                        super::connect::ENDED_BY_DEBUGGER
                    } else {
                        "the debugger detached; the process exits as it would have"
                    };
                    reporter.set(SessionState::RunningUndebugged, Some(why));
                    return why.to_owned();
                }
                Event::Detached { ends_debuggee } => reporter.set(
                    SessionState::RunningUndebugged,
                    Some(if ends_debuggee {
                        super::connect::ENDED_BY_DEBUGGER
                    } else {
                        "the debugger detached; the step runs on"
                    }),
                ),
                Event::LeftDuringSetup(_)
                | Event::NotDap(_)
                | Event::DebuggeeLeftSetup(_)
                | Event::AttachRefused(_)
                    if shared.owned() =>
                {
                    // Another connection, while (or after) a debugger owned the step:
                    // it changes nothing for the step.
                    let why = setup_failure(&event);
                    if shared.attached_now() {
                        tracing::info!("{why}; the debugger that is attached stays");
                    } else {
                        reporter.set(
                            SessionState::RunningUndebugged,
                            Some(&format!("{why}; the step runs on")),
                        );
                    }
                }
                Event::DebuggeeLeftSetup(_) => {
                    let why = setup_failure(&event);
                    if post_mortem {
                        let why = format!("{why}; the process exits as it would have");
                        reporter.set(SessionState::RunningUndebugged, Some(&why));
                        return why;
                    }
                    reporter.set(
                        SessionState::RunningUndebugged,
                        Some(&format!("{why}; the step runs on")),
                    );
                }
                Event::LeftDuringSetup(_) | Event::AttachRefused(_) | Event::NotDap(_) => {
                    let why = setup_failure(&event);
                    // Past the deadline (or never held), the step runs: no deadline to name.
                    let next = match (&event, held) {
                        (Event::NotDap(_), true) => {
                            "let it go, waiting for a debugger until the attach deadline"
                        }
                        (Event::NotDap(_), false) => {
                            "let it go; the step runs on, and a debugger may still attach"
                        }
                        (_, true) => "waiting for another until the attach deadline",
                        (_, false) => "the step runs on, and another debugger may attach",
                    };
                    reporter.set(SessionState::WaitingForDebugger, Some(&format!("{why}; {next}")));
                    cause = Some(why);
                }
            },
            () = &mut deadline, if held => {
                if shared.owned() {
                    // Configured in time: the deadline is for attaching, not for
                    // debugging. (A debugger that has left already: its events are on
                    // their way and end the session or leave the step running.)
                    held = false;
                    if shared.attached_now() {
                        tracing::info!(
                            "the attach deadline ({}) passed after a debugger attached; the \
                             session lasts until it detaches",
                            humantime::format_duration(spec.attach_timeout)
                        );
                    }
                    continue;
                }
                shared.cut_setups();
                let limit = humantime::format_duration(spec.attach_timeout);
                if post_mortem {
                    let why = match &cause {
                        None => format!("no debugger attached within {limit}"),
                        Some(cause) => format!("{cause}, and no debugger attached within {limit}"),
                    };
                    let why = format!("{why}; the process exits as it would have");
                    reporter.set(SessionState::TimedOut, Some(&why));
                    return why;
                }
                let why = match &cause {
                    None => format!("no debugger attached within {limit}; the step runs on without one"),
                    Some(cause) => format!(
                        "{cause}, and no debugger attached within {limit}; the step runs on without one"
                    ),
                };
                reporter.set(SessionState::TimedOut, Some(&why));
                // The developers' side (`source`) is served while the step is released: a
                // relay listener left unpolled for the release (up to 20 s when debugpy
                // does not acknowledge) answered nothing, the relay dropped it, and
                // developers were told that no listener was connected.
                let release = shared.release();
                tokio::pin!(release);
                tokio::select! {
                    () = &mut release => {}
                    why = &mut source => {
                        release.await;
                        return why;
                    }
                }
                held = false;
            }
            why = &mut source => {
                // Nothing can reach the step any more: a held step must not wait on.
                if held && !post_mortem {
                    shared.release().await;
                }
                return why;
            }
        }
    }
}

/// What `status` says when the relay listener is back after an outage.
const LISTENING_AGAIN: &str =
    "listening on the Hybrid Connection again; attach with `amlx-agent relay connect`";

/// What went wrong with a connection that did not finish its setup, in words.
fn setup_failure(event: &Event) -> String {
    match event {
        Event::LeftDuringSetup(progress) => {
            format!("a debugger connected but left {progress} without finishing its setup")
        }
        Event::NotDap(what) => format!("the developer's side is not a debugger (it sent {what})"),
        Event::AttachRefused(said) => {
            format!(
                "debugpy refused a debugger's attach ({said}); the agent closed that connection"
            )
        }
        Event::DebuggeeLeftSetup(progress) => format!(
            "debugpy closed the connection of a debugger that had not finished its setup \
             ({progress})"
        ),
        Event::Connected
        | Event::Configured
        | Event::Detached { .. }
        | Event::ListenerOffline(_)
        | Event::ListenerOnline => String::new(),
    }
}
