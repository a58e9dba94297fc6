//! Per-session status records in the node's state directory
//! (`<state_dir>/sessions/<pid>[-<pidns>].json`), read back by `amlx-agent status`.
//!
//! One JSON file per session, written atomically (temp file + rename) by the one process
//! that drives the session, and removed when its [`StatusFile`] is dropped. A holder that
//! dies without dropping it leaves the file behind; readers judge the holder by PID,
//! process start time and PID namespace ([`Holder`]) and show such a record as `ended`.
//! The next [`StatusFile::create`] in the same directory and namespace deletes them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Deserializer, Serialize};

use super::SessionState;
use super::holder;
pub use super::holder::Holder;
pub use super::state_dir::{record_dirs, state_dir};
use crate::atomic_file::{self, Durability, Permissions};
use crate::session::DebugMode;

/// The node-wide default, shared by every user and container that mounts it.
pub const SYSTEM_STATE_DIR: &str = "/run/amlx";

/// Subdirectory of the state directory holding one record per session.
pub const SESSIONS_DIR: &str = "sessions";

/// What `amlx-agent status` shows about one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    /// The process whose life is the session's: the step (in replace mode, the agent's
    /// own PID, which the step keeps across `execve`).
    pub pid: u32,
    /// Start time of `pid` in clock ticks since boot (`/proc/<pid>/stat` field 22), so a
    /// reused PID is not mistaken for the holder. [`StatusFile::create`] fills it in.
    pub start_time: Option<u64>,
    /// PID namespace of the writer, so a reader in another container sharing the
    /// directory does not judge this PID against its own processes. Filled in on create.
    pub pid_ns: Option<u64>,
    pub rank: Option<u32>,
    pub local_rank: Option<u32>,
    /// The reserved debug port on this node.
    pub port: u16,
    #[serde(deserialize_with = "mode_from_text")]
    pub mode: DebugMode,
    /// Where a developer attaches: `ip:port` (direct) or the relay's Hybrid Connection
    /// and port name (connect, listen).
    pub endpoint: String,
    pub state: SessionState,
    /// Why the session is in its state, when that needs saying (relay-unreachable, ...).
    pub reason: Option<String>,
    /// Unix seconds when `state` last changed.
    pub since: u64,
    /// Unix seconds when the session started.
    pub started: u64,
    /// Unix seconds of the last write.
    pub updated: u64,
    /// The sidecar process carrying the session (the relay path), while it is known.
    #[serde(default)]
    pub sidecar_pid: Option<u32>,
    /// The keeper process that reaps the sidecar and records its death.
    #[serde(default)]
    pub keeper_pid: Option<u32>,
    /// What the developer must know before pausing this step (a ParallelRunStep worker's
    /// run() timeout). Said once, here and in the log.
    #[serde(default)]
    pub warning: Option<String>,
}

impl StatusRecord {
    /// A new session waiting for its debugger, started now; set `rank`, `local_rank`
    /// (and anything else) on the result.
    pub fn new(pid: u32, port: u16, mode: DebugMode, endpoint: impl Into<String>) -> Self {
        let now = unix_now();
        StatusRecord {
            pid,
            start_time: None,
            pid_ns: None,
            rank: None,
            local_rank: None,
            port,
            mode,
            endpoint: endpoint.into(),
            state: SessionState::WaitingForDebugger,
            reason: None,
            since: now,
            started: now,
            updated: now,
            sidecar_pid: None,
            keeper_pid: None,
            warning: None,
        }
    }

    /// The record's file name: PID, plus the PID namespace when known (containers
    /// sharing the directory may reuse each other's PIDs).
    fn file_name(&self) -> String {
        match self.pid_ns {
            Some(ns) => format!("{}-{ns}.json", self.pid),
            None => format!("{}.json", self.pid),
        }
    }
}

fn mode_from_text<'de, D: Deserializer<'de>>(de: D) -> Result<DebugMode, D::Error> {
    let text = String::deserialize(de)?;
    text.parse().map_err(serde::de::Error::custom)
}

/// The live record of one session; dropping it removes the record.
///
/// Keep it in exactly one process: the first of two copies to be dropped would remove
/// the record under the other.
#[derive(Debug)]
pub struct StatusFile {
    path: PathBuf,
    record: StatusRecord,
}

impl StatusFile {
    /// Writes `record` under `<state_dir>/sessions/`, filling in the holder's start time
    /// and PID namespace, after deleting records whose holders are dead.
    pub fn create(state_dir: &Path, mut record: StatusRecord) -> anyhow::Result<StatusFile> {
        let dir = state_dir.join(SESSIONS_DIR);
        fs::create_dir_all(&dir).with_context(|| {
            format!("could not create the sessions directory {}", dir.display())
        })?;
        if record.start_time.is_none() {
            record.start_time = holder::process_start_time(record.pid);
        }
        if record.pid_ns.is_none() {
            record.pid_ns = holder::pid_namespace();
        }
        record.updated = unix_now();
        prune_dead(&dir);
        let path = dir.join(record.file_name());
        write_atomic(&path, &record).map_err(|err| match squatted(&path) {
            Some(why) => err.context(why),
            None => err,
        })?;
        Ok(StatusFile { path, record })
    }

    /// Takes over the record of `holder_pid` in `state_dir` (this PID namespace) that
    /// another process wrote and can no longer update (a sidecar that died): the caller
    /// becomes its one owner. `Ok(None)` when there is no such record.
    pub fn adopt(state_dir: &Path, holder_pid: u32) -> anyhow::Result<Option<StatusFile>> {
        let path = record_path(state_dir, holder_pid);
        match read_record(&path) {
            Ok(record) => Ok(Some(StatusFile { path, record })),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Records a new state (`since` moves only when the state changes) and its reason.
    pub fn set_state(&mut self, state: SessionState, reason: Option<&str>) -> anyhow::Result<()> {
        let now = unix_now();
        if state != self.record.state {
            self.record.since = now;
        }
        self.record.state = state;
        self.record.reason = reason.map(str::to_owned);
        self.record.updated = now;
        write_atomic(&self.path, &self.record)
    }

    /// Replaces the published endpoint (e.g. once the relay path is known).
    pub fn set_endpoint(&mut self, endpoint: impl Into<String>) -> anyhow::Result<()> {
        self.record.endpoint = endpoint.into();
        self.record.updated = unix_now();
        write_atomic(&self.path, &self.record)
    }

    /// What was last written.
    pub fn record(&self) -> &StatusRecord {
        &self.record
    }

    /// The record's file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StatusFile {
    fn drop(&mut self) {
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => tracing::debug!(
                "could not remove the status record {}: {err}",
                self.path.display()
            ),
        }
    }
}

/// Where the record of `holder_pid`'s session (this PID namespace) lives in `state_dir`.
fn record_path(state_dir: &Path, holder_pid: u32) -> PathBuf {
    let key = StatusRecord {
        pid_ns: holder::pid_namespace(),
        ..StatusRecord::new(holder_pid, 0, DebugMode::default(), "")
    };
    state_dir.join(SESSIONS_DIR).join(key.file_name())
}

/// The state recorded for `holder_pid`'s session in `state_dir`, read without taking the
/// record over; `None` when there is no readable record.
pub fn recorded_state(state_dir: &Path, holder_pid: u32) -> Option<SessionState> {
    read_record(&record_path(state_dir, holder_pid))
        .ok()
        .map(|record| record.state)
}

/// One record found by a reader, with the verdict on its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEntry {
    pub path: PathBuf,
    pub record: StatusRecord,
    pub holder: Holder,
}

impl SessionEntry {
    /// The state to show: `ended` when the holder is dead, whatever was recorded.
    pub fn state(&self) -> SessionState {
        match self.holder {
            Holder::Dead => SessionState::Ended,
            Holder::Live | Holder::Unknown => self.record.state,
        }
    }

    /// The reason to show; for a dead holder it says so and names the last recorded state.
    pub fn reason(&self) -> Option<String> {
        match (self.holder, self.record.state) {
            (Holder::Dead, SessionState::Ended) => self.record.reason.clone(),
            (Holder::Dead, last) => Some(format!(
                "process {} is gone (last recorded state: {last})",
                self.record.pid
            )),
            _ => self.record.reason.clone(),
        }
    }
}

/// What a reader found in the sessions directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Sorted by rank (unknown last), then PID.
    pub sessions: Vec<SessionEntry>,
    /// Files that look like records but could not be read or parsed.
    pub unreadable: Vec<Unreadable>,
}

/// A record file that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    #[serde(serialize_with = "crate::ports::listing::lossy_path")]
    pub path: PathBuf,
    pub error: String,
}

/// Every record in `<state_dir>/sessions` (none when the directory does not exist).
pub fn list_sessions(state_dir: &Path) -> anyhow::Result<Listing> {
    let dir = state_dir.join(SESSIONS_DIR);
    let mut sessions = Vec::new();
    let mut unreadable = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Listing::default()),
        Err(err) => return Err(err).with_context(|| format!("could not read {}", dir.display())),
    };
    for entry in entries {
        let path = entry
            .with_context(|| format!("could not read {}", dir.display()))?
            .path();
        if !is_record_name(&path) {
            continue;
        }
        match read_owned_record(&path) {
            Ok((record, owner)) => {
                let holder = holder::holder_of(record.pid, record.start_time, record.pid_ns);
                if let Some(error) = foreign_record(&record, owner, holder) {
                    unreadable.push(Unreadable { path, error });
                    continue;
                }
                sessions.push(SessionEntry {
                    path,
                    record,
                    holder,
                });
            }
            // Removed between read_dir and open: the session just ended cleanly.
            Err(err) if is_not_found(&err) => {}
            Err(err) => unreadable.push(Unreadable {
                path,
                error: format!("{err:#}"),
            }),
        }
    }
    sessions.sort_by_key(|e| (e.record.rank.is_none(), e.record.rank, e.record.pid));
    Ok(Listing {
        sessions,
        unreadable,
    })
}

/// Every record in the `sessions` directory of each candidate of [`record_dirs`], merged
/// and sorted like [`list_sessions`]. A candidate we may not read is skipped (logged at
/// debug level): it may be another user's. Read a configured directory with
/// [`list_sessions`], whose errors count.
pub fn list_sessions_in(dirs: &[PathBuf]) -> Listing {
    let mut all = Listing::default();
    for dir in dirs {
        match list_sessions(dir) {
            Ok(listing) => {
                all.sessions.extend(listing.sessions);
                all.unreadable.extend(listing.unreadable);
            }
            Err(err) => tracing::debug!("skipping {}: {err:#}", dir.display()),
        }
    }
    all.sessions
        .sort_by_key(|e| (e.record.rank.is_none(), e.record.rank, e.record.pid));
    all
}

/// Deletes records (in our PID namespace) whose holders are dead. Best effort.
fn prune_dead(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for path in entries.flatten().map(|e| e.path()) {
        if !is_record_name(&path) {
            continue;
        }
        let Ok(record) = read_record(&path) else {
            continue;
        };
        if holder::holder_of(record.pid, record.start_time, record.pid_ns) == Holder::Dead {
            tracing::debug!("removing the stale status record {}", path.display());
            let _ = fs::remove_file(&path);
        }
    }
}

/// Record files end in `.json`; temp files start with a dot.
fn is_record_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".json") && !n.starts_with('.'))
}

/// Most bytes a status record file may hold; real ones are a few hundred.
const MAX_RECORD_BYTES: u64 = 64 * 1024;

fn read_record(path: &Path) -> anyhow::Result<StatusRecord> {
    read_owned_record(path).map(|(record, _)| record)
}

/// Why a record could not be written at `path`, when another user's file is there: in a
/// sticky sessions directory nobody can replace another user's file, so a file planted
/// under our record's name keeps the session from having one.
fn squatted(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let owner = fs::symlink_metadata(path).ok()?.uid();
    let me = nix::unistd::geteuid().as_raw();
    (owner != me).then(|| {
        format!(
            "{} belongs to uid {owner}, another user, and cannot be replaced: remove it, or \
             give the job a state directory of its own (AMLX_STATE_DIR, or [node] state_dir)",
            path.display()
        )
    })
}

/// A record and the uid that owns its file.
fn read_owned_record(path: &Path) -> anyhow::Result<(StatusRecord, u32)> {
    let (text, owner) =
        read_small_file(path).with_context(|| format!("could not read {}", path.display()))?;
    let record = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a status record", path.display()))?;
    Ok((record, owner))
}

/// Why a record cannot be its live holder's own: its file belongs to another user than
/// the process it names (in a sessions directory every user may write to, anyone can
/// write a record for someone else's PID, with an endpoint of their choosing). Root's
/// records count: a step may drop to another user after root's agent wrote its record
/// (`exec -- gosu user python …`), and root could write anything anyway.
fn foreign_record(record: &StatusRecord, owner: u32, holder: Holder) -> Option<String> {
    if holder != Holder::Live || owner == 0 {
        return None;
    }
    let uids = process_uids(record.pid)?;
    (!uids.contains(&owner)).then(|| {
        format!(
            "written by uid {owner}, but process {} runs as uid {}: not its record, \
             ignored (remove it)",
            record.pid, uids[0]
        )
    })
}

/// The real, effective and saved uids of `pid` (`/proc/<pid>/status`; the owner of
/// `/proc/<pid>` is root for a process that is not dumpable, whoever runs it).
fn process_uids(pid: u32) -> Option<[u32; 3]> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|id| id.parse::<u32>().ok());
    Some([ids.next()??, ids.next()??, ids.next()??])
}

/// Reads a record file of the shared sessions directory, which anyone may write to: no
/// link is followed (a link to `/dev/zero` read on for ever), a FIFO does not block the
/// open, only a regular file is read, and at most [`MAX_RECORD_BYTES`] of it.
fn read_small_file(path: &Path) -> io::Result<(Vec<u8>, u32)> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;
    let file = crate::ports::lockfile::open_shared_read_only(path, "a status record")?;
    let owner = file.metadata()?.uid();
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Err(io::Error::other(format!(
            "larger than {MAX_RECORD_BYTES} bytes, not a status record; remove it"
        )));
    }
    Ok((bytes, owner))
}

fn is_not_found(err: &anyhow::Error) -> bool {
    err.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::NotFound)
}

/// A record's permission bits (before the umask): every user's `ports list` and `status`
/// read it; only its writer writes it.
const RECORD_MODE: u32 = 0o644;

/// Replaces the record at `path` whole, so a reader sees the old record or the new one,
/// never half of one. Not synced: records live in `/run` or `/tmp` and mean nothing after
/// a crash, and one is written at every change of a session's state.
fn write_atomic(path: &Path, record: &StatusRecord) -> anyhow::Result<()> {
    let mut json = serde_json::to_vec(record).expect("a status record always serializes");
    json.push(b'\n');
    atomic_file::replace(
        path,
        &json,
        Permissions::New(RECORD_MODE),
        Durability::Unsynced,
    )
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z).
const LAST_WRITABLE_SECOND: u64 = 253_402_300_799;

/// `unix_seconds` as an RFC 3339 UTC time (`2023-11-14T22:13:20Z`). Records are files
/// anyone may write, so any number is possible: one past year 9999 is shown as itself
/// (`@<seconds>`) rather than panicking in the formatter or the clock arithmetic.
pub fn rfc3339(unix_seconds: u64) -> String {
    if unix_seconds > LAST_WRITABLE_SECOND {
        return format!("@{unix_seconds}");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(unix_seconds))
        .to_string()
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[path = "status_file_tests.rs"]
mod tests;
