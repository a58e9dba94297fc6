//! Bytes through `relay connect` -> `relay serve` -> `relay listen` -> a local server.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::thread;

use super::harness::*;

/// 16 MiB of random bytes to an echo server and back through `relay`'s tunnel, intact.
pub(crate) fn sixteen_mib_each_way(relay: Relay) {
    let echo = echo_server();
    let cs = relay.connection_string(KEY_BOTH, "hyco");
    let forward = format!("5678=127.0.0.1:{}", echo.port());
    let listener = relay.listen_online(&cs, &["--forward", &forward]);
    let (connect, addr) = relay.connect(&cs, "5678");
    let data = random_bytes(16 << 20);
    let back = round_trip(addr, &data).unwrap_or_else(|e| {
        panic!(
            "round trip failed: {e}\nlisten:\n{}\nconnect:\n{}\nrelay:\n{}",
            listener.dump(),
            connect.dump(),
            relay.proc.dump()
        )
    });
    assert_eq!(back.len(), data.len(), "connect:\n{}", connect.dump());
    assert_eq!(sha256(&back), sha256(&data));
}

#[test]
fn sixteen_mib_each_way_over_ws() {
    sixteen_mib_each_way(Relay::start());
}

#[test]
fn sixteen_mib_each_way_over_tls() {
    sixteen_mib_each_way(Relay::start_tls());
}

#[test]
fn two_hundred_concurrent_tunnels() {
    const TUNNELS: usize = 200;
    let relay = Relay::start();
    let echo = echo_server();
    let cs = relay.connection_string(KEY_BOTH, "many");
    let _listener = relay.listen_online(&cs, &["--ports", &echo.port().to_string()]);
    let (connect, addr) = relay.connect(&cs, &echo.port().to_string());
    let workers: Vec<_> = (0..TUNNELS)
        .map(|_| {
            thread::spawn(move || {
                let data = random_bytes(128 * 1024);
                let back = round_trip(addr, &data)?;
                Ok::<bool, std::io::Error>(sha256(&back) == sha256(&data))
            })
        })
        .collect();
    let intact = workers
        .into_iter()
        .map(|w| w.join().expect("worker thread"))
        .filter(|r| matches!(r, Ok(true)))
        .count();
    assert_eq!(intact, TUNNELS, "connect:\n{}", connect.dump());
    // Every relayed connection is gone from the relay once the tunnels are done.
    let status = poll(DEADLINE, || {
        let status = relay_status(relay.addr)?;
        (status["relayed"] == 0).then_some(status)
    })
    .unwrap_or_else(|| {
        panic!(
            "relayed connections never returned to zero: {:?}",
            relay_status(relay.addr)
        )
    });
    assert!(
        status["relayed_total"].as_u64() >= Some(TUNNELS as u64),
        "the relay counted fewer tunnels than were made: {status}"
    );
}

/// `GET /$status` from a running `relay serve`.
pub(super) fn relay_status(addr: std::net::SocketAddr) -> Option<serde_json::Value> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(DEADLINE)).ok()?;
    stream
        .write_all(b"GET /$status HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let body = response.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

#[test]
fn half_close_in_both_directions() {
    let relay = Relay::start();
    // Target 1 reads the whole request (to EOF), then answers and closes.
    let reader_first = serve_each(|mut s| {
        let mut req = Vec::new();
        let _ = s.read_to_end(&mut req);
        let _ = s.write_all(format!("got {} bytes", req.len()).as_bytes());
        let _ = s.shutdown(Shutdown::Write);
    });
    // Target 2 greets and half-closes at once, then reports what arrives afterwards.
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let writer_first = serve_each(move |mut s| {
        let _ = s.write_all(b"greeting");
        let _ = s.shutdown(Shutdown::Write);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        let _ = tx.send(rest);
    });
    let cs = relay.connection_string(KEY_BOTH, "half");
    let _listener = relay.listen_online(
        &cs,
        &[
            "--forward",
            &format!("rf=127.0.0.1:{}", reader_first.port()),
            "--forward",
            &format!("wf=127.0.0.1:{}", writer_first.port()),
        ],
    );

    let (c1, addr1) = relay.connect(&cs, "rf");
    let back = round_trip(addr1, &[7u8; 100_000]).expect("round trip");
    assert_eq!(back, b"got 100000 bytes", "connect:\n{}", c1.dump());

    let (c2, addr2) = relay.connect(&cs, "wf");
    let mut s = TcpStream::connect(addr2).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut greeting = Vec::new();
    s.read_to_end(&mut greeting)
        .expect("read to the target's half-close");
    assert_eq!(greeting, b"greeting", "connect:\n{}", c2.dump());
    s.write_all(b"after your EOF")
        .expect("our direction is still open");
    s.shutdown(Shutdown::Write).expect("half-close");
    let rest = rx.recv_timeout(DEADLINE).expect("target saw our EOF");
    assert_eq!(rest, b"after your EOF");
}

#[test]
fn port_names_pick_targets_and_unknown_names_are_refused() {
    let relay = Relay::start();
    let tagged = |tag: &'static [u8]| {
        serve_each(move |mut s| {
            let _ = s.write_all(tag);
            let _ = s.shutdown(Shutdown::Write);
        })
    };
    let (a, b) = (tagged(b"A"), tagged(b"B"));
    let cs = relay.connection_string(KEY_BOTH, "names");
    let ports = format!("{},{}", a.port(), b.port());
    let _listener = relay.listen_online(&cs, &["--ports", &ports]);
    for (target, tag) in [(a, b"A"), (b, b"B")] {
        let (_c, addr) = relay.connect(&cs, &target.port().to_string());
        assert_eq!(round_trip(addr, b"").expect("round trip"), tag);
    }
    // A name no listener forwards: each listener answers 421 (another may serve it), and
    // relay connect gives up after its bounded tries, naming the fix.
    let (c, addr) = relay.connect(&cs, "web");
    assert_eq!(
        round_trip(addr, b"x").unwrap_or_default(),
        b"",
        "unknown name gets nothing"
    );
    let line = c
        .stderr
        .wait_for("every listener that answered forwards other port names")
        .unwrap_or_else(|| panic!("{}", c.dump()));
    assert!(
        line.contains("port web is not forwarded by this listener") && line.contains("--port-name"),
        "{line}"
    );
}

/// Listeners of one Hybrid Connection that forward different ports: the relay hands each
/// sender to any of them, and a listener that does not forward the port the sender named
/// answers 421 for it to try again, until it reaches the one that does. Before, the
/// wrong listener took the sender and closed it at the preamble.
#[test]
fn listeners_of_one_hybrid_connection_share_it_by_port_name() {
    let relay = Relay::start();
    let tagged = |tag: &'static [u8]| {
        serve_each(move |mut s| {
            let _ = s.write_all(tag);
            let _ = s.shutdown(Shutdown::Write);
        })
    };
    let (a, b, c) = (tagged(b"A"), tagged(b"B"), tagged(b"C"));
    let cs = relay.connection_string(KEY_BOTH, "shared");
    let _la = relay.listen_online(&cs, &["--forward", &format!("a=127.0.0.1:{}", a.port())]);
    let _lbc = relay.listen_online(
        &cs,
        &[
            "--forward",
            &format!("b=127.0.0.1:{}", b.port()),
            "--forward",
            &format!("c=127.0.0.1:{}", c.port()),
        ],
    );
    for (name, tag) in [("a", b"A"), ("b", b"B"), ("c", b"C")] {
        let (connect, addr) = relay.connect(&cs, name);
        // Enough connections that each lands on the wrong listener at least once by chance.
        for round in 0..12 {
            let back = round_trip(addr, b"").unwrap_or_default();
            assert_eq!(back, tag, "{name} #{round}:\n{}", connect.dump());
        }
    }
}
