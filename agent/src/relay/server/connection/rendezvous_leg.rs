//! A listener's rendezvous (`accept`): the answer to one waiting sender, a reject passed
//! on or the leg handed over with the slot the sender took for it.

use tracing::Instrument as _;

use crate::logging::loggable;
use crate::relay::protocol::{RejectStatus, close_code, status};
use crate::relay::server::rendezvous::{Decision, Leg, Pending};
use crate::relay::server::upgrade;
use crate::relay::server::{Open, accept, relay};

use super::{Call, Ctx, Stream};

impl Ctx {
    /// The listener's rendezvous: accept (101, hand the socket to the sender) or reject
    /// (410 here, the listener's status to the sender).
    pub(super) async fn accept(self, mut stream: Stream, call: Call) {
        let id = call.hc.id.as_deref().unwrap_or_default();
        // The address is the capability; the path must still be the one it was issued for.
        let pending = match self.server.rendezvous.take(id) {
            Some(wrong) if wrong.path != call.hc.path.to_ascii_lowercase() => {
                // The listener had the id, so this is its answer, and a wrong one: the
                // sender learns so now (it had got a bare 500).
                tracing::info!(
                    tracking = %loggable(&wrong.tracking_id),
                    "a rendezvous came on another path than its sender's; the sender is refused"
                );
                drop(wrong.listener_slot.take());
                let _ = wrong.decision.send(Decision::Reject {
                    status: 502,
                    description: "Bad Gateway: the listener's rendezvous named another path"
                        .to_owned(),
                });
                let msg = "Not Found: this rendezvous address was issued for another path";
                return upgrade::write_status(&mut stream, status::NOT_FOUND, msg).await;
            }
            pending => pending,
        };
        let Some(pending) = pending else {
            if let Some(err) = call.hc.status_code.as_ref().and_then(RejectStatus::problem) {
                let msg = format!("Bad Request: {err}");
                return upgrade::write_status(&mut stream, 400, &msg).await;
            }
            let msg = "Not Found: this rendezvous address is unknown, used or expired";
            return upgrade::write_status(&mut stream, status::NOT_FOUND, msg).await;
        };
        let span = tracing::info_span!("rendezvous", tracking = %loggable(&pending.tracking_id));
        self.decide(stream, call, pending).instrument(span).await;
    }

    async fn decide(mut self, mut stream: Stream, call: Call, pending: Pending) {
        // The slot the sender took for this leg (the listener's leg of a tunnel counts for
        // the sender's key): the leg's if it is accepted, and free again before the sender
        // hears any other answer, so that it may try again at once.
        let reserved = pending.listener_slot.take();
        if let Some(asked) = call.hc.status_code {
            let status = accept::reject_status(&asked);
            tracing::info!(status, "listener rejected the connection");
            let problem = asked.problem();
            let description = match problem {
                // The listener's own text is about a status the sender never sees.
                Some(_) => "Bad Gateway: the listener rejected the connection".to_owned(),
                None => call.hc.status_description.unwrap_or_default(),
            };
            drop(reserved);
            let _ = pending.decision.send(Decision::Reject {
                status,
                description,
            });
            return match problem {
                // The rejection took effect; the listener learns what was wrong with it.
                Some(err) => {
                    let msg = format!("Bad Request: {err}; the sender got {status}");
                    upgrade::write_status(&mut stream, 400, &msg).await;
                }
                None => {
                    let msg = "Gone: the connection was rejected as asked";
                    upgrade::write_status(&mut stream, status::GONE, msg).await;
                }
            };
        }
        if pending.decision.is_closed() {
            drop(reserved);
            let msg = "Not Found: the sender is gone";
            return upgrade::write_status(&mut stream, status::NOT_FOUND, msg).await;
        }
        let Some(permit) = reserved else {
            // Not reached: an entry is claimed once, and only its claimer takes the slot.
            // Taking a new one here would let a tunnel in halfway again.
            let lost = "Internal Server Error: the rendezvous lost its connection slot";
            let _ = pending.decision.send(Decision::Reject {
                status: status::SERVER_ERROR,
                description: lost.to_owned(),
            });
            return upgrade::write_status(&mut stream, status::SERVER_ERROR, lost).await;
        };
        self.handshake = None;
        let protocol = self
            .request
            .header("Sec-WebSocket-Protocol")
            .and_then(|p| p.split(',').map(str::trim).find(|p| !p.is_empty()))
            .map(str::to_owned);
        let switched = upgrade::write_switching(&mut stream, &call.key, protocol.as_deref()).await;
        if let Err(err) = switched {
            tracing::info!("listener's rendezvous vanished during the handshake: {err}");
            drop(permit);
            let _ = pending.decision.send(Decision::Reject {
                status: 502,
                description: "Bad Gateway: the listener's rendezvous failed".to_owned(),
            });
            return;
        }
        let leg = Leg {
            stream,
            protocol,
            peer: self.peer,
            permit,
            open: Open::new(self.server.open.clone()),
        };
        if let Err(Decision::Accept(leg)) = pending.decision.send(Decision::Accept(leg)) {
            tracing::info!("sender gave up just before the accept");
            let Leg { stream, permit, .. } = leg;
            drop(permit);
            relay::close(stream, close_code::GOING_AWAY, "the sender went away").await;
        }
    }
}
