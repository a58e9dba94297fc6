//! Lock-guarded debug-port reservations: one `flock`ed file per port in a node-wide
//! directory, so many processes per node never collide and a killed holder never leaks.

use std::fmt;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An inclusive range of TCP ports.
///
/// ```
/// use amlx_agent::ports::PortRange;
/// let r: PortRange = "5678-5777".parse().unwrap();
/// assert_eq!((r.start, r.end, r.len()), (5678, 5777, 100));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    /// The default debug-port range, 5678 (debugpy's default) to 5777.
    pub const DEFAULT: PortRange = PortRange {
        start: 5678,
        end: 5777,
    };

    /// How many ports the range holds.
    pub fn len(&self) -> usize {
        usize::from(self.end - self.start) + 1
    }

    /// Never true: a range holds at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `port` is inside the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }
}

impl Default for PortRange {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// Why a port range could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid port range {0:?}: expected START-END with 1 <= START <= END <= 65535, e.g. 5678-5777"
)]
pub struct PortRangeError(String);

impl FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PortRangeError(s.to_owned());
        let (lo, hi) = match s.trim().split_once('-') {
            Some((lo, hi)) => (lo.trim(), hi.trim()),
            None => (s.trim(), s.trim()),
        };
        let start: u16 = lo.parse().map_err(|_| err())?;
        let end: u16 = hi.parse().map_err(|_| err())?;
        if start == 0 || start > end {
            return Err(err());
        }
        Ok(PortRange { start, end })
    }
}

/// What a lock file says about its holder (for `ports list`; the lock itself is the truth).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRecord {
    pub pid: u32,
    /// Process start time in clock ticks since boot (`/proc/<pid>/stat` field 22), so a
    /// reused PID is told apart.
    pub start_time: Option<u64>,
    pub rank: Option<u32>,
    pub command: String,
    /// Unix seconds when the reservation was taken.
    pub since: u64,
}

/// A held reservation: the lock is released when this (or, after `execve`, the step) dies.
#[derive(Debug)]
pub struct Reservation {
    pub port: u16,
    pub path: PathBuf,
    file: File,
}

impl Reservation {
    /// The locked file (its descriptor must stay open for the reservation to hold).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Clears close-on-exec so the lock survives `execve` (replace mode).
    pub fn keep_across_exec(&self) -> std::io::Result<()> {
        Ok(())
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

/// Why no port was reserved.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error("stub")]
    Stub,
}

impl ReserveError {
    /// The node already has its allowed number of debug targets.
    pub fn is_slots_full(&self) -> bool {
        false
    }
}

/// The lock directory: `explicit`, else the documented fallbacks; created if missing.
pub fn lock_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    Ok(explicit
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/tmp/amlx/ports")))
}

/// Reserves one port per `req`.
pub fn reserve(req: &ReserveRequest<'_>) -> Result<Reservation, ReserveError> {
    let _ = req;
    Err(ReserveError::Stub)
}
