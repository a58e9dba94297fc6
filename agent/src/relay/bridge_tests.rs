//! Unit tests for the azbridge preamble.

use super::*;

#[test]
fn request_bytes() {
    assert_eq!(
        encode_request("5678").expect("short"),
        [1, 0, 0, 4, b'5', b'6', b'7', b'8']
    );
    assert_eq!(encode_request("").expect("short"), [1, 0, 0, 0]);
    assert!(matches!(
        encode_request(&"x".repeat(256)),
        Err(BridgeError::NameTooLong(_))
    ));
}

/// The listener's answers, against a scripted sender.
#[tokio::test]
async fn listener_replies_follow_azbridge() {
    use crate::relay::client::tunnel::test_support::tunnel_and_peer;
    use crate::relay::websocket::OpCode;

    let forwards = Forwards::from_ports(&[5678, 5679]);
    // (what the sender writes, in separate messages; the reply bytes before Close)
    /// (sender messages, reply bytes before Close, accepted)
    type Case<'a> = (&'a [&'a [u8]], &'a [u8], bool);
    let cases: &[Case] = &[
        (&[&[1, 0, 0, 4], b"5679"], &[], true),
        (&[&[2, 0, 0, 4], b"5679"], &REPLY_UNKNOWN_VERSION, false),
        (&[&[1, 0, 7, 4], b"5679"], &REPLY_UNKNOWN_VERSION, false),
        (&[&[1, 0, 1, 4], b"5678"], &REPLY_EXPECTED_TCP, false),
        (&[&[1, 0, 0, 3], b"web"], &[], false),
    ];
    for (messages, reply, accepted) in cases {
        let (tunnel, (mut peer_reader, mut peer_writer)) = tunnel_and_peer();
        for m in *messages {
            peer_writer
                .write_frame(OpCode::Binary, m)
                .await
                .expect("write");
        }
        let got = accept(tunnel, &forwards).await.expect("no transport error");
        assert_eq!(got.is_some(), *accepted, "{messages:?}");
        if let Some((tunnel, forward)) = got {
            assert_eq!(forward.port, 5679);
            confirm(&tunnel).await.expect("reply");
            let f = peer_reader
                .read_frame()
                .await
                .expect("read")
                .expect("frame");
            assert_eq!(f.payload, &REPLY_OK_TCP[..]);
            continue;
        }
        let mut bytes = Vec::new();
        let close = loop {
            let f = peer_reader
                .read_frame()
                .await
                .expect("read")
                .expect("frame");
            match f.opcode {
                OpCode::Close => break f,
                _ => bytes.extend_from_slice(&f.payload),
            }
        };
        assert_eq!(bytes, *reply, "{messages:?}");
        assert_eq!(close.close_code().0, close_code::NORMAL);
    }
}

/// The sender's view of each answer.
#[tokio::test]
async fn sender_understands_every_reply() {
    use crate::relay::client::tunnel::test_support::tunnel_and_peer;
    use crate::relay::websocket::OpCode;

    // (the answer, or a Close with this reason instead; what the sender makes of it)
    let cases: &[(Option<[u8; 3]>, &str, &str)] = &[
        (Some(REPLY_OK_TCP), "", "ok"),
        (Some(REPLY_UNKNOWN_VERSION), "", "does not speak"),
        (Some(REPLY_EXPECTED_UDP), "", "as UDP"),
        (Some([9, 9, 9]), "", "instead of [1,0,0]"),
        (None, "", "not forwarded there"),
        // A listener that says why (ours: its target did not answer) is quoted, not
        // guessed at; its text is escaped.
        (
            None,
            "VS Code is not listening",
            "closed the connection before answering: VS Code is not listening",
        ),
        (None, "a\x1b[31mred", "before answering: a\\u{1b}[31mred"),
    ];
    for (reply, reason, expected) in cases {
        let (mut tunnel, (mut peer_reader, mut peer_writer)) = tunnel_and_peer();
        match reply {
            Some(r) => peer_writer
                .write_frame(OpCode::Binary, r)
                .await
                .expect("write"),
            None => peer_writer
                .write_close(close_code::SERVER_ERROR, reason)
                .await
                .expect("write"),
        }
        let got = match open(&mut tunnel, "5678").await {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        assert!(got.contains(expected), "{reply:?}: {got}");
        let request = peer_reader
            .read_frame()
            .await
            .expect("read")
            .expect("frame");
        assert_eq!(request.payload, encode_request("5678").expect("short"));
    }
}

#[test]
fn forward_specs() {
    let cases = [
        ("dbg=127.0.0.1:5678", Some(("dbg", "127.0.0.1", 5678))),
        ("5679=[::1]:5679", Some(("5679", "::1", 5679))),
        ("a=host.example:1", Some(("a", "host.example", 1))),
        ("noequals", None),
        ("a=host", None),
        ("a=host:0", None),
        ("a=host:70000", None),
        ("=host:1", None),
    ];
    for (spec, expected) in cases {
        let got = spec.parse::<Forward>().ok();
        let got = got
            .as_ref()
            .map(|f| (f.name.as_str(), f.host.as_str(), f.port));
        assert_eq!(got, expected, "{spec}");
    }
}

#[test]
fn resolution_follows_azbridge() {
    let one = Forwards::from_ports(&[5678]);
    let two = Forwards::from_ports(&[5678, 5679]);
    let named = Forwards(vec!["dbg=127.0.0.1:1".parse().expect("valid")]);
    let cases: &[(&Forwards, &str, Option<u16>)] = &[
        (&one, "5678", Some(5678)),
        (&one, "9999", Some(5678)),
        (&one, "web", None),
        (&two, "5679", Some(5679)),
        (&two, "9999", None),
        (&named, "dbg", Some(1)),
        (&named, "42", Some(1)),
        (&named, "other", None),
    ];
    for (forwards, name, port) in cases {
        assert_eq!(
            forwards.resolve(name).map(|f| f.port),
            *port,
            "{name} in {forwards:?}"
        );
    }
}

/// The sender's bytes follow the preamble before the answer, and the answer is checked
/// before any byte reaches the local side: a refusal delivers nothing.
#[tokio::test]
async fn sender_sends_early_and_delivers_only_after_an_ok() {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    use crate::relay::client::tunnel::Expect;
    use crate::relay::client::tunnel::test_support::tunnel_and_peer;
    use crate::relay::websocket::OpCode;

    const DEADLINE: Duration = Duration::from_secs(10);
    let cases: &[(Option<[u8; 3]>, Option<&str>)] = &[
        (Some(REPLY_OK_TCP), None),
        (Some(REPLY_UNKNOWN_VERSION), Some("does not speak")),
        (Some([9, 9, 9]), Some("instead of [1,0,0]")),
        (None, Some("not forwarded there")),
    ];
    for (reply, refusal) in cases {
        let (tunnel, (mut peer_reader, mut peer_writer)) = tunnel_and_peer();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let (app, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (mut app, local) = (app.expect("connect"), accepted.expect("accept").0);

        request(&tunnel, "5678").await.expect("preamble");
        let expect = Expect {
            len: REPLY_LEN,
            within: DEADLINE,
            check: Box::new(|answer, closed_with| {
                check_reply(answer, closed_with, "5678").map_err(io::Error::other)
            }),
        };
        let splice = tokio::spawn(tunnel.splice_after(local, expect));
        app.write_all(b"early").await.expect("write");
        let mut seen = Vec::new();
        while seen.len() < encode_request("5678").expect("short").len() + 5 {
            let frame = tokio::time::timeout(DEADLINE, peer_reader.read_frame())
                .await
                .expect("in time")
                .expect("read")
                .expect("frame");
            seen.extend_from_slice(&frame.payload);
        }
        assert!(
            seen.ends_with(b"early"),
            "{reply:?}: sent before the answer"
        );
        match reply {
            Some(r) => {
                let mut bytes = r.to_vec();
                bytes.extend_from_slice(b"late");
                peer_writer
                    .write_frame(OpCode::Binary, &bytes)
                    .await
                    .expect("write");
            }
            None => peer_writer
                .write_close(close_code::NORMAL, "")
                .await
                .expect("write"),
        }
        let ended = tokio::time::timeout(DEADLINE, async {
            match refusal {
                None => {
                    let mut got = [0u8; 4];
                    app.read_exact(&mut got).await.expect("read");
                    assert_eq!(&got, b"late", "only what follows the answer");
                    peer_writer
                        .write_close(close_code::NORMAL, "")
                        .await
                        .expect("write");
                    app.shutdown().await.expect("half-close");
                    splice.await.expect("joined").map(|_| ())
                }
                Some(_) => {
                    let result = splice.await.expect("joined");
                    let mut got = Vec::new();
                    let _ = app.read_to_end(&mut got).await;
                    assert!(got.is_empty(), "{reply:?}: delivered {got:?}");
                    result.map(|_| ())
                }
            }
        })
        .await
        .expect("splice ends in time");
        match (refusal, ended) {
            (None, Ok(())) => {}
            (Some(want), Err(e)) => assert!(e.to_string().contains(want), "{reply:?}: {e}"),
            (want, got) => panic!("{reply:?}: wanted {want:?}, got {got:?}"),
        }
    }
}
