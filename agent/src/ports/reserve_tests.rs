//! Unit tests for `reserve`: real lock files in a temp dir, real sockets on a random
//! loopback address (127.a.b.c) and a random high range, so parallel tests never collide.

use std::net::{Ipv4Addr, TcpListener};

use super::*;
use crate::ports::listing;

/// A temp lock dir, a random loopback address and a range of `len` ports starting at a
/// port the kernel just handed out.
struct Fixture {
    dir: tempfile::TempDir,
    ip: IpAddr,
    range: PortRange,
}

fn fixture(len: u16) -> Fixture {
    let probe = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    let port = probe.local_addr().expect("local addr").port();
    let start = port.min(u16::MAX - len + 1);
    let [a, b, c]: [u8; 3] = rand::random();
    Fixture {
        dir: tempfile::tempdir().expect("tempdir"),
        ip: IpAddr::V4(Ipv4Addr::new(127, a, b, c.clamp(1, 254))),
        range: PortRange {
            start,
            end: start + len - 1,
        },
    }
}

impl Fixture {
    fn request(&self, preferred: Option<u16>, slot_limit: Option<u32>) -> ReserveRequest<'_> {
        ReserveRequest {
            range: self.range,
            preferred,
            lock_dir: self.dir.path(),
            slot_limit,
            bind_ip: self.ip,
            record: HolderRecord::for_current_process(None, "unit test"),
        }
    }

    fn reserve(&self, preferred: Option<u16>) -> Reservation {
        reserve(&self.request(preferred, None)).expect("a free port")
    }
}

#[test]
fn preferred_port_when_free_else_first_free() {
    let f = fixture(4);
    let s = f.range.start;
    let cases: &[(Option<u16>, u16)] = &[(Some(s + 2), s + 2), (Some(s + 2), s), (None, s + 1)];
    let mut held = Vec::new();
    for (preferred, want) in cases {
        let r = f.reserve(*preferred);
        assert_eq!(r.port, *want, "preferred {preferred:?}");
        held.push(r);
    }
}

#[test]
fn writes_the_record_and_reuses_a_stale_lock() {
    let f = fixture(2);
    let first = f.reserve(None);
    let listing = listing::scan(f.dir.path()).expect("scan");
    assert_eq!(listing.live.len(), 1);
    assert_eq!(
        listing.live[0].record.as_ref().map(|r| r.command.as_str()),
        Some("unit test")
    );
    let port = first.port;
    drop(first);
    let listing = listing::scan(f.dir.path()).expect("scan");
    assert_eq!((listing.live.len(), listing.stale.len()), (0, 1));
    assert_eq!(f.reserve(None).port, port, "the stale lock file is reused");
}

#[test]
fn concurrent_reservers_get_distinct_ports() {
    const THREADS: usize = 16;
    let f = fixture(THREADS as u16);
    let ports: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS).map(|_| s.spawn(|| f.reserve(None))).collect();
        let held: Vec<Reservation> = handles
            .into_iter()
            .map(|h| h.join().expect("reserver thread"))
            .collect();
        held.iter().map(|r| r.port).collect()
    });
    let mut unique = ports.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), THREADS, "{ports:?}");
}

#[test]
fn skips_a_port_another_program_listens_on() {
    let f = fixture(2);
    let s = f.range.start;
    let _other = TcpListener::bind((f.ip, s)).expect("bind the first port of the range");
    let r = f.reserve(Some(s));
    assert_eq!(r.port, s + 1);
    // The skipped port's lock was released again.
    let stale = listing::scan(f.dir.path()).expect("scan").stale;
    assert_eq!(stale.iter().map(|e| e.port).collect::<Vec<_>>(), [s]);
    let err = reserve(&f.request(None, None)).expect_err("range exhausted");
    let ReserveError::Exhausted { busy, holders, .. } = &err else {
        panic!("unexpected {err:?}");
    };
    assert_eq!(busy, &[s]);
    assert_eq!(holders.iter().map(|h| h.port).collect::<Vec<_>>(), [s + 1]);
    let text = err.to_string();
    for needle in [
        f.range.to_string(),
        f.dir.path().display().to_string(),
        "1 busy with unrelated programs".into(),
        format!("pid {}", std::process::id()),
        "--port-range".into(),
    ] {
        assert!(text.contains(&needle), "{needle:?} missing from: {text}");
    }
}

#[test]
fn exhausted_message_summarises_many_holders() {
    let f = fixture(8);
    let _held: Vec<_> = (0..8).map(|_| f.reserve(None)).collect();
    let err = reserve(&f.request(None, None)).expect_err("range exhausted");
    let text = err.to_string();
    assert!(text.contains("8 reserved by other debug targets"), "{text}");
    assert!(text.contains("and 3 more"), "{text}");
}

/// A holder's command with a line break (`python -c $'import time\ntime.sleep(4)'`, or a
/// record another user rewrote) is escaped in the message: printed as it was, it made
/// one error several lines of the log, the later ones looking like the agent's own.
#[test]
fn a_holders_command_cannot_add_lines_to_the_message() {
    let f = fixture(1);
    let mut request = f.request(None, None);
    request.record = HolderRecord::for_current_process(
        None,
        "python -c import time\n2026-12-05T00:00:00Z ERROR forged\ttime.sleep(4)",
    );
    let _held = reserve(&request).expect("the one port");
    let text = reserve(&f.request(None, None))
        .expect_err("range exhausted")
        .to_string();
    assert!(!text.contains('\n') && !text.contains('\t'), "{text}");
    assert!(text.contains("forged"), "{text}");
}

/// An address that is not this machine's: the message says so once, with the fix. The
/// cause was printed twice ("Cannot assign requested address (os error 99): Cannot
/// assign requested address (os error 99)") and named no fix.
#[test]
fn a_bind_address_not_of_this_machine_names_the_fix_once() {
    let f = fixture(2);
    let mut request = f.request(None, None);
    request.bind_ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let nonlocal_bind = std::fs::read_to_string("/proc/sys/net/ipv4/ip_nonlocal_bind")
        .is_ok_and(|v| v.trim() == "1");
    if nonlocal_bind {
        // This host lets anyone bind any address: there is no error to name.
        reserve(&request).expect("any address binds here");
        return;
    }
    let err = reserve(&request).expect_err("not a local address");
    let text = format!("{:#}", anyhow::Error::from(err));
    assert_eq!(text.matches("os error").count(), 1, "{text}");
    assert!(
        text.contains("192.0.2.1 is not an address of this machine: check --node-ip"),
        "{text}"
    );
}

#[test]
fn slot_limit_counts_live_reservations() {
    let f = fixture(4);
    let a = reserve(&f.request(None, Some(2))).expect("slot 1");
    let _b = reserve(&f.request(None, Some(2))).expect("slot 2");
    let err = reserve(&f.request(None, Some(2))).expect_err("slots full");
    let ReserveError::SlotsFull { limit, holders, .. } = &err else {
        panic!("unexpected {err:?}");
    };
    assert_eq!((*limit, holders.len()), (2, 2));
    assert!(
        err.to_string().contains("--max-targets-per-node 2"),
        "{err}"
    );
    drop(a);
    let c = reserve(&f.request(None, Some(2))).expect("a slot is free again");
    assert_eq!(c.port, f.range.start);
}

/// The lock directory is node-wide: a reservation outside this range (another job's, or
/// `run`'s VS Code port) takes none of this range's slots (it had filled the only one).
#[test]
fn slot_limit_counts_only_this_ranges_reservations() {
    let f = fixture(2);
    let outside = if f.range.start > 1024 {
        f.range.start - 1
    } else {
        f.range.end + 1
    };
    let lock = lockfile::open_lock_file(&lockfile::lock_path(f.dir.path(), outside))
        .expect("a lock file outside the range");
    lock.file.try_lock().expect("held outside the range");
    let r = reserve(&f.request(None, Some(1))).expect("the one slot is free");
    assert_eq!(r.port, f.range.start);
    let err = reserve(&f.request(None, Some(1))).expect_err("now it is taken");
    assert!(matches!(err, ReserveError::SlotsFull { .. }), "{err:?}");
}

#[test]
fn slot_limit_holds_under_concurrency() {
    const THREADS: usize = 12;
    const LIMIT: u32 = 3;
    let f = fixture(THREADS as u16);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| s.spawn(|| reserve(&f.request(None, Some(LIMIT)))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reserver thread"))
            .collect()
    });
    let won = results.iter().filter(|r| r.is_ok()).count();
    let full = results
        .iter()
        .filter(|r| matches!(r, Err(ReserveError::SlotsFull { .. })))
        .count();
    assert_eq!((won, full), (LIMIT as usize, THREADS - LIMIT as usize));
}

#[test]
fn probe_errors_other_than_in_use_are_reported() {
    let f = fixture(1);
    let mut req = f.request(None, None);
    // TEST-NET-1 (RFC 5737) is never a local address.
    req.bind_ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let err = reserve(&req).expect_err("not a local address");
    assert!(matches!(err, ReserveError::Probe { .. }), "{err:?}");
    assert!(err.to_string().contains("192.0.2.1"), "{err}");
}

#[test]
fn missing_lock_dir_is_a_lock_dir_error() {
    let f = fixture(1);
    let missing = f.dir.path().join("gone");
    let mut req = f.request(None, None);
    req.lock_dir = &missing;
    let err = reserve(&req).expect_err("no directory");
    let ReserveError::LockDir(inner) = &err else {
        panic!("unexpected {err:?}");
    };
    assert_eq!(inner.tried[0].0, missing);
}
