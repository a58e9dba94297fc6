//! Listen mode: debugpy listens on 127.0.0.1:port, and the sidecar is the Hybrid
//! Connection listener that forwards the developer's connection to it (the developer
//! attaches whenever, through `relay connect`).

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::report::Reporter;
use super::sidecar::ReadySignal;
use super::{READY_PROBE_TIMEOUT, SessionSpec, release_listening_debuggee, setup_failed};
use crate::publish::SessionState;
use crate::relay::bridge::{self, Forwards};
use crate::relay::client::listener::{self, AcceptHandler, Decision};
use crate::relay::client::{Tunnel, backoff};
use crate::relay::protocol::Accept;

/// What the relay listener does with each developer connection.
#[derive(Debug)]
struct Forwarder {
    forwards: Forwards,
    port: u16,
    /// Signalled when the control channel is up.
    online: Notify,
    /// Signalled when a developer's connection reached debugpy.
    attached: Notify,
}

impl AcceptHandler for Forwarder {
    fn decide(&self, _accept: &Accept) -> Decision {
        Decision::Accept
    }

    async fn handle(self: Arc<Self>, tunnel: Tunnel, _accept: Accept) {
        let tunnel = match bridge::accept(tunnel, &self.forwards).await {
            Ok(Some((tunnel, _forward))) => tunnel,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!("a developer connection failed its preamble: {err}");
                return;
            }
        };
        // debugpy may still be starting: retry the local connection briefly.
        let mut debugpy = None;
        for attempt in 0..DEBUGPY_CONNECT_ATTEMPTS {
            match TcpStream::connect(("127.0.0.1", self.port)).await {
                Ok(stream) => {
                    debugpy = Some(stream);
                    break;
                }
                Err(err) if attempt + 1 == DEBUGPY_CONNECT_ATTEMPTS => {
                    tracing::warn!("debugpy does not listen on 127.0.0.1:{}: {err}", self.port);
                }
                Err(_) => tokio::time::sleep(backoff::reconnect_delay(1)).await,
            }
        }
        let Some(debugpy) = debugpy else {
            tunnel
                .finish(crate::relay::protocol::close_code::NORMAL, "")
                .await;
            return;
        };
        // The sender waits for the listener's go-ahead before sending anything.
        if let Err(err) = bridge::confirm(&tunnel).await {
            tracing::warn!("a developer connection failed its preamble: {err}");
            return;
        }
        self.attached.notify_one();
        match tunnel.splice(debugpy).await {
            Ok(stats) => tracing::info!(
                sent = stats.sent,
                received = stats.received,
                "debugger detached"
            ),
            Err(err) => tracing::warn!("the debug connection broke: {err}"),
        }
    }

    fn online(&self) {
        self.online.notify_one();
    }
}

/// Tries to reach debugpy this many times, a second apart, per developer connection.
const DEBUGPY_CONNECT_ATTEMPTS: usize = 10;

pub async fn run(spec: &SessionSpec, mut ready: ReadySignal, reporter: &mut Reporter) {
    let Some(endpoint) = spec.relay.clone() else {
        ready.failed("listen mode needs a relay; none is configured");
        return;
    };
    let forwarder = Arc::new(Forwarder {
        forwards: Forwards::from_ports(&[spec.port]),
        port: spec.port,
        online: Notify::new(),
        attached: Notify::new(),
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
        () = tokio::time::sleep(READY_PROBE_TIMEOUT) => Err(format!(
            "the relay listener was not online within {}",
            humantime::format_duration(READY_PROBE_TIMEOUT)
        )),
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
    let attach_deadline = async {
        if spec.wait_for_client {
            tokio::time::sleep(spec.attach_timeout).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(attach_deadline);
    let mut attached_once = false;
    loop {
        tokio::select! {
            () = forwarder.attached.notified() => {
                attached_once = true;
                reporter.set(SessionState::Attached, None);
            }
            () = &mut attach_deadline, if !attached_once => {
                // Nobody came: release the waiting step (the listener stays up, so a
                // developer can still attach later).
                attached_once = true;
                release_listening_debuggee(spec, reporter).await;
            }
            result = &mut listening => {
                let why = match result {
                    Ok(()) => "the relay listener stopped".to_owned(),
                    Err(err) => err.to_string(),
                };
                // The listener only stops for good on a refusal (revoked key, deleted
                // Hybrid Connection): a step still held for a debugger must not wait on.
                if spec.wait_for_client && !attached_once {
                    release_listening_debuggee(spec, reporter).await;
                }
                reporter.set(
                    SessionState::RunningUndebugged,
                    Some(&format!("the relay listener stopped for good: {why}")),
                );
                // The record stays, saying why, for as long as the step runs.
                return std::future::pending().await;
            }
        }
    }
}
