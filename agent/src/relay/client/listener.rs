//! The listener: holds the control channel, renews its token, and turns each accept
//! message into a rendezvous (or a reject) handled by an [`AcceptHandler`].
//!
//! Liveness: the channel is pinged every [`PING_INTERVAL`]; a relay from which nothing at
//! all (data, Ping or Pong) arrived for [`SILENCE_LIMIT`] is taken for dead (a NAT drop or
//! a hung relay leaves a half-open TCP connection that would otherwise look idle for
//! ever), and so is one that takes no control frame within [`CONTROL_WRITE_TIMEOUT`].
//! Reconnects on the jittered [`backoff::RECONNECT_SCHEDULE`]; 401, 403 and 404 are
//! terminal. At most `max_tunnels` relayed connections ([`DEFAULT_MAX_TUNNELS`] unless
//! the `max_tunnels` setting says otherwise) are served at once; senders over that are
//! rejected (503) at once rather than queued.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::backoff;
use super::error::{ConnectError, Role};
use super::handshake::{self, WebSocket};
use super::{Endpoint, Tunnel};
use crate::logging::Throttle;
use crate::relay::protocol::{self, Accept, ControlMessage, RenewToken, close_code, status};
use crate::relay::websocket::{self, OpCode};

mod accepts;

use accepts::dispatch;

/// Characters of an accept's id the log shows (see `dispatch`).
const LOGGED_ID_CHARS: usize = 8;

/// How long the listener waits for a rendezvous upgrade (what .NET uses).
pub const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(20);
/// Ping the control channel this often: idle NATs keep it, and the relay's Pong proves it
/// is alive (.NET pings every 3.5 minutes, which leaves a dead channel unnoticed as long).
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
/// A control channel on which nothing arrived for this long (three missed Pongs) is dead.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(30);
/// One control frame the relay does not take within this means a dead channel.
pub const CONTROL_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the goodbye Close may take when shutting down: a relay that takes no frame
/// must not hold a SIGTERM for a whole [`CONTROL_WRITE_TIMEOUT`].
pub const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest control message we assemble (Azure caps bodies at 64 kB).
pub const MAX_CONTROL_MESSAGE: usize = 1024 * 1024;
/// How long relayed connections may finish after shutdown is asked for.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
pub use crate::config::DEFAULT_MAX_TUNNELS;
/// Most reject rendezvous in flight; accepts beyond this are dropped (the relay fails the
/// sender's upgrade when the rendezvous never comes).
pub const MAX_PENDING_REJECTS: usize = 32;
/// The HTTP status a sender gets when the listener already serves its most tunnels.
const BUSY_STATUS: u16 = status::SERVICE_UNAVAILABLE;
/// The most of a parser's message about a malformed control message that is logged: it
/// may quote the relay's text, up to the 1 MiB a control message may hold.
const MAX_LOGGED_ERROR_CHARS: usize = 200;

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
    /// Serves one accepted sender whose rendezvous `rendezvous` opens (`None`: it failed
    /// and was logged). By default waits for it, then [`handle`](Self::handle)s the
    /// tunnel; a handler may do its own set-up meanwhile.
    fn serve(
        self: Arc<Self>,
        rendezvous: impl Future<Output = Option<Tunnel>> + Send,
        accept: Accept,
    ) -> impl Future<Output = ()> + Send {
        async move {
            if let Some(tunnel) = rendezvous.await {
                self.handle(tunnel, accept).await;
            }
        }
    }
    /// The control channel is up (again): senders can reach this listener now.
    fn online(&self) {}
    /// The control channel is down (or could not be opened), for `why`; the listener
    /// tries again after its backoff.
    fn offline(&self, _why: &str) {}
}

/// Runs the listener until `shutdown` (then `Ok`) or a terminal refusal (`Err`).
pub async fn run<H: AcceptHandler>(
    endpoint: Arc<Endpoint>,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<(), ConnectError> {
    run_with_cap(endpoint, handler, shutdown, DEFAULT_MAX_TUNNELS).await
}

/// [`run`] serving at most `max_tunnels` relayed connections at once.
pub async fn run_with_cap<H: AcceptHandler>(
    endpoint: Arc<Endpoint>,
    handler: Arc<H>,
    shutdown: CancellationToken,
    max_tunnels: usize,
) -> Result<(), ConnectError> {
    let tracker = TaskTracker::new();
    let admission = Admission {
        max_tunnels,
        tunnels: Arc::new(Semaphore::new(max_tunnels)),
        rejects: Arc::new(Semaphore::new(MAX_PENDING_REJECTS)),
        lines: Arc::default(),
    };
    let result = listen_loop(&endpoint, &handler, &tracker, &admission, &shutdown).await;
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("relayed connections still open after {DRAIN_TIMEOUT:?}; dropping them");
    }
    result
}

/// Slots for relayed connections and for reject rendezvous; they outlive control
/// channels (tunnels survive a reconnect).
#[derive(Debug, Clone)]
struct Admission {
    /// The size of `tunnels`, for the log.
    max_tunnels: usize,
    tunnels: Arc<Semaphore>,
    rejects: Arc<Semaphore>,
    /// The log lines a relay can make us repeat at will, each rate-limited.
    lines: Arc<RepeatedLines>,
}

/// What a relay (or whoever holds one) can make the listener log as fast as it sends:
/// 63,000 warnings a second about ignored senders (180 MB in 2.5 s), 60 MB a second about
/// malformed control messages or accepts that name an unreachable address. Memory and
/// descriptors stayed bounded; the log did not.
#[derive(Debug, Default)]
struct RepeatedLines {
    /// Every tunnel and reject slot taken: the sender is ignored.
    ignored: Throttle,
    /// Every tunnel slot taken: the sender is rejected.
    busy: Throttle,
    /// A control message that does not parse.
    malformed: Throttle,
    /// A rendezvous (accepting) that could not be opened.
    rendezvous_failed: Throttle,
    /// A reject rendezvous that did not end in the relay's 410.
    reject_failed: Throttle,
    /// A sender rejected as asked (any sender the listener turns away can repeat it).
    rejected: Throttle,
    /// A reject rendezvous the relay answered with 101 instead of 410.
    reject_opened: Throttle,
}

async fn listen_loop<H: AcceptHandler>(
    endpoint: &Arc<Endpoint>,
    handler: &Arc<H>,
    tracker: &TaskTracker,
    admission: &Admission,
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
                let reason = control_loop(ws, endpoint, handler, tracker, admission, shutdown)
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
        handler.offline(&reason);
        let step = backoff::schedule_step(failures);
        let delay = backoff::reconnect_delay(failures);
        failures = failures.saturating_add(1);
        tracing::warn!(
            parent: &span,
            "listener offline: {reason}; reconnecting in {:.2}s (backoff step {}s)",
            delay.as_secs_f64(),
            step.as_secs()
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Serves one control channel until it drops or goes silent; returns why.
async fn control_loop<H: AcceptHandler>(
    ws: WebSocket,
    endpoint: &Arc<Endpoint>,
    handler: &Arc<H>,
    tracker: &TaskTracker,
    admission: &Admission,
    shutdown: &CancellationToken,
) -> String {
    let WebSocket {
        mut reader,
        mut writer,
    } = ws;
    let renew_every = endpoint.renew_interval();
    let far = Duration::from_secs(365 * 24 * 3600);
    let mut renew = tokio::time::interval_at(
        Instant::now() + renew_every.unwrap_or(far),
        renew_every.unwrap_or(far),
    );
    renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Reset by every frame that arrives; the relay is dead when it fires.
    let silence = tokio::time::sleep(SILENCE_LIMIT);
    tokio::pin!(silence);
    let mut message: Vec<u8> = Vec::new();
    loop {
        // Every branch is cancel-safe: `cancelled`, interval ticks, `Sleep` and
        // `read_frame` (its partial frame stays in the reader's buffer).
        tokio::select! {
            () = shutdown.cancelled() => {
                let bye = writer.write_close(close_code::NORMAL, "listener shutting down");
                let _ = tokio::time::timeout(GOODBYE_TIMEOUT, bye).await;
                return "shutting down".into();
            }
            () = &mut silence => {
                return format!(
                    "nothing from the relay for {SILENCE_LIMIT:?} (not even a Pong); the connection is dead"
                );
            }
            _ = renew.tick(), if renew_every.is_some() => {
                let token = match endpoint.token() {
                    Ok(t) => t,
                    Err(e) => return format!("cannot sign a renewal token: {e}"),
                };
                let text = ControlMessage::RenewToken(RenewToken { token }).to_json();
                let renewal = writer.write_frame(OpCode::Text, text.as_bytes());
                if let Err(why) = control_write(renewal, silence.deadline(), shutdown).await {
                    return why;
                }
                tracing::debug!("token renewed");
            }
            _ = ping.tick() => {
                let probe = writer.write_frame(OpCode::Ping, b"");
                if let Err(why) = control_write(probe, silence.deadline(), shutdown).await {
                    return why;
                }
            }
            frame = reader.read_frame() => {
                let frame = match frame {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return "the relay closed the control channel without a Close frame".into(),
                    Err(e) => {
                        if let Some(code) = e.close_code() {
                            let bye = writer.write_close(code, "WebSocket protocol error");
                            closing(bye, shutdown).await;
                        }
                        return format!("control channel read failed: {e}");
                    }
                };
                silence.as_mut().reset(Instant::now() + SILENCE_LIMIT);
                match frame.opcode {
                    OpCode::Ping => {
                        let pong = writer.write_frame(OpCode::Pong, &frame.payload);
                        if let Err(why) = control_write(pong, silence.deadline(), shutdown).await {
                            return why;
                        }
                    }
                    OpCode::Pong => {}
                    OpCode::Close => {
                        let (code, reason) = frame.close_code();
                        let bye = async {
                            let _ = writer.write_close(code_to_echo(code), "").await;
                            let _ = writer.shutdown().await;
                        };
                        closing(bye, shutdown).await;
                        let why = if code == close_code::POLICY { " (token expired or refused)" } else { "" };
                        return format!("the relay closed the control channel with {code} {reason:?}{why}");
                    }
                    OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                        message.extend_from_slice(&frame.payload);
                        if message.len() > MAX_CONTROL_MESSAGE {
                            let bye = writer.write_close(websocket::close_code::TOO_BIG, "message too big");
                            closing(bye, shutdown).await;
                            return format!("control message over {MAX_CONTROL_MESSAGE} bytes");
                        }
                        if frame.fin {
                            let text = std::mem::take(&mut message);
                            dispatch(&text, endpoint, handler, tracker, admission);
                        }
                    }
                }
            }
        }
    }
}

/// Runs one control-channel write, bounded by [`CONTROL_WRITE_TIMEOUT`] and never past
/// `silent_at`, so a dead relay is declared within [`SILENCE_LIMIT`] whatever we were
/// doing; given up at once when `shutdown` is asked for (a relay that stopped reading
/// held a SIGTERM for the whole write bound). `Err` says why the channel is done.
async fn control_write(
    write: impl Future<Output = std::io::Result<()>>,
    silent_at: Instant,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let limit = (Instant::now() + CONTROL_WRITE_TIMEOUT).min(silent_at);
    // Both cancel-safe to drop: a frame half written ends with the channel anyway.
    let written = tokio::select! {
        written = tokio::time::timeout_at(limit, write) => written,
        () = shutdown.cancelled() => return Err("shutting down".into()),
    };
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("control channel write failed: {e}")),
        Err(_) => Err(format!(
            "the relay took no control frame within {CONTROL_WRITE_TIMEOUT:?} \
             (or was silent for {SILENCE_LIMIT:?})"
        )),
    }
}

/// Runs a last write before the channel is given up (a Close), bounded by
/// [`CONTROL_WRITE_TIMEOUT`] and dropped at once when `shutdown` is asked for.
async fn closing<T>(write: impl Future<Output = T>, shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::timeout(CONTROL_WRITE_TIMEOUT, write) => {}
        () = shutdown.cancelled() => {}
    }
}

/// Close codes we may send back (1005/1006/1015 must never go on the wire).
fn code_to_echo(code: u16) -> u16 {
    match code {
        1005 | 1006 | 1015 => close_code::NORMAL,
        c => c,
    }
}

#[cfg(test)]
#[path = "listener_tests.rs"]
mod tests;
