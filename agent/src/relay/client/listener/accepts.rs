//! Each accept message of the control channel: admitted under `max_tunnels` (or to a
//! bounded number of quick rejects past it, or ignored past those), then answered with a
//! rendezvous or a reject within [`RENDEZVOUS_TIMEOUT`].

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::{
    AcceptHandler, Admission, BUSY_STATUS, Decision, LOGGED_ID_CHARS, MAX_LOGGED_ERROR_CHARS,
    MAX_PENDING_REJECTS, RENDEZVOUS_TIMEOUT, RepeatedLines,
};
use crate::logging::loggable;
use crate::relay::client::error::Role;
use crate::relay::client::{Endpoint, Tunnel, handshake};
use crate::relay::protocol::{self, Accept, ControlMessage, close_code, status};

pub(super) fn dispatch<H: AcceptHandler>(
    text: &[u8],
    endpoint: &Arc<Endpoint>,
    handler: &Arc<H>,
    tracker: &TaskTracker,
    admission: &Admission,
) {
    let text = String::from_utf8_lossy(text);
    match ControlMessage::parse(&text) {
        Ok(ControlMessage::Accept(accept)) => {
            // The relay's text: escaped, so that it cannot forge a line of our log. Only the
            // start of the id: with the address it opens the rendezvous (a relay may make
            // it the capability, as ours does), and the start is enough to match lines.
            let id_start: String = accept.id.chars().take(LOGGED_ID_CHARS).collect();
            let span = tracing::info_span!(
                "accept",
                id = %loggable(&id_start),
                remote = %loggable(&accept.remote_endpoint.to_string()),
            );
            let endpoint = Arc::clone(endpoint);
            let handler = Arc::clone(handler);
            let slot = match Arc::clone(&admission.tunnels).try_acquire_owned() {
                Ok(permit) => Slot {
                    busy: false,
                    _permit: permit,
                },
                Err(_) => match Arc::clone(&admission.rejects).try_acquire_owned() {
                    Ok(permit) => Slot {
                        busy: true,
                        _permit: permit,
                    },
                    Err(_) => {
                        admission.lines.ignored.log(|left_out| {
                            tracing::warn!(parent: &span, "{} relayed connections and {MAX_PENDING_REJECTS} rejects in flight; ignoring the sender{left_out}", admission.max_tunnels);
                        });
                        return;
                    }
                },
            };
            let lines = Arc::clone(&admission.lines);
            tracker.spawn(rendezvous(accept, endpoint, handler, slot, lines).instrument(span));
        }
        Ok(ControlMessage::Unknown(command)) => {
            tracing::debug!(command, "ignoring unknown control command")
        }
        Ok(other) => tracing::debug!(?other, "ignoring control message"),
        Err(e) => {
            // The parser's message may quote the relay's text: short, and escaped.
            let why: String = e.to_string().chars().take(MAX_LOGGED_ERROR_CHARS).collect();
            admission.lines.malformed.log(|left_out| {
                tracing::warn!(
                    "ignoring a malformed control message of {} bytes: {}{left_out}",
                    text.len(),
                    loggable(&why)
                );
            });
        }
    }
}

/// What an accept was admitted to; the permit is held until the rendezvous ends.
#[derive(Debug)]
struct Slot {
    busy: bool,
    /// Released when the rendezvous (and the relayed connection) ends.
    _permit: OwnedSemaphorePermit,
}

async fn rendezvous<H: AcceptHandler>(
    accept: Accept,
    endpoint: Arc<Endpoint>,
    handler: Arc<H>,
    slot: Slot,
    lines: Arc<RepeatedLines>,
) {
    let decision = if slot.busy {
        lines.busy.log(|left_out| {
            tracing::warn!(
                "already serving the most relayed connections; rejecting the sender{left_out}"
            );
        });
        Decision::Reject {
            status: BUSY_STATUS,
            description: "the listener already carries as many relayed connections as it is allowed (--max-tunnels, [relay] max_tunnels); retry when one ends".to_owned(),
        }
    } else {
        handler.decide(&accept)
    };
    match decision {
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
                Err(e) if e.status() == Some(status::GONE) => lines.rejected.log(|left_out| {
                    tracing::info!(status = code, description, "rejected sender{left_out}");
                }),
                Err(e) => lines.reject_failed.log(|left_out| {
                    tracing::warn!("reject rendezvous failed: {e}{left_out}");
                }),
                Ok(ws) => {
                    lines.reject_opened.log(|left_out| {
                        tracing::warn!(
                            "the relay opened a reject rendezvous instead of answering 410; \
                             closing it{left_out}"
                        );
                    });
                    Tunnel::new(ws).finish(close_code::NORMAL, "").await;
                }
            }
        }
        Decision::Accept => {
            let address = accept.address.clone();
            let open = async {
                match handshake::connect_address(
                    &address,
                    endpoint.tls.as_ref(),
                    Role::Rendezvous,
                    RENDEZVOUS_TIMEOUT,
                )
                .await
                {
                    Ok(ws) => Some(Tunnel::new(ws)),
                    Err(e) => {
                        lines.rendezvous_failed.log(|left_out| {
                            tracing::warn!("rendezvous failed: {e}{left_out}");
                        });
                        None
                    }
                }
            };
            // Boxed: the handshake's state is large, and handed on by value it would be
            // laid out again in every handler's future for the tunnel's whole life (an
            // idle tunnel paid ~5 KiB for it); the box is freed once the rendezvous is open.
            handler.serve(Box::pin(open), accept).await;
        }
    }
    drop(slot);
}
