//! The listener: holds the control channel, renews its token, and turns each accept
//! message into a rendezvous (or a reject) handled by an [`AcceptHandler`].
//!
//! Reconnects on [`backoff::RECONNECT_SCHEDULE`]; 401, 403 and 404 are terminal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::backoff;
use super::error::{ConnectError, Role};
use super::frame::{Frame, OpCode};
use super::handshake::{self, WebSocket};
use super::{Endpoint, Tunnel};
use crate::relay::protocol::{self, Accept, ControlMessage, RenewToken, close_code, status};

/// How long the listener waits for a rendezvous upgrade (what .NET uses).
pub const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(20);
/// Ping the control channel this often so idle NATs keep it (.NET: 3.5 minutes).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(210);
/// Largest control message we assemble (Azure caps bodies at 64 kB).
pub const MAX_CONTROL_MESSAGE: usize = 1024 * 1024;
/// How long relayed connections may finish after shutdown is asked for.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What to do with one sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Accept,
    /// Reject with this HTTP status (the sender sees it) and description.
    Reject {
        status: u16,
        description: String,
    },
}

/// Decides about and then serves relayed connections.
pub trait AcceptHandler: Send + Sync + 'static {
    /// Accept or reject, before the rendezvous is opened.
    fn decide(&self, accept: &Accept) -> Decision;
    /// Serves one accepted connection.
    fn handle(self: Arc<Self>, tunnel: Tunnel, accept: Accept) -> impl Future<Output = ()> + Send;
    /// The control channel is up (again): senders can reach this listener now.
    fn online(&self) {}
}

/// Runs the listener until `shutdown` (then `Ok`) or a terminal refusal (`Err`).
pub async fn run<H: AcceptHandler>(
    endpoint: Arc<Endpoint>,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<(), ConnectError> {
    let tracker = TaskTracker::new();
    let result = listen_loop(&endpoint, &handler, &tracker, &shutdown).await;
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("relayed connections still open after {DRAIN_TIMEOUT:?}; dropping them");
    }
    result
}

async fn listen_loop<H: AcceptHandler>(
    endpoint: &Arc<Endpoint>,
    handler: &Arc<H>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), ConnectError> {
    let mut failures = 0usize;
    loop {
        let tracking_id = protocol::new_tracking_id();
        let url = protocol::listen_url(&endpoint.base, &endpoint.entity, &tracking_id);
        let span = tracing::info_span!("listen", tracking_id = %tracking_id, hc = %endpoint.entity);
        let connect = async {
            let token = endpoint.token().map_err(|e| ConnectError::Protocol {
                url: handshake::display_url(&url),
                detail: format!("cannot sign a token: {e}"),
            })?;
            handshake::connect(
                &url,
                Some(&token),
                endpoint.tls.as_ref(),
                Role::Listen,
                endpoint.operation_timeout,
            )
            .await
        };
        let attempt = tokio::select! {
            r = connect.instrument(span.clone()) => r,
            () = shutdown.cancelled() => return Ok(()),
        };
        let reason = match attempt {
            Ok(ws) => {
                tracing::info!(parent: &span, url = %handshake::display_url(&url), "listener online");
                handler.online();
                let since = Instant::now();
                let reason = control_loop(ws, endpoint, handler, tracker, shutdown)
                    .instrument(span.clone())
                    .await;
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                if since.elapsed() >= backoff::STABLE_CONNECTION {
                    failures = 0;
                }
                reason
            }
            Err(err) if err.is_permanent() => return Err(err),
            Err(err) => err.to_string(),
        };
        let delay = backoff::reconnect_delay(failures);
        failures = failures.saturating_add(1);
        tracing::warn!(parent: &span, "listener offline: {reason}; reconnecting in {}s", delay.as_secs());
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Serves one control channel until it drops; returns why.
async fn control_loop<H: AcceptHandler>(
    ws: WebSocket,
    endpoint: &Arc<Endpoint>,
    handler: &Arc<H>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> String {
    let WebSocket {
        mut reader,
        mut writer,
    } = ws;
    // Reading is not cancel-safe mid-frame, so it lives in its own task; the channel is.
    let (tx, mut frames) = mpsc::channel::<std::io::Result<Option<Frame>>>(16);
    let read_task = tokio::spawn(async move {
        loop {
            let r = reader.read_frame().await;
            let end = !matches!(r, Ok(Some(_)));
            if tx.send(r).await.is_err() || end {
                break;
            }
        }
    });
    let _abort_reader = AbortOnDrop(read_task);
    let renew_every = endpoint.renew_interval();
    let far = Duration::from_secs(365 * 24 * 3600);
    let mut renew = tokio::time::interval_at(
        Instant::now() + renew_every.unwrap_or(far),
        renew_every.unwrap_or(far),
    );
    renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut keepalive =
        tokio::time::interval_at(Instant::now() + KEEPALIVE_INTERVAL, KEEPALIVE_INTERVAL);
    let mut message: Vec<u8> = Vec::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = writer.write_close(close_code::NORMAL, "listener shutting down").await;
                return "shutting down".into();
            }
            _ = renew.tick(), if renew_every.is_some() => {
                let token = match endpoint.token() {
                    Ok(t) => t,
                    Err(e) => return format!("cannot sign a renewal token: {e}"),
                };
                let text = ControlMessage::RenewToken(RenewToken { token }).to_json();
                if let Err(e) = writer.write_frame(OpCode::Text, text.as_bytes()).await {
                    return format!("control channel write failed: {e}");
                }
                tracing::debug!("token renewed");
            }
            _ = keepalive.tick() => {
                if let Err(e) = writer.write_frame(OpCode::Ping, b"").await {
                    return format!("control channel write failed: {e}");
                }
            }
            frame = frames.recv() => {
                let frame = match frame {
                    Some(Ok(Some(frame))) => frame,
                    Some(Ok(None)) | None => return "the relay closed the control channel without a Close frame".into(),
                    Some(Err(e)) => return format!("control channel read failed: {e}"),
                };
                match frame.opcode {
                    OpCode::Ping => {
                        if let Err(e) = writer.write_frame(OpCode::Pong, &frame.payload).await {
                            return format!("control channel write failed: {e}");
                        }
                    }
                    OpCode::Pong => {}
                    OpCode::Close => {
                        let (code, reason) = frame.close_code();
                        let _ = writer.write_close(code_to_echo(code), "").await;
                        let _ = writer.shutdown().await;
                        let why = if code == close_code::POLICY { " (token expired or refused)" } else { "" };
                        return format!("the relay closed the control channel with {code} {reason:?}{why}");
                    }
                    OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                        message.extend_from_slice(&frame.payload);
                        if message.len() > MAX_CONTROL_MESSAGE {
                            let _ = writer.write_close(close_code::POLICY, "message too big").await;
                            return format!("control message over {MAX_CONTROL_MESSAGE} bytes");
                        }
                        if frame.fin {
                            let text = std::mem::take(&mut message);
                            dispatch(&text, endpoint, handler, tracker);
                        }
                    }
                }
            }
        }
    }
}

/// Close codes we may send back (1005/1006/1015 must never go on the wire).
fn code_to_echo(code: u16) -> u16 {
    match code {
        1005 | 1006 | 1015 => close_code::NORMAL,
        c => c,
    }
}

fn dispatch<H: AcceptHandler>(
    text: &[u8],
    endpoint: &Arc<Endpoint>,
    handler: &Arc<H>,
    tracker: &TaskTracker,
) {
    let text = String::from_utf8_lossy(text);
    match ControlMessage::parse(&text) {
        Ok(ControlMessage::Accept(accept)) => {
            let span = tracing::info_span!(
                "accept",
                id = %accept.id,
                remote = %format!("{}:{}", accept.remote_endpoint.address, accept.remote_endpoint.port),
            );
            let endpoint = Arc::clone(endpoint);
            let handler = Arc::clone(handler);
            tracker.spawn(rendezvous(accept, endpoint, handler).instrument(span));
        }
        Ok(ControlMessage::Unknown(command)) => {
            tracing::debug!(command, "ignoring unknown control command")
        }
        Ok(other) => tracing::debug!(?other, "ignoring control message"),
        Err(e) => tracing::warn!("ignoring malformed control message: {e}"),
    }
}

async fn rendezvous<H: AcceptHandler>(accept: Accept, endpoint: Arc<Endpoint>, handler: Arc<H>) {
    match handler.decide(&accept) {
        Decision::Reject {
            status: code,
            description,
        } => {
            let address = protocol::reject_url(&accept.address, code, &description);
            match handshake::connect_address(
                &address,
                endpoint.tls.as_ref(),
                Role::Rendezvous,
                RENDEZVOUS_TIMEOUT,
            )
            .await
            {
                Err(e) if e.status() == Some(status::GONE) => {
                    tracing::info!(status = code, description, "rejected sender");
                }
                Err(e) => tracing::warn!("reject rendezvous failed: {e}"),
                Ok(ws) => {
                    tracing::warn!(
                        "the relay opened a reject rendezvous instead of answering 410; closing it"
                    );
                    Tunnel::new(ws).finish(close_code::NORMAL, "").await;
                }
            }
        }
        Decision::Accept => {
            match handshake::connect_address(
                &accept.address,
                endpoint.tls.as_ref(),
                Role::Rendezvous,
                RENDEZVOUS_TIMEOUT,
            )
            .await
            {
                Ok(ws) => handler.handle(Tunnel::new(ws), accept).await,
                Err(e) => tracing::warn!("rendezvous failed: {e}"),
            }
        }
    }
}

/// Aborts a task when dropped (the control channel's reader).
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
