//! The control channel against a scripted listener: undelivered commands, the answer
//! probe, token deadlines, command names in logs.

use super::*;
use crate::relay::server::rendezvous::Decision;
use crate::relay::server::rendezvous::tests::reserved;

/// The relay's end of a listener's control channel over `relay_end`.
async fn control_ws(relay_end: tokio::io::DuplexStream) -> WebSocketStream<Prefixed<BoxIo>> {
    let stream = Prefixed::new(Vec::new(), Box::new(relay_end) as BoxIo);
    let role = tokio_tungstenite::tungstenite::protocol::Role::Server;
    WebSocketStream::from_raw_socket(stream, role, Some(websocket_config(64 * 1024))).await
}

/// A channel on `hc` with a valid token, fed by `commands`.
fn channel(commands: mpsc::Receiver<Queued>, rendezvous: &Rendezvous) -> Channel<'_> {
    Channel {
        path: "hc",
        keys: &[],
        expiry: auth::now() + 3600,
        commands,
        rendezvous,
        answer_timeout: ANSWER,
        ping_interval: QUIET,
        shutdown: CancellationToken::new(),
    }
}

/// The answer timeout of the channels in these tests.
const ANSWER: Duration = Duration::from_secs(10);

/// The silence after which these channels Ping their listener.
const QUIET: Duration = Duration::from_secs(60);

/// The relay's end of a control channel, and a task playing the listener: one that reads
/// (tungstenite answers each Ping as it reads) or one that has stopped (SIGSTOP: its socket
/// still takes bytes). Abort the task when done.
async fn listener_pair(
    reading: bool,
) -> (
    WebSocketStream<Prefixed<BoxIo>>,
    tokio::task::JoinHandle<WebSocketStream<tokio::io::DuplexStream>>,
) {
    let (relay_end, listener_end) = tokio::io::duplex(64 * 1024);
    let role = tokio_tungstenite::tungstenite::protocol::Role::Client;
    let mut listener = WebSocketStream::from_raw_socket(listener_end, role, None).await;
    let reader = tokio::spawn(async move {
        if reading {
            while let Some(Ok(_)) = listener.next().await {}
        } else {
            std::future::pending::<()>().await;
        }
        listener
    });
    (control_ws(relay_end).await, reader)
}

/// A listener that stops while idle (no sender comes) is Pinged after a silence and
/// dropped when it does not answer, freeing its place under the quota; one that reads
/// answers and stays for as long as the relay runs.
#[tokio::test(start_paused = true)]
async fn an_idle_listener_is_pinged_and_dropped_only_when_it_does_not_answer() {
    for reading in [false, true] {
        let (ws, reader) = listener_pair(reading).await;
        let rendezvous = Rendezvous::default();
        let (_tx, rx) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let mut ch = channel(rx, &rendezvous);
        ch.shutdown = shutdown.clone();
        let start = Instant::now();
        let served = async {
            let ended = serve(ws, ch).await;
            (ended, start.elapsed())
        };
        let stop_later = async {
            // Several silences long.
            tokio::time::sleep(QUIET * 5).await;
            shutdown.cancel();
        };
        let ((ended, after), ()) = tokio::join!(served, stop_later);
        if reading {
            assert_eq!(ended, Ended::Shutdown);
        } else {
            assert_eq!(ended, Ended::Unresponsive);
            assert!(after >= QUIET + ANSWER, "{after:?}");
            assert!(after <= QUIET + ANSWER + ANSWER / 10, "{after:?}");
        }
        reader.abort();
    }
}

/// A listener that stops acting (SIGSTOP: its socket still takes bytes) is dropped
/// once the Ping after an accept goes unanswered, and the senders it was sent move on
/// (before: they waited out the rendezvous timeout for a 504). One that reads answers
/// each Ping and stays, however many accepts it is sent.
#[tokio::test(start_paused = true)]
async fn a_listener_that_stops_answering_is_dropped_and_its_senders_move_on() {
    for reading in [false, true] {
        let (ws, reader) = listener_pair(reading).await;
        let rendezvous = Rendezvous::default();
        let (tx, rx) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let mut ch = channel(rx, &rendezvous);
        ch.shutdown = shutdown.clone();
        let mut senders = Vec::new();
        let start = Instant::now();
        let feed = async {
            // Accepts now and then, some while a Ping is out.
            for i in 0..5 {
                let (ticket, decision) = rendezvous.open(&format!("t{i}"), "hc", reserved());
                let queued = Queued {
                    json: format!("{{\"accept\":{i}}}"),
                    rendezvous_id: ticket.id.clone(),
                };
                if tx.send(queued).await.is_err() {
                    break;
                }
                senders.push((ticket, decision));
                tokio::time::sleep(ANSWER / 3).await;
            }
            // Long past the answer timeout, then the relay stops.
            tokio::time::sleep(ANSWER * 3).await;
            shutdown.cancel();
        };
        let served = async {
            let ended = serve(ws, ch).await;
            (ended, start.elapsed())
        };
        let ((ended, after), ()) = tokio::join!(served, feed);
        let want = if reading {
            Ended::Shutdown
        } else {
            Ended::Unresponsive
        };
        assert_eq!(ended, want, "reading: {reading}");
        for (i, (_ticket, decision)) in senders.into_iter().enumerate() {
            let told = tokio::time::timeout(Duration::ZERO, decision).await;
            if reading {
                // Still waiting for its rendezvous (until the relay's shutdown).
                assert!(
                    !matches!(told, Ok(Ok(Decision::Undelivered))),
                    "sender {i}: {told:?}"
                );
            } else {
                assert!(
                    matches!(told, Ok(Ok(Decision::Undelivered))),
                    "sender {i}: {told:?}"
                );
            }
        }
        if !reading {
            // Dropped at the answer timeout after the first accept, with no close
            // handshake to wait out.
            assert!(after <= ANSWER + ANSWER / 10, "{after:?}");
        }
        reader.abort();
    }
}

/// Accept commands queued for a listener that stops reading, or that goes away, reach
/// their senders as undelivered when the channel ends, the one being sent and the
/// ones behind it; the queue takes no more. (Before, they were dropped in silence and
/// their senders waited out the rendezvous timeout, 30 s, for a 504.)
#[tokio::test(start_paused = true)]
async fn commands_a_listener_never_took_reach_their_senders_as_undelivered() {
    for (listener_gone, want) in [(false, Ended::Stuck), (true, Ended::ByListener)] {
        // 64 bytes of room: the first command does not fit.
        let (relay_end, listener_end) = tokio::io::duplex(64);
        if listener_gone {
            drop(listener_end);
        } else {
            std::mem::forget(listener_end);
        }
        let ws = control_ws(relay_end).await;
        let rendezvous = Rendezvous::default();
        let (tx, rx) = mpsc::channel(8);
        let mut senders = Vec::new();
        for i in 0..3 {
            let (ticket, decision) = rendezvous.open(&format!("t{i}"), "hc", reserved());
            let queued = Queued {
                json: "x".repeat(1000),
                rendezvous_id: ticket.id.clone(),
            };
            tx.try_send(queued).expect("room in the queue");
            senders.push((ticket, decision));
        }
        let ended = serve(ws, channel(rx, &rendezvous)).await;
        assert_eq!(ended, want);
        for (i, (_ticket, decision)) in senders.into_iter().enumerate() {
            // Past the rendezvous timeout the sender would have given up anyway.
            let told = tokio::time::timeout(Duration::from_secs(60), decision).await;
            assert!(
                matches!(told, Ok(Ok(Decision::Undelivered))),
                "sender {i} (listener gone: {listener_gone}): {told:?}"
            );
        }
        let late = Queued {
            json: String::new(),
            rendezvous_id: String::new(),
        };
        assert!(tx.try_send(late).is_err(), "the queue is closed");
    }
}

/// The listener's Close has arrived and a command is queued: the command is reported
/// undelivered, not written after the Close (an unordered select did that in about
/// half the rounds, and the sender waited out its rendezvous timeout).
#[tokio::test(start_paused = true)]
async fn a_command_queued_behind_an_arrived_close_is_undelivered() {
    use tokio::io::AsyncWriteExt;
    for round in 0..20 {
        let (relay_end, mut listener_end) = tokio::io::duplex(64 * 1024);
        // A masked Close frame (code 1000, mask key zero) from the listener.
        listener_end
            .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
            .await
            .expect("write close");
        let ws = control_ws(relay_end).await;
        let rendezvous = Rendezvous::default();
        let (tx, rx) = mpsc::channel(8);
        let (ticket, decision) = rendezvous.open("t", "hc", reserved());
        let queued = Queued {
            json: "x".into(),
            rendezvous_id: ticket.id.clone(),
        };
        tx.try_send(queued).expect("room");
        assert_eq!(serve(ws, channel(rx, &rendezvous)).await, Ended::ByListener);
        let told = tokio::time::timeout(Duration::from_secs(60), decision).await;
        assert!(
            matches!(told, Ok(Ok(Decision::Undelivered))),
            "round {round}: {told:?}"
        );
    }
}

#[test]
fn a_token_signed_to_expire_at_any_time_has_a_deadline() {
    let now = auth::now();
    for expiry in [0, now, now + 60, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
        let at = deadline(expiry);
        assert!(at <= Instant::now() + LONGEST_TOKEN_LIFE, "{expiry}");
    }
    let soon = deadline(now + 60);
    assert!(soon <= Instant::now() + Duration::from_secs(61));
}

#[test]
fn names_commands_without_their_content() {
    let cases = [
        (
            r#"{"renewToken":{"token":"SharedAccessSignature sr=a"}}"#,
            "renewToken",
        ),
        (r#"{"someFutureCommand":{"x":1}}"#, "someFutureCommand"),
    ];
    for (text, want) in cases {
        let msg = ControlMessage::parse(text).expect("command");
        assert_eq!(command_name(&msg), want, "{text}");
    }
}
