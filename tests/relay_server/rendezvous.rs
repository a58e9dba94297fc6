//! Rendezvous: the accept command, refusals with their statuses, reject, timeout, half-close.

use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::harness::*;
use super::raw::*;

#[tokio::test]
async fn rendezvous_relays_bytes_and_the_accept_is_complete() {
    let relay = Relay::start("");
    let mut control = listen(&relay, "hc1").await;

    // The sender: token in the query, a suffix, an app parameter, two sub-protocols and
    // a header the relay does not know.
    let tok = token(SEND_ONLY, KEY, "hc1", 3600);
    let url = format!(
        "{}&sb-hc-id=trk-1&sb-hc-token={}&app=1",
        relay.url("hc1/suffix", "connect"),
        enc(&tok)
    );
    let mut req = request(&url, None);
    let h = req.headers_mut();
    h.insert("Sec-WebSocket-Protocol", HeaderValue::from_static("p1, p2"));
    h.insert("Relay-User-Agent", HeaderValue::from_static("tests/1.0"));
    let sender_key = req.headers()["sec-websocket-key"]
        .to_str()
        .expect("ascii key")
        .to_owned();
    let tcp = TcpStream::connect(relay.addr).await.expect("connect");
    let sender_port = tcp.local_addr().expect("local addr").port();
    let sender = tokio::spawn(tokio_tungstenite::client_async(
        req,
        MaybeTlsStream::Plain(tcp),
    ));

    let accept = next_accept(&mut control).await;
    let a = &accept["accept"];
    let headers = &a["connectHeaders"];
    assert_eq!(
        headers["Sec-WebSocket-Key"],
        sender_key.as_str(),
        "{accept}"
    );
    assert_eq!(headers["Sec-WebSocket-Version"], "13", "{accept}");
    assert_eq!(headers["Host"], relay.addr.to_string().as_str(), "{accept}");
    assert_eq!(headers["Sec-WebSocket-Protocol"], "p1, p2", "{accept}");
    assert_eq!(headers["Relay-User-Agent"], "tests/1.0", "{accept}");
    assert_eq!(a["remoteEndpoint"]["address"], "127.0.0.1", "{accept}");
    assert_eq!(a["remoteEndpoint"]["port"], sender_port, "{accept}");
    let address = a["address"].as_str().expect("address").to_owned();
    let id = a["id"].as_str().expect("id");
    assert_eq!(
        address,
        format!(
            "ws://{}/$hc/hc1/suffix?app=1&sb-hc-action=accept&sb-hc-id={id}",
            relay.addr
        )
    );

    // The listener accepts with one of the offered sub-protocols.
    let mut lreq = request(&address, None);
    lreq.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("p2"));
    let (mut data, lresp) = tokio_tungstenite::connect_async(lreq)
        .await
        .expect("rendezvous accepted");
    assert_eq!(lresp.headers()["sec-websocket-protocol"], "p2");
    let (mut sender, sresp) = sender.await.expect("sender task").expect("sender upgraded");
    assert_eq!(sresp.headers()["sec-websocket-protocol"], "p2");
    assert!(sresp.headers().get("sec-websocket-extensions").is_none());
    relay.wait_status("relayed", 1).await;

    assert_relays(&mut sender, &mut data, b"from the sender").await;
    assert_relays(&mut data, &mut sender, b"from the listener").await;
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    assert_relays(&mut sender, &mut data, &big).await;

    // The address was single-use.
    assert_eq!(open(request(&address, None)).await.err(), Some(404));

    sender.close(Some(normal_close())).await.expect("close");
    assert_eq!(next_close(&mut data).await, Some(1000));
    assert_eq!(
        next_close(&mut sender).await,
        Some(1000),
        "the listener's reply"
    );
    relay.wait_status("relayed", 0).await;
}

#[tokio::test]
async fn refusals_have_the_documented_statuses_and_text() {
    let relay = Relay::start("");
    let _control = listen(&relay, "hc").await;
    let root = |path: &str| token(ROOT, KEY, path, 3600);
    let cases: Vec<(&str, String, Option<String>, u16, &str)> = vec![
        (
            "listen without a token",
            relay.url("hc", "listen"),
            None,
            401,
            "Unauthorized",
        ),
        (
            "bad signature",
            relay.url("hc", "listen"),
            Some(token(ROOT, "not-the-key", "hc", 3600)),
            401,
            "Unauthorized",
        ),
        (
            "expired token",
            relay.url("hc", "listen"),
            Some(token(ROOT, KEY, "hc", -10)),
            401,
            "Unauthorized",
        ),
        (
            "unknown key name",
            relay.url("hc", "listen"),
            Some(token("nobody", KEY, "hc", 3600)),
            401,
            "Unauthorized",
        ),
        (
            "send-only key listens",
            relay.url("hc", "listen"),
            Some(token(SEND_ONLY, KEY, "hc", 3600)),
            403,
            "Forbidden",
        ),
        (
            "token for another path",
            relay.url("hc", "connect"),
            Some(root("other")),
            403,
            "Forbidden",
        ),
        (
            "sender without listener",
            relay.url("nobody", "connect"),
            Some(root("nobody")),
            404,
            NO_LISTENERS,
        ),
        (
            "unknown action",
            relay.url("hc", "dance"),
            Some(root("hc")),
            400,
            "Bad Request",
        ),
        (
            "not a /$hc path",
            format!("ws://{}/elsewhere", relay.addr),
            None,
            404,
            "Not Found",
        ),
    ];
    for (name, url, tok, want, text) in cases {
        let mut headers = vec![("Relay-User-Agent", "tests/1.0")];
        if let Some(t) = &tok {
            headers.push(("ServiceBusAuthorization", t.as_str()));
        }
        let (status, reason, body) = http(relay.addr, &upgrade_head(&url, &headers)).await;
        assert_eq!(status, want, "{name}: {reason} / {body}");
        assert!(reason.starts_with(text), "{name}: reason {reason:?}");
        assert!(body.starts_with(text), "{name}: body {body:?}");
    }
    // The same through a WebSocket client, with the token in the query.
    let bad = enc(&token(ROOT, "not-the-key", "hc", 3600));
    let url = format!("{}&sb-hc-token={bad}", relay.url("hc", "connect"));
    assert_eq!(open(request(&url, None)).await.err(), Some(401));
    // Nothing above disturbed the listener.
    relay.wait_status("listeners", 1).await;
}

/// HTTP answer as `http` returns it: (status, reason, body).
type Answer = (u16, String, String);

/// A sender on `hc` whose listener (`control`) answers by opening `rendezvous(address)`:
/// (the rendezvous' answer, the sender's answer, the address it was given).
async fn answer_sender(
    relay: &Relay,
    control: &mut Ws,
    rendezvous: impl FnOnce(&str) -> String,
) -> (Answer, Answer, String) {
    let tok = token(ROOT, KEY, "hc", 3600);
    let head = upgrade_head(
        &relay.url("hc", "connect"),
        &[("ServiceBusAuthorization", &tok)],
    );
    let addr = relay.addr;
    let sender = tokio::spawn(async move { http(addr, &head).await });
    let accept = next_accept(control).await;
    let address = accept["accept"]["address"]
        .as_str()
        .expect("address")
        .to_owned();
    let answer = http(relay.addr, &upgrade_head(&rendezvous(&address), &[])).await;
    (answer, sender.await.expect("sender task"), address)
}

/// [`answer_sender`] with a reject: `query` appended to the rendezvous address.
async fn reject_sender(relay: &Relay, control: &mut Ws, query: &str) -> (Answer, Answer, String) {
    answer_sender(relay, control, |address| format!("{address}{query}")).await
}

#[tokio::test]
async fn a_reject_reaches_the_sender_and_the_rendezvous_gets_410() {
    let relay = Relay::start("");
    let mut control = listen(&relay, "hc").await;
    let query = format!(
        "&sb-hc-statusCode=403&sb-hc-statusDescription={}",
        enc("Forbidden by the listener")
    );
    let ((status, _, _), sender, address) = reject_sender(&relay, &mut control, &query).await;
    assert_eq!(status, 410, "the reject itself succeeds with 410");
    let (status, reason, body) = sender;
    assert_eq!(status, 403);
    assert_eq!(reason, "Forbidden by the listener");
    assert!(body.starts_with("Forbidden by the listener"), "{body}");
    // Used once: accepting afterwards finds nothing.
    assert_eq!(open(request(&address, None)).await.err(), Some(404));
}

/// A reject whose status is no HTTP status still rejects: the sender gets a 502 at once
/// (it had waited out its rendezvous timeout), the listener a 400 that says why.
#[tokio::test]
async fn a_reject_with_a_malformed_status_reaches_the_sender_at_once() {
    // Longer than the harness's deadline: a sender left waiting fails the test.
    let relay = Relay::start("rendezvous_timeout = \"60s\"");
    let mut control = listen(&relay, "hc").await;
    for bad in ["abc", "99", "600", "%C3%A9", ""] {
        let query = format!(
            "&sb-hc-statusCode={bad}&sb-hc-statusDescription={}",
            enc("listener text")
        );
        let ((status, _, body), sender, address) =
            reject_sender(&relay, &mut control, &query).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("is not an HTTP status"), "{bad}: {body}");
        let (status, _, body) = sender;
        assert_eq!(status, 502, "{bad}: {body}");
        assert!(body.contains("the listener rejected"), "{bad}: {body}");
        // Used once.
        assert_eq!(
            open(request(&address, None)).await.err(),
            Some(404),
            "{bad}"
        );
    }
    // Elsewhere a malformed status is still refused as before.
    let tok = token(ROOT, KEY, "hc", 3600);
    let url = format!("{}&sb-hc-statusCode=abc", relay.url("hc", "connect"));
    assert_eq!(open(request(&url, Some(&tok))).await.err(), Some(400));
}

/// A rendezvous with its sender's id on another path is refused (404) and fails that
/// sender at once with a 502 that says why (it had got a bare 500).
#[tokio::test]
async fn a_rendezvous_on_another_path_fails_its_sender_with_the_reason() {
    let relay = Relay::start("");
    let mut control = listen(&relay, "hc").await;
    let elsewhere = |address: &str| {
        let moved = address.replacen("/$hc/hc?", "/$hc/other?", 1);
        assert_ne!(moved, address);
        moved
    };
    let ((status, _, body), sender, address) = answer_sender(&relay, &mut control, elsewhere).await;
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = sender;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("another path"), "{body}");
    // Used up: the right path finds nothing either.
    assert_eq!(open(request(&address, None)).await.err(), Some(404));
}

#[tokio::test]
async fn a_sender_times_out_when_the_listener_never_answers() {
    let relay = Relay::start("rendezvous_timeout = \"1s\"");
    let mut control = listen(&relay, "hc").await;
    let tok = token(ROOT, KEY, "hc", 3600);
    let head = upgrade_head(
        &relay.url("hc", "connect"),
        &[("ServiceBusAuthorization", &tok)],
    );
    let (status, reason, _) = http(relay.addr, &head).await;
    assert_eq!(status, 504, "{reason}");
    // The expired address is refused.
    let accept = next_accept(&mut control).await;
    let address = accept["accept"]["address"].as_str().expect("address");
    assert_eq!(open(request(address, None)).await.err(), Some(404));
}

#[tokio::test]
async fn a_close_is_a_half_close() {
    let relay = Relay::start("");
    let mut control = listen(&relay, "hc").await;
    let (mut sender, mut listener) = raw_rendezvous(&relay, &mut control, "hc").await;

    sender.send(OP_BINARY, b"request").await;
    assert_eq!(
        listener.recv().await,
        Some((OP_BINARY, b"request".to_vec()))
    );
    // Pings are answered by the relay, unsolicited Pongs swallowed.
    sender.send(OP_PING, b"are you there").await;
    assert_eq!(
        sender.recv().await,
        Some((OP_PONG, b"are you there".to_vec()))
    );
    listener.send(OP_PONG, b"unsolicited").await;

    // The sender closes its direction (azbridge's CloseOutput)...
    let normal = 1000u16.to_be_bytes();
    sender.send(OP_CLOSE, &normal).await;
    assert_eq!(listener.recv().await, Some((OP_CLOSE, normal.to_vec())));
    // ...and the listener keeps sending until it is done.
    listener.send(OP_BINARY, b"response 1").await;
    listener.send(OP_BINARY, b"response 2").await;
    assert_eq!(
        sender.recv().await,
        Some((OP_BINARY, b"response 1".to_vec()))
    );
    assert_eq!(
        sender.recv().await,
        Some((OP_BINARY, b"response 2".to_vec()))
    );
    listener.send(OP_CLOSE, &normal).await;
    assert_eq!(sender.recv().await, Some((OP_CLOSE, normal.to_vec())));
    // Both directions closed: the relay ends both connections.
    assert_eq!(sender.recv().await, None);
    assert_eq!(listener.recv().await, None);
    relay.wait_status("relayed", 0).await;
}

/// Sends a raw upgrade and reads only the response head's status.
async fn upgrade_status(addr: std::net::SocketAddr, head: String) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.expect("connect relay");
    tcp.write_all(head.as_bytes()).await.expect("send request");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(2 * DEADLINE, tcp.read(&mut buf))
            .await
            .expect("an answer within the rendezvous timeout")
            .expect("read answer");
        assert!(n > 0, "closed without an answer");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code")
}

/// A listener that stops reading its control channel is dropped after 10 s (the relay's
/// send timeout). The accept commands still queued for it go to another listener of the
/// path, whose senders are connected then; before, they were dropped in silence and their
/// senders waited out the rendezvous timeout for a 504. So do the senders still waiting
/// for room in its full queue (256 commands), which had been told 404 (no listener)
/// while a listener was connected.
#[tokio::test]
async fn accepts_queued_behind_a_stuck_listener_go_to_another_listener() {
    // About 100 fill its socket, 256 its queue, the rest wait for room in it.
    const SENDERS: u64 = 450;
    raise_fd_limit();
    let relay = Relay::start("rendezvous_timeout = \"25s\"");
    let tok = token(ROOT, KEY, "hc", 3600);
    // The stuck listener: a small receive buffer it never reads.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket.connect(relay.addr).await.expect("connect relay");
    let auth = [("ServiceBusAuthorization", tok.as_str())];
    let _stuck = RawWs::upgrade(tcp, &relay.url("hc", "listen"), &auth).await;
    relay.wait_status("listeners", 1).await;
    // Each accept command carries its sender's headers (30 KB here).
    let pad = "p".repeat(30_000);
    let head = upgrade_head(
        &relay.url("hc", "connect"),
        &[("ServiceBusAuthorization", &tok), ("X-Pad", &pad)],
    );
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| tokio::spawn(upgrade_status(relay.addr, head.clone())))
        .collect();
    relay.wait_status("pending", SENDERS).await;
    // A healthy listener joins and takes every accept it is given.
    let mut healthy = listen(&relay, "hc").await;
    let taker = tokio::spawn(async move {
        let mut legs = Vec::new();
        while let Some(Ok(message)) = healthy.next().await {
            // The relay's Ping after each accept (its liveness probe) is no command.
            let tokio_tungstenite::tungstenite::Message::Text(text) = message else {
                continue;
            };
            let accept: serde_json::Value =
                serde_json::from_str(text.as_str()).expect("JSON command");
            if let Some(address) = accept["accept"]["address"].as_str() {
                legs.push(tokio::spawn(open(request(address, None))));
            }
        }
    });
    let mut connected = 0;
    let mut timed_out = 0;
    for sender in senders {
        let status = sender.await.expect("sender task");
        match status {
            101 => connected += 1,
            504 => timed_out += 1,
            // 404 says no listener is connected: never true here.
            other => panic!(
                "unexpected status {other} ({connected} connected, {timed_out} timed out so far)"
            ),
        }
    }
    taker.abort();
    // Those whose command had gone onto the stuck listener's wire still time out.
    assert!(
        connected > 0,
        "no queued accept reached the other listener ({timed_out} timed out)"
    );
    relay.log_containing("trying the others").await;
}

/// A key's `paths` are checked against the Hybrid Connection a sender reaches, the
/// longest prefix of its path with a listener, not against the whole path it asked for
/// (entity and suffix). Before: a key for `team-a/alice` reached the listener of `team-a`
/// (the key's scope bypassed), and a key for `debug` was refused for `debug/5678`, the
/// sender path `relay connect --port-name 5678` uses (the setup docs/relay.md shows). An
/// empty token header does not hide the query's token.
#[tokio::test]
async fn a_keys_paths_cover_the_hybrid_connection_a_sender_reaches() {
    let scoped = |name: &str, path: &str| {
        format!(
            "[[relay.server.keys]]\nname = \"{name}\"\nkey = \"{KEY}\"\nrights = [\"send\"]\n\
             paths = [\"{path}\"]\n"
        )
    };
    let relay = Relay::start(&format!(
        "{}{}",
        scoped("alice", "team-a/alice"),
        scoped("debugger", "debug")
    ));
    let _team = listen(&relay, "team-a").await;
    let alice = token("alice", KEY, "team-a/alice", 3600);
    let bypass = open(request(&relay.url("team-a/alice", "connect"), Some(&alice))).await;
    assert_eq!(bypass.err(), Some(403), "alice's key reached team-a");
    // No listener under its path at all: refused as out of scope, not told "no listener".
    let elsewhere = open(request(&relay.url("team-b/x", "connect"), Some(&alice))).await;
    assert_eq!(elsewhere.err(), Some(403));

    let mut control = listen(&relay, "debug").await;
    let debugger = token("debugger", KEY, "debug", 3600);
    let url = format!(
        "{}&sb-hc-token={}",
        relay.url("debug/5678", "connect"),
        enc(&debugger)
    );
    let mut req = request(&url, None);
    req.headers_mut()
        .insert("ServiceBusAuthorization", HeaderValue::from_static(""));
    let sender = tokio::spawn(open(req));
    let accept = next_accept(&mut control).await;
    let address = accept["accept"]["address"]
        .as_str()
        .expect("address")
        .to_owned();
    let mut data = open(request(&address, None))
        .await
        .expect("rendezvous accepted");
    let mut sender = sender
        .await
        .expect("sender task")
        .expect("the debug key reaches the debug listener with a port suffix");
    assert_relays(&mut sender, &mut data, b"through").await;
    let log = relay.log();
    assert!(!log.contains(&debugger), "the token is never logged");
}

/// A sender that leaves while it waits for its listener's decision gives its place back
/// at once: it held a `max_connections` slot (and a pending entry) until the rendezvous
/// timeout. The listener's rendezvous for it then finds nobody.
#[tokio::test]
async fn a_sender_that_leaves_while_waiting_is_let_go_at_once() {
    let relay = Relay::start("rendezvous_timeout = \"5m\"");
    let mut control = listen(&relay, "hc").await;
    let tok = token(ROOT, KEY, "hc", 3600);
    let url = relay.url("hc", "connect");
    let sender = tokio::spawn(async move { open(request(&url, Some(&tok))).await });
    let accept = next_accept(&mut control).await;
    relay.wait_status("pending", 1).await;
    // Its connection ends (the task holding it is dropped) before the listener decides.
    sender.abort();
    let _ = sender.await;
    relay.wait_status("pending", 0).await;
    let address = accept["accept"]["address"]
        .as_str()
        .expect("address")
        .to_owned();
    assert_eq!(open(request(&address, None)).await.err(), Some(404));
    relay
        .log_containing("sender left before a listener took it")
        .await;
}
