//! Connect mode: debugpy connects out to the sidecar on 127.0.0.1:port, and the sidecar
//! carries that connection through the relay as a sender, to the developer's
//! `relay listen` (or azbridge -R) and VS Code listening behind it.
//!
//! Until somebody listens on the Hybrid Connection the relay answers 404; the sidecar
//! then holds debugpy's socket (the step waits in `--connect`) and retries on the
//! reconnect schedule until the attach timeout, when it releases the step (see `dap`).

use std::os::fd::AsFd as _;
use std::sync::atomic::Ordering;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};

use super::gate::{self, GateState, PumpEnd};
use super::report::Reporter;
use super::sidecar::{ReadySignal, Shared, share_with_keeper};
use super::step_end::StepEnd;
use super::{SessionSpec, deadline_after, setup_failed};
use crate::publish::SessionState;
use crate::relay::bridge;
use crate::relay::client::{Endpoint, Tunnel, backoff, sender};

/// Longest pause between two attempts to reach the developer: a 404 costs the relay
/// next to nothing, and a developer who starts VS Code late should not wait the
/// listener schedule's 30 s for the next try.
const MAX_ATTACH_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn run(
    spec: &SessionSpec,
    mut ready: ReadySignal,
    reporter: &mut Reporter,
    step_end: &StepEnd,
) {
    let Some(endpoint) = spec.relay.clone() else {
        ready.failed("connect mode needs a relay; none is configured");
        return;
    };
    // Bound before readiness: debugpy's --connect fails at once if nothing listens.
    let listener = match TcpListener::bind(("127.0.0.1", spec.port)).await {
        Ok(listener) => listener,
        Err(err) => {
            ready.failed(&format!(
                "could not listen on 127.0.0.1:{} for debugpy: {err}",
                spec.port
            ));
            return;
        }
    };
    share_with_keeper(Shared::Listener, listener.as_fd());
    // The probe proves the relay is reachable and the credentials are good (404 just
    // means nobody listens yet). If it finds a listener, its relayed connection is kept
    // for debugpy's first connection instead of being thrown away.
    let mut spare: Option<Tunnel> = None;
    match tokio::time::timeout(spec.ready_probe_timeout(), sender::connect(&endpoint, None)).await {
        Ok(Ok(tunnel)) => spare = Some(tunnel),
        Ok(Err(err)) if err.status() == Some(404) => {}
        Ok(Err(err)) => {
            setup_failed(spec, &mut ready, reporter, &err.to_string());
            return;
        }
        Err(_) => {
            let why = format!(
                "the relay did not answer within {}",
                humantime::format_duration(spec.ready_probe_timeout())
            );
            setup_failed(spec, &mut ready, reporter, &why);
            return;
        }
    }
    ready.ready();
    reporter.set(
        SessionState::WaitingForDebugger,
        Some("waiting for debugpy and for a listener on the Hybrid Connection"),
    );
    // One debuggee connection at a time: the first one is the step's debugpy; later
    // ones (a reconnect) are served the same way.
    loop {
        let debuggee = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!("accepting debugpy's connection failed: {err}");
                tokio::time::sleep(backoff::reconnect_delay(1)).await;
                continue;
            }
        };
        share_with_keeper(Shared::Debuggee, debuggee.as_fd());
        let _ = debuggee.set_nodelay(true);
        let mut developer = Developer {
            endpoint: &endpoint,
            spare: &mut spare,
            step_end,
        };
        relay_debuggee(spec, &mut developer, debuggee, reporter).await;
        if spec.post_mortem.is_some() {
            // One crash, one chance: its end is the session's.
            return;
        }
    }
}

/// The way to the developer: the relay, a relayed connection the readiness probe opened
/// (used first), and the step's end, at which a carried connection ends in order.
struct Developer<'a> {
    endpoint: &'a Endpoint,
    spare: &'a mut Option<Tunnel>,
    step_end: &'a StepEnd,
}

/// How one debuggee connection's attach phase ended.
#[derive(Debug)]
enum AttachEnd {
    /// A debugger configured the debuggee and has left again.
    Debugged,
    /// The debuggee closed its connection (the step is over, or debugpy gave up).
    DebuggeeGone,
    /// The relay refused us for good (credentials, rights): release at once.
    Refused(String),
}

/// Why a session ended when the debugger asked debugpy to end the step (VS Code's Stop
/// on a session it may terminate): the step ends, it does not run on.
pub(crate) const ENDED_BY_DEBUGGER: &str =
    "the debugger detached and asked debugpy to end the step (terminate or terminateDebuggee)";

/// Carries one debugpy connection to the developer, retrying while nobody listens.
///
/// This function owns the attach deadline: whatever the attach machinery is doing when
/// it passes (waiting for a listener, a relay that does not answer, a debugger half-way
/// through its setup, a peer that is not a debugger), the attempt is dropped and the
/// step is released on debugpy's own connection, retried until debugpy acknowledges.
async fn relay_debuggee(
    spec: &SessionSpec,
    developer: &mut Developer<'_>,
    mut debuggee: TcpStream,
    reporter: &mut Reporter,
) {
    let deadline = deadline_after(spec.attach_timeout);
    let mut gate = GateState::default();
    let configured = gate.configured_flag();
    let mut cause = Cause::NobodyCame;
    let attach = attach(
        spec,
        developer,
        &mut debuggee,
        &mut gate,
        reporter,
        &mut cause,
    );
    let deadline_passed = async {
        tokio::time::sleep_until(deadline).await;
        if configured.load(Ordering::Acquire) {
            // Configured in time: the debugger owns the step from here on.
            std::future::pending::<()>().await;
        }
    };
    let end = tokio::select! {
        end = attach => Some(end),
        () = deadline_passed => None,
    };
    let post_mortem = spec.post_mortem.is_some();
    let why = match end {
        Some(AttachEnd::Debugged | AttachEnd::DebuggeeGone) if gate.ends_debuggee() => {
            reporter.set(SessionState::RunningUndebugged, Some(ENDED_BY_DEBUGGER));
            return;
        }
        Some(AttachEnd::Debugged) => {
            let why = if post_mortem {
                "the debugger detached; the process exits as it would have"
            } else {
                "the debugger detached; the step runs on"
            };
            reporter.set(SessionState::RunningUndebugged, Some(why));
            return;
        }
        Some(AttachEnd::DebuggeeGone) => return,
        Some(AttachEnd::Refused(why)) => {
            reporter.set(SessionState::RunningUndebugged, Some(&why));
            why
        }
        None if post_mortem => {
            // The hook waits for the session's end, not for debugpy to be released: a
            // release here would look like a debugger to it.
            let why = cause.post_mortem_timed_out(spec.attach_timeout, &gate);
            reporter.set(SessionState::TimedOut, Some(&why));
            return;
        }
        None => {
            let why = cause.timed_out(spec.attach_timeout, &gate);
            // Recorded first: the release may take up to RELEASE_GRACE.
            reporter.set(SessionState::TimedOut, Some(&why));
            why
        }
    };
    release_held(&mut gate, &mut debuggee, &why).await;
}

/// What kept the debugger from attaching, for the log and `status` at the deadline.
#[derive(Debug)]
enum Cause {
    NobodyCame,
    /// A developer's connection was still in its DAP setup at the deadline.
    InSetup,
    LeftDuringSetup,
    NotADebugger(String),
    /// debugpy refused a debugger's `attach` (what it said).
    AttachRefused(String),
    Refused(String),
}

impl Cause {
    /// Keeps the most telling cause: what a debugger did beats a refused retry.
    fn note(&mut self, next: Cause) {
        let rank = |cause: &Cause| match cause {
            Cause::NobodyCame => 0,
            Cause::Refused(_) => 1,
            Cause::InSetup
            | Cause::LeftDuringSetup
            | Cause::NotADebugger(_)
            | Cause::AttachRefused(_) => 2,
        };
        if rank(&next) >= rank(self) {
            *self = next;
        }
    }

    /// [`Cause::timed_out`] for a crashed process, which exits rather than runs on.
    fn post_mortem_timed_out(&self, limit: std::time::Duration, gate: &GateState) -> String {
        let why = self.timed_out(limit, gate);
        let why = why
            .strip_suffix("; the step runs on without one")
            .unwrap_or(&why);
        format!("{why}; the process exits as it would have")
    }

    fn timed_out(&self, limit: std::time::Duration, gate: &GateState) -> String {
        let limit = humantime::format_duration(limit);
        match self {
            Cause::NobodyCame => {
                format!("no debugger attached within {limit}; the step runs on without one")
            }
            Cause::InSetup => format!(
                "a connection from the developer's side did not finish its DAP setup within \
                 {limit} (stopped {}); the step runs on without one",
                gate.progress()
            ),
            Cause::LeftDuringSetup => format!(
                "a debugger connected but left {} without finishing its setup, and none \
                 finished within {limit}; the step runs on without one",
                gate.progress()
            ),
            Cause::NotADebugger(what) => format!(
                "the developer's side is not a debugger ({what}); no debugger attached \
                 within {limit}; the step runs on without one"
            ),
            Cause::AttachRefused(what) => format!(
                "{what}, and no debugger attached within {limit}; the step runs on without one"
            ),
            Cause::Refused(what) => format!(
                "the developer's listener refused the connection ({what}); no debugger \
                 attached within {limit}; the step runs on without one"
            ),
        }
    }
}

/// Tries to reach the developer until a debugger configured the debuggee and left, or
/// until cancelled by the deadline (every await here may be dropped at any point).
async fn attach(
    spec: &SessionSpec,
    developer: &mut Developer<'_>,
    debuggee: &mut TcpStream,
    gate: &mut GateState,
    reporter: &mut Reporter,
    cause: &mut Cause,
) -> AttachEnd {
    let port_name = spec.port.to_string();
    let mut failures = 0usize;
    loop {
        let attempt = match developer.spare.take() {
            Some(tunnel) => Ok(tunnel),
            None => sender::connect(developer.endpoint, None).await,
        };
        match attempt {
            Ok(mut tunnel) => match bridge::open(&mut tunnel, &port_name).await {
                Ok(()) => {
                    failures = 0;
                    reporter.set(SessionState::Attached, None);
                    cause.note(Cause::InSetup);
                    match gate::carry(tunnel, gate, debuggee, developer.step_end).await {
                        PumpEnd::Finished => return AttachEnd::Debugged,
                        PumpEnd::DebuggeeClosed | PumpEnd::StepEnded => {
                            return AttachEnd::DebuggeeGone;
                        }
                        PumpEnd::DebuggeeBroken(err) => {
                            tracing::warn!("the connection to debugpy broke: {err}");
                            return AttachEnd::DebuggeeGone;
                        }
                        PumpEnd::LeftDuringSetup => {
                            cause.note(Cause::LeftDuringSetup);
                            reporter.set(
                                SessionState::WaitingForDebugger,
                                Some(&format!(
                                    "a debugger connected but left {} without finishing its \
                                     setup; waiting for another until the attach deadline",
                                    gate.progress()
                                )),
                            );
                        }
                        PumpEnd::AttachRefused(said) => {
                            let what = format!("debugpy refused a debugger's attach ({said})");
                            reporter.set(
                                SessionState::WaitingForDebugger,
                                Some(&format!(
                                    "{what}; cut it off, waiting for another until the attach \
                                     deadline"
                                )),
                            );
                            cause.note(Cause::AttachRefused(what));
                        }
                        PumpEnd::NotDap(not_dap) => {
                            let what = format!("it sent {not_dap}");
                            reporter.set(
                                SessionState::WaitingForDebugger,
                                Some(&format!(
                                    "the developer's side is not a debugger ({what}); cut it \
                                     off, waiting for a debugger until the attach deadline"
                                )),
                            );
                            cause.note(Cause::NotADebugger(what));
                        }
                    }
                }
                Err(err) => {
                    let what = format!("port {port_name}: {err}");
                    reporter.set(
                        SessionState::WaitingForDebugger,
                        Some(&format!("the developer's listener refused {what}")),
                    );
                    cause.note(Cause::Refused(what));
                }
            },
            Err(err) if err.status() == Some(404) => reporter.set(
                SessionState::WaitingForDebugger,
                Some("no listener on the Hybrid Connection yet"),
            ),
            // Retrying cannot fix bad credentials or wrong rights.
            Err(err) if err.is_permanent() => return AttachEnd::Refused(err.to_string()),
            Err(err) => reporter.set(SessionState::RelayUnreachable, Some(&err.to_string())),
        }
        let pause = backoff::reconnect_delay(failures.max(1)).min(MAX_ATTACH_RETRY_PAUSE);
        failures = failures.saturating_add(1);
        tokio::time::sleep(pause).await;
    }
}

/// Releases a step still held by debugpy on debugpy's own connection.
async fn release_held(gate: &mut GateState, debuggee: &mut TcpStream, why: &str) {
    match super::release_on(gate, debuggee, super::Refusal::Retry).await {
        Ok(()) => tracing::info!("released the step: {why}"),
        Err(err) => tracing::warn!("{err}"),
    }
    let _ = debuggee.shutdown().await;
}
