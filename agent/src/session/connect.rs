//! Connect mode: debugpy connects out to the sidecar on 127.0.0.1:port, and the sidecar
//! carries that connection through the relay as a sender, to the developer's
//! `relay listen` (or azbridge -R) and VS Code listening behind it.
//!
//! Until somebody listens on the Hybrid Connection the relay answers 404; the sidecar
//! then holds debugpy's socket (the step waits in `--connect`) and retries on the
//! reconnect schedule until the attach timeout, when it releases the step (see `dap`).

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::report::Reporter;
use super::sidecar::ReadySignal;
use super::{READY_PROBE_TIMEOUT, SessionSpec, dap, setup_failed};
use crate::publish::SessionState;
use crate::relay::bridge;
use crate::relay::client::{Endpoint, Tunnel, backoff, sender};

/// Longest pause between two attempts to reach the developer: a 404 costs the relay
/// next to nothing, and a developer who starts VS Code late should not wait the
/// listener schedule's 30 s for the next try.
const MAX_ATTACH_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn run(spec: &SessionSpec, mut ready: ReadySignal, reporter: &mut Reporter) {
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
    // The probe proves the relay is reachable and the credentials are good (404 just
    // means nobody listens yet). If it finds a listener, its relayed connection is kept
    // for debugpy's first connection instead of being thrown away.
    let mut spare: Option<Tunnel> = None;
    match tokio::time::timeout(READY_PROBE_TIMEOUT, sender::connect(&endpoint, None)).await {
        Ok(Ok(tunnel)) => spare = Some(tunnel),
        Ok(Err(err)) if err.status() == Some(404) => {}
        Ok(Err(err)) => {
            setup_failed(spec, &mut ready, reporter, &err.to_string());
            return;
        }
        Err(_) => {
            let why = format!(
                "the relay did not answer within {}",
                humantime::format_duration(READY_PROBE_TIMEOUT)
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
        super::sidecar::share_debuggee_with_keeper(std::os::fd::AsFd::as_fd(&debuggee));
        let _ = debuggee.set_nodelay(true);
        relay_debuggee(spec, &endpoint, &mut spare, debuggee, reporter).await;
    }
}

/// Carries one debugpy connection to the developer, retrying while nobody listens;
/// releases the step at the attach timeout.
async fn relay_debuggee(
    spec: &SessionSpec,
    endpoint: &Endpoint,
    spare: &mut Option<Tunnel>,
    mut debuggee: TcpStream,
    reporter: &mut Reporter,
) {
    let port_name = spec.port.to_string();
    let deadline = Instant::now() + spec.attach_timeout;
    let mut failures = 0usize;
    loop {
        let attempt = match spare.take() {
            Some(tunnel) => Ok(tunnel),
            None => {
                match tokio::time::timeout_at(deadline, sender::connect(endpoint, None)).await {
                    Ok(result) => result,
                    Err(_) => break,
                }
            }
        };
        match attempt {
            Ok(mut tunnel) => match bridge::open(&mut tunnel, &port_name).await {
                Ok(()) => {
                    reporter.set(SessionState::Attached, None);
                    match tunnel.splice(debuggee).await {
                        Ok(stats) => tracing::info!(
                            sent = stats.sent,
                            received = stats.received,
                            "debugger detached"
                        ),
                        Err(err) => tracing::warn!("the debug connection broke: {err}"),
                    }
                    reporter.set(
                        SessionState::RunningUndebugged,
                        Some("the debugger detached; the step runs on"),
                    );
                    return;
                }
                Err(err) => {
                    reporter.set(
                        SessionState::WaitingForDebugger,
                        Some(&format!(
                            "the developer's listener refused port {port_name}: {err}"
                        )),
                    );
                }
            },
            Err(err) if err.status() == Some(404) => reporter.set(
                SessionState::WaitingForDebugger,
                Some("no listener on the Hybrid Connection yet"),
            ),
            Err(err) if err.is_permanent() => {
                // Retrying cannot fix bad credentials or wrong rights: release the step
                // at once and say why.
                let _ = dap::release(&mut debuggee).await;
                reporter.set(SessionState::RunningUndebugged, Some(&err.to_string()));
                return;
            }
            Err(err) => reporter.set(SessionState::RelayUnreachable, Some(&err.to_string())),
        }
        let pause = backoff::reconnect_delay(failures.max(1)).min(MAX_ATTACH_RETRY_PAUSE);
        failures = failures.saturating_add(1);
        if tokio::time::timeout_at(deadline, tokio::time::sleep(pause))
            .await
            .is_err()
        {
            break;
        }
    }
    // Recorded first: the release drains debugpy's answers for up to two seconds.
    reporter.set(
        SessionState::TimedOut,
        Some(&format!(
            "no debugger attached within {}; the step runs on without one",
            humantime::format_duration(spec.attach_timeout)
        )),
    );
    let _ = dap::release(&mut debuggee).await;
}
