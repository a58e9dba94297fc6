//! Spare tunnels: the pool's hand-over and a spare's watch while it waits.

use tokio::io::AsyncWriteExt as _;

use std::time::SystemTime;

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
        let spare = Spare {
            tunnel,
            opened: SystemTime::now(),
        };
        assert!(handover.send(spare).is_ok());
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

/// A spare older than its lifetime by the wall clock (a laptop slept with it: tokio's
/// clock did not move) is closed, not handed out; a keeper that does not answer in time
/// is passed over. Either way the connection opens its own tunnel.
#[tokio::test]
async fn stale_spares_and_slow_keepers_are_passed_over() {
    let spares = Arc::new(Spares::default());
    let asked = spares.offer();
    let (tunnel, (mut peer_reader, _peer_writer)) = tunnel_and_peer();
    let keeper = tokio::spawn(async move {
        let handover = asked.await.expect("asked");
        let slept = SystemTime::now() - SPARE_LIFETIME - Duration::from_secs(1);
        let _ = handover.send(Spare {
            tunnel,
            opened: slept,
        });
    });
    assert!(
        spares.take().await.is_none(),
        "a stale spare was handed out"
    );
    keeper.await.expect("keeper");
    let close = tokio::time::timeout(Duration::from_secs(5), peer_reader.read_frame())
        .await
        .expect("closed within the bound")
        .expect("read")
        .expect("frame");
    assert_eq!(close.opcode, OpCode::Close);

    let _silent = spares.offer(); // a keeper stuck in a Pong write never answers
    let began = std::time::Instant::now();
    assert!(spares.take().await.is_none());
    assert!(
        began.elapsed() < SPARE_HANDOVER_TIMEOUT * 5,
        "{:?}",
        began.elapsed()
    );
}

/// What a taken spare's peer (the relay, then the listener) does, and what [`prove`]
/// makes of it. Time is paused: the bounds pass at once when nothing happens.
#[tokio::test(start_paused = true)]
async fn a_taken_spare_is_proven_alive_or_dead_before_any_byte_reaches_the_client() {
    #[derive(Debug, Clone, Copy)]
    enum Peer {
        PongThenAnswer,
        Silent,
        CloseWithoutReason,
        PongThenCloseWithoutReason,
        PongThenLateAnswer,
        CloseWithReason,
        Vanish,
        PongThenSilent,
        PongThenVanish,
        PongThenGarbage,
    }
    #[derive(Debug, PartialEq)]
    enum Seen {
        Answered,
        Failed(&'static str),
        Dead,
    }
    let cases = [
        (Peer::PongThenAnswer, Seen::Answered),
        (Peer::Silent, Seen::Dead),
        (Peer::CloseWithoutReason, Seen::Dead),
        (Peer::PongThenCloseWithoutReason, Seen::Failed("5678")),
        (Peer::PongThenLateAnswer, Seen::Answered),
        (
            Peer::CloseWithReason,
            Seen::Failed("VS Code is not listening"),
        ),
        (Peer::Vanish, Seen::Dead),
        (Peer::PongThenSilent, Seen::Failed("within 60s")),
        // The preamble may have reached the listener: no second tunnel.
        (Peer::PongThenVanish, Seen::Failed("before answering")),
        (Peer::PongThenGarbage, Seen::Failed("during the preamble")),
    ];
    for (peer, expected) in cases {
        let (tunnel, (mut peer_reader, mut peer_writer)) = tunnel_and_peer();
        let proving = tokio::spawn(async move { prove(tunnel, "5678", b"first").await });
        // What reaches the relay: the preamble with the client's bytes, then the Ping.
        let preamble = peer_reader
            .read_frame()
            .await
            .expect("read")
            .expect("preamble");
        assert_eq!(
            &preamble.payload[..],
            b"\x01\x00\x00\x045678first",
            "{peer:?}"
        );
        let ping = peer_reader.read_frame().await.expect("read").expect("ping");
        assert_eq!(ping.opcode, OpCode::Ping, "{peer:?}");
        let pong = ping.payload.clone();
        match peer {
            Peer::PongThenAnswer => {
                peer_writer
                    .write_frame(OpCode::Pong, &pong)
                    .await
                    .expect("pong");
                peer_writer
                    .write_frame(OpCode::Binary, b"\x01\x00\x00")
                    .await
            }
            Peer::Silent => Ok(()),
            Peer::CloseWithoutReason => peer_writer.write_close(close_code::NORMAL, "").await,
            Peer::PongThenCloseWithoutReason => {
                peer_writer
                    .write_frame(OpCode::Pong, &pong)
                    .await
                    .expect("pong");
                peer_writer.write_close(close_code::NORMAL, "").await
            }
            Peer::PongThenLateAnswer => {
                peer_writer
                    .write_frame(OpCode::Pong, &pong)
                    .await
                    .expect("pong");
                tokio::time::sleep(Duration::from_secs(20)).await;
                peer_writer
                    .write_frame(OpCode::Binary, b"\x01\x00\x00")
                    .await
            }
            Peer::CloseWithReason => {
                peer_writer
                    .write_close(close_code::SERVER_ERROR, "VS Code is not listening")
                    .await
            }
            Peer::Vanish => peer_writer.shutdown().await,
            Peer::PongThenSilent => peer_writer.write_frame(OpCode::Pong, &pong).await,
            Peer::PongThenVanish => {
                peer_writer
                    .write_frame(OpCode::Pong, &pong)
                    .await
                    .expect("pong");
                peer_writer.shutdown().await
            }
            Peer::PongThenGarbage => {
                peer_writer
                    .write_frame(OpCode::Pong, &pong)
                    .await
                    .expect("pong");
                // A reserved opcode: the connection breaks with an error.
                peer_writer
                    .get_mut_for_tests()
                    .write_all(&[0x83, 0x00])
                    .await
            }
        }
        .expect("peer writes");
        let proof = tokio::time::timeout(bridge::PREAMBLE_TIMEOUT * 2, proving)
            .await
            .unwrap_or_else(|_| panic!("{peer:?}: not within the bound"))
            .expect("task");
        let seen = match proof {
            Proof::Answered(_) => Seen::Answered,
            Proof::Dead(_) => Seen::Dead,
            Proof::Failed(e) => {
                let text = e.to_string();
                let Seen::Failed(needle) = expected else {
                    panic!("{peer:?}: refused: {text}");
                };
                assert!(text.contains(needle), "{peer:?}: {text}");
                Seen::Failed(needle)
            }
        };
        assert_eq!(seen, expected, "{peer:?}");
        drop(peer_writer);
    }
}

/// An idle keeper whose port's owner is not among the listeners (every one answers 421):
/// a few upgrades per open, opens on the reconnect schedule. It made 20 a second, for
/// ever, with no local connection at all.
#[tokio::test]
async fn an_idle_keeper_does_not_hammer_listeners_for_other_ports() {
    keepers_facing_only_other_ports_make_four_tries_in_3_s(1).await;
}

#[tokio::test]
async fn many_keepers_take_turns_and_cost_what_one_does() {
    // Each keeper on its own schedule made 8 tries at once, again within 0.5 s, then 1 s
    // and 2 s later: 96 to 128 upgrades in 3 s for 4 spares.
    keepers_facing_only_other_ports_make_four_tries_in_3_s(4).await;
}

/// `count` keepers against a relay whose every listener answers 421 (the port's owner is
/// gone): opens at 0 s, then after the schedule's steps (under 0.5 s, 1 s and 2 s, each
/// ±20 %, so the fourth can come at 2.4 s), each of at most
/// [`SPARE_WRONG_LISTENER_ATTEMPTS`] upgrades, whatever the count.
async fn keepers_facing_only_other_ports_make_four_tries_in_3_s(count: u8) {
    use std::sync::atomic::Ordering;

    let (endpoint, upgrades, answering) =
        crate::relay::client::sender::test_support::misdirecting_relay().await;
    let (spares, tracker, shutdown) = (
        Arc::new(Spares::default()),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    keep(
        &spares,
        count,
        &Arc::new(endpoint),
        "5678",
        &tracker,
        &shutdown,
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    shutdown.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .expect("the keeper ends at shutdown");
    answering.abort();
    let made = upgrades.load(Ordering::Relaxed);
    assert!(
        (SPARE_WRONG_LISTENER_ATTEMPTS..=4 * SPARE_WRONG_LISTENER_ATTEMPTS).contains(&made),
        "{made} upgrades in 3 s by {count} keepers"
    );
    assert_eq!(spares.waiting(), 0);
}
