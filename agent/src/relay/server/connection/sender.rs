//! A sender (`connect`): its two slots, the wait for a listener's decision (trying the
//! other listeners of its Hybrid Connection when one leaves before hearing of it), and
//! the relayed connection once one accepts.

use std::sync::atomic::Ordering;

use crate::logging::loggable;
use crate::relay::protocol::{NO_LISTENER_TEXT, SPARE_QUERY, close_code, status};
use crate::relay::server::registry::{ListenerHandle, Queued};
use crate::relay::server::rendezvous::{Decision, Leg};
use crate::relay::server::upgrade;
use crate::relay::server::{Server, Slot, accept, auth, relay};

use super::{Call, Ctx, Stream, refuse};

/// What a sender waiting for its listener may send before the upgrade is answered (a
/// client that does not wait for the 101) and still have relayed: read and kept, so that
/// the relay sees the sender go; past it, the relay stops reading until the decision.
const SENDER_EARLY_BYTES: usize = 64 * 1024;

/// Counts a relayed connection in `/$status` while it lives.
struct Relayed<'a>(&'a Server);

impl<'a> Relayed<'a> {
    fn new(server: &'a Server) -> Self {
        server.relayed.fetch_add(1, Ordering::Relaxed);
        server.relayed_total.fetch_add(1, Ordering::Relaxed);
        Relayed(server)
    }
}

impl Drop for Relayed<'_> {
    fn drop(&mut self) {
        self.0.relayed.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Ctx {
    pub(super) async fn connect(mut self, mut stream: Stream, call: Call) {
        let server = self.server.clone();
        // The Hybrid Connection this sender would reach: the key must cover that one.
        let resolved = server.registry.resolve(&call.hc.path);
        let authorized = auth::authorize_sender(
            &server.settings.config.keys,
            self.token(&call),
            &call.hc.path,
            resolved.as_ref().map(|(entity, _)| entity.as_str()),
            auth::now(),
        );
        let grant = match authorized {
            Ok(grant) => grant,
            Err(err) => return refuse(&mut stream, &err, &self.server.refusals_logged).await,
        };
        let tracking = call.tracking.as_str();
        let no_listener = format!("{NO_LISTENER_TEXT} TrackingId:{tracking}");
        // Nobody to reach is said before any slot is taken: it is the answer whatever the
        // slots.
        let Some((entity_path, listeners)) = resolved else {
            tracing::info!("sender refused: no listener");
            return upgrade::write_status(&mut stream, status::NOT_FOUND, &no_listener).await;
        };
        // Every answer but a tunnel gives both slots back before it is written: a client
        // that tries again the moment it hears it must find them free.
        let (permit, listener_slot) = match self.take_tunnel_slots(&grant.key_name) {
            Ok(slots) => slots,
            Err(full) => {
                let text = self.no_slot("sender", &full);
                return upgrade::write_status(&mut stream, 503, &text).await;
            }
        };
        tracing::debug!(listener_path = %loggable(&entity_path), "sender waiting for a listener");
        let wait = server.settings.config.rendezvous_timeout;
        let deadline = tokio::time::Instant::now() + wait;
        let mut listeners = listeners;
        // Listeners whose control channel ended with this sender's command unsent.
        let mut gone: Vec<u64> = Vec::new();
        let decision = loop {
            let (ticket, decision) =
                server
                    .rendezvous
                    .open(tracking, &call.hc.path, listener_slot.clone());
            let queued = |l: &ListenerHandle| Queued {
                json: accept::command(&l.base, &self.request, &call.hc, &ticket.id, self.peer),
                rendezvous_id: ticket.id.clone(),
            };
            let mut taker = listeners
                .iter()
                .find(|l| l.commands.try_send(queued(l)).is_ok())
                .map(|l| l.id);
            let mut undelivered = None;
            if taker.is_none()
                && let Some(first) = listeners.first()
            {
                // Every queue is full (a burst of senders): wait for room, within our deadline.
                let send = first.commands.send(queued(first));
                match tokio::time::timeout_at(deadline, send).await {
                    Ok(Ok(())) => taker = Some(first.id),
                    // Its channel ended while we waited: as if it had dropped our command.
                    Ok(Err(_)) => undelivered = Some(first.id),
                    Err(_) => {}
                }
            }
            // Here the sender has a decision (the loop ends) or the listener that left.
            let left = match (taker, undelivered) {
                (Some(taker), _) => {
                    let decision = tokio::select! {
                        () = server.shutdown.cancelled() => {
                            drop((permit, listener_slot, ticket));
                            let msg = "Service Unavailable: the relay is shutting down";
                            return upgrade::write_status(&mut stream, 503, msg).await;
                        }
                        d = tokio::time::timeout_at(deadline, decision) => d,
                        // A sender gone meanwhile gives its slot back now, not at the
                        // deadline; its ticket goes with it, so the listener's rendezvous
                        // finds nobody. (Cancel-safe: bytes are kept only as reads end.)
                        () = stream.gone(SENDER_EARLY_BYTES) => {
                            tracing::info!("sender left before a listener took it");
                            return;
                        }
                    };
                    if !matches!(decision, Ok(Ok(Decision::Undelivered))) {
                        break decision;
                    }
                    taker
                }
                (None, Some(left)) => left,
                (None, None) => {
                    tracing::info!("sender refused: no listener took the accept in time");
                    drop((permit, listener_slot, ticket));
                    return upgrade::write_status(&mut stream, status::NOT_FOUND, &no_listener)
                        .await;
                }
            };
            drop(ticket);
            // That listener went away before it heard of us: the others still may. Bounded
            // by the deadline, and each turn needs a listener's control channel to end.
            gone.push(left);
            tracing::info!("the listener left before taking the accept; trying the others");
            // Only the Hybrid Connection the sender was authorized for: another prefix
            // of its path may be one its key does not cover.
            listeners = server
                .registry
                .resolve(&call.hc.path)
                .filter(|(entity, _)| *entity == entity_path)
                .map(|(_, list)| list)
                .unwrap_or_default();
            listeners.retain(|l| !gone.contains(&l.id));
            if listeners.is_empty() {
                tracing::info!("sender refused: its listener left and no other is connected");
                drop((permit, listener_slot));
                return upgrade::write_status(&mut stream, status::NOT_FOUND, &no_listener).await;
            }
        };
        // Taken by the leg if it was accepted; otherwise free now, not after the answer.
        drop(listener_slot);
        match decision {
            Err(_) => {
                drop(permit);
                tracing::info!("sender failed: no accept within {wait:?}");
                let msg = format!(
                    "Gateway Timeout: the listener did not accept within {}. TrackingId:{tracking}",
                    humantime::format_duration(wait)
                );
                upgrade::write_status(&mut stream, 504, &msg).await;
            }
            Ok(Err(_) | Ok(Decision::Undelivered)) => {
                drop(permit);
                let msg = "Internal Server Error: rendezvous lost";
                upgrade::write_status(&mut stream, status::SERVER_ERROR, msg).await;
            }
            Ok(Ok(Decision::Reject {
                status,
                description,
            })) => {
                drop(permit);
                tracing::info!(status, "sender rejected by the listener");
                upgrade::write_status(&mut stream, status, &description).await;
            }
            Ok(Ok(Decision::Accept(leg))) => {
                let spare = call.hc.app_query.iter().any(|(k, _)| k == SPARE_QUERY);
                self.relay(stream, &call.key, leg, permit, spare).await;
            }
        }
    }

    /// Completes the sender's upgrade and pumps bytes until both sides are done. A
    /// `spare` (a connection `relay connect` opens ahead and renews every 45 s while
    /// unused) is logged only once it carried bytes: otherwise each would add two info
    /// lines per renewal.
    async fn relay(self, mut stream: Stream, key: &str, leg: Leg, permit: Slot, spare: bool) {
        let server = self.server.clone();
        if let Err(err) = upgrade::write_switching(&mut stream, key, leg.protocol.as_deref()).await
        {
            tracing::info!("sender vanished before its 101: {err}");
            relay::close(leg.stream, close_code::GOING_AWAY, "the sender went away").await;
            return;
        }
        let relayed = Relayed::new(&server);
        if spare {
            tracing::debug!(listener = %leg.peer, "relayed connection open (a spare)");
        } else {
            tracing::info!(listener = %leg.peer, "relayed connection open");
        }
        let outcome = relay::pump(
            stream,
            leg.stream,
            server.hard_stop.clone(),
            relay::Deadlines {
                close: server.settings.config.half_close_timeout,
                write: server.settings.config.stalled_write_timeout,
            },
        )
        .await;
        drop(relayed);
        if spare && outcome.sender_to_listener.1 == 0 && outcome.listener_to_sender.1 == 0 {
            tracing::debug!("relayed connection closed (a spare, unused): {outcome}");
        } else if spare {
            tracing::info!(listener = %leg.peer, "relayed connection closed (a spare, used): {outcome}");
        } else {
            tracing::info!("relayed connection closed: {outcome}");
        }
        drop((leg.permit, leg.open, permit));
    }
}
