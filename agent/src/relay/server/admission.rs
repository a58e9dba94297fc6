//! Who gets a handshake slot: every accepted TCP connection holds one until its upgrade
//! is authenticated (then it trades it for a relayed slot under `max_connections`), so a
//! flood of idle or slow connections can never take the slots real tunnels use.
//!
//! Handshake slots are capped per source and in total; a source is an IPv4 address or an
//! IPv6 /64 (one host or subnet usually has a whole /64, so counting its addresses one
//! by one would give it as many caps as it likes). A connection that finds its cap full
//! is still admitted: the *oldest* pending handshake of its source is cut instead, and
//! for the total cap, the oldest of the source that holds the *most* pending handshakes.
//! A real client sends its whole request head within a round trip and holds one or two;
//! an idle flood only ever evicts itself, even from several sources at once and against
//! a client whose handshake takes a slow link's 100–400 ms (evicting the oldest of all let
//! a flood from two addresses cut every such client), and new connections (a real
//! tunnel, `/$status`) are served at once.
//! The overload is logged at most once per [`OVERLOAD_LOG_INTERVAL`], with counts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// At most one overload warning per this interval; the warning carries the counts since
/// the previous one.
pub const OVERLOAD_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The pending handshakes, oldest first.
#[derive(Debug, Default)]
struct Pending {
    /// Handshake ids grow with arrival, so the first entry is the oldest.
    all: BTreeMap<u64, Entry>,
    /// The same ids per source address.
    by_source: HashMap<IpAddr, BTreeSet<u64>>,
    next_id: u64,
}

#[derive(Debug)]
struct Entry {
    source: IpAddr,
    /// Cancelled when this handshake is evicted to make room.
    evict: CancellationToken,
}

impl Pending {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.all.remove(&id)?;
        if let Some(ids) = self.by_source.get_mut(&entry.source) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_source.remove(&entry.source);
            }
        }
        Some(entry)
    }

    fn source_count(&self, source: IpAddr) -> usize {
        self.by_source.get(&source).map_or(0, BTreeSet::len)
    }

    fn oldest_of(&self, source: IpAddr) -> Option<u64> {
        self.by_source.get(&source)?.first().copied()
    }

    /// The oldest pending handshake of the source with the most (of those with equally
    /// many, the one whose oldest is oldest).
    fn oldest_of_busiest(&self) -> Option<u64> {
        self.by_source
            .values()
            .filter_map(|ids| Some((ids.len(), std::cmp::Reverse(*ids.first()?))))
            .max()
            .map(|(_, std::cmp::Reverse(id))| id)
    }
}

/// The source a connection from `peer` counts for: an IPv4 address (also when it comes
/// IPv4-mapped over IPv6), or an IPv6 address's /64.
fn source_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                v6.to_bits() & !u128::from(u64::MAX),
            )),
        },
    }
}

/// Handshake slots of the whole server.
#[derive(Debug)]
pub struct Admission {
    pending: Mutex<Pending>,
    /// Pending handshakes at once, every source together.
    max_pending: usize,
    /// Pending handshakes at once from one source address.
    max_per_source: usize,
    pub overload: OverloadLog,
}

/// One connection's handshake slot; dropping it frees the slot.
#[derive(Debug)]
pub struct HandshakeSlot {
    id: u64,
    /// Fires when a newer connection took this slot.
    pub evicted: CancellationToken,
    admission: Arc<Admission>,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.admission.lock().remove(self.id);
    }
}

impl Admission {
    pub fn new(max_pending: usize, max_per_source: usize) -> Self {
        Admission {
            pending: Mutex::new(Pending::default()),
            max_pending: max_pending.max(1),
            max_per_source: max_per_source.max(1),
            overload: OverloadLog::new(OVERLOAD_LOG_INTERVAL),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Every critical section leaves both maps consistent before it could panic (they
        // only insert or remove), so a poisoned lock is still usable.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handshake slot for a connection from `peer`, evicting the oldest pending
    /// handshake of its source, or of the busiest source, when a cap is full.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> HandshakeSlot {
        let source = source_of(peer);
        let mut pending = self.lock();
        let victim = if pending.source_count(source) >= self.max_per_source {
            pending
                .oldest_of(source)
                .map(|id| (id, Overload::SourceCapFull))
        } else if pending.all.len() >= self.max_pending {
            pending
                .oldest_of_busiest()
                .map(|id| (id, Overload::HandshakeCapFull))
        } else {
            None
        };
        if let Some((id, why)) = victim {
            if let Some(entry) = pending.remove(id) {
                entry.evict.cancel();
            }
            self.overload.note(why);
        }
        let id = pending.next_id;
        pending.next_id = pending.next_id.wrapping_add(1);
        let evicted = CancellationToken::new();
        pending.all.insert(
            id,
            Entry {
                source,
                evict: evicted.clone(),
            },
        );
        pending.by_source.entry(source).or_default().insert(id);
        HandshakeSlot {
            id,
            evicted,
            admission: self.clone(),
        }
    }

    /// Handshakes pending now (for `/$status`).
    pub fn count(&self) -> usize {
        self.lock().all.len()
    }
}

/// What the overload warning counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    /// A source had `max_handshakes_per_source` pending: its oldest was cut.
    SourceCapFull,
    /// `max_handshakes` were pending: the oldest of all was cut.
    HandshakeCapFull,
    /// A client did not send its whole request head within `handshake_timeout`.
    HandshakeTimeout,
    /// An authenticated upgrade found every `max_connections` slot taken (503).
    ConnectionsFull,
}

#[derive(Debug, Default)]
struct Counts {
    source_cap: u64,
    handshake_cap: u64,
    timeouts: u64,
    connections_full: u64,
    accept_failed: u64,
    /// The last accept failure's OS error, to name the cause and the fix in the warning.
    last_accept_error: Option<std::io::Error>,
    last_warning: Option<Instant>,
}

impl Counts {
    fn any(&self) -> bool {
        self.source_cap
            + self.handshake_cap
            + self.timeouts
            + self.connections_full
            + self.accept_failed
            > 0
    }
}

/// Rate-limited overload warnings: at most one per interval, with counts.
#[derive(Debug)]
pub struct OverloadLog {
    counts: Mutex<Counts>,
    interval: Duration,
}

impl OverloadLog {
    pub fn new(interval: Duration) -> Self {
        OverloadLog {
            counts: Mutex::new(Counts::default()),
            interval,
        }
    }

    /// Counts one event, and warns if the last warning is an interval old.
    pub fn note(&self, what: Overload) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = match what {
            Overload::SourceCapFull => &mut counts.source_cap,
            Overload::HandshakeCapFull => &mut counts.handshake_cap,
            Overload::HandshakeTimeout => &mut counts.timeouts,
            Overload::ConnectionsFull => &mut counts.connections_full,
        };
        *n = n.saturating_add(1);
        self.warn_if_due(&mut counts);
    }

    /// Counts a failed `accept`, keeping its error for the warning.
    pub fn note_accept_failure(&self, err: std::io::Error) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.accept_failed = counts.accept_failed.saturating_add(1);
        counts.last_accept_error = Some(err);
        self.warn_if_due(&mut counts);
    }

    /// Warns with the counts not yet reported, if the last warning is an interval old
    /// (called periodically, so the tail of a flood is reported too).
    pub fn flush(&self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        self.warn_if_due(&mut counts);
    }

    fn warn_if_due(&self, counts: &mut Counts) {
        let due = counts
            .last_warning
            .is_none_or(|last| last.elapsed() >= self.interval);
        if !due || !counts.any() {
            return;
        }
        // Timed-out handshakes alone are slow or idle clients (one slowloris), not a relay
        // out of room: the headline says which.
        let headline = if counts.source_cap
            + counts.handshake_cap
            + counts.connections_full
            + counts.accept_failed
            > 0
        {
            "overloaded"
        } else {
            "slow clients"
        };
        tracing::warn!(
            evicted_per_source = counts.source_cap,
            evicted_total = counts.handshake_cap,
            handshake_timeouts = counts.timeouts,
            refused_connections_full = counts.connections_full,
            accept_failures = counts.accept_failed,
            "relay serve: {headline}: {} handshake(s) cut to make room ({} over the per-source \
             cap, {} over the total cap), {} handshake(s) timed out, {} upgrade(s) refused \
             at max_connections (503), {} accept failure(s) since the last warning (at most \
             one warning per {}s){}",
            counts.source_cap + counts.handshake_cap,
            counts.source_cap,
            counts.handshake_cap,
            counts.timeouts,
            counts.connections_full,
            counts.accept_failed,
            self.interval.as_secs(),
            counts
                .last_accept_error
                .as_ref()
                .map(accept_failure)
                .unwrap_or_default()
        );
        *counts = Counts {
            last_warning: Some(Instant::now()),
            ..Counts::default()
        };
    }
}

/// The last accept failure, its cause and fix, as the end of the overload warning.
fn accept_failure(err: &std::io::Error) -> String {
    use nix::libc::{EMFILE, ENFILE};
    let fix = match err.raw_os_error() {
        Some(EMFILE) => {
            ": this process is out of file descriptors; raise its limit (LimitNOFILE= in the \
             systemd unit, ulimit -n) or lower max_connections. Accepting resumes by itself \
             once descriptors are free"
        }
        Some(ENFILE) => {
            ": this machine is out of file descriptors (fs.file-max); close some or raise the \
             limit. Accepting resumes by itself once descriptors are free"
        }
        _ => "",
    };
    format!("; the last accept failure: {err}{fix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_full_source_evicts_its_own_oldest() {
        let admission = Arc::new(Admission::new(100, 2));
        let a1 = admission.admit(ip(1));
        let a2 = admission.admit(ip(1));
        let b1 = admission.admit(ip(2));
        assert_eq!(admission.count(), 3);
        let a3 = admission.admit(ip(1));
        assert!(a1.evicted.is_cancelled(), "oldest of the full source");
        assert!(!a2.evicted.is_cancelled() && !b1.evicted.is_cancelled());
        assert!(!a3.evicted.is_cancelled());
        assert_eq!(admission.count(), 3);
        drop(a1);
        assert_eq!(admission.count(), 3, "an evicted slot is already gone");
        drop((a2, a3, b1));
        assert_eq!(admission.count(), 0);
    }

    #[test]
    fn a_full_server_evicts_the_oldest_of_all() {
        let admission = Arc::new(Admission::new(3, 3));
        let slots: Vec<HandshakeSlot> = (1..=3).map(|i| admission.admit(ip(i))).collect();
        let newest = admission.admit(ip(9));
        let evicted: Vec<bool> = slots.iter().map(|s| s.evicted.is_cancelled()).collect();
        assert_eq!(evicted, [true, false, false]);
        assert!(!newest.evicted.is_cancelled());
        assert_eq!(admission.count(), 3);
    }

    /// A client whose handshake takes a slow link's time is the oldest pending one while a
    /// flood from several addresses fills the server: the flood's sources, which hold the
    /// most, lose theirs instead.
    #[test]
    fn a_full_server_evicts_from_the_busiest_source_not_a_slow_client() {
        let admission = Arc::new(Admission::new(16, 100));
        let slow = admission.admit(ip(1));
        let flood: Vec<HandshakeSlot> = (0..2000u32)
            .map(|i| admission.admit(ip(2 + (i % 8) as u8)))
            .collect();
        assert!(!slow.evicted.is_cancelled(), "the slow client was cut");
        let alive = flood.iter().filter(|s| !s.evicted.is_cancelled()).count();
        assert_eq!(alive, 15);
        assert_eq!(admission.count(), 16);
    }

    /// An IPv6 /64 is one source (one host can use all of it), an IPv4-mapped address is
    /// its IPv4 address.
    #[test]
    fn a_source_is_an_ipv4_address_or_an_ipv6_slash_64() {
        let v6 = |s: &str| IpAddr::V6(s.parse().expect("an IPv6 address"));
        let cases = [
            (ip(7), ip(7)),
            (v6("2001:db8:1:2:aaaa::1"), v6("2001:db8:1:2::")),
            (v6("2001:db8:1:2:ffff:ffff:ffff:ffff"), v6("2001:db8:1:2::")),
            (v6("2001:db8:1:3::1"), v6("2001:db8:1:3::")),
            (v6("::ffff:10.0.0.7"), ip(7)),
        ];
        for (peer, source) in cases {
            assert_eq!(source_of(peer), source, "{peer}");
        }
        let admission = Arc::new(Admission::new(100, 2));
        let first = admission.admit(v6("2001:db8::1"));
        let _second = admission.admit(v6("2001:db8::2"));
        let _third = admission.admit(v6("2001:db8::3"));
        assert!(first.evicted.is_cancelled(), "one /64 has one cap");
    }

    #[test]
    fn a_flood_from_one_source_leaves_others_alone() {
        let admission = Arc::new(Admission::new(1000, 8));
        let other = admission.admit(ip(2));
        let flood: Vec<HandshakeSlot> = (0..1500).map(|_| admission.admit(ip(1))).collect();
        assert!(!other.evicted.is_cancelled());
        let alive = flood.iter().filter(|s| !s.evicted.is_cancelled()).count();
        assert_eq!(alive, 8);
        assert_eq!(admission.count(), 9);
    }

    #[test]
    fn overload_counts_reset_after_a_warning() {
        let log = OverloadLog::new(Duration::from_secs(3600));
        log.note(Overload::SourceCapFull);
        log.note(Overload::HandshakeTimeout);
        log.note(Overload::HandshakeTimeout);
        let counts = log.counts.lock().expect("not poisoned");
        assert!(
            counts.last_warning.is_some(),
            "the first event warns at once"
        );
        assert_eq!((counts.source_cap, counts.timeouts), (0, 2));
    }
}
