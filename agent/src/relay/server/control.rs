//! One listener's control channel: deliver accept commands, take `renewToken`, answer
//! Pings, and close it when its token expires (1008), a message is too large (1009) or
//! the relay stops (1001).

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
    pub shutdown: CancellationToken,
}

/// Runs the control channel until it ends; never returns an error (the listener's
/// misbehaviour only ends its own channel).
pub async fn serve(mut ws: WebSocketStream<Prefixed<BoxIo>>, mut ch: Channel<'_>) -> Ended {
    let expiry = tokio::time::sleep_until(deadline(ch.expiry));
    tokio::pin!(expiry);
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
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => match ControlMessage::parse(&text) {
                    Ok(ControlMessage::RenewToken(renew)) => match auth::authorize(
                        ch.keys, Some(renew.token.expose()), ch.path, Right::Listen, auth::now(),
                    ) {
                        Ok(grant) => {
                            tracing::info!(key = %grant.key_name, expiry = grant.expiry, "control channel token renewed");
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
                // Pings are answered by tungstenite on the next read; Pongs need nothing.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
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
            },
            cmd = ch.commands.recv() => {
                let Some(queued) = cmd else { break Ended::Shutdown };
                let send = ws.send(Message::text(queued.json));
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
    let close = match &ended {
        Ended::ByListener | Ended::Stuck => None,
        Ended::TokenExpired => Some((CloseCode::Policy, "token expired".to_owned())),
        Ended::BadRenewal(why) => Some((CloseCode::Policy, format!("renewToken refused: {why}"))),
        Ended::TooLarge => Some((CloseCode::Size, "control message too large".to_owned())),
        Ended::ProtocolViolation(code, why) => Some((*code, why.clone())),
        Ended::Shutdown => Some((CloseCode::Away, "relay shutting down".to_owned())),
    };
    finish(ws, close).await;
    ended
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
mod tests {
    use super::*;
    use crate::relay::server::rendezvous::Decision;

    /// The relay's end of a listener's control channel over `relay_end`.
    async fn control_ws(relay_end: tokio::io::DuplexStream) -> WebSocketStream<Prefixed<BoxIo>> {
        let stream = Prefixed::new(Vec::new(), Box::new(relay_end) as BoxIo);
        let role = tokio_tungstenite::tungstenite::protocol::Role::Server;
        WebSocketStream::from_raw_socket(stream, role, Some(websocket_config(64 * 1024))).await
    }

    /// A channel on `hc` with a valid token, fed by `commands`.
    fn channel(commands: mpsc::Receiver<Queued>, rendezvous: &Rendezvous) -> Channel<'_> {
        Channel {
            path: "hc",
            keys: &[],
            expiry: auth::now() + 3600,
            commands,
            rendezvous,
            shutdown: CancellationToken::new(),
        }
    }

    /// Accept commands queued for a listener that stops reading, or that goes away, reach
    /// their senders as undelivered when the channel ends, the one being sent and the
    /// ones behind it; the queue takes no more. (Before, they were dropped in silence and
    /// their senders waited out the rendezvous timeout, 30 s, for a 504.)
    #[tokio::test(start_paused = true)]
    async fn commands_a_listener_never_took_reach_their_senders_as_undelivered() {
        for (listener_gone, want) in [(false, Ended::Stuck), (true, Ended::ByListener)] {
            // 64 bytes of room: the first command does not fit.
            let (relay_end, listener_end) = tokio::io::duplex(64);
            if listener_gone {
                drop(listener_end);
            } else {
                std::mem::forget(listener_end);
            }
            let ws = control_ws(relay_end).await;
            let rendezvous = Rendezvous::default();
            let (tx, rx) = mpsc::channel(8);
            let mut senders = Vec::new();
            for i in 0..3 {
                let (ticket, decision) = rendezvous.open(&format!("t{i}"), "hc");
                let queued = Queued {
                    json: "x".repeat(1000),
                    rendezvous_id: ticket.id.clone(),
                };
                tx.try_send(queued).expect("room in the queue");
                senders.push((ticket, decision));
            }
            let ended = serve(ws, channel(rx, &rendezvous)).await;
            assert_eq!(ended, want);
            for (i, (_ticket, decision)) in senders.into_iter().enumerate() {
                // Past the rendezvous timeout the sender would have given up anyway.
                let told = tokio::time::timeout(Duration::from_secs(60), decision).await;
                assert!(
                    matches!(told, Ok(Ok(Decision::Undelivered))),
                    "sender {i} (listener gone: {listener_gone}): {told:?}"
                );
            }
            let late = Queued {
                json: String::new(),
                rendezvous_id: String::new(),
            };
            assert!(tx.try_send(late).is_err(), "the queue is closed");
        }
    }

    /// The listener's Close has arrived and a command is queued: the command is reported
    /// undelivered, not written after the Close (an unordered select did that in about
    /// half the rounds, and the sender waited out its rendezvous timeout).
    #[tokio::test(start_paused = true)]
    async fn a_command_queued_behind_an_arrived_close_is_undelivered() {
        use tokio::io::AsyncWriteExt;
        for round in 0..20 {
            let (relay_end, mut listener_end) = tokio::io::duplex(64 * 1024);
            // A masked Close frame (code 1000, mask key zero) from the listener.
            listener_end
                .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
                .await
                .expect("write close");
            let ws = control_ws(relay_end).await;
            let rendezvous = Rendezvous::default();
            let (tx, rx) = mpsc::channel(8);
            let (ticket, decision) = rendezvous.open("t", "hc");
            let queued = Queued {
                json: "x".into(),
                rendezvous_id: ticket.id.clone(),
            };
            tx.try_send(queued).expect("room");
            assert_eq!(serve(ws, channel(rx, &rendezvous)).await, Ended::ByListener);
            let told = tokio::time::timeout(Duration::from_secs(60), decision).await;
            assert!(
                matches!(told, Ok(Ok(Decision::Undelivered))),
                "round {round}: {told:?}"
            );
        }
    }

    #[test]
    fn a_token_signed_to_expire_at_any_time_has_a_deadline() {
        let now = auth::now();
        for expiry in [0, now, now + 60, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
            let at = deadline(expiry);
            assert!(at <= Instant::now() + LONGEST_TOKEN_LIFE, "{expiry}");
        }
        let soon = deadline(now + 60);
        assert!(soon <= Instant::now() + Duration::from_secs(61));
    }

    #[test]
    fn names_commands_without_their_content() {
        let cases = [
            (
                r#"{"renewToken":{"token":"SharedAccessSignature sr=a"}}"#,
                "renewToken",
            ),
            (r#"{"someFutureCommand":{"x":1}}"#, "someFutureCommand"),
        ];
        for (text, want) in cases {
            let msg = ControlMessage::parse(text).expect("command");
            assert_eq!(command_name(&msg), want, "{text}");
        }
    }
}
