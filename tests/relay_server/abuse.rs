//! Hostile clients (issue 7, acceptance 3): malformed requests, broken frames and
//! abusive control messages never end `relay serve` — after each one the process is
//! alive and a fresh authenticated tunnel still echoes — and a flood of idle TCP
//! connections plus a slowloris client leaves new tunnels and `/$status` working.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::harness::*;
use super::raw::*;

const OP_CONTINUATION: u8 = 0;
const OP_TEXT: u8 = 1;
/// FIN bit of a frame's first byte.
const FIN: u8 = 0x80;

/// Proves the relay survived `what`: the process runs, and a new listener, sender and
/// rendezvous on a fresh path relay bytes both ways.
async fn assert_still_serving(relay: &mut Relay, what: &str, path: &str) {
    relay.assert_alive(what);
    let mut control = listen(relay, path).await;
    let (mut sender, mut data) = rendezvous(relay, &mut control, path).await;
    assert_relays(&mut sender, &mut data, b"ping after abuse").await;
    assert_relays(&mut data, &mut sender, b"pong after abuse").await;
    relay.assert_alive(what);
}

/// Sends `bytes` on a new connection and reads what comes back until the relay closes
/// it (bounded); returns the status of the HTTP answer, if there was one.
async fn send_raw(relay: &Relay, bytes: &[u8]) -> Option<u16> {
    let mut tcp = TcpStream::connect(relay.addr).await.expect("connect");
    // A relay that answers before reading everything may reset the rest: fine.
    let _ = tcp.write_all(bytes).await;
    let _ = tcp.shutdown().await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the relay kept a finished request open");
    let text = String::from_utf8_lossy(&out);
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?;
    status.parse().ok()
}

/// The head of a WebSocket upgrade to `target`, with `extra` header lines (each ending
/// in CRLF), as bytes (so a case can carry invalid UTF-8).
fn upgrade_to(target: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut head = b"GET ".to_vec();
    head.extend_from_slice(target);
    head.extend_from_slice(
        b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    );
    head.extend_from_slice(extra);
    head.extend_from_slice(b"\r\n");
    head
}

#[tokio::test]
async fn malformed_requests_never_end_the_relay() {
    let mut relay = Relay::start("handshake_timeout = \"2s\"");
    let long = "é".repeat(300);
    let root = token(ROOT, KEY, "hc", 3600);
    let auth = |t: &str| format!("ServiceBusAuthorization: {t}\r\n").into_bytes();
    let listen_with = |query: &str| {
        upgrade_to(
            format!("/$hc/hc?sb-hc-action=listen&{query}").as_bytes(),
            &auth(&root),
        )
    };
    // (name, bytes, the status the relay answers; `None`: any answer, or none, will do)
    let cases: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
        (
            "the issue's request: percent-encoded non-ASCII query, plain HTTP",
            b"GET /$hc/x?sb-hc-action=listen&a=%C3%A9%FF HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Some(400),
        ),
        (
            "a query name whose 6th byte is inside a character, plain HTTP",
            b"GET /$hc/x?aaaaa%C3%A9=1&sb-hc-action=listen HTTP/1.1\r\n\r\n".to_vec(),
            Some(400),
        ),
        (
            "the same on an upgrade with a valid token",
            listen_with("aaaa%E2%82%AC=1&%C3%A9%C3%A9%C3%A9%C3%A9=%FF%FE"),
            None,
        ),
        (
            "non-ASCII raw in the path and query",
            upgrade_to("/$hc/é/ü?sb-hc-action=listen&ö=ä".as_bytes(), b""),
            Some(401),
        ),
        (
            "invalid UTF-8 raw in the path",
            upgrade_to(b"/$hc/\xff\xfe?sb-hc-action=listen", b""),
            Some(400),
        ),
        (
            "non-ASCII in the method",
            "GÉT /$hc/hc HTTP/1.1\r\n\r\n".as_bytes().to_vec(),
            Some(400),
        ),
        (
            "non-ASCII in the version",
            "GET /$hc/hc HTTP/1.1é\r\n\r\n".as_bytes().to_vec(),
            Some(400),
        ),
        (
            "non-ASCII in a header name",
            upgrade_to(b"/$hc/hc?sb-hc-action=listen", "Höst: x\r\n".as_bytes()),
            Some(400),
        ),
        (
            "non-ASCII and invalid UTF-8 in header values",
            upgrade_to(
                b"/$hc/hc?sb-hc-action=listen",
                b"X-Thing: \xc3\r\nUser-Agent: \xc3\xa9\xff\xfe\r\nOrigin: \xe2\x82\r\n",
            ),
            Some(401),
        ),
        (
            "a non-ASCII token in the header",
            upgrade_to(
                b"/$hc/hc?sb-hc-action=listen",
                format!("ServiceBusAuthorization: SharedAccessSignature sr={long}&sig={long}&se=9999999999&skn={long}\r\n").as_bytes(),
            ),
            Some(401),
        ),
        (
            "a percent-encoded non-ASCII token in the query",
            upgrade_to(
                b"/$hc/hc?sb-hc-action=listen&sb-hc-token=SharedAccessSignature%20sr%3D%C3%A9%26sig%3D%FF%26se%3D1%26skn%3D%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9",
                b"",
            ),
            Some(401),
        ),
        (
            "a non-ASCII Host on a valid listen",
            {
                let mut head = listen_with("x=1");
                let host = b"Host: 127.0.0.1\r\n";
                let at = head.windows(host.len()).position(|w| w == host).expect("host line");
                head.splice(at..at + host.len(), "Host: é\u{1F600}:1\r\n".bytes());
                head
            },
            None,
        ),
        (
            "bad percent-encoding everywhere",
            upgrade_to(b"/%24hc/%/%G?%=%&sb-hc-action=%ZZ&%%%", b""),
            None,
        ),
        (
            "a non-ASCII action",
            upgrade_to(b"/$hc/hc?sb-hc-action=%C3%A9coute", b""),
            Some(400),
        ),
        (
            "a non-ASCII reject status and a long non-ASCII description",
            upgrade_to(
                format!(
                    "/$hc/hc?sb-hc-action=accept&sb-hc-id=x&sb-hc-statusCode=%C3%A9&sb-hc-statusDescription={}",
                    enc(&long)
                )
                .as_bytes(),
                b"",
            ),
            Some(400),
        ),
        (
            "a rejection of an unknown rendezvous with a long non-ASCII description",
            upgrade_to(
                format!(
                    "/$hc/hc?sb-hc-action=accept&sb-hc-id=nope&sb-hc-statusCode=403&sb-hc-statusDescription={}",
                    enc(&long)
                )
                .as_bytes(),
                b"",
            ),
            Some(404),
        ),
        (
            "an overlong request line",
            format!("GET /$hc/{} HTTP/1.1\r\n\r\n", "é".repeat(40 * 1024)).into_bytes(),
            Some(431),
        ),
        (
            "an overlong header line",
            upgrade_to(
                b"/$hc/hc?sb-hc-action=listen",
                format!("X-Long: {}\r\n", "ü".repeat(40 * 1024)).as_bytes(),
            ),
            Some(431),
        ),
        (
            "too many headers",
            upgrade_to(b"/$hc/hc?sb-hc-action=listen", "X: é\r\n".repeat(200).as_bytes()),
            Some(431),
        ),
        ("binary garbage", vec![0xff, 0x00, 0xc3, 0x0d, 0x0a, 0x0d, 0x0a], Some(400)),
        (
            "half a request, then the client goes",
            "GET /$hc/hé?sb-hc-act".as_bytes().to_vec(),
            None,
        ),
        (
            "garbage right after an authenticated listener upgrade",
            {
                let mut bytes = listen_with("x=1");
                bytes.extend_from_slice(b"\xff\xff\xff\xff\xff\xff\xff\xff\xc3\xa9 not a frame");
                bytes
            },
            Some(101),
        ),
        (
            "garbage right after a sender upgrade (no listener)",
            {
                let nobody = token(ROOT, KEY, "nobody", 3600);
                let mut bytes = upgrade_to(b"/$hc/nobody?sb-hc-action=connect", &auth(&nobody));
                bytes.extend_from_slice("\u{1F600}garbage".as_bytes());
                bytes
            },
            Some(404),
        ),
        (
            "a request with a body and a second request pipelined",
            b"GET /$status HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /$status HTTP/1.1\r\n\r\n"
                .to_vec(),
            Some(200),
        ),
    ];
    for (i, (name, bytes, want)) in cases.into_iter().enumerate() {
        let got = send_raw(&relay, &bytes).await;
        if let Some(want) = want {
            assert_eq!(got, Some(want), "{name}");
        }
        assert_still_serving(&mut relay, name, &format!("after-request-{i}")).await;
    }
    let log = relay.log();
    assert!(!log.contains("panicked"), "{log}");
}

/// Where a frame case is sent.
#[derive(Debug, Clone, Copy)]
enum Leg {
    /// On a listener's control channel (tungstenite on the relay's side).
    Control,
    /// On a relayed connection's sender leg (the relay's own frame pump).
    Relayed,
}

#[tokio::test]
async fn broken_frames_and_control_messages_never_end_the_relay() {
    let mut relay = Relay::start("max_control_message = 65536");
    let long_reason = format!("{}{}", "é".repeat(61), "a");
    let close_with = |reason: &[u8]| {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        payload
    };
    // A key name that is long (but within the 256-character limit) and non-ASCII: the
    // refusal's Close reason quotes it. Two names one byte apart, so that any fixed byte
    // count cuts one of them inside a two-byte character.
    let renew_long_key = |name: String| {
        let forged = format!(
            "SharedAccessSignature sr=http%3A%2F%2F127.0.0.1%2Fhc&sig=AAAA&se=9999999999&skn={name}"
        );
        serde_json::json!({"renewToken": {"token": forged}}).to_string()
    };
    let renew_even = renew_long_key("ключ".repeat(60));
    let renew_odd = renew_long_key(format!("k{}", "ключ".repeat(60)));
    let renew_wrong_key = {
        let tok = token(ROOT, "not-the-key", "hc", 3600);
        serde_json::json!({"renewToken": {"token": tok}}).to_string()
    };
    let fragments = {
        let mut bytes = masked_frame(0x02, 1, b"a");
        for _ in 0..2000 {
            bytes.extend(masked_frame(OP_CONTINUATION, 1, b"\xc3"));
        }
        bytes.extend(masked_frame(FIN | OP_CONTINUATION, 1, b"z"));
        bytes
    };
    let text_fragments = {
        // A text message over max_control_message, its fragments split inside characters.
        let message = "é".repeat(40_000).into_bytes();
        let chunks: Vec<&[u8]> = message.chunks(8191).collect();
        let mut bytes = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let opcode = if i == 0 { OP_TEXT } else { OP_CONTINUATION };
            let fin = if i + 1 == chunks.len() { FIN } else { 0 };
            bytes.extend(masked_frame(fin | opcode, chunk.len() as u64, chunk));
        }
        bytes
    };
    // (name, where, bytes after the upgrade, whether the relay must answer with a Close
    // carrying this code)
    let cases: Vec<(&str, Leg, Vec<u8>, Option<u16>)> = vec![
        (
            "renewToken with a long non-ASCII key name",
            Leg::Control,
            whole_frame(OP_TEXT, renew_even.as_bytes()),
            Some(1008),
        ),
        (
            "renewToken with a long non-ASCII key name, shifted by a byte",
            Leg::Control,
            whole_frame(OP_TEXT, renew_odd.as_bytes()),
            Some(1008),
        ),
        (
            "renewToken signed with the wrong key",
            Leg::Control,
            whole_frame(OP_TEXT, renew_wrong_key.as_bytes()),
            Some(1008),
        ),
        (
            "a control message that is not JSON, in invalid UTF-8",
            Leg::Control,
            whole_frame(OP_TEXT, b"{\xff\xfe\"renewToken\""),
            None,
        ),
        (
            "a Close with a long non-ASCII reason (control)",
            Leg::Control,
            whole_frame(OP_CLOSE, &close_with(long_reason.as_bytes())),
            None,
        ),
        (
            "a Close whose reason is cut inside a character (control)",
            Leg::Control,
            whole_frame(OP_CLOSE, &close_with(&"é".as_bytes()[..1].repeat(3))),
            None,
        ),
        (
            "a Close with a long non-ASCII reason (relayed)",
            Leg::Relayed,
            whole_frame(OP_CLOSE, &close_with(long_reason.as_bytes())),
            None,
        ),
        (
            "a Close longer than a control frame may be (relayed)",
            Leg::Relayed,
            whole_frame(OP_CLOSE, &close_with("é".repeat(100).as_bytes())),
            Some(1002),
        ),
        (
            "a one-byte Close payload (control)",
            Leg::Control,
            whole_frame(OP_CLOSE, b"\x03"),
            None,
        ),
        (
            "a frame declaring 2^63 bytes (relayed)",
            Leg::Relayed,
            masked_frame(0x82, 1 << 63, b"tiny"),
            Some(1002),
        ),
        (
            "a frame declaring 2^63 bytes (control)",
            Leg::Control,
            masked_frame(0x81, 1 << 63, b"tiny"),
            None,
        ),
        (
            "a frame declaring 2^62 bytes, then the sender goes (relayed)",
            Leg::Relayed,
            masked_frame(0x82, 1 << 62, &[7u8; 64 * 1024]),
            None,
        ),
        (
            "a frame declaring 2^40 bytes (control)",
            Leg::Control,
            masked_frame(0x81, 1 << 40, b"{"),
            Some(1009),
        ),
        (
            "a 1 MiB binary message (control)",
            Leg::Control,
            whole_frame(0x02, &vec![0u8; 1 << 20]),
            Some(1009),
        ),
        (
            "2000 one-byte binary fragments (relayed)",
            Leg::Relayed,
            fragments.clone(),
            None,
        ),
        (
            "2000 one-byte fragments (control)",
            Leg::Control,
            fragments,
            None,
        ),
        (
            "a fragmented text message over the limit, split inside characters (control)",
            Leg::Control,
            text_fragments,
            Some(1009),
        ),
        (
            "a fragmented Ping (relayed)",
            Leg::Relayed,
            masked_frame(OP_PING, 2, b"hi"),
            Some(1002),
        ),
        (
            "reserved bits and an unknown opcode (control)",
            Leg::Control,
            masked_frame(0xF3, 3, b"???"),
            Some(1002),
        ),
        (
            "a fragmented Ping (control)",
            Leg::Control,
            masked_frame(OP_PING, 2, b"hi"),
            Some(1002),
        ),
        (
            "a text message that is not UTF-8 (control)",
            Leg::Control,
            whole_frame(0x01, b"{\"renewToken\xff\xfe"),
            Some(1007),
        ),
        (
            "reserved bits and an unknown opcode (relayed)",
            Leg::Relayed,
            masked_frame(0xF3, 3, b"???"),
            Some(1002),
        ),
        (
            "garbage bytes (control)",
            Leg::Control,
            "\u{1F600}\u{1F600} garbage é".as_bytes().to_vec(),
            None,
        ),
        (
            "garbage bytes (relayed)",
            Leg::Relayed,
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
            None,
        ),
    ];
    for (i, (name, leg, bytes, want_close)) in cases.into_iter().enumerate() {
        let path = format!("frames-{i}");
        let tok = token(ROOT, KEY, &path, 3600);
        let header = [("ServiceBusAuthorization", tok.as_str())];
        let (mut victim, _keep) = match leg {
            Leg::Control => (
                RawWs::connect(&relay.url(&path, "listen"), &header).await,
                None,
            ),
            Leg::Relayed => {
                let mut control = listen(&relay, &path).await;
                let url = relay.url(&path, "connect");
                let header = tok.clone();
                let sender = tokio::spawn(async move {
                    RawWs::connect(&url, &[("ServiceBusAuthorization", &header)]).await
                });
                let accept = next_accept(&mut control).await;
                let address = accept["accept"]["address"].as_str().expect("address");
                let data = open(request(address, None)).await.expect("rendezvous");
                let sender = sender.await.expect("sender task");
                (sender, Some((control, data)))
            }
        };
        victim.send_bytes(&bytes).await;
        if let Some(code) = want_close {
            let payload = victim.recv_close().await;
            let got = payload
                .as_deref()
                .and_then(|p| p.get(..2))
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            assert_eq!(got, Some(code), "{name}: {payload:?}");
            if let Some(reason) = payload.as_deref().and_then(|p| p.get(2..)) {
                assert!(reason.len() <= 123, "{name}");
                assert!(std::str::from_utf8(reason).is_ok(), "{name}: {reason:?}");
            }
        }
        drop(victim);
        assert_still_serving(&mut relay, name, &format!("after-frames-{i}")).await;
    }
    // A listener that broke the protocol is named so in the log, not as one that left.
    let log = relay
        .log_containing("listener disconnected: ProtocolViolation")
        .await;
    assert!(!log.contains("panicked"), "{log}");
}

/// Idle connections of the flood.
const IDLE_CONNECTIONS: usize = 1500;
/// The flood relay's handshake deadline (short, so the test is).
const FLOOD_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a new tunnel may take to open and echo during the flood.
const TUNNEL_UNDER_FLOOD: Duration = Duration::from_secs(5);
/// Scheduling slack on top of a deadline the relay enforces.
const SLACK: Duration = Duration::from_secs(3);

#[tokio::test]
async fn an_idle_flood_and_a_slowloris_leave_new_tunnels_and_status_working() {
    raise_fd_limit();
    let mut relay = Relay::start(&format!(
        "handshake_timeout = \"{}s\"",
        FLOOD_HANDSHAKE_TIMEOUT.as_secs()
    ));
    let flood_started = Instant::now();
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    for _ in 0..IDLE_CONNECTIONS {
        idle.push(TcpStream::connect(relay.addr).await.expect("connect idle"));
    }
    let flood_opened = Instant::now();

    // The slowloris, after the flood (so it is among the newest pending handshakes and
    // meets the deadline rather than an eviction): a header byte every second, never
    // the end of the head.
    let slow_addr = relay.addr;
    let slowloris = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(slow_addr).await.expect("connect");
        let started = Instant::now();
        let _ = tcp
            .write_all(b"GET /$hc/slow?sb-hc-action=listen HTTP/1.1\r\nX-Slow: ")
            .await;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // Bounded: the relay must cut it well before this many bytes.
        for _ in 0..60 {
            tick.tick().await;
            if tcp.write_all(b"a").await.is_err() {
                break;
            }
            let mut probe = [0u8; 1];
            let probe = tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut probe));
            if let Ok(Ok(0) | Err(_)) = probe.await {
                break;
            }
        }
        started.elapsed()
    });

    // A new authenticated tunnel opens and echoes within seconds, and /$status answers.
    let tunnel = async {
        let mut control = listen(&relay, "under-flood").await;
        let (mut sender, mut data) = rendezvous(&relay, &mut control, "under-flood").await;
        assert_relays(&mut sender, &mut data, b"through the flood").await;
        assert_relays(&mut data, &mut sender, b"and back").await;
        (control, sender, data)
    };
    let (mut control, mut sender, mut data) = tokio::time::timeout(TUNNEL_UNDER_FLOOD, tunnel)
        .await
        .expect("a new tunnel echoes within seconds during the flood");
    let status = tokio::time::timeout(TUNNEL_UNDER_FLOOD, relay.status())
        .await
        .expect("/$status answers during the flood");
    assert!(
        status["handshakes"].as_u64().is_some_and(|n| n <= 1024),
        "{status}"
    );

    // Every idle connection is closed by the relay, at the latest at the deadline.
    let closes = idle.into_iter().map(|mut tcp| async move {
        let mut buf = [0u8; 16];
        match tokio::time::timeout(FLOOD_HANDSHAKE_TIMEOUT + SLACK, tcp.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    });
    let closed = futures_util::future::join_all(closes).await;
    let still_open = closed.iter().filter(|c| !**c).count();
    assert_eq!(still_open, 0, "idle connections the relay never closed");
    assert!(
        flood_opened.elapsed() < FLOOD_HANDSHAKE_TIMEOUT + 2 * SLACK,
        "idle connections outlived the handshake deadline (flood took {:?} to open)",
        flood_opened - flood_started
    );
    let slow_for = tokio::time::timeout(DEADLINE + DEADLINE, slowloris)
        .await
        .expect("slowloris ended")
        .expect("slowloris task");
    assert!(
        slow_for >= FLOOD_HANDSHAKE_TIMEOUT.saturating_sub(Duration::from_millis(500))
            && slow_for <= FLOOD_HANDSHAKE_TIMEOUT + SLACK,
        "the slowloris was cut after {slow_for:?}, not at the {FLOOD_HANDSHAKE_TIMEOUT:?} deadline"
    );

    // The tunnel opened during the flood still works, and so does a new one.
    assert_relays(&mut sender, &mut data, b"after the flood").await;
    control
        .send(Message::Ping(b"alive".to_vec().into()))
        .await
        .expect("ping");
    assert_still_serving(&mut relay, "the flood", "after-flood").await;
    let log = relay.log_containing("relay serve: overloaded:").await;
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.matches("relay serve: overloaded:").count() <= 3,
        "overload warnings are not rate-limited:\n{log}"
    );
}

/// A peer sent a Close that never answers (nor sends anything) is dropped at its
/// deadline: a listener told its renewal was refused (`CLOSE_HANDSHAKE_TIMEOUT`), and the
/// listener side of a relayed connection whose sender closed (`half_close_timeout`).
#[tokio::test]
async fn a_peer_that_never_answers_a_close_is_dropped_at_the_deadline() {
    use amlx_agent::relay::server::CLOSE_HANDSHAKE_TIMEOUT;
    const HALF_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
    let mut relay = Relay::start(&format!(
        "half_close_timeout = \"{}s\"",
        HALF_CLOSE_TIMEOUT.as_secs()
    ));
    let renew_refused = async {
        let tok = token(ROOT, KEY, "mute-listener", 3600);
        let url = relay.url("mute-listener", "listen");
        let mut mute = RawWs::connect(&url, &[("ServiceBusAuthorization", &tok)]).await;
        let renew = serde_json::json!({"renewToken": {"token": token(ROOT, "wrong", "mute-listener", 3600)}});
        mute.send(OP_TEXT, renew.to_string().as_bytes()).await;
        let close = mute.recv_close().await.expect("the relay's Close");
        assert_eq!(close.get(..2), Some(&1008u16.to_be_bytes()[..]));
        let told = Instant::now();
        // Never answered: the relay hangs up at the deadline.
        let ended = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT + SLACK, mute.recv()).await;
        assert!(matches!(ended, Ok(None)), "still open: {ended:?}");
        told.elapsed()
    };
    let relayed_close_unanswered = async {
        let path = "mute-relayed";
        let mut control = listen(&relay, path).await;
        let (mut sender, mut mute) = raw_rendezvous(&relay, &mut control, path).await;
        sender.send(OP_CLOSE, &1000u16.to_be_bytes()).await;
        assert_eq!(
            mute.recv_close().await.as_deref(),
            Some(&1000u16.to_be_bytes()[..])
        );
        let told = Instant::now();
        let ended = tokio::time::timeout(HALF_CLOSE_TIMEOUT + SLACK, mute.recv()).await;
        assert!(matches!(ended, Ok(None)), "still open: {ended:?}");
        // The sender, still waiting for the other half, is told it went away.
        assert_eq!(
            sender
                .recv_close()
                .await
                .as_deref()
                .and_then(|c| c.get(..2)),
            Some(&1001u16.to_be_bytes()[..])
        );
        told.elapsed()
    };
    let (control_after, relayed_after) = tokio::join!(renew_refused, relayed_close_unanswered);
    let cases = [
        ("control", control_after, CLOSE_HANDSHAKE_TIMEOUT),
        ("relayed", relayed_after, HALF_CLOSE_TIMEOUT),
    ];
    for (what, after, deadline) in cases {
        assert!(
            after + Duration::from_millis(500) >= deadline,
            "{what}: dropped after {after:?}, before the {deadline:?} deadline"
        );
    }
    assert_still_serving(&mut relay, "unanswered Closes", "after-mute").await;
}

/// A listener's token may be signed to expire at any second, `u64::MAX` included (the
/// signature is valid; only the clock cannot add it to now): the listener is served
/// until then like any other, at connect and at `renewToken`, and nothing panics.
#[tokio::test]
async fn a_token_signed_to_expire_beyond_any_clock_is_served_like_any_other() {
    let mut relay = Relay::start("");
    let path = "far-expiry";
    let far = |expiry: u64| token_expiring_at(ROOT, KEY, path, expiry);
    for expiry in [u64::MAX, u64::MAX / 2, 99_999_999_999] {
        let tok = far(expiry);
        let mut control = open(request(&relay.url(path, "listen"), Some(&tok)))
            .await
            .unwrap_or_else(|status| panic!("se={expiry}: refused with {status}"));
        let (mut sender, mut data) = rendezvous(&relay, &mut control, path).await;
        assert_relays(&mut sender, &mut data, b"before the renewal").await;
        let renew = serde_json::json!({"renewToken": {"token": far(u64::MAX)}}).to_string();
        control
            .send(Message::Text(renew.into()))
            .await
            .expect("send renewToken");
        let (mut sender, mut data) = rendezvous(&relay, &mut control, path).await;
        assert_relays(&mut data, &mut sender, b"after the renewal").await;
        relay.assert_alive(&format!("a listener token with se={expiry}"));
    }
    let log = relay.log();
    assert!(!log.contains("panicked"), "{log}");
}

/// Text a client chose (its tracking id, its path) reaches the log before anyone has
/// authenticated it: a newline cannot start a forged line, nor a carriage return or a
/// terminal escape reach the log raw.
#[tokio::test]
async fn a_client_cannot_forge_a_line_of_the_log() {
    const FORGED: &str = "2026-01-01T00:00:00.000000Z ERROR relay serve: FORGED";
    let mut relay = Relay::start("");
    let id = "x%0A2026-01-01T00:00:00.000000Z%20ERROR%20relay%20serve:%20FORGED%0D%1B%5B31m";
    let target = format!(
        "/$hc/hc%0A{}?sb-hc-action=connect&sb-hc-id={id}",
        "p%E2%80%AE"
    );
    let status = send_raw(&relay, &upgrade_to(target.as_bytes(), b"")).await;
    assert_eq!(status, Some(401), "no token");
    let log = relay.log_containing("refused").await;
    for line in log.lines() {
        assert!(!line.starts_with(FORGED), "a forged line:\n{log}");
        assert!(!line.contains(['\r', '\u{1b}', '\u{202e}']), "{line:?}");
    }
    assert!(
        log.contains("x\\n2026-01-01T00:00:00.000000Z ERROR"),
        "{log}"
    );
    relay.assert_alive("a forged tracking id");
}

/// A sender that stops reading while its listener sends, then the listener vanishes
/// (reset, control channel gone): the relay drops the pair once a frame has waited
/// `stalled_write_timeout` to be written, instead of holding both slots for as long as
/// the sender keeps its socket.
#[tokio::test]
async fn a_sender_that_stops_reading_does_not_hold_the_pair_after_the_listener_left() {
    const STALLED_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
    let relay = Relay::start(&format!(
        "stalled_write_timeout = \"{}s\"",
        STALLED_WRITE_TIMEOUT.as_secs()
    ));
    let path = "deaf-sender";
    let mut control = listen(&relay, path).await;
    // The sender never reads from here on.
    let (deaf, mut data) = raw_rendezvous(&relay, &mut control, path).await;
    relay.wait_status("relayed", 1).await;
    let chunk = vec![0x5a; 60_000];
    let mut blocked = false;
    for _ in 0..4000 {
        let sent = tokio::time::timeout(Duration::from_millis(300), data.send(OP_BINARY, &chunk));
        if sent.await.is_err() {
            blocked = true;
            break;
        }
    }
    assert!(
        blocked,
        "every buffer took 240 MB: the sender was read after all"
    );
    drop(data);
    drop(control);
    let left = Instant::now();
    relay.wait_status("relayed", 0).await;
    assert!(
        left.elapsed() < STALLED_WRITE_TIMEOUT + SLACK,
        "the pair stayed {:?}",
        left.elapsed()
    );
    drop(deaf);
}

/// A listener that sends Pings on its control channel and never reads the Pongs: the
/// relay holds a bounded amount of them (tungstenite's default write buffer is unlimited,
/// and 40 MB of Pings grew the relay by 30 MB), and stays up for everyone else.
#[tokio::test]
async fn pings_on_a_control_channel_that_is_never_read_cost_the_relay_bounded_memory() {
    // Without the bound the relay grew by about 30 MB here (the rest sits in socket buffers).
    const MOST_GROWTH_KIB: u64 = 12 * 1024;
    let mut relay = Relay::start("");
    let path = "deaf-listener";
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    // A small receive buffer: the Pongs back up in the relay, not in our kernel.
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket.connect(relay.addr).await.expect("connect");
    let tok = token(ROOT, KEY, path, 3600);
    let url = relay.url(path, "listen");
    let mut listener = RawWs::upgrade(tcp, &url, &[("ServiceBusAuthorization", &tok)]).await;
    let before = relay.rss_kib();
    let ping = masked_frame(FIN | OP_PING, 125, &[b'P'; 125]);
    let burst: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 8000)
        .collect();
    // 40 MB of Pings, each burst bounded: the relay keeps reading its control channel.
    for _ in 0..40 {
        tokio::time::timeout(DEADLINE, listener.send_bytes(&burst))
            .await
            .expect("the relay kept reading Pings");
    }
    // The relay may still be answering the last bursts: take the largest of a few looks.
    let mut grown = 0;
    for _ in 0..10 {
        grown = grown.max(relay.rss_kib().saturating_sub(before));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        grown < MOST_GROWTH_KIB,
        "the relay grew by {grown} KiB holding Pongs nobody reads"
    );
    assert_still_serving(
        &mut relay,
        "a Ping flood on a deaf control channel",
        "after-pings",
    )
    .await;
    drop(listener);
}

/// The relay arms TCP keepalive on what it accepts (30 s idle, then probes), so a
/// listener or a relayed end that vanished without a FIN (a partition, a host gone) is
/// dropped by the kernel instead of being held until its token expires or for good.
#[tokio::test]
async fn accepted_connections_are_probed_when_silent() {
    /// Clock ticks per second in /proc/net/tcp (USER_HZ).
    const TICKS: u64 = 100;
    let relay = Relay::start("");
    let control = listen(&relay, "probed").await;
    let client = match control.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.local_addr().expect("local address"),
        _ => panic!("a plain ws listener"),
    };
    let (timer, when) = relay.socket_timer(client);
    assert_eq!(timer, 2, "a keepalive timer runs on the relay's end");
    assert!(
        when <= 30 * TICKS,
        "the first probe comes within 30 s of silence, not {when} ticks"
    );
    drop(control);
}

/// A client whose connection string lost a `;` signs with its key as the key name: the
/// relay's 401 and its log say the name is unknown without repeating it (they used to
/// echo it, spreading the secret to the log and anyone reading the reply).
#[tokio::test]
async fn a_key_sent_as_a_key_name_is_not_echoed() {
    const PASTED_KEY: &str = "c2VjcmV0LXBhc3RlZC1hcy1hLWtleS1uYW1lIQ==";
    let mut relay = Relay::start("");
    let hex_key = "3f9a1c2e7b4d5a6f".repeat(4);
    let cases = [
        (PASTED_KEY, false, "a base64 key"),
        (hex_key.as_str(), false, "a hex key, no '=' to give it away"),
        ("nobody", true, "a plausible name"),
    ];
    for (name, echoed, what) in cases {
        let tok = token(name, KEY, "hc", 3600);
        let head = format!(
            "GET /$hc/hc?sb-hc-action=connect&sb-hc-token={} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            enc(&tok)
        );
        let (status, reason, body) = http(relay.addr, &head).await;
        assert_eq!(status, 401, "{what}: {reason} {body}");
        let reply = format!("{reason} {body}");
        assert!(
            reply.contains("is not known to this relay"),
            "{what}: {reply}"
        );
        assert_eq!(reply.contains(name), echoed, "{what}: {reply}");
    }
    // The first refusal from a peer is logged (repeats are counted, not logged).
    let log = relay.log_containing("is not known").await;
    assert!(
        log.contains("SAS key name of 40 characters (not shown"),
        "{log}"
    );
    assert!(!log.contains(PASTED_KEY), "{log}");
    relay.assert_alive("a key as a key name");
}

/// One client that never finishes its request head (a slowloris) is cut at the handshake
/// timeout and reported as a slow client, not as the relay being overloaded: nothing was
/// evicted or refused for room.
#[tokio::test]
async fn one_slow_client_is_not_an_overload() {
    let mut relay = Relay::start("handshake_timeout = \"1s\"");
    let mut slow = TcpStream::connect(relay.addr).await.expect("connect");
    slow.write_all(b"GET /$hc/hc?sb-hc-action=listen HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("part of a head");
    let mut out = Vec::new();
    let cut = tokio::time::timeout(DEADLINE, slow.read_to_end(&mut out)).await;
    assert!(cut.is_ok(), "the slow client was not cut");
    let log = relay.log_containing("timed out").await;
    assert!(log.contains("relay serve: slow clients:"), "{log}");
    assert!(!log.contains("overloaded"), "{log}");
    relay.assert_alive("one slow client");
}

/// A sender's path of thousands of segments (it fits the 32 KiB request head) had the
/// relay hash every one of its prefixes while looking for the Hybrid Connection, before it
/// looked at the token: ~56 ms of CPU per request, so anyone, without a key, kept a core
/// busy with a few requests a second and held up every other client's handshake. Only
/// prefixes that can name a Hybrid Connection (260 bytes at most, as Azure's names) are
/// looked up now, and a listener cannot register a longer path that no sender could reach.
#[tokio::test]
async fn a_sender_path_of_thousands_of_segments_costs_the_relay_little() {
    const REQUESTS: usize = 40;
    // Before, 40 such requests cost about 2.2 s of the relay's CPU here.
    const MOST_CPU: Duration = Duration::from_secs(1);
    let mut relay = Relay::start("");
    // The lookup walks the registry: it cost nothing while nobody listened.
    let _listener = listen(&relay, "deep").await;
    let deep = vec!["x"; 15_000].join("/");
    let head = upgrade_to(
        format!("/$hc/deep/{deep}?sb-hc-action=connect").as_bytes(),
        b"",
    );
    let before = cpu_time(relay.pid());
    for _ in 0..REQUESTS {
        // No token: refused, as before; what it costs is the point.
        assert_eq!(send_raw(&relay, &head).await, Some(401));
    }
    let used = cpu_time(relay.pid()).saturating_sub(before);
    assert!(
        used < MOST_CPU,
        "{REQUESTS} requests with deep paths cost the relay {used:?} of CPU"
    );
    // The longest Hybrid Connection path is served; one byte more is refused up front.
    let longest = "a".repeat(260);
    drop(listen(&relay, &longest).await);
    let too_long = "a".repeat(261);
    let root = token(ROOT, KEY, &too_long, 3600);
    let head = upgrade_to(
        format!("/$hc/{too_long}?sb-hc-action=listen").as_bytes(),
        format!("ServiceBusAuthorization: {root}\r\n").as_bytes(),
    );
    assert_eq!(send_raw(&relay, &head).await, Some(400));
    assert_still_serving(&mut relay, "deep sender paths", "after-deep-paths").await;
}

/// User + system CPU time of `pid` so far (`/proc/<pid>/stat`, clock ticks of 1/100 s).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().expect("a number of ticks"))
        .collect();
    Duration::from_millis(fields.iter().sum::<u64>() * 10)
}

/// A listener may renew its token with every message it sends: two listeners renewing in
/// a loop had the relay write 275,000 log lines a second (a disk filled in hours, or
/// journald's rate limit dropping everyone else's lines). A control channel's renewals
/// are logged at most once per interval now, with a count of the rest, and each still
/// takes effect.
#[tokio::test]
async fn a_listener_renewing_in_a_loop_does_not_flood_the_log() {
    const RENEWALS: usize = 500;
    let mut relay = Relay::start("");
    let path = "renewing";
    let mut control = listen(&relay, path).await;
    let renew = serde_json::json!({"renewToken": {"token": token(ROOT, KEY, path, 3600)}});
    for _ in 0..RENEWALS {
        tokio::time::timeout(DEADLINE, control.send(Message::text(renew.to_string())))
            .await
            .expect("the relay kept reading the control channel")
            .expect("send a renewal");
    }
    // The channel handles its messages in order: an accept after them means all were read.
    let (mut sender, mut data) = rendezvous(&relay, &mut control, path).await;
    assert_relays(&mut sender, &mut data, b"after the renewals").await;
    let log = relay.log_containing("control channel token renewed").await;
    let lines = log.matches("control channel token renewed").count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} renewal lines for {RENEWALS} renewals:\n{log}"
    );
    assert_still_serving(&mut relay, "a renewal loop", "after-renewals").await;
}
