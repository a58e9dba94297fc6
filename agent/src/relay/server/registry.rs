//! Connected listeners per Hybrid Connection path: a bounded list each, a random pick
//! per sender (Azure spreads connections randomly), and the count for `/$status`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::relay::protocol;

/// Accept commands that may queue for one listener; senders beyond it wait for room.
pub const CONTROL_QUEUE: usize = 256;

/// One listener's control channel, as seen by senders.
#[derive(Debug, Clone)]
pub struct ListenerHandle {
    /// Unique per control channel, to remove exactly this one.
    pub id: u64,
    /// Scheme and `Host` the listener connected with: reachable by that listener, so
    /// its accept addresses use them.
    pub base: url::Url,
    /// Accept commands for the control-channel task to send.
    pub commands: mpsc::Sender<Queued>,
}

/// An accept command waiting for a listener's control channel to send it.
pub struct Queued {
    /// The `{"accept":{...}}` text.
    pub json: String,
    /// The sender's rendezvous id: a command the channel drops unsent is reported under it
    /// ([`super::rendezvous::Rendezvous::undelivered`]), so the sender need not wait out
    /// its rendezvous timeout for a listener that never heard of it.
    pub rendezvous_id: String,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Both fields carry the rendezvous id, the one credential of the rendezvous leg.
        f.debug_struct("Queued").finish_non_exhaustive()
    }
}

/// A listener could not be added.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("quota exceeded: at most {max} listeners may be connected to one Hybrid Connection")]
pub struct TooManyListeners {
    pub max: usize,
}

/// Every connected listener, keyed by lower-cased entity path.
#[derive(Debug)]
pub struct Registry {
    by_path: Mutex<HashMap<String, Vec<ListenerHandle>>>,
    next_id: AtomicU64,
    /// Per-path cap (Azure: 25).
    max_per_path: usize,
}

impl Registry {
    pub fn new(max_per_path: usize) -> Self {
        Registry {
            by_path: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            max_per_path,
        }
    }

    /// A fresh id for [`ListenerHandle::id`].
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<ListenerHandle>>> {
        // A panic while holding this lock cannot leave the map half-updated (every
        // critical section is a single push/retain), so a poisoned lock is still usable.
        self.by_path.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a listener on `path`, refusing the one past the cap.
    pub fn add(&self, path: &str, handle: ListenerHandle) -> Result<(), TooManyListeners> {
        let mut map = self.lock();
        let list = map.entry(key(path)).or_default();
        if list.len() >= self.max_per_path {
            return Err(TooManyListeners {
                max: self.max_per_path,
            });
        }
        list.push(handle);
        Ok(())
    }

    /// Removes the listener `id` from `path` (no-op when already gone).
    pub fn remove(&self, path: &str, id: u64) {
        let mut map = self.lock();
        let k = key(path);
        if let Some(list) = map.get_mut(&k) {
            list.retain(|h| h.id != id);
            if list.is_empty() {
                map.remove(&k);
            }
        }
    }

    /// Finds the listeners for a sender's path: the longest registered entity path equal
    /// to it or above it at a segment boundary (`hc/suffix` reaches `hc`). Returns that
    /// entity path and its listeners in random order.
    pub fn resolve(&self, sender_path: &str) -> Option<(String, Vec<ListenerHandle>)> {
        let map = self.lock();
        let path = key(sender_path);
        protocol::path_prefixes(&path).find_map(|candidate| {
            let mut list = map.get(candidate).filter(|l| !l.is_empty())?.clone();
            shuffle(&mut list);
            Some((candidate.to_owned(), list))
        })
    }

    /// Number of connected listeners on every path.
    pub fn count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

fn key(path: &str) -> String {
    path.trim_matches('/').to_ascii_lowercase()
}

fn shuffle<T>(items: &mut [T]) {
    for i in (1..items.len()).rev() {
        items.swap(i, rand::random_range(0..=i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(reg: &Registry) -> ListenerHandle {
        let (tx, _rx) = mpsc::channel(1);
        ListenerHandle {
            id: reg.next_id(),
            base: url::Url::parse("ws://h/").expect("literal"),
            commands: tx,
        }
    }

    #[test]
    fn cap_per_path() {
        let reg = Registry::new(2);
        assert!(reg.add("hc", handle(&reg)).is_ok());
        assert!(reg.add("HC/", handle(&reg)).is_ok());
        assert_eq!(
            reg.add("hc", handle(&reg)),
            Err(TooManyListeners { max: 2 })
        );
        assert!(reg.add("other", handle(&reg)).is_ok());
        assert_eq!(reg.count(), 3);
    }

    #[test]
    fn resolve_walks_up_segments() {
        let reg = Registry::new(25);
        reg.add("a/b", handle(&reg)).expect("room");
        let cases = [
            ("a/b", Some("a/b")),
            ("A/B/c/d", Some("a/b")),
            ("a/bc", None),
            ("a", None),
            ("x", None),
        ];
        for (path, want) in cases {
            assert_eq!(reg.resolve(path).map(|(p, _)| p).as_deref(), want, "{path}");
        }
    }

    #[test]
    fn remove_only_that_listener() {
        let reg = Registry::new(25);
        let first = handle(&reg);
        let first_id = first.id;
        reg.add("hc", first).expect("room");
        reg.add("hc", handle(&reg)).expect("room");
        reg.remove("hc", first_id);
        let (_, list) = reg.resolve("hc").expect("one left");
        assert_eq!(list.len(), 1);
        assert_ne!(list[0].id, first_id);
        reg.remove("hc", list[0].id);
        assert!(reg.resolve("hc").is_none());
        assert_eq!(reg.count(), 0);
    }

    #[test]
    fn spread_reaches_every_listener() {
        let reg = Registry::new(25);
        let ids: Vec<u64> = (0..3)
            .map(|_| {
                let h = handle(&reg);
                let id = h.id;
                reg.add("hc", h).expect("room");
                id
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        // 3 listeners, 300 picks: missing one has probability 3 * (2/3)^300, i.e. never.
        for _ in 0..300 {
            let (_, list) = reg.resolve("hc").expect("listeners");
            seen.insert(list[0].id);
        }
        assert_eq!(seen.len(), ids.len());
    }
}
