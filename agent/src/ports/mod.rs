//! Lock-guarded debug-port reservations: one `flock`ed file per port in a node-wide
//! directory, so many processes per node never collide and a killed holder never leaks.
//!
//! Layout on disk (DESIGN.md "Port reservations"):
//!
//! ```text
//! <lock dir>/            node-wide: one directory shared by every user and container on
//!                        the node (bind-mount it into containers). Created 1777 (sticky,
//!                        world-writable, like /tmp: anyone may reserve, nobody may delete
//!                        another user's files); the per-user fallbacks are created 0700
//! <lock dir>/.guard      exclusive flock held only while a slot-limited reserver counts and
//!                        scans, so "count + reserve" is atomic across processes
//! <lock dir>/5678.lock   one per port; 0644 plus the directory's group/other write (0666 in
//!                        a 1777 dir), so whoever may reserve may take over a free port and
//!                        write its record. The flock on it *is* the reservation; the JSON
//!                        inside (a [`HolderRecord`]) only says who holds it. Never deleted:
//!                        deleting a lock file would reopen the race it closes
//! ```
//!
//! Modules: [`lockdir`] (which directory, creating it), [`lockfile`] (opening and probing
//! a port's lock file), [`record`] (the holder record), `reserve` (reservation, bind probe,
//! slot limit), [`listing`] (what `ports list` shows), [`connections`] (whether a
//! developer is connected to a port).

pub mod connections;
pub mod listing;
pub mod lockdir;
pub mod lockfile;
pub mod record;
mod reserve;

use std::fmt;
use std::str::FromStr;

pub use lockdir::{LockDirError, LockDirLookup, find_lock_dir, lock_dir};
pub use record::HolderRecord;
pub use reserve::{Holder, Reservation, ReserveError, ReserveRequest, reserve};

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

    /// The port a process of global rank `rank` prefers: `start + rank` when the rank is
    /// known and the result fits in the range (ranks are unique across the job, so these
    /// never collide within one job); `None` otherwise, which means "first free".
    ///
    /// ```
    /// use amlx_agent::ports::PortRange;
    /// let r: PortRange = "5678-5777".parse().unwrap();
    /// assert_eq!(r.preferred_for_rank(Some(3)), Some(5681));
    /// assert_eq!(r.preferred_for_rank(Some(100)), None);
    /// assert_eq!(r.preferred_for_rank(None), None);
    /// ```
    pub fn preferred_for_rank(&self, rank: Option<u32>) -> Option<u16> {
        let port = u32::from(self.start).checked_add(rank?)?;
        let port = u16::try_from(port).ok()?;
        self.contains(port).then_some(port)
    }

    /// Every port of the range, `preferred` first (when it is inside), then the rest in order.
    pub fn scan_order(&self, preferred: Option<u16>) -> impl Iterator<Item = u16> + use<> {
        let preferred = preferred.filter(|p| self.contains(*p));
        preferred
            .into_iter()
            .chain((self.start..=self.end).filter(move |p| Some(*p) != preferred))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges() {
        let cases: &[(&str, Option<(u16, u16)>)] = &[
            ("5678-5777", Some((5678, 5777))),
            (" 5678 - 5777 ", Some((5678, 5777))),
            ("5678", Some((5678, 5678))),
            ("1-65535", Some((1, 65535))),
            ("0-10", None),
            ("10-9", None),
            ("10-65536", None),
            ("-10", None),
            ("10-", None),
            ("a-b", None),
            ("", None),
            ("5678-5777-5800", None),
            ("+5-6", Some((5, 6))),
        ];
        for (text, want) in cases {
            let got = text.parse::<PortRange>().ok().map(|r| (r.start, r.end));
            assert_eq!(got, *want, "parsing {text:?}");
        }
    }

    #[test]
    fn error_names_the_input() {
        let err = "9-1".parse::<PortRange>().expect_err("start > end");
        assert!(err.to_string().contains("\"9-1\""), "{err}");
    }

    #[test]
    fn display_round_trips() {
        let r = PortRange {
            start: 40000,
            end: 40063,
        };
        assert_eq!(r.to_string().parse::<PortRange>(), Ok(r));
        assert_eq!(r.len(), 64);
    }

    #[test]
    fn preferred_port_is_start_plus_rank_when_it_fits() {
        let r = PortRange {
            start: 65530,
            end: 65535,
        };
        let cases: &[(Option<u32>, Option<u16>)] = &[
            (None, None),
            (Some(0), Some(65530)),
            (Some(5), Some(65535)),
            (Some(6), None),
            (Some(u32::MAX), None),
        ];
        for (rank, want) in cases {
            assert_eq!(r.preferred_for_rank(*rank), *want, "rank {rank:?}");
        }
    }

    #[test]
    fn scan_order_puts_preferred_first_once() {
        let r = PortRange { start: 10, end: 13 };
        let order = |p| r.scan_order(p).collect::<Vec<_>>();
        assert_eq!(order(None), [10, 11, 12, 13]);
        assert_eq!(order(Some(12)), [12, 10, 11, 13]);
        assert_eq!(order(Some(10)), [10, 11, 12, 13]);
        assert_eq!(order(Some(99)), [10, 11, 12, 13]);
    }
}
