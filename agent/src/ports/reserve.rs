//! Taking a reservation: preferred port first, then a scan; a bind probe per locked port;
//! an optional node-wide slot limit made atomic by the guard file.

use std::fmt;
use std::fs::{File, TryLockError};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::PortRange;
use super::listing::{self, Entry};
use super::lockdir::LockDirError;
use super::lockfile::{self, GUARD_FILE};
use super::record::HolderRecord;

/// How long a slot-limited reserver waits for another one to finish its scan (a scan takes
/// milliseconds; only a stopped or wedged agent holds the guard this long).
pub const GUARD_WAIT: Duration = Duration::from_secs(10);

/// Pause between attempts to take the guard.
const GUARD_POLL: Duration = Duration::from_millis(5);

/// How many holders an error message names before summarising the rest.
const HOLDERS_NAMED: usize = 5;

/// A held reservation: the lock is released when this (or, after `execve`, the step) dies.
#[derive(Debug)]
pub struct Reservation {
    pub port: u16,
    pub path: PathBuf,
    pub(super) file: File,
}

impl Reservation {
    /// The locked file (its descriptor must stay open for the reservation to hold).
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// What to reserve.
#[derive(Debug, Clone)]
pub struct ReserveRequest<'a> {
    pub range: PortRange,
    /// base + global rank when the rank is known.
    pub preferred: Option<u16>,
    pub lock_dir: &'a Path,
    /// At most this many live reservations on the node.
    pub slot_limit: Option<u32>,
    /// Address the bind probe uses (the debugger's listen address).
    pub bind_ip: IpAddr,
    pub record: HolderRecord,
}

/// Someone else's reservation, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub port: u16,
    /// `None` when the record could not be read (being written, or not readable by us).
    pub record: Option<HolderRecord>,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.record {
            Some(r) => {
                write!(f, "port {} (pid {}", self.port, r.pid)?;
                if let Some(rank) = r.rank {
                    write!(f, ", rank {rank}")?;
                }
                // The command is anyone's text (a `python -c` script of several lines; a
                // record any user may rewrite): escaped, so it cannot add lines to the log.
                write!(f, ", `{}`)", crate::logging::loggable(&r.command))
            }
            None => write!(f, "port {} (holder unknown)", self.port),
        }
    }
}

/// Why no port was reserved.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// Every port in the range is reserved, busy with another program, or unusable.
    #[error(
        "no free debug port in {range} (lock dir {}): {}; choose a wider or different \
         range with --port-range or AMLX_PORT_RANGE",
        lock_dir.display(),
        exhausted_detail(holders, busy, unusable, privileged)
    )]
    Exhausted {
        range: PortRange,
        lock_dir: PathBuf,
        /// Ports reserved by other amlx-agent processes (live locks).
        holders: Vec<Holder>,
        /// Ports whose lock was free but which another program is listening on.
        busy: Vec<u16>,
        /// Ports whose lock file could not be used, and why.
        unusable: Vec<(u16, String)>,
        /// Privileged ports (below `net.ipv4.ip_unprivileged_port_start`, 1024 unless
        /// changed) this process may not listen on.
        privileged: Vec<u16>,
    },
    /// The node already has `limit` live reservations.
    #[error(
        "all {limit} debug slots on this node are taken (--max-targets-per-node {limit}, \
         lock dir {}): {}",
        lock_dir.display(),
        summarise(holders)
    )]
    SlotsFull {
        limit: u32,
        lock_dir: PathBuf,
        holders: Vec<Holder>,
    },
    /// The lock directory cannot be used.
    #[error(transparent)]
    LockDir(#[from] LockDirError),
    /// Another reserver held the guard for longer than `GUARD_WAIT` (10 s).
    #[error(
        "timed out after {waited:?} waiting for {} (another amlx-agent is counting debug slots \
         and has not finished; is it stopped or traced?)",
        guard.display()
    )]
    GuardTimeout { guard: PathBuf, waited: Duration },
    /// The bind probe failed for a reason other than "in use": the address or the range
    /// itself is wrong (not a local address, privileged port).
    #[error(
        "cannot listen on {addr} for the debugger: {cause}{}",
        probe_fix(addr, cause)
    )]
    Probe {
        addr: SocketAddr,
        /// Part of the message, not a source: a chain printed the cause twice.
        cause: io::Error,
    },
}

impl ReserveError {
    /// The node already has its allowed number of debug targets (not a failure for a
    /// candidate that merely lost the race for a slot).
    pub fn is_slots_full(&self) -> bool {
        matches!(self, ReserveError::SlotsFull { .. })
    }
}

/// What to do about a bind probe's failure, when the error says.
fn probe_fix(addr: &SocketAddr, cause: &io::Error) -> String {
    match cause.raw_os_error() {
        Some(nix::libc::EADDRNOTAVAIL) => format!(
            "; {} is not an address of this machine: check --node-ip (AMLX_NODE_IP)",
            addr.ip()
        ),
        Some(nix::libc::EACCES) => {
            "; this process may not listen there: choose another --port-range".to_owned()
        }
        _ => String::new(),
    }
}

fn exhausted_detail(
    holders: &[Holder],
    busy: &[u16],
    unusable: &[(u16, String)],
    privileged: &[u16],
) -> String {
    let mut parts = Vec::new();
    if !holders.is_empty() {
        parts.push(format!(
            "{} reserved by other debug targets ({})",
            holders.len(),
            summarise(holders)
        ));
    }
    if !busy.is_empty() {
        let ports: Vec<String> = busy.iter().map(u16::to_string).collect();
        parts.push(format!(
            "{} busy with unrelated programs ({})",
            busy.len(),
            named_then_more(&ports)
        ));
    }
    if !unusable.is_empty() {
        let why: Vec<String> = unusable.iter().map(|(p, e)| format!("{p}: {e}")).collect();
        parts.push(format!(
            "{} with unusable lock files ({})",
            unusable.len(),
            named_then_more(&why)
        ));
    }
    if !privileged.is_empty() {
        let ports: Vec<String> = privileged.iter().map(u16::to_string).collect();
        parts.push(format!(
            "{} privileged, which this process may not listen on ({})",
            privileged.len(),
            named_then_more(&ports)
        ));
    }
    parts.join(", ")
}

fn summarise(holders: &[Holder]) -> String {
    let named: Vec<String> = holders.iter().map(Holder::to_string).collect();
    named_then_more(&named)
}

/// The first [`HOLDERS_NAMED`] items, then "and N more".
fn named_then_more(items: &[String]) -> String {
    let mut text = items
        .iter()
        .take(HOLDERS_NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if items.len() > HOLDERS_NAMED {
        text.push_str(&format!("; and {} more", items.len() - HOLDERS_NAMED));
    }
    text
}

/// What trying one port found.
enum Attempt {
    Reserved(Reservation),
    Held(Holder),
    Busy,
    Unusable(String),
    /// A privileged port this process may not listen on.
    Privileged,
}

/// Reserves one port per `req`: the preferred port when free, else the first free one in
/// the range. Under a slot limit the count and the scan happen under the guard's
/// exclusive lock, so two processes never both take the last slot.
pub fn reserve(req: &ReserveRequest<'_>) -> Result<Reservation, ReserveError> {
    let _guard = match req.slot_limit {
        Some(limit) => {
            let guard = take_guard(req.lock_dir)?;
            // Only this range's reservations are debug slots: the directory is node-wide,
            // and a lock outside it (another job's range, `run`'s VS Code port) is not one.
            let listing = listing::scan(req.lock_dir)
                .map_err(|e| dir_error(req.lock_dir, &e))?
                .within(req.range);
            if listing.live.len() >= usize::try_from(limit).unwrap_or(usize::MAX) {
                return Err(ReserveError::SlotsFull {
                    limit,
                    lock_dir: req.lock_dir.to_path_buf(),
                    holders: listing.live.iter().map(Entry::holder).collect(),
                });
            }
            Some(guard)
        }
        None => None,
    };
    let (mut holders, mut busy, mut unusable, mut privileged) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Read once per reservation, not per port tried.
    let unprivileged = first_unprivileged_port();
    for port in req.range.scan_order(req.preferred) {
        match try_port(req, port, unprivileged)? {
            Attempt::Reserved(reservation) => return Ok(reservation),
            Attempt::Held(holder) => holders.push(holder),
            Attempt::Busy => busy.push(port),
            Attempt::Unusable(why) => unusable.push((port, why)),
            Attempt::Privileged => privileged.push(port),
        }
    }
    holders.sort_by_key(|h| h.port);
    Err(ReserveError::Exhausted {
        range: req.range,
        lock_dir: req.lock_dir.to_path_buf(),
        holders,
        busy,
        unusable,
        privileged,
    })
}

fn dir_error(dir: &Path, err: &io::Error) -> ReserveError {
    ReserveError::LockDir(LockDirError {
        tried: vec![(dir.to_path_buf(), err.to_string())],
    })
}

/// Locks `port`'s file, probes the port, and writes our record when both succeed. Ports
/// below `unprivileged` ([`first_unprivileged_port`]) may need privileges this process
/// lacks.
fn try_port(
    req: &ReserveRequest<'_>,
    port: u16,
    unprivileged: u16,
) -> Result<Attempt, ReserveError> {
    // A port this process may not listen on is skipped before its lock file is made: it
    // would stay behind (lock files are never deleted) for a port nobody here can use.
    if port < unprivileged
        && bind_probe(SocketAddr::new(req.bind_ip, port)) == Err(nix::errno::Errno::EACCES)
    {
        return Ok(Attempt::Privileged);
    }
    let path = lockfile::lock_path(req.lock_dir, port);
    let lock = match lockfile::open_lock_file(&path) {
        Ok(lock) => lock,
        // The directory itself is gone or closed to us: every port would fail the same way.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ) =>
        {
            return Err(dir_error(
                req.lock_dir,
                &io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())),
            ));
        }
        Err(e) => return Ok(Attempt::Unusable(e.to_string())),
    };
    match lock.file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let record = lockfile::read_record(&lock.file)
                .ok()
                .and_then(|bytes| HolderRecord::from_bytes(&bytes));
            return Ok(Attempt::Held(Holder { port, record }));
        }
        Err(TryLockError::Error(e)) => return Ok(Attempt::Unusable(format!("cannot lock: {e}"))),
    }
    let addr = SocketAddr::new(req.bind_ip, port);
    match bind_probe(addr) {
        Ok(()) => {}
        // Dropping `lock` releases it for the next reserver, who will skip it too.
        Err(nix::errno::Errno::EADDRINUSE) => return Ok(Attempt::Busy),
        // A range that starts among the privileged ports goes on to the ports this
        // process may use.
        Err(nix::errno::Errno::EACCES) if port < unprivileged => {
            return Ok(Attempt::Privileged);
        }
        Err(errno) => {
            return Err(ReserveError::Probe {
                addr,
                cause: io::Error::from(errno),
            });
        }
    }
    if !lock.writable {
        tracing::warn!(path = %path.display(), "lock file is read-only to us; its record names the previous holder");
    } else if let Err(err) = lockfile::write_record(&lock.file, &req.record.to_bytes()) {
        // The lock is the reservation; the record only feeds `ports list`.
        tracing::warn!(path = %path.display(), "could not write the holder record: {err}");
    }
    Ok(Attempt::Reserved(Reservation {
        port,
        path,
        file: lock.file,
    }))
}

/// The first port any process may listen on (`net.ipv4.ip_unprivileged_port_start`;
/// 1024 when it cannot be read). Containers often lower it to 0.
fn first_unprivileged_port() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(1024)
}

/// Listens on `addr` the way debugpy will (`SO_REUSEADDR`, bind, listen) and closes again,
/// so a port held by an unrelated program is found before the debugger trips over it.
fn bind_probe(addr: SocketAddr) -> nix::Result<()> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt,
        socket, sockopt,
    };
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    listen(&fd, Backlog::MAXCONN)
}

/// Takes the guard's exclusive lock, polling up to [`GUARD_WAIT`] (never blocks unbounded:
/// a stopped holder must not hang the job's start).
fn take_guard(dir: &Path) -> Result<File, ReserveError> {
    let path = dir.join(GUARD_FILE);
    let guard = lockfile::open_lock_file(&path).map_err(|e| dir_error(dir, &e))?;
    let started = Instant::now();
    loop {
        match guard.file.try_lock() {
            Ok(()) => return Ok(guard.file),
            Err(TryLockError::WouldBlock) if started.elapsed() < GUARD_WAIT => {
                std::thread::sleep(GUARD_POLL);
            }
            Err(TryLockError::WouldBlock) => {
                return Err(ReserveError::GuardTimeout {
                    guard: path,
                    waited: GUARD_WAIT,
                });
            }
            Err(TryLockError::Error(e)) => return Err(dir_error(dir, &e)),
        }
    }
}

#[cfg(test)]
#[path = "reserve_tests.rs"]
mod tests;
