//! `relay connect --spare-tunnels`: tunnels opened before a local connection needs one.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::harness::*;
use super::tunnels::relay_status;

/// How long a test watches for a connection that must not come: an early connect comes
/// within a millisecond of the rendezvous here.
const QUIET: Duration = Duration::from_millis(300);

/// An echo server that counts the connections it accepted.
fn counting_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let addr = serve_each(move |mut s| {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut r = s.try_clone().expect("clone socket");
        let _ = std::io::copy(&mut r, &mut s);
        let _ = s.shutdown(std::net::Shutdown::Write);
    });
    (addr, accepted)
}

/// Waits until the relay carries exactly `n` relayed connections.
fn relayed_becomes(relay: &Relay, n: u64, what: &str, dumps: &[&Proc]) {
    relayed_becomes_of(relay, (n, None), what, dumps);
}

/// Waits until the relay carries exactly `now` relayed connections and, if given, has
/// carried `total` since it started.
fn relayed_becomes_of(relay: &Relay, (n, total): (u64, Option<u64>), what: &str, dumps: &[&Proc]) {
    poll(DEADLINE, || {
        let status = relay_status(relay.addr)?;
        let counted = total.is_none_or(|total| status["relayed_total"] == total);
        (status["relayed"] == n && counted).then_some(())
    })
    .unwrap_or_else(|| {
        let logs: Vec<String> = dumps.iter().map(|p| p.dump()).collect();
        panic!(
            "{what}: the relay never carried {n} ({:?})\n{}",
            relay_status(relay.addr),
            logs.join("\n---\n")
        )
    });
}

#[test]
fn a_spare_waits_unconnected_and_carries_the_next_connection() {
    let relay = Relay::start();
    let (echo, accepted) = counting_echo();
    let cs = relay.connection_string(KEY_BOTH, "hyco");
    // A named forward: without the spare's mark, `relay listen` would connect its target
    // during the rendezvous (a debug adapter takes one client).
    let forward = format!("5678=127.0.0.1:{}", echo.port());
    let listen = relay.listen_online(&cs, &["--forward", &forward]);
    let (connect, addr) = relay.connect_with(&cs, "5678", &["--spare-tunnels", "1"]);
    relayed_becomes(&relay, 1, "the spare", &[&connect, &listen]);
    std::thread::sleep(QUIET);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the listener reached its target for a spare\n{}",
        listen.dump()
    );

    for (round, data) in [b"first".as_slice(), b"second"].into_iter().enumerate() {
        let back = round_trip(addr, data).unwrap_or_else(|e| {
            panic!(
                "round {round}: {e}\n{}\n---\n{}",
                connect.dump(),
                listen.dump()
            )
        });
        assert_eq!(back, data, "round {round}");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            round + 1,
            "one target connection each"
        );
        // The used spare is gone and a new one waits.
        let total = Some(round as u64 + 2);
        relayed_becomes_of(&relay, (1, total), "the next spare", &[&connect, &listen]);
    }
    let used = connect
        .stderr
        .all()
        .iter()
        .filter(|line| line.contains("connection from") && line.contains("spare=true"))
        .count();
    assert_eq!(
        used,
        2,
        "both connections took a spare:\n{}",
        connect.dump()
    );
}

#[test]
fn spares_come_back_after_the_listener_does_and_connections_never_wait_for_them() {
    let relay = Relay::start();
    let echo = echo_server();
    let cs = relay.connection_string(KEY_BOTH, "hyco");
    let forward = format!("5678=127.0.0.1:{}", echo.port());
    let mut listen = relay.listen_online(&cs, &["--forward", &forward]);
    let (connect, addr) = relay.connect_with(&cs, "5678", &["--spare-tunnels", "2"]);
    relayed_becomes(&relay, 2, "two spares", &[&connect, &listen]);

    // The listener goes: its spares die with it, and no listener means no spare.
    listen.kill();
    relayed_becomes(&relay, 0, "spares of a dead listener", &[&connect]);
    let refused = TcpStream::connect(addr).and_then(|mut s| {
        use std::io::Read as _;
        s.set_read_timeout(Some(DEADLINE))?;
        let mut buf = [0u8; 1];
        s.read(&mut buf)
    });
    assert!(
        matches!(refused, Ok(0) | Err(_)),
        "a connection with no listener was not closed: {refused:?}"
    );

    // A new listener: a connection goes through at once, spare or not...
    let listen = relay.listen_online(&cs, &["--forward", &forward]);
    let back = round_trip(addr, b"hello").expect("through a fresh tunnel or a spare");
    assert_eq!(back, b"hello");
    // ...and the spares are back within the reconnect schedule's first steps.
    relayed_becomes(
        &relay,
        2,
        "spares after the listener's return",
        &[&connect, &listen],
    );
}

#[test]
fn a_spare_ends_with_relay_connect() {
    let relay = Relay::start();
    let echo = echo_server();
    let cs = relay.connection_string(KEY_BOTH, "hyco");
    let listen = relay.listen_online(&cs, &["--ports", &echo.port().to_string()]);
    let (mut connect, _addr) =
        relay.connect_with(&cs, &echo.port().to_string(), &["--spare-tunnels", "1"]);
    relayed_becomes(&relay, 1, "the spare", &[&connect, &listen]);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(connect.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = connect.wait_exit();
    assert!(status.success(), "{status:?}\n{}", connect.dump());
    relayed_becomes(&relay, 0, "a stopped connect's spare", &[&listen]);
}
