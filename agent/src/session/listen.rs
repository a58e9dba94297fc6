//! Listen mode: debugpy listens on 127.0.0.1:port, and the sidecar is the Hybrid
//! Connection listener that forwards the developer's connection to it (the developer
//! attaches whenever, through `relay connect`), through the DAP gate ([`super::attach`]).
//!
//! Several listen-mode targets may share one Hybrid Connection, and the relay spreads
//! senders across listeners at random. A sender that names its port in the path suffix
//! (`relay connect --port-name P` does) is refused by every other target's sidecar with
//! [`WRONG_LISTENER`], and tries again until it reaches the owner; the preamble's port
//! name must match exactly too, so a sender never reaches another rank's debugger.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::attach::{self, BootstrapWord, DEBUGPY_DID_NOT_START, Developer, Shared};
use super::report::Reporter;
use super::sidecar::ReadySignal;
use super::step_end::StepEnd;
use super::{SessionSpec, setup_failed};
use crate::logging::Throttle;
use crate::publish::SessionState;
use crate::relay::bridge::{self, Forward, Forwards};
use crate::relay::client::Tunnel;
use crate::relay::client::listener::{self, AcceptHandler, Decision};
use crate::relay::protocol::{self, Accept, close_code, status};

/// The status a sidecar refuses a sender with when the sender named another port:
/// "misdirected request" — the relay picked the wrong listener, try again.
pub const WRONG_LISTENER: u16 = status::MISDIRECTED;

/// What the relay listener does with each developer connection.
#[derive(Debug)]
struct Forwarder {
    /// This target's entity (to find a sender's path suffix).
    entity: String,
    port: u16,
    /// This target's rank, for the log line that says which rank a developer reached.
    rank: Option<u32>,
    /// Signalled when the control channel is up.
    online: Notify,
    /// Why the control channel was last down, for a listener that never came online.
    last_offline: std::sync::Mutex<Option<String>>,
    /// Set once the session is ready: from then on the listener going offline and coming
    /// back is the deadline owner's news (`status` says so), not the readiness probe's.
    announcing: std::sync::atomic::AtomicBool,
    shared: Shared,
}

/// The refusal of a sender that named another target's port in its path suffix
/// (`$hc/{entity}/{port}`): the relay picked this listener at random, and the sender tries
/// again. `None` for this target's own developers (and senders that name no port).
fn misdirected(entity: &str, port: u16, accept: &Accept) -> Option<Decision> {
    match protocol::sender_suffix(entity, &accept.address) {
        Some(named) if named != port.to_string() => Some(Decision::Reject {
            status: WRONG_LISTENER,
            description: format!("port {named} is served by another listener"),
        }),
        _ => None,
    }
}

/// A developer connection that broke during its preamble: anyone with the Send right can
/// repeat it as fast as they open connections, so it is logged once per interval.
static PREAMBLE_FAILED: Throttle = Throttle::new();

/// `why` as a developer's Close can carry it (123 bytes): without the interpreter's path
/// and the leading words when it does not fit (the node's log has them), then cut with an
/// ellipsis. Cut blindly, "debugpy is not importable by `/opt/conda/envs/…/python3`
/// (ModuleNotFoundError: No module named" lost the module's name.
fn close_text(why: &str) -> String {
    let fits = |text: &str| text.len() <= protocol::MAX_CLOSE_REASON_BYTES;
    if fits(why) {
        return why.to_owned();
    }
    let mut text = why
        .strip_prefix(DEBUGPY_DID_NOT_START)
        .unwrap_or(why)
        .to_owned();
    // Each `quoted` part (a path) becomes "the step's Python".
    while let Some(open) = text.find('`') {
        let Some(close) = text.get(open + 1..).and_then(|rest| rest.find('`')) else {
            break;
        };
        text.replace_range(open..open + 1 + close + 1, "the step's Python");
    }
    if fits(&text) {
        return text;
    }
    let room = protocol::MAX_CLOSE_REASON_BYTES - '…'.len_utf8();
    format!("{}…", protocol::prefix_within(&text, room))
}

/// Longest reason a refused developer is given (the relay passes at most 512 characters
/// of a status description on).
const MAX_REFUSAL_CHARS: usize = 400;

/// The listener of a listen-mode target whose step runs without debugpy: every developer
/// who comes for this target's port is refused with the reason, for the step's life,
/// instead of meeting a relay that says no listener is connected (which reads as a typo in
/// the port name or a step that never started).
#[derive(Debug)]
struct Refuser {
    entity: String,
    port: u16,
    /// What the developer's `relay connect` prints.
    why: String,
}

impl AcceptHandler for Refuser {
    fn decide(&self, accept: &Accept) -> Decision {
        misdirected(&self.entity, self.port, accept).unwrap_or_else(|| Decision::Reject {
            status: status::SERVICE_UNAVAILABLE,
            description: self.why.clone(),
        })
    }

    async fn handle(self: Arc<Self>, _tunnel: Tunnel, _accept: Accept) {
        // Never reached: every sender is rejected before a rendezvous opens.
    }
}

/// Refuses developers with `why` for as long as it is polled (the caller stops it when the
/// step ends); returns only when the relay refuses the listener itself for good.
pub async fn refuse(spec: &SessionSpec, why: &str) {
    let Some(endpoint) = spec.relay.clone() else {
        return std::future::pending().await;
    };
    let why: String = format!(
        "debugging is disabled for this run of port {}: {why}; the step runs without a \
         debugger",
        spec.port
    )
    .chars()
    .take(MAX_REFUSAL_CHARS)
    .collect();
    let refuser = Arc::new(Refuser {
        entity: endpoint.entity.clone(),
        port: spec.port,
        why,
    });
    if let Err(err) = listener::run(Arc::new(endpoint), refuser, CancellationToken::new()).await {
        tracing::warn!(
            "developers who come for this step now meet no listener: the relay refused it: \
             {err}"
        );
    }
    std::future::pending().await
}

impl AcceptHandler for Forwarder {
    fn decide(&self, accept: &Accept) -> Decision {
        misdirected(&self.entity, self.port, accept).unwrap_or(Decision::Accept)
    }

    async fn handle(self: Arc<Self>, tunnel: Tunnel, _accept: Accept) {
        // Exactly this target's port name: azbridge's rule that a lone forward takes any
        // number would hand a developer another rank's debugger.
        let own = Forwards(vec![Forward {
            name: self.port.to_string(),
            host: "127.0.0.1".to_owned(),
            port: self.port,
        }]);
        let mut tunnel = match bridge::accept_exact(tunnel, &own).await {
            Ok(Some((tunnel, _forward))) => tunnel,
            Ok(None) => return,
            Err(err) => {
                PREAMBLE_FAILED.log(|left_out| {
                    tracing::warn!("a developer connection failed its preamble: {err}{left_out}");
                });
                return;
            }
        };
        let rank = self
            .rank
            .map_or_else(|| "?".to_owned(), |rank| rank.to_string());
        tracing::info!("a developer reached rank {rank} (port {})", self.port);
        // Until debugpy is reached the tunnel is held: Pings answered, a developer who
        // leaves meanwhile is let go (connected to debugpy later, several such left
        // debugpy's adapter unable to serve the next developer).
        let waiting = self.shared.waiting();
        let Some(reached) = tunnel.hold_until(self.shared.connect_debugpy()).await else {
            tracing::info!("a developer left before debugpy was reached");
            self.shared.left_while_waiting(tunnel.held());
            return;
        };
        let debugpy = match reached {
            Ok(debugpy) => debugpy,
            Err(why) => {
                tracing::warn!("a developer could not be connected to debugpy: {why}");
                // Said in the Close, so the developer's side quotes it instead of guessing.
                tunnel
                    .finish(close_code::SERVER_ERROR, &close_text(&why))
                    .await;
                return;
            }
        };
        // Attached from here: debugpy is reached (`status` said "attached" while debugpy
        // was still awaited, and for good when it never came).
        self.shared.arrived();
        // The sender waits for the listener's go-ahead before sending anything.
        if let Err(err) = bridge::confirm(&tunnel).await {
            PREAMBLE_FAILED.log(|left_out| {
                tracing::warn!("a developer connection failed its preamble: {err}{left_out}");
            });
            return;
        }
        drop(waiting);
        self.shared.serve(Developer::Relayed(tunnel), debugpy).await;
    }

    fn online(&self) {
        self.online.notify_one();
        if self.announcing.load(std::sync::atomic::Ordering::Acquire) {
            let _ = self.shared.events.send(attach::Event::ListenerOnline);
        }
    }

    fn offline(&self, why: &str) {
        *self
            .last_offline
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(why.to_owned());
        if self.announcing.load(std::sync::atomic::Ordering::Acquire) {
            let _ = self
                .shared
                .events
                .send(attach::Event::ListenerOffline(why.to_owned()));
        }
    }
}

pub async fn run(
    spec: &SessionSpec,
    mut ready: ReadySignal,
    reporter: &mut Reporter,
    step_end: &StepEnd,
    bootstrap: BootstrapWord,
) {
    let Some(endpoint) = spec.relay.clone() else {
        ready.failed("listen mode needs a relay; none is configured");
        return;
    };
    let (shared, events) = Shared::new(spec.debugpy_address(), step_end.clone(), bootstrap);
    let forwarder = Arc::new(Forwarder {
        entity: endpoint.entity.clone(),
        port: spec.port,
        rank: spec.rank,
        online: Notify::new(),
        last_offline: std::sync::Mutex::new(None),
        announcing: std::sync::atomic::AtomicBool::new(false),
        shared: shared.clone(),
    });
    let shutdown = CancellationToken::new();
    let listening = listener::run(Arc::new(endpoint), Arc::clone(&forwarder), shutdown.clone());
    tokio::pin!(listening);
    // Ready once the control channel is up; a terminal refusal or silence fails fast.
    let ready_outcome = tokio::select! {
        () = forwarder.online.notified() => Ok(()),
        result = &mut listening => Err(match result {
            Ok(()) => "the relay listener stopped".to_owned(),
            Err(err) => err.to_string(),
        }),
        () = tokio::time::sleep(spec.ready_probe_timeout()) => {
            let last = forwarder
                .last_offline
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone();
            Err(format!(
                "the relay listener was not online within {}{}",
                humantime::format_duration(spec.ready_probe_timeout()),
                last.map_or_else(String::new, |why| format!(" (the last try: {why})"))
            ))
        }
    };
    if let Err(why) = ready_outcome {
        setup_failed(spec, &mut ready, reporter, &why);
        return;
    }
    ready.ready();
    reporter.set(
        SessionState::WaitingForDebugger,
        Some("listening on the Hybrid Connection; attach with `amlx-agent relay connect`"),
    );
    forwarder
        .announcing
        .store(true, std::sync::atomic::Ordering::Release);
    // The listener only stops for good on a refusal (revoked key, deleted Hybrid
    // Connection).
    let stopped = async {
        match listening.await {
            Ok(()) => "the relay listener stopped".to_owned(),
            Err(err) => err.to_string(),
        }
    };
    let why = attach::hold(spec, &shared, events, reporter, stopped).await;
    if spec.post_mortem.is_some() {
        return;
    }
    reporter.set(
        SessionState::RunningUndebugged,
        Some(&format!("the relay listener stopped for good: {why}")),
    );
    // The record stays, saying why, for as long as the step runs.
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reason too long for a Close keeps what the developer needs: the exception and
    /// the module, not the interpreter's path; what still does not fit ends with "…".
    #[test]
    fn a_close_reason_keeps_the_cause_and_fits_a_close_frame() {
        let path = format!("/opt/conda/envs/{}/bin/python3", "training-env".repeat(4));
        let missing = format!(
            "{DEBUGPY_DID_NOT_START}debugpy is not importable by `{path}` \
             (ModuleNotFoundError: No module named 'debugpy')"
        );
        let long = format!("{DEBUGPY_DID_NOT_START}{}", "é".repeat(200));
        let cases: [(&str, &str); 3] = [
            (
                "the step ended before debugpy was reached",
                "the step ended before debugpy was reached",
            ),
            (
                &missing,
                "debugpy is not importable by the step's Python (ModuleNotFoundError: No \
                 module named 'debugpy')",
            ),
            (&long, ""),
        ];
        for (why, want) in cases {
            let text = close_text(why);
            assert!(text.len() <= protocol::MAX_CLOSE_REASON_BYTES, "{text}");
            if want.is_empty() {
                assert!(text.ends_with('…') && text.starts_with('é'), "{text}");
            } else {
                assert_eq!(text, want);
            }
        }
    }

    /// A target without debugpy refuses its own developers with the reason, and sends
    /// another target's developers on (421) so that they reach the target that has debugpy.
    #[test]
    fn a_refuser_turns_away_its_own_developers_with_the_reason_and_sends_others_on() {
        let refuser = Refuser {
            entity: "debug".to_owned(),
            port: 5678,
            why: "debugging is disabled for this run of port 5678: no debugpy".to_owned(),
        };
        let accept = |address: &str| Accept {
            address: address.to_owned(),
            id: "id".to_owned(),
            connect_headers: Default::default(),
            remote_endpoint: Default::default(),
        };
        let own = Decision::Reject {
            status: status::SERVICE_UNAVAILABLE,
            description: refuser.why.clone(),
        };
        let cases = [
            ("ws://h/$hc/debug/5678?sb-hc-action=accept", own.clone()),
            // No port named (an older client, azbridge): this target's developer.
            ("ws://h/$hc/debug?sb-hc-action=accept", own),
            (
                "ws://h/$hc/debug/5679?sb-hc-action=accept",
                Decision::Reject {
                    status: WRONG_LISTENER,
                    description: "port 5679 is served by another listener".to_owned(),
                },
            ),
        ];
        for (address, want) in cases {
            assert_eq!(refuser.decide(&accept(address)), want, "{address}");
        }
    }
}
