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

/// A relay and a `relay listen` forwarding port name 5678 to `target` (a named forward:
/// without a spare's mark, the listener would connect its target during the rendezvous,
/// and a debug adapter takes one client); the connection string and the forward too.
fn relay_and_listener(target: SocketAddr) -> (Relay, Proc, String, String) {
    let relay = Relay::start();
    let cs = relay.connection_string(KEY_BOTH, "hyco");
    let forward = format!("5678=127.0.0.1:{}", target.port());
    let listen = relay.listen_online(&cs, &["--forward", &forward]);
    (relay, listen, cs, forward)
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
    let (echo, accepted) = counting_echo();
    let (relay, listen, cs, _) = relay_and_listener(echo);
    let (mut connect, addr) = relay.connect_with(&cs, "5678", &["--spare-tunnels", "1"]);
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
    // Every byte counted, those sent with the preamble too.
    for sent in ["sent=5 received=5", "sent=6 received=6"] {
        assert!(
            connect.stderr.wait_for(sent).is_some(),
            "no {sent:?}:\n{}",
            connect.dump()
        );
    }
    // The relay logs a spare only once it carried bytes: the two used here, not the one
    // left waiting (each unused spare, renewed every 45 s, made two info lines).
    connect.kill();
    relayed_becomes(&relay, 0, "the last spare closed", &[&listen]);
    let lines = relay.proc.stderr.all();
    let count = |text: &str| lines.iter().filter(|line| line.contains(text)).count();
    assert_eq!(
        [
            count("relayed connection open"),
            count("relayed connection closed (a spare, used)"),
            count("relayed connection closed"),
        ],
        [0, 2, 2],
        "{}",
        relay.proc.dump()
    );
}

#[test]
fn spares_come_back_after_the_listener_does_and_connections_never_wait_for_them() {
    let (relay, mut listen, cs, forward) = relay_and_listener(echo_server());
    // The count from the config file this time (the other tests pass the flag).
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "[relay]\nspare_tunnels = 2\n").expect("config file");
    let config = config.to_str().expect("UTF-8 temp path");
    let (connect, addr) = relay.connect_with(&cs, "5678", &["--config", config]);
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
    let (relay, listen, cs, _) = relay_and_listener(echo_server());
    let (mut connect, _addr) = relay.connect_with(&cs, "5678", &["--spare-tunnels", "1"]);
    relayed_becomes(&relay, 1, "the spare", &[&connect, &listen]);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(connect.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = connect.wait_exit();
    assert!(status.success(), "{status:?}\n{}", connect.dump());
    relayed_becomes(&relay, 0, "a stopped connect's spare", &[&listen]);
}

/// A TCP proxy in front of the relay that can turn every connection made so far into a
/// black hole: sockets stay open, bytes are dropped both ways (a laptop that slept, a
/// network that changed under an idle connection). Connections made later pass.
struct Blackholing {
    addr: SocketAddr,
    /// Connections numbered below this drop what they read.
    dead_below: Arc<AtomicUsize>,
    made: Arc<AtomicUsize>,
}

impl Blackholing {
    fn start(upstream: SocketAddr) -> Blackholing {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("bound");
        let dead_below = Arc::new(AtomicUsize::new(0));
        let made = Arc::new(AtomicUsize::new(0));
        let (dead, count) = (Arc::clone(&dead_below), Arc::clone(&made));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let number = count.fetch_add(1, Ordering::SeqCst);
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    let (Ok(mut from), Ok(mut to)) = (from, to) else {
                        continue;
                    };
                    let dead = Arc::clone(&dead);
                    // Ends when either socket does (the test's processes end).
                    std::thread::spawn(move || {
                        use std::io::{Read as _, Write as _};
                        let mut buf = [0u8; 16384];
                        while let Ok(n @ 1..) = from.read(&mut buf) {
                            if number >= dead.load(Ordering::SeqCst)
                                && to.write_all(&buf[..n]).is_err()
                            {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Blackholing {
            addr,
            dead_below,
            made,
        }
    }

    fn kill_existing(&self) {
        self.dead_below
            .store(self.made.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// A spare whose connection died without a word (nothing closed it: a black hole) is
/// found dead when taken (no Pong from the relay within the proof bound) and the
/// connection goes through a new tunnel with every byte, instead of waiting out the
/// listener's 60 s answer bound and failing.
#[test]
fn a_spare_dead_without_a_word_gives_way_to_a_new_tunnel_and_nothing_is_lost() {
    let (relay, listen, cs, _) = relay_and_listener(echo_server());
    let proxy = Blackholing::start(relay.addr);
    let through_proxy = cs.replace(
        &format!("127.0.0.1:{}", relay.addr.port()),
        &proxy.addr.to_string(),
    );
    let (connect, addr) = relay.connect_with(&through_proxy, "5678", &["--spare-tunnels", "1"]);
    relayed_becomes(&relay, 1, "the spare", &[&connect, &listen]);
    proxy.kill_existing();

    let data = random_bytes(256 * 1024);
    let began = std::time::Instant::now();
    let back = round_trip(addr, &data).unwrap_or_else(|e| {
        panic!(
            "through a new tunnel: {e}\n{}\n---\n{}",
            connect.dump(),
            listen.dump()
        )
    });
    assert_eq!(sha256(&back), sha256(&data), "bytes lost or changed");
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "took {:?}: the dead spare was waited on",
        began.elapsed()
    );
    assert!(
        connect
            .stderr
            .wait_for("the spare tunnel was dead")
            .is_some(),
        "{}",
        connect.dump()
    );
}
