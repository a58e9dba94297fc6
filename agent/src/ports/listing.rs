//! What `ports list` shows: the live reservations and the stale lock files in a lock directory.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::PortRange;
use super::lockfile::{self, LockState};
use super::record::HolderRecord;
use super::reserve::Holder;

/// One lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub port: u16,
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    /// The last holder's record; `None` when it could not be read.
    #[serde(flatten)]
    pub record: Option<HolderRecord>,
    /// Whether the recorded process still runs (same pid *and* start time). A live lock
    /// whose recorded process is gone is held by its session's keeper (replace mode), which
    /// lets go when the session ends.
    pub holder_running: bool,
}

impl Entry {
    /// The entry as a holder, for error messages.
    pub fn holder(&self) -> Holder {
        Holder {
            port: self.port,
            record: self.record.clone(),
        }
    }
}

/// The lock directory's content, sorted by port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Listing {
    /// Locked: these ports are reserved right now.
    pub live: Vec<Entry>,
    /// Free locks whose files a gone holder left behind (they are reused, never deleted).
    pub stale: Vec<Entry>,
    /// Lock files that could not be opened or probed, and why.
    pub unreadable: Vec<Unreadable>,
}

/// A lock file `ports list` could not inspect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    pub port: u16,
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    pub error: String,
}

/// Serializes a path as text, bytes that are not UTF-8 replaced (U+FFFD): serde refuses
/// such a path, which left a JSON report half written (or panicked its writer).
pub fn lossy_path<S: serde::Serializer>(path: &Path, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_str(&path.to_string_lossy())
}

/// [`lossy_path`] for a list of paths.
pub fn lossy_paths<S: serde::Serializer>(paths: &[PathBuf], out: S) -> Result<S::Ok, S::Error> {
    out.collect_seq(paths.iter().map(|p| p.to_string_lossy()))
}

impl Listing {
    /// Only the ports inside `range`.
    pub fn within(mut self, range: PortRange) -> Self {
        self.live.retain(|e| range.contains(e.port));
        self.stale.retain(|e| range.contains(e.port));
        self.unreadable.retain(|e| range.contains(e.port));
        self
    }
}

/// Reads every `<port>.lock` in `dir` and probes its lock without ever blocking (a
/// non-blocking shared lock, released at once). Creates nothing.
pub fn scan(dir: &Path) -> io::Result<Listing> {
    let mut listing = Listing::default();
    for dirent in fs::read_dir(dir)? {
        let dirent = dirent?;
        let Some(port) = lockfile::port_of(&dirent.file_name()) else {
            continue;
        };
        let path = dirent.path();
        match inspect(&path) {
            Ok((LockState::Held, record)) => listing.live.push(entry(port, path, record)),
            Ok((LockState::Free, record)) => listing.stale.push(entry(port, path, record)),
            Err(e) => listing.unreadable.push(Unreadable {
                port,
                path,
                error: e.to_string(),
            }),
        }
    }
    listing.live.sort_by_key(|e| e.port);
    listing.stale.sort_by_key(|e| e.port);
    listing.unreadable.sort_by_key(|e| e.port);
    Ok(listing)
}

fn inspect(path: &Path) -> io::Result<(LockState, Option<HolderRecord>)> {
    let file = lockfile::open_shared_read_only(path, "a lock file")?;
    let state = lockfile::lock_state(&file)?;
    let record = HolderRecord::from_bytes(&lockfile::read_record(&file)?);
    Ok((state, record))
}

fn entry(port: u16, path: PathBuf, record: Option<HolderRecord>) -> Entry {
    let holder_running = record.as_ref().is_some_and(HolderRecord::holder_running);
    Entry {
        port,
        path,
        record,
        holder_running,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: u32) -> HolderRecord {
        HolderRecord {
            pid,
            start_time: None,
            rank: Some(1),
            command: "step".into(),
            since: 1,
        }
    }

    #[test]
    fn tells_live_from_stale() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let me = HolderRecord::for_current_process(Some(0), "live step");
        let live = lockfile::open_lock_file(&lockfile::lock_path(tmp.path(), 4100)).expect("open");
        live.file.try_lock().expect("lock");
        lockfile::write_record(&live.file, &me.to_bytes()).expect("record");
        let stale = lockfile::open_lock_file(&lockfile::lock_path(tmp.path(), 4101)).expect("open");
        lockfile::write_record(&stale.file, &record(u32::MAX).to_bytes()).expect("record");
        drop(stale);
        let empty = lockfile::open_lock_file(&lockfile::lock_path(tmp.path(), 4102)).expect("open");
        empty.file.try_lock().expect("lock");
        fs::write(tmp.path().join("notes.txt"), b"ignored").expect("write");
        lockfile::open_lock_file(&tmp.path().join(lockfile::GUARD_FILE)).expect("guard");

        let listing = scan(tmp.path()).expect("scan");
        let ports = |v: &[Entry]| v.iter().map(|e| e.port).collect::<Vec<_>>();
        assert_eq!(ports(&listing.live), [4100, 4102]);
        assert_eq!(ports(&listing.stale), [4101]);
        assert_eq!(listing.live[0].record.as_ref(), Some(&me));
        assert!(listing.live[0].holder_running);
        assert_eq!(listing.live[1].record, None, "an empty record is unknown");
        assert!(!listing.stale[0].holder_running);

        // Probing released its shared lock: the stale port can be taken at once.
        let again = lockfile::open_lock_file(&lockfile::lock_path(tmp.path(), 4101)).expect("open");
        again
            .file
            .try_lock()
            .expect("stale lock is free after the scan");

        let only = scan(tmp.path()).expect("scan").within(PortRange {
            start: 4101,
            end: 4101,
        });
        assert_eq!((only.live.len(), only.stale.len()), (1, 0));
        assert_eq!(only.live[0].port, 4101, "we hold 4101 now");
    }

    #[test]
    fn json_flattens_the_record() {
        let entry = entry(4200, PathBuf::from("/x/4200.lock"), Some(record(u32::MAX)));
        let json = serde_json::to_value(&entry).expect("json");
        assert_eq!(json["port"], 4200);
        assert_eq!(json["pid"], u32::MAX);
        assert_eq!(json["rank"], 1);
        assert_eq!(json["command"], "step");
        assert_eq!(json["holder_running"], false);
    }
}
