//! A relay that stops answering is noticed: `relay listen` against a test double that
//! completes the control channel's WebSocket upgrade and then goes silent without closing
//! (what a NAT drop or a hung relay looks like) reconnects within the silence limit.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use amlx_agent::relay::client::backoff::FIRST_ATTEMPT_SPREAD;
use amlx_agent::relay::client::listener::SILENCE_LIMIT;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::harness::*;

/// Slack for a loaded machine on top of the silence limit and the first backoff step.
const SLACK: Duration = Duration::from_secs(10);

/// Answers each WebSocket upgrade with 101 and then never sends another byte (it keeps
/// reading, like a relay whose process hangs while the kernel still takes packets).
/// Sends the instant each connection arrived.
fn silent_relay() -> (SocketAddr, mpsc::Receiver<Instant>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("bound");
    let (arrived, arrivals) = mpsc::channel();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            if arrived.send(Instant::now()).is_err() {
                break;
            }
            thread::spawn(move || upgrade_then_hang(conn));
        }
    });
    (addr, arrivals)
}

fn upgrade_then_hang(mut conn: TcpStream) {
    let Ok(read_side) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_side);
    let mut key = None;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("sec-websocket-key")
        {
            key = Some(value.trim().to_owned());
        }
    }
    let Some(key) = key else { return };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    if conn.write_all(response.as_bytes()).is_err() {
        return;
    }
    // Silent from here on: swallow the listener's Pings, answer nothing, never close.
    let mut sink = [0u8; 1024];
    while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
}

#[test]
fn a_listener_whose_relay_goes_silent_reconnects_within_the_silence_limit() {
    let (addr, arrivals) = silent_relay();
    let cs = format!(
        "Endpoint=sb://{addr}/;SharedAccessKeyName=k;SharedAccessKey=c2lsZW50;EntityPath=silent"
    );
    let listener = listen_without_relay(&cs, &["--ports", "5678"]);
    let first = arrivals
        .recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("no control channel:\n{}", listener.dump()));
    assert!(
        listener.stderr.wait_for("listener online").is_some(),
        "{}",
        listener.dump()
    );
    let bound = SILENCE_LIMIT + FIRST_ATTEMPT_SPREAD + SLACK;
    let second = arrivals.recv_timeout(bound).unwrap_or_else(|_| {
        panic!(
            "no second control channel within {bound:?}:\n{}",
            listener.dump()
        )
    });
    let gap = second - first;
    // Pings went unanswered for the whole limit: the drop is the silence, not chance.
    assert!(gap >= SILENCE_LIMIT, "reconnected after only {gap:?}");
    let why = listener
        .stderr
        .wait_for("listener offline")
        .unwrap_or_else(|| panic!("{}", listener.dump()));
    assert!(why.contains("nothing from the relay"), "{why}");
}

/// `relay listen`'s connection to its relay has TCP keepalive armed (30 s idle, then
/// probes), so a relay that vanished without a FIN is noticed even while nothing flows.
#[test]
fn a_listeners_connection_to_its_relay_is_probed_when_silent() {
    /// Clock ticks per second in /proc/net/tcp (USER_HZ).
    const TICKS: u64 = 100;
    let relay = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = relay.local_addr().expect("bound");
    let (accepted, connections) = mpsc::channel();
    thread::spawn(move || {
        if let Ok(conn) = relay.accept() {
            let _ = accepted.send(conn);
        }
    });
    let cs = format!(
        "Endpoint=sb://{addr}/;SharedAccessKeyName=k;SharedAccessKey=c2lsZW50;EntityPath=probed"
    );
    let listener = listen_without_relay(&cs, &["--ports", "5678"]);
    let (_conn, peer) = connections
        .recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("no control channel:\n{}", listener.dump()));
    // The listener arms keepalive just after connecting, and its upgrade request may be
    // unacknowledged for a moment (a retransmit timer shows then): poll, bounded.
    let pid = listener.child.id();
    let when = crate::util::wait_for(
        "a keepalive timer on the listener's end of its relay connection",
        Duration::from_secs(5),
        || match crate::util::tcp_timer(pid, peer.port(), addr.port()) {
            Some((2, when)) => Some(when),
            _ => None,
        },
    );
    assert!(
        when <= 30 * TICKS,
        "the first probe comes within 30 s, not {when} ticks"
    );
}
