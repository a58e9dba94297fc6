//! Spare tunnels: the pool's hand-over and a spare's watch while it waits.

use tokio::io::AsyncWriteExt as _;

use super::*;
use crate::relay::client::tunnel::test_support::tunnel_and_peer;
use crate::relay::websocket::{OpCode, close_code as ws_close};

#[test]
fn a_spare_is_known_by_its_query_argument_only() {
    let cases = [
        (
            "ws://h:1/$hc/hc/5678?amlx-spare=1&sb-hc-action=accept",
            true,
        ),
        ("wss://h/$hc/hc/5678?sb-hc-action=accept&amlx-spare=", true),
        ("wss://h/$hc/hc/5678?sb-hc-action=accept", false),
        ("wss://h/$hc/hc/amlx-spare?x=amlx-spare", false),
        ("wss://h/$hc/hc/5678?amlx-sparex=1", false),
        ("not a url amlx-spare=1", false),
        ("", false),
    ];
    for (address, spare) in cases {
        assert_eq!(is_spare(address), spare, "{address}");
    }
}

#[tokio::test]
async fn an_empty_pool_gives_nothing_and_replaced_offers_do_not_pile_up() {
    let spares = Spares::default();
    assert!(spares.take().await.is_none());
    for _ in 0..1000 {
        drop(spares.offer());
    }
    let _asked = spares.offer();
    assert_eq!(spares.ready.lock().expect("not poisoned").len(), 1);
    assert_eq!(spares.waiting(), 1);
}

#[tokio::test]
async fn a_taker_skips_offers_whose_keeper_moved_on() {
    let spares = Arc::new(Spares::default());
    let live = spares.offer();
    drop(spares.offer()); // newest, replaced already
    let (tunnel, _peer) = tunnel_and_peer();
    let keeper = tokio::spawn(async move {
        let handover = live.await.expect("asked");
        assert!(handover.send(tunnel).is_ok());
    });
    let taken = tokio::time::timeout(Duration::from_secs(5), spares.take()).await;
    assert!(
        matches!(taken, Ok(Some(_))),
        "the live spare was not handed over"
    );
    keeper.await.expect("keeper");
    assert!(spares.take().await.is_none(), "one spare, taken once");
}

#[tokio::test]
async fn a_waiting_spare_answers_pings_and_is_handed_back_unused() {
    let (tunnel, (mut peer_reader, mut peer_writer)) = tunnel_and_peer();
    let (stop, stopped) = oneshot::channel::<u8>();
    let waiting = tokio::spawn(tunnel.idle_until(stopped));
    peer_writer
        .write_frame(OpCode::Ping, b"are you there")
        .await
        .expect("ping");
    let pong = peer_reader
        .read_frame()
        .await
        .expect("read")
        .expect("frame");
    assert_eq!(pong.opcode, OpCode::Pong);
    assert_eq!(&pong.payload[..], b"are you there");
    peer_writer
        .write_frame(OpCode::Pong, b"")
        .await
        .expect("pong");
    stop.send(7).expect("stop");
    let (tunnel, out) = waiting.await.expect("task").expect("still usable");
    assert_eq!(out.expect("sent"), 7);
    // Nothing was sent but the Pong: the preamble can still go first.
    tunnel.write(b"\x01\x00\x00").await.expect("write");
    let first = peer_reader
        .read_frame()
        .await
        .expect("read")
        .expect("frame");
    assert_eq!(first.opcode, OpCode::Binary);
    assert_eq!(&first.payload[..], b"\x01\x00\x00");
}

/// What ends a spare before use, and how it is closed.
#[tokio::test]
async fn a_spare_dies_when_the_peer_closes_sends_bytes_or_goes() {
    enum Peer {
        Close,
        Data,
        Vanish,
        Garbage,
    }
    for (case, expected_close) in [
        (Peer::Close, Some(close_code::NORMAL)),
        (Peer::Data, Some(close_code::POLICY)),
        (Peer::Vanish, None),
        (Peer::Garbage, Some(ws_close::PROTOCOL_ERROR)),
    ] {
        let (tunnel, (mut peer_reader, mut peer_writer)) = tunnel_and_peer();
        let waiting = tokio::spawn(tunnel.idle_until(std::future::pending::<()>()));
        match case {
            Peer::Close => peer_writer.write_close(close_code::GOING_AWAY, "bye").await,
            Peer::Data => peer_writer.write_frame(OpCode::Binary, b"early").await,
            Peer::Vanish => peer_writer.shutdown().await,
            // A frame with a reserved opcode: a protocol error.
            Peer::Garbage => {
                peer_writer
                    .get_mut_for_tests()
                    .write_all(&[0x83, 0x00])
                    .await
            }
        }
        .expect("peer writes");
        let ended = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the spare noticed within the bound")
            .expect("task");
        assert!(ended.is_err(), "a dead spare was handed back");
        if let Some(code) = expected_close {
            let close = peer_reader
                .read_frame()
                .await
                .expect("read")
                .expect("frame");
            assert_eq!(close.opcode, OpCode::Close);
            assert_eq!(close.close_code().0, code);
        }
    }
}
