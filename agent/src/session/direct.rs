//! Direct mode: the developer reaches the node's IP and debug port without a relay.
//!
//! When the agent injected debugpy, debugpy listens on a loopback port of its own and
//! the sidecar listens on the published `node-ip:port`, passing each developer through
//! the DAP gate ([`super::attach`]), so the attach deadline holds whatever a client
//! does. When the step starts debugpy itself (prior-art code reading
//! `AMLX_DEBUG_PORT`), debugpy owns the published port and the sidecar can only watch
//! the kernel's socket table and release at the deadline when nobody is connected.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;

use super::attach::{self, BootstrapWord, Developer, Shared};
use super::report::Reporter;
use super::sidecar::ReadySignal;
use super::step_end::StepEnd;
use super::{SessionSpec, deadline_after, release_listening_debuggee};
use crate::ports::connections::established_on;
use crate::publish::SessionState;

/// Pause after a failed accept (e.g. out of descriptors) so the loop cannot spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(200);

pub async fn run(
    spec: &SessionSpec,
    mut ready: ReadySignal,
    reporter: &mut Reporter,
    step_end: &StepEnd,
    bootstrap: BootstrapWord,
) {
    if spec.proxy_port.is_none() {
        return watch(spec, ready, reporter).await;
    }
    let published = spec.published_address();
    let listener = match TcpListener::bind(published).await {
        Ok(listener) => listener,
        Err(err) => {
            super::setup_failed(
                spec,
                &mut ready,
                reporter,
                &format!("could not listen on {published} for the developer: {err}"),
            );
            return;
        }
    };
    ready.ready();
    reporter.set(SessionState::WaitingForDebugger, None);
    let (shared, events) = Shared::new(spec.debugpy_address(), step_end.clone(), bootstrap);
    let accepting = accept_loop(listener, shared.clone());
    let why = attach::hold(spec, &shared, events, reporter, accepting).await;
    if spec.post_mortem.is_some() {
        return;
    }
    tracing::warn!("direct mode stopped accepting developers: {why}");
    std::future::pending().await
}

/// Accepts developers until the step ends; each is served on its own task.
async fn accept_loop(listener: TcpListener, shared: Shared) -> String {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, peer)) => {
                tracing::info!("developer connection from {peer}");
                tcp
            }
            Err(err) => {
                tracing::warn!("accepting a developer connection failed: {err}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            // A developer who leaves while debugpy is awaited is let go, not connected to
            // it later (several such left debugpy's adapter unable to serve the next).
            let reached = tokio::select! {
                // Biased: debugpy reached at once decides (a developer who left is then
                // found out by the gate, as before).
                biased;
                reached = shared.connect_debugpy() => reached,
                () = left(&tcp) => {
                    tracing::info!("a developer left before debugpy was reached");
                    // What it sent (never read: it reached nothing), for how far it got.
                    let mut sent = vec![0u8; crate::relay::client::tunnel::MAX_HELD_BYTES];
                    let n = tcp.try_read(&mut sent).unwrap_or(0);
                    shared.left_while_waiting(sent.get(..n).unwrap_or_default());
                    return;
                }
            };
            let debugpy = match reached {
                Ok(debugpy) => debugpy,
                Err(why) => {
                    tracing::warn!("a developer could not be connected to debugpy: {why}");
                    return;
                }
            };
            // Attached once debugpy is reached, not while it is awaited.
            shared.arrived();
            shared.serve(Developer::Direct(tcp), debugpy).await;
        });
    }
}

/// How often a developer who sent bytes while debugpy is awaited is looked at again for
/// having left (with bytes waiting, readiness cannot wait for the close alone).
const LEFT_LOOK: Duration = Duration::from_millis(100);

/// Resolves once the developer's side of `tcp` is closed (or broken).
async fn left(tcp: &tokio::net::TcpStream) {
    loop {
        match tcp.ready(tokio::io::Interest::READABLE).await {
            Ok(ready) if ready.is_read_closed() || ready.is_error() => return,
            Ok(_) => tokio::time::sleep(LEFT_LOOK).await,
            Err(_) => return,
        }
    }
}

/// The step's own debugpy holds the published port: watch for connected clients and,
/// with `--wait-for-client`, release at the deadline the first moment nobody is
/// connected (a client connected then holds the step for as long as it stays).
async fn watch(spec: &SessionSpec, mut ready: ReadySignal, reporter: &mut Reporter) {
    ready.ready();
    reporter.set(SessionState::WaitingForDebugger, None);
    let deadline = deadline_after(spec.attach_timeout);
    let mut attached_once = false;
    let mut released = !spec.wait_for_client;
    loop {
        let attached = established_on(spec.port);
        match (attached, attached_once) {
            (true, _) => reporter.set(SessionState::Attached, None),
            (false, true) => reporter.set(
                SessionState::RunningUndebugged,
                Some("the debugger detached; the step runs on"),
            ),
            (false, false) => {}
        }
        attached_once |= attached;
        if !released && !attached && Instant::now() >= deadline {
            let why = if attached_once {
                "a debugger connected and left, and none was attached at the attach deadline"
                    .to_owned()
            } else {
                format!(
                    "no debugger attached within {}",
                    humantime::format_duration(spec.attach_timeout)
                )
            };
            reporter.set(
                SessionState::TimedOut,
                Some(&format!("{why}; the step runs on without one")),
            );
            release_listening_debuggee(|| spec.published_address()).await;
            released = true;
        }
        // Wake at the deadline itself when it is still ahead and comes before the next
        // poll (once it has passed, a connected debugger is polled at the usual pace).
        let now = Instant::now();
        let next = now + ATTACH_POLL;
        let wake = if !released && deadline > now {
            next.min(deadline)
        } else {
            next
        };
        tokio::time::sleep_until(wake).await;
    }
}

/// How often the watch looks for a connected debugger. Each look costs the kernel a walk
/// of its socket table (milliseconds, see [`crate::ports::connections`]): every 5 s keeps
/// an idle sidecar under 0.1 % of a core, and only the `attached` state shown by `status`
/// lags by up to this much; the release itself happens at the deadline.
const ATTACH_POLL: Duration = Duration::from_secs(5);
