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

/// A sender waiting for its rendezvous.
#[derive(Debug)]
pub struct Pending {
    /// The sender's tracking id (for logs on the rendezvous leg).
    pub tracking_id: String,
    /// Entity path the sender asked for (the rendezvous must use the same).
    pub path: String,
    /// The name of the sender's key: the listener's leg counts for it.
    pub key: String,
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
        key: &str,
    ) -> (Ticket, oneshot::Receiver<Decision>) {
        let id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(
            id.clone(),
            Pending {
                tracking_id: tracking_id.to_owned(),
                path: path.trim_matches('/').to_ascii_lowercase(),
                key: key.to_owned(),
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
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_a_live_id() {
        let rv = Rendezvous::default();
        let (ticket, _rx) = rv.open("t1", "hc", "k");
        for shown in [format!("{rv:?}"), format!("{ticket:?}"), format!("{rv:#?}")] {
            assert!(!shown.contains(&ticket.id), "{shown}");
        }
        assert_eq!(format!("{rv:?}"), "Rendezvous { pending: 1 }");
    }

    #[test]
    fn single_use_and_expiring_with_the_ticket() {
        let rv = Rendezvous::default();
        let (ticket, _rx) = rv.open("t1", "/HC/", "k");
        assert_eq!(rv.count(), 1);
        let claimed = rv.take(&ticket.id).expect("first claim wins");
        assert_eq!(claimed.path, "hc");
        assert_eq!(claimed.tracking_id, "t1");
        assert!(rv.take(&ticket.id).is_none(), "second claim fails");

        let (ticket, _rx) = rv.open("t2", "hc", "k");
        let id = ticket.id.clone();
        drop(ticket);
        assert!(rv.take(&id).is_none(), "expired with the sender's wait");
        assert_eq!(rv.count(), 0);
        assert!(rv.take("not-an-id").is_none());
    }
}
