//! One listener's control channel: deliver accept commands, take `renewToken`, answer
//! Pings, and close it when its token expires (1008), a message is too large (1009) or
//! the relay stops (1001).
//!
//! Each accept command is followed by a Ping (unless one is out already): a listener that
//! does not answer within `answer_timeout` has stopped (SIGSTOP, a frozen VM, a host gone
//! without a reset, whose kernel or network still takes the bytes). It is dropped, and
//! the senders whose commands it was sent since its last answer go to another listener
//! instead of waiting out the rendezvous timeout. A channel that carries nothing for
//! `ping_interval` is sent a Ping too, so that a listener that stopped while idle does not
//! keep its place (and a place under the path's listener quota) until a sender comes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_util::sync::CancellationToken;

use super::io::{BoxIo, Prefixed};
use super::registry::Queued;
use super::rendezvous::Rendezvous;
use super::{CLOSE_HANDSHAKE_TIMEOUT, auth};
use crate::config::ServerKey;
use crate::logging::Throttle;
use crate::relay::protocol::{self, ControlMessage};
use crate::relay::sas::Right;

/// A listener that does not take an accept command off the wire within this (its
/// socket buffers are full: it stopped reading) is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What a listener's control channel reads at a time. Control messages are small (a
/// `renewToken`); tungstenite's default (128 KiB, allocated for the channel's life) made an
/// idle listener cost 130 KB of the relay.
const CONTROL_READ_BUFFER: usize = 4 * 1024;

/// What the relay holds of control frames a listener has not taken off the wire yet:
/// accept commands (each under the sender's request head, at most
/// [`super::upgrade::MAX_HEAD_BYTES`]), Pongs and the Close. Past it a send fails (the listener is
/// dropped) and only the latest Pong is kept. tungstenite's default is unlimited: a
/// listener that sent Pings and never read grew the relay by every byte it sent.
const CONTROL_WRITE_BUFFER: usize = 8 * super::upgrade::MAX_HEAD_BYTES;

/// The WebSocket settings of a listener's control channel: messages up to
/// `max_control_message` bytes, read [`CONTROL_READ_BUFFER`] at a time, frames written
/// as they are sent, at most [`CONTROL_WRITE_BUFFER`] of them held unsent.
pub fn websocket_config(max_control_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_control_message))
        .max_frame_size(Some(max_control_message))
        .read_buffer_size(CONTROL_READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(CONTROL_WRITE_BUFFER)
}

/// Why a control channel ended (logged by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The listener closed it or the connection dropped.
    ByListener,
    /// The listener stopped reading its control channel.
    Stuck,
    /// The listener did not answer the Ping after an accept command in time.
    Unresponsive,
    /// Its token expired without a valid `renewToken` (1008).
    TokenExpired,
    /// A `renewToken` carried an invalid token (1008).
    BadRenewal(String),
    /// A control message exceeded the limit (1009).
    TooLarge,
    /// The listener broke the WebSocket protocol (1002: a bad opcode, reserved bits, an
    /// unmasked or fragmented control frame; 1007: text that is not UTF-8).
    ProtocolViolation(CloseCode, String),
    /// The relay is shutting down (1001).
    Shutdown,
}

/// What the control channel needs besides its socket.
#[derive(Debug)]
pub struct Channel<'a> {
    /// Entity path the listener registered on.
    pub path: &'a str,
    /// Keys, for verifying `renewToken`.
    pub keys: &'a [ServerKey],
    /// Unix seconds at which the current token expires.
    pub expiry: u64,
    /// Accept commands queued by senders.
    pub commands: mpsc::Receiver<Queued>,
    /// The senders waiting, told when their command is dropped unsent.
    pub rendezvous: &'a Rendezvous,
    /// Time the listener has to answer the Ping after an accept command.
    pub answer_timeout: Duration,
    /// Silence after which the listener is sent a Ping all the same.
    pub ping_interval: Duration,
    pub shutdown: CancellationToken,
}

/// Runs the control channel until it ends; never returns an error (the listener's
/// misbehaviour only ends its own channel).
pub async fn serve(mut ws: WebSocketStream<Prefixed<BoxIo>>, mut ch: Channel<'_>) -> Ended {
    let expiry = tokio::time::sleep_until(deadline(ch.expiry));
    tokio::pin!(expiry);
    let mut probe = Probe::default();
    // A listener may renew its token as often as it sends messages: two renewing in a
    // loop wrote 275,000 log lines a second and slowed everyone's handshakes.
    let renewals_logged = Throttle::default();
    let ended = loop {
        // Every branch is cancel-safe: `cancelled`, `recv`, `Sleep` and the WebSocket's
        // `next` keep their state in their owners, not in the dropped future. In this
        // order: what the listener sent (its Close above all) is read before another
        // command goes out, so a command queued behind a Close that has arrived is reported
        // undelivered rather than written to a listener that has gone.
        tokio::select! {
            biased;
            () = ch.shutdown.cancelled() => break Ended::Shutdown,
            () = &mut expiry => break Ended::TokenExpired,
            () = probe.overdue() => break Ended::Unresponsive,
            () = probe.quiet_for(ch.ping_interval) => {
                if let Err(ended) = send_probe(&mut ws, probe.ping(ch.answer_timeout)).await {
                    break ended;
                }
            }
            msg = ws.next() => { probe.heard(); match msg {
                Some(Ok(Message::Text(text))) => match ControlMessage::parse(&text) {
                    Ok(ControlMessage::RenewToken(renew)) => match auth::authorize(
                        ch.keys, Some(renew.token.expose()), ch.path, Right::Listen, auth::now(),
                    ) {
                        Ok(grant) => {
                            renewals_logged.log(|left_out| {
                                tracing::info!(key = %grant.key_name, expiry = grant.expiry, "control channel token renewed{left_out}");
                            });
                            ch.expiry = grant.expiry;
                            expiry.as_mut().reset(deadline(ch.expiry));
                        }
                        Err(err) => break Ended::BadRenewal(err.to_string()),
                    },
                    Ok(other) => tracing::debug!("ignoring control command {}", crate::logging::loggable(command_name(&other))),
                    Err(err) => tracing::debug!("ignoring a control message that is not a command: {err}"),
                },
                Some(Ok(Message::Binary(b))) => {
                    tracing::debug!(len = b.len(), "ignoring binary control message");
                }
                // Pings are answered by tungstenite on the next read.
                Some(Ok(Message::Pong(payload))) => {
                    if let Some(ping) = probe.answered(&payload, ch.answer_timeout)
                        && let Err(ended) = send_probe(&mut ws, ping).await
                    {
                        break ended;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => break Ended::ByListener,
                Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                    break Ended::TooLarge;
                }
                // A dropped connection is reported as a protocol error too: it is not one.
                Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                    break Ended::ByListener;
                }
                Some(Err(err @ WsError::Protocol(_))) => {
                    break Ended::ProtocolViolation(CloseCode::Protocol, err.to_string());
                }
                Some(Err(err @ WsError::Utf8(_))) => {
                    break Ended::ProtocolViolation(CloseCode::Invalid, err.to_string());
                }
                Some(Err(err)) => {
                    tracing::debug!("control channel read failed: {err}");
                    break Ended::ByListener;
                }
            }},
            cmd = ch.commands.recv() => {
                let Some(queued) = cmd else { break Ended::Shutdown };
                let ping = probe.sent(queued.rendezvous_id.clone(), ch.answer_timeout);
                let send = async {
                    ws.send(Message::text(queued.json)).await?;
                    match ping {
                        Some(payload) => ws.send(Message::Ping(payload.into())).await,
                        None => Ok(()),
                    }
                };
                let ended = match tokio::time::timeout(SEND_TIMEOUT, send).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(err)) => {
                        tracing::debug!("control channel send failed: {err}");
                        Ended::ByListener
                    }
                    Err(_) => Ended::Stuck,
                };
                // Not taken off the wire: to the sender, as good as never sent (should the
                // listener read it after all, its rendezvous finds the id gone).
                ch.rendezvous.undelivered(&queued.rendezvous_id);
                break ended;
            }
        }
    };
    // No command queues from here on, and none queued is lost in silence: its sender
    // moves on now instead of waiting out its rendezvous timeout.
    ch.commands.close();
    while let Ok(queued) = ch.commands.try_recv() {
        ch.rendezvous.undelivered(&queued.rendezvous_id);
    }
    if matches!(ended, Ended::Unresponsive | Ended::Stuck) {
        // Sent, but to a listener that no longer acts on them: those of its senders still
        // waiting (their rendezvous not opened) move on now. Should it wake and open one
        // after all, it finds the id gone.
        for id in probe.unanswered() {
            ch.rendezvous.undelivered(&id);
        }
    }
    let close = match &ended {
        Ended::ByListener | Ended::Stuck | Ended::Unresponsive => None,
        Ended::TokenExpired => Some((CloseCode::Policy, "token expired".to_owned())),
        Ended::BadRenewal(why) => Some((CloseCode::Policy, format!("renewToken refused: {why}"))),
        Ended::TooLarge => Some((CloseCode::Size, "control message too large".to_owned())),
        Ended::ProtocolViolation(code, why) => Some((*code, why.clone())),
        Ended::Shutdown => Some((CloseCode::Away, "relay shutting down".to_owned())),
    };
    // A listener that stopped acting (or reading) would not answer a close handshake
    // either: it is dropped at once, not after CLOSE_HANDSHAKE_TIMEOUT more.
    if !matches!(ended, Ended::Unresponsive | Ended::Stuck) {
        finish(ws, close).await;
    }
    ended
}

/// Sends a probe Ping with `payload` within [`SEND_TIMEOUT`]; `Err` says how the channel
/// ended when it could not.
async fn send_probe(
    ws: &mut WebSocketStream<Prefixed<BoxIo>>,
    payload: Vec<u8>,
) -> Result<(), Ended> {
    match tokio::time::timeout(SEND_TIMEOUT, ws.send(Message::Ping(payload.into()))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Ended::ByListener),
        Err(_) => Err(Ended::Stuck),
    }
}

/// The Ping that follows accept commands (or a silence), and what waits on its answer.
struct Probe {
    /// When the listener last sent anything.
    heard_at: Instant,
    /// The payload of the Ping out, and when its answer is due.
    out: Option<(Vec<u8>, Instant)>,
    /// Rendezvous ids of the accept commands sent before the Ping out: its answer shows
    /// the listener read them.
    covered: Vec<String>,
    /// Those sent after it: the next Ping covers them.
    uncovered: Vec<String>,
    /// Counts Pings, so that each payload is new: an unsolicited Pong (some clients send
    /// them) or a late one never answers a later Ping.
    pings: u64,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            heard_at: Instant::now(),
            out: None,
            covered: Vec::new(),
            uncovered: Vec::new(),
            pings: 0,
        }
    }
}

impl Probe {
    /// The listener sent something (a frame, or its connection ended).
    fn heard(&mut self) {
        self.heard_at = Instant::now();
    }

    /// Resolves once the listener has been silent for `interval` with no Ping out;
    /// pending while one is out. Cancel-safe: a `Sleep` made anew each time.
    async fn quiet_for(&self, interval: Duration) {
        match &self.out {
            Some(_) => std::future::pending().await,
            None => {
                let at = self.heard_at.checked_add(interval);
                match at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            }
        }
    }

    /// Records an accept command sent for `rendezvous_id`; the payload of a Ping to send
    /// after it when none is out (answer due within `within`).
    fn sent(&mut self, rendezvous_id: String, within: Duration) -> Option<Vec<u8>> {
        if self.out.is_some() {
            self.uncovered.push(rendezvous_id);
            return None;
        }
        self.covered.push(rendezvous_id);
        Some(self.ping(within))
    }

    /// A Pong with `payload` arrived. When it answers the Ping out, the listener read
    /// everything sent before it; returns the payload of the next Ping to send when
    /// commands went out after that one (answer due within `within`).
    fn answered(&mut self, payload: &[u8], within: Duration) -> Option<Vec<u8>> {
        if self.out.as_ref().is_none_or(|(out, _)| out != payload) {
            return None;
        }
        self.out = None;
        self.covered = std::mem::take(&mut self.uncovered);
        (!self.covered.is_empty()).then(|| self.ping(within))
    }

    /// A new Ping out: its payload, its answer due within `within`.
    fn ping(&mut self, within: Duration) -> Vec<u8> {
        self.pings = self.pings.wrapping_add(1);
        let payload = format!("amlx-probe-{}", self.pings).into_bytes();
        // A timeout too large to add to now is as good as none: ten years from now.
        let due = Instant::now()
            .checked_add(within)
            .unwrap_or_else(|| Instant::now() + LONGEST_TOKEN_LIFE);
        self.out = Some((payload.clone(), due));
        payload
    }

    /// The rendezvous ids sent and not shown read.
    fn unanswered(&mut self) -> impl Iterator<Item = String> + '_ {
        self.covered.drain(..).chain(self.uncovered.drain(..))
    }

    /// Resolves when the Ping out has gone unanswered past its due time; pending while
    /// none is out. Cancel-safe: a `Sleep` made anew each time.
    async fn overdue(&self) {
        match &self.out {
            Some((_, due)) => tokio::time::sleep_until(*due).await,
            None => std::future::pending().await,
        }
    }
}

/// Sends our Close (if any) and waits, bounded, for the stream to end.
async fn finish(mut ws: WebSocketStream<Prefixed<BoxIo>>, close: Option<(CloseCode, String)>) {
    let wind_down = async {
        if let Some((code, reason)) = close {
            let _ = ws
                .close(Some(CloseFrame {
                    code,
                    reason: protocol::close_reason(&reason).to_owned().into(),
                }))
                .await;
        }
        // Drive the socket so tungstenite sends any Close reply, until the peer is done.
        while let Some(Ok(_)) = ws.next().await {}
    };
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, wind_down).await;
}

/// The command's name, for logs (never its content: a renewal carries a token).
fn command_name(msg: &ControlMessage) -> &str {
    match msg {
        ControlMessage::Accept(_) => "accept",
        ControlMessage::RenewToken(_) => "renewToken",
        ControlMessage::Request(_) => "request",
        ControlMessage::Response(_) => "response",
        ControlMessage::Unknown(name) => name,
    }
}

/// The longest a listener's token is honoured, whatever expiry it was signed with: a
/// token may say `se=18446744073709551615`, which no clock can add to now.
const LONGEST_TOKEN_LIFE: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// The instant a token expiring at unix second `expiry` runs out (at most
/// [`LONGEST_TOKEN_LIFE`] from now).
fn deadline(expiry: u64) -> Instant {
    let left = Duration::from_secs(expiry.saturating_sub(auth::now())).min(LONGEST_TOKEN_LIFE);
    Instant::now() + left
}

#[cfg(test)]
#[path = "control_tests.rs"]
mod tests;
