//! The node's post-mortem slots: when ranks crash together, the first `max` get a
//! session, the rest exit as they would have.
//!
//! One lock file per slot in the ports lock directory (`post-mortem-<n>`, a name the
//! port listing skips), taken with a non-blocking `flock` and held by the helper for the
//! session's life: the kernel frees it when the helper dies, so `kill -9` never leaks
//! one. The file holds a small JSON record of the holder, so a rank that finds every
//! slot taken can say who crashed first.

use std::fs::TryLockError;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ports::lockfile::{self, LockFile};

/// The most slots a node may have (a bound on the files a crash tries).
pub const MAX_SLOTS: u32 = 64;

/// Who holds a slot: written into its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    /// The process that crashed (the helper's parent).
    pub pid: u32,
    pub rank: Option<u32>,
    /// `Type: message`.
    pub exception: String,
    /// Unix seconds of the crash.
    pub since: u64,
}

/// A held slot: the lock lives as long as this value (and its process).
#[derive(Debug)]
pub struct Slot {
    _lock: LockFile,
}

/// The outcome of [`claim`].
#[derive(Debug)]
pub enum Claim {
    /// This crash has a slot; `first`: no other slot was held (no other rank of this
    /// node is in a post-mortem session).
    Won { slot: Slot, first: bool },
    /// Every slot is held, by these (records that could be read).
    Full { holders: Vec<SlotRecord> },
}

/// Claims one of `max` slots in `dir` for `record` (`max` 0: none is ever free).
pub fn claim(dir: &Path, max: u32, record: &SlotRecord) -> io::Result<Claim> {
    let mut holders = Vec::new();
    for n in 0..max.min(MAX_SLOTS) {
        let lock = lockfile::open_lock_file(&dir.join(format!("post-mortem-{n}")))?;
        match lock.file.try_lock() {
            Ok(()) => {
                if lock.writable {
                    let mut bytes = serde_json::to_vec(record).unwrap_or_default();
                    bytes.push(b'\n');
                    // The record only informs other ranks; the lock is the truth.
                    let _ = lockfile::write_record(&lock.file, &bytes);
                }
                // First: no slot before this one is held (seen above), nor any after it.
                let later_held = (n + 1..max.min(MAX_SLOTS)).any(|later| {
                    let path = dir.join(format!("post-mortem-{later}"));
                    path.exists()
                        && lockfile::open_lock_file(&path)
                            .and_then(|other| lockfile::lock_state(&other.file))
                            .is_ok_and(|state| state == lockfile::LockState::Held)
                });
                let first = holders.is_empty() && !later_held;
                return Ok(Claim::Won {
                    slot: Slot { _lock: lock },
                    first,
                });
            }
            Err(TryLockError::WouldBlock) => {
                let bytes = lockfile::read_record(&lock.file).unwrap_or_default();
                if let Ok(holder) = serde_json::from_slice::<SlotRecord>(&bytes) {
                    holders.push(holder);
                }
            }
            Err(TryLockError::Error(err)) => return Err(err),
        }
    }
    Ok(Claim::Full { holders })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: u32) -> SlotRecord {
        SlotRecord {
            pid,
            rank: Some(pid),
            exception: "ValueError: x".into(),
            since: 1,
        }
    }

    #[test]
    fn the_first_claims_win_and_the_rest_learn_who_holds_the_slots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Claim::Won {
            slot: first,
            first: true,
        } = claim(dir.path(), 2, &record(1)).expect("claim")
        else {
            panic!("the first claim wins a slot and is first");
        };
        let Claim::Won {
            slot: second,
            first: false,
        } = claim(dir.path(), 2, &record(2)).expect("claim")
        else {
            panic!("the second claim wins the second slot, not first");
        };
        match claim(dir.path(), 2, &record(3)).expect("claim") {
            Claim::Full { holders } => assert_eq!(holders, vec![record(1), record(2)]),
            Claim::Won { .. } => panic!("two slots, three crashes"),
        }
        drop(first);
        assert!(matches!(
            claim(dir.path(), 2, &record(4)).expect("claim"),
            Claim::Won { first: false, .. }
        ));
        drop(second);
        assert!(matches!(
            claim(dir.path(), 0, &record(5)).expect("claim"),
            Claim::Full { holders } if holders.is_empty()
        ));
    }

    #[test]
    fn a_planted_slot_file_is_refused_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"keep").expect("write");
        std::os::unix::fs::symlink(&target, dir.path().join("post-mortem-0")).expect("symlink");
        assert!(claim(dir.path(), 1, &record(1)).is_err());
        assert_eq!(std::fs::read(&target).expect("read"), b"keep");
    }
}
