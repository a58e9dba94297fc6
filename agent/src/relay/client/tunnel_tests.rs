//! Half-close in both directions, against a scripted relay peer over an in-memory pipe
//! and a real local TCP socket.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::test_support::{Peer, tunnel_and_peer};
use super::*;
use crate::relay::websocket::Frame;

/// Bound for every wait in these tests.
const DEADLINE: Duration = Duration::from_secs(10);

/// A connected pair of loopback TCP sockets: (the app's end, the tunnel's end).
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("bound");
    let (app, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (app.expect("connect"), accepted.expect("accept").0)
}

async fn next(peer: &mut Peer) -> Frame {
    tokio::time::timeout(DEADLINE, peer.0.read_frame())
        .await
        .expect("frame within the deadline")
        .expect("valid frame")
        .expect("a frame, not EOF")
}

/// Reads stream bytes from the peer's side until `n` arrived (skipping message boundaries).
async fn read_stream(peer: &mut Peer, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        let f = next(peer).await;
        assert_eq!(f.opcode, OpCode::Binary, "expected data, got {f:?}");
        got.extend_from_slice(&f.payload);
    }
    got
}

/// The peer closes its direction: returns what the app read up to the EOF that became.
async fn peer_closes(peer: &mut Peer, app: &mut TcpStream) -> Vec<u8> {
    peer.1
        .write_close(close_code::NORMAL, "")
        .await
        .expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, app.read_to_end(&mut got))
        .await
        .expect("EOF within the deadline")
        .expect("read");
    got
}

#[tokio::test]
async fn local_eof_sends_close_and_keeps_receiving() {
    let (tunnel, mut peer) = tunnel_and_peer();
    let (mut app, local) = tcp_pair().await;
    let splice = tokio::spawn(tunnel.splice(local));

    app.write_all(b"request").await.expect("write");
    app.shutdown().await.expect("half-close");
    assert_eq!(read_stream(&mut peer, 7).await, b"request");
    let close = next(&mut peer).await;
    assert_eq!(close.opcode, OpCode::Close, "local EOF becomes Close");
    assert_eq!(close.close_code().0, close_code::NORMAL);

    // The reverse direction still flows after our Close (azbridge CloseOutput).
    peer.1.write_frame(OpCode::Ping, b"p").await.expect("write");
    peer.1
        .write_frame(OpCode::Binary, b"resp")
        .await
        .expect("write");
    peer.1
        .write_frame(OpCode::Binary, b"onse")
        .await
        .expect("write");
    let got = peer_closes(&mut peer, &mut app).await;
    assert_eq!(got, b"response");
    let stats = tokio::time::timeout(DEADLINE, splice)
        .await
        .expect("splice ends")
        .expect("task")
        .expect("clean end");
    assert_eq!(
        stats,
        SpliceStats {
            received: 8,
            sent: 7
        }
    );
}

#[tokio::test]
async fn peer_close_shuts_local_write_and_keeps_sending() {
    let (tunnel, mut peer) = tunnel_and_peer();
    let (mut app, local) = tcp_pair().await;
    let splice = tokio::spawn(tunnel.splice(local));

    peer.1
        .write_frame(OpCode::Binary, b"hello")
        .await
        .expect("write");
    let got = peer_closes(&mut peer, &mut app).await;
    assert_eq!(got, b"hello", "peer Close becomes local EOF");

    // No automatic Close answer: our direction is still open.
    app.write_all(b"still talking")
        .await
        .expect("write after peer close");
    assert_eq!(read_stream(&mut peer, 13).await, b"still talking");
    app.shutdown().await.expect("half-close");
    assert_eq!(next(&mut peer).await.opcode, OpCode::Close);
    tokio::time::timeout(DEADLINE, splice)
        .await
        .expect("splice ends")
        .expect("task")
        .expect("clean end");
}

/// The relay closes our peer's direction and then drops the connection while the local
/// side neither sends nor closes: our direction can never be delivered, so the tunnel ends
/// (it had held both sockets, the relay's in CLOSE-WAIT, for as long as the local peer
/// kept its socket).
#[tokio::test]
async fn a_relay_gone_after_its_close_ends_the_tunnel_while_the_local_side_is_silent() {
    let (tunnel, mut peer) = tunnel_and_peer();
    let (mut app, local) = tcp_pair().await;
    let splice = tokio::spawn(tunnel.splice(local));
    assert!(peer_closes(&mut peer, &mut app).await.is_empty());
    drop(peer);
    let result = tokio::time::timeout(DEADLINE, splice)
        .await
        .expect("the tunnel ends although the local side keeps its socket")
        .expect("task");
    let err = result.expect_err("our direction was cut: an error, not a clean end");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    assert!(err.to_string().contains("after its Close"), "{err}");
    // The local side learns it too: its socket is closed (a write draws a reset, the
    // next one fails), not left open.
    let sent = tokio::time::timeout(DEADLINE, async {
        while app.write_all(b"x").await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(sent.is_ok(), "writes to the closed tunnel fail");
}

#[tokio::test]
async fn preamble_bytes_and_stream_share_frames() {
    let (mut tunnel, mut peer) = tunnel_and_peer();
    // One frame holding a 3-byte reply plus the first stream bytes.
    peer.1
        .write_frame(OpCode::Binary, b"\x01\x00\x00abc")
        .await
        .expect("write");
    assert_eq!(
        tunnel.read_exact(3).await.expect("read"),
        Some(vec![1, 0, 0])
    );
    let (mut app, local) = tcp_pair().await;
    let splice = tokio::spawn(tunnel.splice(local));
    let got = peer_closes(&mut peer, &mut app).await;
    assert_eq!(got, b"abc", "bytes after the preamble are not lost");
    drop(app);
    let _ = tokio::time::timeout(DEADLINE, splice)
        .await
        .expect("splice ends");
}

#[tokio::test]
async fn transport_loss_aborts_both_directions() {
    let (tunnel, peer) = tunnel_and_peer();
    let (mut app, local) = tcp_pair().await;
    let splice = tokio::spawn(tunnel.splice(local));
    drop(peer);
    let result = tokio::time::timeout(DEADLINE, splice)
        .await
        .expect("splice ends")
        .expect("task");
    let err = result.expect_err("a transport lost without Close is an error, not a half-close");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(DEADLINE, app.read(&mut buf))
        .await
        .expect("local side sees the end")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn frames_that_break_the_protocol_are_refused_with_their_close_code() {
    use crate::relay::websocket::{MAX_FRAME_LEN, OutFrame, close_code as ws_close};

    // What the peer sends, as (opcode, fin, payload length) frames.
    type Script = &'static [(OpCode, bool, usize)];
    let cases: [(&str, Script, u16); 2] = [
        (
            "a new message inside an unfinished one",
            &[(OpCode::Binary, false, 1), (OpCode::Binary, true, 1)],
            ws_close::PROTOCOL_ERROR,
        ),
        (
            "a frame over the limit",
            &[(OpCode::Binary, true, MAX_FRAME_LEN + 1)],
            ws_close::TOO_BIG,
        ),
    ];
    for (name, script, code) in cases {
        let (mut tunnel, (mut peer_reader, mut peer_writer)) = tunnel_and_peer();
        // The peer writes in its own task: a refused frame is never read to its end.
        let writing = tokio::spawn(async move {
            for (opcode, fin, len) in script {
                let payload = vec![0u8; *len];
                let frame = OutFrame {
                    opcode: *opcode,
                    fin: *fin,
                    payload: &payload,
                };
                if peer_writer.send(frame).await.is_err() {
                    break;
                }
            }
        });
        let err = tokio::time::timeout(DEADLINE, tunnel.read_exact(3))
            .await
            .expect("refused within the deadline")
            .expect_err(name);
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{name}: {err}");
        let close = tokio::time::timeout(DEADLINE, peer_reader.read_frame())
            .await
            .expect("close within the deadline")
            .expect("valid frame")
            .expect("a Close, not EOF");
        assert_eq!(close.opcode, OpCode::Close, "{name}");
        assert_eq!(close.close_code().0, code, "{name}");
        writing.abort();
    }
}

/// A local side that stops reading ends the tunnel within the write bound (the relay
/// side's stall is bounded the same way): nothing holds the task, its sockets and its
/// place under the tunnel cap forever.
#[tokio::test(start_paused = true)]
async fn a_local_side_that_stops_reading_ends_the_tunnel_within_the_bound() {
    let (tunnel, mut peer) = tunnel_and_peer();
    // The app's end is kept open and never read: its pipe fills after 4 KiB.
    let (_app, local) = tokio::io::duplex(4096);
    let splice = tokio::spawn(tunnel.splice(local));
    let frame = vec![0x5A; 16 * 1024];
    for _ in 0..4 {
        peer.1
            .write_frame(OpCode::Binary, &frame)
            .await
            .expect("the relay's write");
    }
    // Paused time runs ahead whenever everything waits, so this costs no real time.
    let ended = tokio::time::timeout(TUNNEL_WRITE_TIMEOUT + DEADLINE, splice)
        .await
        .expect("the splice ended within the bound")
        .expect("the task did not panic");
    let err = ended.expect_err("a stalled local side is an error");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(
        err.to_string().contains("the local side took no bytes"),
        "the error names the stalled side: {err}"
    );
}

/// The bound is on progress, not on a whole piece: a local reader that takes a little
/// every second is never cut off, however long a 64 KiB piece takes it.
#[tokio::test(start_paused = true)]
async fn a_slow_but_reading_local_side_keeps_the_tunnel() {
    let (tunnel, mut peer) = tunnel_and_peer();
    let (mut app, local) = tokio::io::duplex(4096);
    let splice = tokio::spawn(tunnel.splice(local));
    const PIECE: usize = 64 * 1024;
    peer.1
        .write_frame(OpCode::Binary, &vec![0x5A; PIECE])
        .await
        .expect("the relay's write");
    // 512 bytes a second: 128 s for the piece, four times the bound.
    let reader = tokio::spawn(async move {
        let (mut got, mut chunk) = (0usize, [0u8; 512]);
        while got < PIECE {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match app.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        got
    });
    let got = tokio::time::timeout(4 * TUNNEL_WRITE_TIMEOUT + DEADLINE, reader)
        .await
        .expect("the reader finished within its bound")
        .expect("the reader did not panic");
    assert_eq!(got, PIECE, "the slow reader got the whole piece");
    assert!(!splice.is_finished(), "the tunnel is still open");
    splice.abort();
}

/// The peer's Close code tells an ended stream from a cut one: 1000 or no code ends the
/// splice in order (the app reads EOF); any other code fails it, for the caller to reset
/// the local connection.
#[tokio::test]
async fn only_an_orderly_close_ends_the_stream_in_order() {
    let cases: [(&[u8], bool); 6] = [
        (&close_code::NORMAL.to_be_bytes(), true),
        (b"", true),
        (&close_code::GOING_AWAY.to_be_bytes(), false),
        (&close_code::SERVER_ERROR.to_be_bytes(), false),
        (&close_code::POLICY.to_be_bytes(), false),
        (&4000u16.to_be_bytes(), false),
    ];
    for (payload, orderly) in cases {
        let (tunnel, mut peer) = tunnel_and_peer();
        let (mut app, local) = tcp_pair().await;
        let splice = tokio::spawn(tunnel.splice(local));
        peer.1
            .write_frame(OpCode::Binary, b"data")
            .await
            .expect("write");
        peer.1
            .write_frame(OpCode::Close, payload)
            .await
            .expect("write");
        let mut got = [0u8; 4];
        tokio::time::timeout(DEADLINE, app.read_exact(&mut got))
            .await
            .expect("data within the deadline")
            .expect("read");
        assert_eq!(&got, b"data");
        if orderly {
            app.shutdown().await.expect("half-close");
            let done = tokio::time::timeout(DEADLINE, splice)
                .await
                .expect("splice ends")
                .expect("task");
            assert!(done.is_ok(), "{payload:?}: {done:?}");
        } else {
            let err = tokio::time::timeout(DEADLINE, splice)
                .await
                .expect("splice ends")
                .expect("task")
                .expect_err("a cut stream fails the splice");
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{payload:?}");
            assert!(err.to_string().contains("broke (Close"), "{err}");
        }
    }
}

/// A local connection that is reset tells the far side with Close 1011, so it resets its
/// own local connection in turn (a FIN-less end of the transport would read as a relay
/// fault, and the far side's program would see a clean end).
#[tokio::test]
async fn a_local_reset_sends_close_1011() {
    let (tunnel, mut peer) = tunnel_and_peer();
    let (app, local) = tcp_pair().await;
    let splice = tokio::spawn(tunnel.splice(local));
    app.set_zero_linger().expect("SO_LINGER");
    drop(app);
    let close = next(&mut peer).await;
    assert_eq!(close.opcode, OpCode::Close);
    assert_eq!(
        close.close_code(),
        (close_code::SERVER_ERROR, LOCAL_FAILED_REASON.to_owned())
    );
    let err = tokio::time::timeout(DEADLINE, splice)
        .await
        .expect("splice ends")
        .expect("task")
        .expect_err("a reset fails the splice");
    assert!(
        err.to_string().contains("the local connection failed"),
        "{err}"
    );
}
