//! Senders waiting for a listener's decision, keyed by a single-use rendezvous id that
//! expires with the sender's wait (`rendezvous_timeout`, ~30 s like Azure).
//!
//! The id is a random UUID and the only credential the rendezvous leg carries (listeners
//! do not sign it), so it is never logged; logs use the sender's tracking id.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::io::{BoxIo, Prefixed};
use super::{Open, Slot};

/// The listener's end of an accepted rendezvous, handed to the sender's task.
#[derive(Debug)]
pub struct Leg {
    /// The listener's rendezvous connection, already answered with `101`.
    pub stream: Prefixed<BoxIo>,
    /// The sub-protocol the listener picked, echoed in the sender's `101`.
    pub protocol: Option<String>,
    /// Where the rendezvous came from (logs).
    pub peer: SocketAddr,
    /// The connection slot of the listener's leg, released when the pump ends.
    pub permit: Slot,
    /// Counts the leg in `/$status` while the sender's task pumps it (the task that
    /// accepted it, which counted it so far, ends with the hand-over): held, never read.
    pub open: Open,
}

/// What the listener decided.
#[derive(Debug)]
pub enum Decision {
    Accept(Leg),
    /// The listener's status and description, returned to the sender.
    Reject {
        status: u16,
        description: String,
    },
    /// The listener's control channel ended before the accept command went out: the
    /// listener never heard of this sender, which may try another.
    Undelivered,
}

/// The relayed slot a waiting sender keeps for its tunnel's listener leg
/// ([`super::Server::tunnel_slots`]). Every accept command the sender has sent shares it:
/// the rendezvous that answers takes it, and it is free again once the sender and every
/// command's entry are gone (accepted leg aside).
#[derive(Debug, Clone)]
pub struct ReservedSlot(Arc<Mutex<Option<Slot>>>);

impl ReservedSlot {
    pub fn new(slot: Slot) -> Self {
        ReservedSlot(Arc::new(Mutex::new(Some(slot))))
    }

    /// The slot, for the first caller only.
    pub fn take(&self) -> Option<Slot> {
        // The critical section is one `Option::take`: a poisoned lock still holds a
        // consistent value.
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A sender waiting for its rendezvous.
#[derive(Debug)]
pub struct Pending {
    /// The sender's tracking id (for logs on the rendezvous leg).
    pub tracking_id: String,
    /// Entity path the sender asked for (the rendezvous must use the same).
    pub path: String,
    /// The slot the listener's leg takes.
    pub listener_slot: ReservedSlot,
    pub decision: oneshot::Sender<Decision>,
}

type Map = Arc<Mutex<HashMap<String, Pending>>>;

/// Every pending rendezvous.
#[derive(Default)]
pub struct Rendezvous {
    pending: Map,
}

impl std::fmt::Debug for Rendezvous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The map's keys are the live rendezvous ids: credentials, never printed.
        f.debug_struct("Rendezvous")
            .field("pending", &self.count())
            .finish()
    }
}

/// Removes its entry when the sender stops waiting (accepted, rejected, timed out, gone):
/// that is what makes an address expire and single-use.
pub struct Ticket {
    pub id: String,
    map: Map,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The id is the rendezvous leg's only credential.
        f.debug_struct("Ticket").finish_non_exhaustive()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        lock(&self.map).remove(&self.id);
    }
}

fn lock(map: &Map) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
    // Each critical section is one insert/remove: a poisoned map is still consistent.
    map.lock().unwrap_or_else(|e| e.into_inner())
}

impl Rendezvous {
    /// Registers a waiting sender; the returned ticket keeps the address alive.
    pub fn open(
        &self,
        tracking_id: &str,
        path: &str,
        listener_slot: ReservedSlot,
    ) -> (Ticket, oneshot::Receiver<Decision>) {
        let id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(
            id.clone(),
            Pending {
                tracking_id: tracking_id.to_owned(),
                path: path.trim_matches('/').to_ascii_lowercase(),
                listener_slot,
                decision: tx,
            },
        );
        (
            Ticket {
                id,
                map: self.pending.clone(),
            },
            rx,
        )
    }

    /// Claims a rendezvous: the first caller with a live id gets it, everyone after
    /// (and everyone after expiry) gets `None`.
    pub fn take(&self, id: &str) -> Option<Pending> {
        lock(&self.pending).remove(id)
    }

    /// Tells the sender of rendezvous `id` (if it still waits) that its accept command was
    /// dropped unsent.
    pub fn undelivered(&self, id: &str) {
        if let Some(pending) = self.take(id) {
            let _ = pending.decision.send(Decision::Undelivered);
        }
    }

    /// Senders waiting right now.
    pub fn count(&self) -> usize {
        lock(&self.pending).len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A slot of a semaphore of its own, for tests that do not count slots.
    pub(crate) fn reserved() -> ReservedSlot {
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        ReservedSlot::new(Slot {
            _permit: slots.try_acquire_owned().expect("a free permit"),
            _key_permit: None,
        })
    }

    #[test]
    fn a_reserved_slot_goes_to_one_taker_and_is_freed_with_its_last_holder() {
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let reserved = ReservedSlot::new(Slot {
            _permit: slots.clone().try_acquire_owned().expect("a free permit"),
            _key_permit: None,
        });
        let shared = reserved.clone();
        drop(reserved);
        assert_eq!(slots.available_permits(), 0, "a holder is left");
        let taken = shared.take().expect("the first taker");
        assert!(shared.take().is_none(), "a second taker");
        drop(shared);
        assert_eq!(slots.available_permits(), 0, "the taker holds it");
        drop(taken);
        assert_eq!(slots.available_permits(), 1);
        let reserved = ReservedSlot::new(Slot {
            _permit: slots.clone().try_acquire_owned().expect("a free permit"),
            _key_permit: None,
        });
        drop(reserved);
        assert_eq!(
            slots.available_permits(),
            1,
            "untaken, freed with its holders"
        );
    }

    #[test]
    fn debug_output_never_shows_a_live_id() {
        let rv = Rendezvous::default();
        let (ticket, _rx) = rv.open("t1", "hc", reserved());
        for shown in [format!("{rv:?}"), format!("{ticket:?}"), format!("{rv:#?}")] {
            assert!(!shown.contains(&ticket.id), "{shown}");
        }
        assert_eq!(format!("{rv:?}"), "Rendezvous { pending: 1 }");
    }

    #[test]
    fn single_use_and_expiring_with_the_ticket() {
        let rv = Rendezvous::default();
        let (ticket, _rx) = rv.open("t1", "/HC/", reserved());
        assert_eq!(rv.count(), 1);
        let claimed = rv.take(&ticket.id).expect("first claim wins");
        assert_eq!(claimed.path, "hc");
        assert_eq!(claimed.tracking_id, "t1");
        assert!(rv.take(&ticket.id).is_none(), "second claim fails");

        let (ticket, _rx) = rv.open("t2", "hc", reserved());
        let id = ticket.id.clone();
        drop(ticket);
        assert!(rv.take(&id).is_none(), "expired with the sender's wait");
        assert_eq!(rv.count(), 0);
        assert!(rv.take("not-an-id").is_none());
    }
}
