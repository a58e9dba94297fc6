//! Limits and the control channel: listener quota, oversized messages, stalled handshakes,
//! Pings, renewToken and expiry. One misbehaving client never stops the others.

use std::time::Duration;

use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::harness::*;

#[tokio::test]
async fn listeners_per_path_are_capped() {
    let relay = Relay::start("max_listeners_per_path = 2");
    let _a = listen(&relay, "hc").await;
    let _b = listen(&relay, "hc").await;
    let tok = token(ROOT, KEY, "hc", 3600);
    assert_eq!(
        open(request(&relay.url("hc", "listen"), Some(&tok)))
            .await
            .err(),
        Some(403)
    );
    let _other = listen(&relay, "other").await;
    relay.wait_status("listeners", 3).await;
}

#[tokio::test]
async fn an_oversized_control_message_drops_only_that_listener() {
    let relay = Relay::start("max_control_message = 1024");
    let mut big = listen(&relay, "big").await;
    let mut other = listen(&relay, "other").await;
    relay.wait_status("listeners", 2).await;
    big.send(Message::text("x".repeat(4096)))
        .await
        .expect("send oversized");
    assert_eq!(next_close(&mut big).await, Some(1009));
    relay.wait_status("listeners", 1).await;
    let tok = token(ROOT, KEY, "big", 3600);
    assert_eq!(
        open(request(&relay.url("big", "connect"), Some(&tok)))
            .await
            .err(),
        Some(404)
    );
    let (mut sender, mut data) = rendezvous(&relay, &mut other, "other").await;
    assert_relays(&mut sender, &mut data, b"still serving").await;
}

#[tokio::test]
async fn a_stalled_handshake_is_cut_off_while_others_are_served() {
    let relay = Relay::start("handshake_timeout = \"300ms\"");
    let mut silent = TcpStream::connect(relay.addr).await.expect("connect");
    let mut partial = TcpStream::connect(relay.addr).await.expect("connect");
    partial
        .write_all(b"GET /$hc/hc?sb-hc-action=listen HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send half a request");

    let mut control = listen(&relay, "hc").await;
    let (mut sender, mut data) = rendezvous(&relay, &mut control, "hc").await;
    assert_relays(&mut sender, &mut data, b"served meanwhile").await;

    for (name, stream) in [("silent", &mut silent), ("partial", &mut partial)] {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{name} connection was not cut off"));
        assert!(matches!(read, Ok(0) | Err(_)), "{name}: {read:?}");
    }
    assert_relays(&mut data, &mut sender, b"and after").await;
}

#[tokio::test]
async fn the_control_channel_pings_renews_and_expires() {
    let relay = Relay::start("");
    let short_ttl = 3;
    let first_expiry = amlx_agent::relay::sas::unix_now() + short_ttl;
    let short = token(ROOT, KEY, "hc", short_ttl as i64);
    let mut control = open(request(&relay.url("hc", "listen"), Some(&short)))
        .await
        .expect("listener");
    control
        .send(Message::Pong(b"unsolicited".to_vec().into()))
        .await
        .expect("pong");
    control
        .send(Message::text(r#"{"someFutureCommand":{"x":1}}"#))
        .await
        .expect("unknown command");
    let renew =
        |tok: String| Message::text(serde_json::json!({"renewToken": {"token": tok}}).to_string());
    control
        .send(renew(token(ROOT, KEY, "hc", 3600)))
        .await
        .expect("renew");
    // Past the first token's expiry, the channel still answers and still gets senders.
    let started = std::time::Instant::now();
    while amlx_agent::relay::sas::unix_now() <= first_expiry + 1 {
        assert!(started.elapsed() < DEADLINE, "clock did not advance");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    control
        .send(Message::Ping(b"still there".to_vec().into()))
        .await
        .expect("ping");
    loop {
        match tokio::time::timeout(DEADLINE, futures_util::StreamExt::next(&mut control))
            .await
            .expect("pong in time")
        {
            Some(Ok(Message::Pong(p))) if p.as_ref() == b"still there" => break,
            Some(Ok(_)) => {}
            other => panic!("control channel ended: {other:?}"),
        }
    }
    let (mut sender, mut data) = rendezvous(&relay, &mut control, "hc").await;
    assert_relays(&mut sender, &mut data, b"renewed").await;
    // A bad renewal closes the channel with 1008 (policy).
    control
        .send(renew(token(ROOT, "not-the-key", "hc", 3600)))
        .await
        .expect("bad renew");
    assert_eq!(next_close(&mut control).await, Some(1008));

    // Without renewal, the channel closes (1008) when its token expires.
    let mut lapsing = open(request(
        &relay.url("hc", "listen"),
        Some(&token(ROOT, KEY, "hc", 2)),
    ))
    .await
    .expect("listener");
    assert_eq!(next_close(&mut lapsing).await, Some(1008));
}

/// Refusals a client can repeat at will, with no credentials (401) or from a client
/// library reconnecting in a tight loop to a full path (403), are logged once, then at
/// most once per interval: one line per refusal let one client grow the log by 1 MB a
/// second.
#[tokio::test]
async fn refusals_anyone_can_repeat_are_logged_once_per_interval() {
    const TRIES: usize = 300;
    let relay = Relay::start("max_listeners_per_path = 1");
    let _first = listen(&relay, "hc").await;
    let tok = token(ROOT, KEY, "hc", 3600);
    for _ in 0..TRIES {
        let no_token = open(request(&relay.url("hc", "listen"), None)).await;
        assert_eq!(no_token.err(), Some(401));
        let path_full = open(request(&relay.url("hc", "listen"), Some(&tok))).await;
        assert_eq!(path_full.err(), Some(403));
    }
    // Its line is written after every refusal's: once it is read, all of theirs are.
    let _barrier = listen(&relay, "barrier").await;
    let log = relay
        .log_until("two listeners connected", |log| {
            log.matches("listener connected").count() >= 2
        })
        .await;
    assert_eq!(log.matches("listener connected").count(), 2, "{log}");
    let unauthorized = log
        .lines()
        // The field, not the bare number: a timestamp's milliseconds can read "401".
        .filter(|l| l.contains("refused: ") && l.contains("status=401"))
        .count();
    let full = log
        .lines()
        .filter(|l| l.contains("listener refused: "))
        .count();
    let lines = log.lines().count();
    assert_eq!((unauthorized, full), (1, 1), "{lines} lines:\n{log}");
    assert!(lines < 20, "{lines} lines:\n{log}");
}

/// Requests the relay cannot serve (no such endpoint, malformed) are logged, once per
/// interval with a count of the rest: they were answered but logged at no verbosity.
#[tokio::test]
async fn bad_requests_are_logged_once_per_interval() {
    const TRIES: usize = 50;
    let relay = Relay::start("");
    for _ in 0..TRIES {
        let (status, _, _) = http(relay.addr, "GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, 404);
    }
    // Its line is written after every refusal's: once it is read, all of theirs are.
    let _barrier = listen(&relay, "barrier").await;
    let log = relay.log_containing("listener connected").await;
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("bad request: "))
        .collect();
    assert_eq!(bad.len(), 1, "{log}");
    assert!(
        bad[0].contains("Not Found") && bad[0].contains("status=404"),
        "{log}"
    );
}

/// Out of file descriptors, `accept` fails: the overload warning names the OS error and
/// the fix (it said only "N accept failure(s)", the cause was at debug level), and the
/// relay serves again once descriptors are free.
#[tokio::test]
async fn out_of_descriptors_is_logged_with_its_cause_and_fix_and_serving_resumes() {
    const LIMIT: &str = "--nofile=32:32";
    const HELD: usize = 64;
    let relay = Relay::start("max_handshakes = 1000\nmax_handshakes_per_source = 1000");
    // The relay raised its own limit at start; lower it under it (util-linux prlimit).
    let lowered = std::process::Command::new("prlimit")
        .args(["--pid", &relay.pid().to_string(), LIMIT])
        .status()
        .expect("run prlimit (util-linux)");
    assert!(lowered.success(), "prlimit {LIMIT}: {lowered}");
    let mut held = Vec::new();
    for _ in 0..HELD {
        held.push(TcpStream::connect(relay.addr).await.expect("connect"));
    }
    let log = relay.log_containing("the last accept failure").await;
    let line = log
        .lines()
        .find(|l| l.contains("the last accept failure"))
        .unwrap_or_else(|| panic!("no accept failure named:\n{log}"));
    assert!(
        line.contains("Too many open files")
            && line.contains("LimitNOFILE=")
            && line.contains("resumes by itself"),
        "{line}"
    );
    drop(held);
    let _listener = listen(&relay, "after").await;
    relay.wait_status("listeners", 1).await;
}

/// A path with a `.` or `..` segment is a 400 that says so: such a sender used to get an
/// accept whose rendezvous address (URLs drop dot segments) named another path, and a
/// 502 blaming the listener.
#[tokio::test]
async fn a_path_with_dot_segments_is_a_bad_request() {
    let relay = Relay::start("");
    let _listener = listen(&relay, "hc").await;
    let tok = token(ROOT, KEY, "hc", 3600);
    for path in ["hc/x/..", "hc/./x", "hc/%2E%2E/hc"] {
        let (status, _, body) = http(
            relay.addr,
            &format!(
                "GET /$hc/{path}?sb-hc-action=connect HTTP/1.1\r\nHost: {}\r\n\
                 Upgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                 ServiceBusAuthorization: {tok}\r\n\r\n",
                relay.addr
            ),
        )
        .await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("'.' or '..' segment"), "{path}: {body}");
    }
}

/// A key with its own `max_connections`: a holder of a node's send key who opened
/// tunnels (or connections that never sent a byte) until the relay was full refused
/// every other key with 503 for as long as they liked. Its tunnels now count against its
/// own limit, both legs of each (the sender's and the listener's), and every other key
/// goes on being served; a slot it frees is its own again. A sender takes both of its
/// tunnel's slots at once: with one slot left it is refused at once (it was let in, and
/// the listener it reached then had its rendezvous refused with 503).
#[tokio::test]
async fn a_key_with_its_own_limit_cannot_take_the_slots_of_the_others() {
    let relay = Relay::start_with_sender_key("", "max_connections = 5");
    let path = "limited";
    let mut control = listen(&relay, path).await;
    // Two tunnels are four slots of the send-only key; one is left, a tunnel takes two.
    let first = rendezvous_as(&relay, &mut control, path, SEND_ONLY).await;
    let _second = rendezvous_as(&relay, &mut control, path, SEND_ONLY).await;
    let tok = token(SEND_ONLY, KEY, path, 3600);
    let refused = open(request(&relay.url(path, "connect"), Some(&tok))).await;
    assert_eq!(refused.err(), Some(503), "a third tunnel for the key");
    relay
        .log_containing(&format!(
            "sender refused: key {SEND_ONLY} has fewer than the two free connections a tunnel \
             takes, its sender's leg and its listener's (5, the max_connections of its \
             [[relay.server.keys]] entry)"
        ))
        .await;
    // The listener never heard of the refused sender: the next accept it gets is the
    // root key's sender's (`rendezvous` opens the address of the next accept).
    // Every other key is served as before.
    let (mut sender, mut data) = rendezvous(&relay, &mut control, path).await;
    assert_relays(&mut sender, &mut data, b"the root key is not limited").await;
    // A tunnel of the key ends: its two slots are the key's again.
    drop(first);
    let started = std::time::Instant::now();
    let (mut sender, mut data) = loop {
        let tok = token(SEND_ONLY, KEY, path, 3600);
        let mut sender = tokio::spawn(open(request(&relay.url(path, "connect"), Some(&tok))));
        tokio::select! {
            accept = next_accept(&mut control) => {
                let address = accept["accept"]["address"].as_str().expect("address").to_owned();
                let data = open(request(&address, None)).await.expect("rendezvous accepted");
                let sender = (&mut sender)
                    .await
                    .expect("sender task")
                    .expect("the key's freed slots took its tunnel");
                break (sender, data);
            }
            answered = &mut sender => {
                // Refused while the relay has not yet seen the first tunnel end.
                assert_eq!(answered.expect("sender task").err(), Some(503));
            }
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the key's slots never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_relays(&mut sender, &mut data, b"a freed slot").await;
}

/// The relay's own `max_connections` counts a tunnel's two legs the same way: with one slot
/// left (a control channel and a tunnel hold three of four) a sender is refused at once,
/// before its listener hears of it. It was let in, and the rendezvous its listener then
/// opened was refused with 503: the listener was asked for work that could not be done.
#[tokio::test]
async fn the_relay_lets_a_tunnel_in_whole_or_not_at_all() {
    let relay = Relay::start("max_connections = 4");
    let path = "whole";
    let mut control = listen(&relay, path).await;
    let tunnel = rendezvous(&relay, &mut control, path).await;
    let tok = token(ROOT, KEY, path, 3600);
    let refused = open(request(&relay.url(path, "connect"), Some(&tok))).await;
    assert_eq!(refused.err(), Some(503), "a tunnel in the last slot");
    relay
        .log_containing("sender refused: the relay is at its connection limit (a tunnel takes two")
        .await;
    drop(tunnel);
    // Its slots are free once only the control channel and the `/$status` request are
    // open (each task's count ends after the slots it held).
    relay.wait_status("connections", 1 + 1).await;
    // The listener never heard of the refused sender: the next accept it gets is this
    // sender's (`rendezvous` opens the address of the next accept).
    let (mut sender, mut data) = rendezvous(&relay, &mut control, path).await;
    assert_relays(&mut sender, &mut data, b"a whole tunnel").await;
}

/// A sender that is answered anything but a tunnel (the listener rejects it, the
/// listener's rendezvous names another path, nobody accepts in time) has given both of its
/// slots back by the time it hears the answer: a client of a key with room for one tunnel
/// that tries again at once was refused with 503 now and then, the slots being freed only
/// after the answer was written.
#[tokio::test]
async fn a_sender_answered_without_a_tunnel_may_try_again_at_once() {
    const ROUNDS: usize = 100;
    let relay =
        Relay::start_with_sender_key("rendezvous_timeout = \"200ms\"", "max_connections = 2");
    let path = "again";
    let mut control = listen(&relay, path).await;
    let reject =
        |address: &str| format!("{address}&sb-hc-statusCode=403&sb-hc-statusDescription=no");
    let wrong_path = |address: &str| address.replacen("/$hc/again?", "/$hc/other?", 1);
    // (what answers the sender, the listener's rendezvous address for it, the status)
    type Answer<'a> = &'a dyn Fn(&str) -> String;
    let cases: [(&str, Answer, u16); 2] = [
        ("a reject", &reject, 403),
        ("a rendezvous on another path", &wrong_path, 502),
    ];
    for (what, answer, want) in cases {
        for round in 0..ROUNDS {
            let mut sender = send_raw_connect(&relay, path);
            let accept = tokio::select! {
                accept = next_accept(&mut control) => accept,
                answered = &mut sender => panic!(
                    "after {what}, round {round}: the sender was answered before its listener \
                     heard of it: {answered:?}"
                ),
            };
            let address = accept["accept"]["address"].as_str().expect("address");
            let rendezvous = answer(address);
            let addr = relay.addr;
            let listener = tokio::spawn(async move {
                http(addr, &super::raw::upgrade_head(&rendezvous, &[])).await
            });
            let (status, _, body) = sender.await.expect("sender task");
            assert_eq!(status, want, "after {what}, round {round}: {body}");
            listener.await.expect("listener task");
        }
    }
    // Nobody accepts: 504 each time, never 503.
    for round in 0..5 {
        let (status, _, body) = send_raw_connect(&relay, path).await.expect("sender task");
        assert_eq!(status, 504, "nobody accepts, round {round}: {body}");
        let _ = next_accept(&mut control).await;
    }
}

/// A sender's upgrade with the send-only key, written raw: its answer's status and body.
fn send_raw_connect(relay: &Relay, path: &str) -> tokio::task::JoinHandle<(u16, String, String)> {
    let tok = token(SEND_ONLY, KEY, path, 3600);
    let head = super::raw::upgrade_head(
        &relay.url(path, "connect"),
        &[("ServiceBusAuthorization", &tok)],
    );
    let addr = relay.addr;
    tokio::spawn(async move { http(addr, &head).await })
}
