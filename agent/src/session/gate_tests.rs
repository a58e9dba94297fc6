//! The gate against scripted developers and debuggees over in-memory pipes.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

use super::*;
use crate::session::dap::{DISCONNECT_SETTLE, Framer, MAX_HEADER_BYTES};

fn request(command: &str) -> Vec<u8> {
    let body = format!(r#"{{"seq":1,"type":"request","command":"{command}"}}"#);
    format!("Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// Runs one developer session: `developer_bytes` are sent, then the developer leaves;
/// the debuggee reads until the gate closes its direction (or is dropped), then closes.
async fn session(developer_bytes: Vec<u8>) -> (PumpEnd, GateState, Vec<u8>) {
    answered_session(developer_bytes, None).await
}

/// As [`session`], with a debuggee that answers `configurationDone` with `answer` (none:
/// it never answers) and reads on to the end.
async fn answered_session(
    developer_bytes: Vec<u8>,
    answer: Option<bool>,
) -> (PumpEnd, GateState, Vec<u8>) {
    session_on(GateState::default(), developer_bytes, answer).await
}

/// As [`answered_session`], continuing from `state` (the same debuggee connection, a
/// later developer connection).
async fn session_on(
    mut state: GateState,
    developer_bytes: Vec<u8>,
    answer: Option<bool>,
) -> (PumpEnd, GateState, Vec<u8>) {
    let (mut ours, mut theirs) = duplex(1 << 16);
    let (dev_local, mut dev_remote) = duplex(1 << 16);
    let developer = tokio::spawn(async move {
        dev_remote.write_all(&developer_bytes).await.expect("write");
        dev_remote.shutdown().await.expect("shutdown");
        // Keep reading so the gate's writes towards the developer never block.
        let mut sink = Vec::new();
        let _ = dev_remote.read_to_end(&mut sink).await;
    });
    let debuggee = tokio::spawn(async move {
        let mut framer = Framer::default();
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = theirs.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return received;
            }
            received.extend_from_slice(&buf[..n]);
            let Some(success) = answer else { continue };
            framer.push(&buf[..n]);
            while let Ok(Some(message)) = framer.next_message() {
                if message.request_command().as_deref() == Some("configurationDone") {
                    let body = format!(
                        r#"{{"type":"response","command":"configurationDone","success":{success}}}"#
                    );
                    let reply = format!("Content-Length: {}\r\n\r\n{body}", body.len());
                    theirs.write_all(reply.as_bytes()).await.expect("reply");
                }
            }
        }
    });
    let end = pump(&mut state, &mut ours, dev_local).await;
    drop(ours);
    developer.await.expect("developer task");
    let received = debuggee.await.expect("debuggee task");
    (end, state, received)
}

#[tokio::test]
async fn a_developer_leaving_during_setup_leaves_the_debuggee_at_a_message_boundary() {
    let cases: &[(&str, Vec<u8>, Vec<u8>, &str)] = &[
        (
            "nothing",
            Vec::new(),
            Vec::new(),
            "before sending any request",
        ),
        (
            "after initialize",
            request("initialize"),
            request("initialize"),
            "after \"initialize\"",
        ),
        (
            "after attach, half a message pending",
            [
                request("initialize"),
                request("attach"),
                b"Content-Length: 40\r\n\r\n{\"se".to_vec(),
            ]
            .concat(),
            [request("initialize"), request("attach")].concat(),
            "after \"attach\"",
        ),
        (
            "half a header",
            b"Content-Len".to_vec(),
            Vec::new(),
            "before sending any request",
        ),
    ];
    for (name, sent, expected, progress) in cases {
        let (end, state, received) = session(sent.clone()).await;
        assert!(matches!(end, PumpEnd::LeftDuringSetup), "{name}: {end:?}");
        assert!(!state.configured(), "{name}");
        assert_eq!(&received, expected, "{name}");
        assert_eq!(state.progress(), *progress, "{name}");
    }
}

/// What one developer connection left unfinished (half a message, bytes that are not
/// DAP) never reached the debuggee, and is not the start of the next connection's
/// stream: the next debugger attaches. Before, the framer kept it, and every later
/// debugger was cut off as "not a debugger" until the deadline.
#[tokio::test]
async fn a_bad_or_unfinished_developer_connection_does_not_spoil_the_next() {
    let cases: &[(&str, Vec<u8>)] = &[
        ("binary (a TLS hello)", vec![0x16, 0x03, 0x01, 0x00]),
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("half a header", b"Content-Len".to_vec()),
        (
            "half a message",
            b"Content-Length: 40\r\n\r\n{\"se".to_vec(),
        ),
        ("endless header", vec![b'a'; MAX_HEADER_BYTES + 1]),
    ];
    for (name, first) in cases {
        let (_, state, received) = session(first.clone()).await;
        assert!(received.is_empty(), "{name}: {received:?}");
        let setup = [request("initialize"), request("attach")].concat();
        let (end, state, received) = session_on(state, setup.clone(), None).await;
        assert!(matches!(end, PumpEnd::LeftDuringSetup), "{name}: {end:?}");
        assert_eq!(received, setup, "{name}");
        assert_eq!(state.progress(), "after \"attach\"", "{name}");
    }
}

#[tokio::test]
async fn bytes_that_are_not_dap_are_cut_off() {
    let cases: &[(&str, Vec<u8>)] = &[
        ("binary", vec![0x16, 0x03, 0x01, 0x00]),
        (
            "non-ASCII header",
            "Content-Length: ٣\r\n\r\n".as_bytes().to_vec(),
        ),
        ("no length", b"Content-Type: x\r\n\r\n{}".to_vec()),
        ("endless header", vec![b'a'; MAX_HEADER_BYTES + 1]),
        (
            "huge message",
            b"Content-Length: 999999999999\r\n\r\n".to_vec(),
        ),
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (
            "malformed JSON body",
            b"Content-Length: 5\r\n\r\n{{{{{".to_vec(),
        ),
        (
            "JSON that is not an object",
            b"Content-Length: 2\r\n\r\n[]".to_vec(),
        ),
        (
            "an object without a type",
            b"Content-Length: 9\r\n\r\n{\"seq\":1}".to_vec(),
        ),
        (
            "a bad body after a good request",
            [
                request("initialize"),
                b"Content-Length: 1\r\n\r\n\xff".to_vec(),
            ]
            .concat(),
        ),
    ];
    for (name, sent) in cases {
        let (end, state, received) = session(sent.clone()).await;
        assert!(matches!(end, PumpEnd::NotDap(_)), "{name}: {end:?}");
        // Nothing after the last whole DAP message reaches the debuggee (that one may
        // stay queued when both arrive in one read).
        let good = if name.starts_with("a bad body after") {
            request("initialize")
        } else {
            Vec::new()
        };
        assert!(good.starts_with(&received), "{name}: {received:?}");
        assert!(!state.configured(), "{name}");
    }
}

#[tokio::test]
async fn configuration_done_makes_the_gate_transparent_once_debugpy_accepts_it() {
    let sent = [
        request("initialize"),
        request("attach"),
        request("configurationDone"),
        b"raw bytes after setup".to_vec(),
    ]
    .concat();
    // The developer leaves right after sending: debugpy's answer still decides.
    let (end, state, received) = answered_session(sent.clone(), Some(true)).await;
    assert!(matches!(end, PumpEnd::Finished), "{end:?}");
    assert!(state.configured());
    assert_eq!(received, sent);
}

/// debugpy refuses a `configurationDone` that comes before `attach`: the step is still
/// held, so the gate is not configured and the deadline's release still applies (the
/// sidecar used to count the written request as done, and the step waited for good).
#[tokio::test]
async fn a_refused_configuration_done_leaves_the_step_held_for_the_release() {
    let (end, mut state, received) =
        answered_session(request("configurationDone"), Some(false)).await;
    assert!(matches!(end, PumpEnd::LeftDuringSetup), "{end:?}");
    assert!(!state.configured());
    assert_eq!(received, request("configurationDone"));
    // The deadline's release then gets its own acknowledgement.
    let (mut ours, theirs) = duplex(1 << 16);
    let (debuggee, _closed) = acknowledging_debuggee(theirs, std::time::Duration::ZERO);
    release(&mut state, &mut ours).await.expect("acknowledged");
    assert!(state.configured());
    debuggee.await.expect("debuggee");
}

#[tokio::test]
async fn release_completes_the_setup_and_waits_for_the_acknowledgement() {
    let (end, mut state, _) = session(request("initialize")).await;
    assert!(matches!(end, PumpEnd::LeftDuringSetup));
    // The state carries over to a scripted debuggee that answers configurationDone.
    let (mut ours, mut theirs) = duplex(1 << 16);
    let responder = tokio::spawn(async move {
        let mut framer = Framer::default();
        let mut buf = [0u8; 4096];
        loop {
            let n = theirs.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before configurationDone");
            framer.push(&buf[..n]);
            while let Some(message) = framer.next_message().expect("dap") {
                if message.request_command().as_deref() == Some("configurationDone") {
                    let body =
                        r#"{"type":"response","command":"configurationDone","success":true}"#;
                    let reply = format!("Content-Length: {}\r\n\r\n{body}", body.len());
                    theirs.write_all(reply.as_bytes()).await.expect("reply");
                    return;
                }
            }
        }
    });
    release(&mut state, &mut ours).await.expect("acknowledged");
    assert!(state.configured());
    responder.await.expect("responder");
}

#[tokio::test]
async fn release_without_an_answer_is_bounded() {
    let (mut ours, _theirs) = duplex(1 << 16);
    let mut state = GateState::default();
    let err = release(&mut state, &mut ours).await.expect_err("no answer");
    assert!(matches!(err, ReleaseError::NoAck(_)), "{err}");
}

/// A debuggee that acknowledges configurationDone, reads everything after it (the
/// `disconnect`), waits `linger`, then closes; true once it has closed.
fn acknowledging_debuggee(
    mut theirs: tokio::io::DuplexStream,
    linger: std::time::Duration,
) -> (tokio::task::JoinHandle<()>, std::sync::Arc<AtomicBool>) {
    let closed = std::sync::Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    let task = tokio::spawn(async move {
        let mut framer = Framer::default();
        let mut buf = [0u8; 4096];
        let mut commands = Vec::new();
        let mut acknowledged_at = None;
        while !commands.iter().any(|c: &String| c == "disconnect") {
            let n = theirs.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before disconnect");
            framer.push(&buf[..n]);
            while let Some(message) = framer.next_message().expect("dap") {
                let command = message.request_command().unwrap_or_default();
                if command == "configurationDone" {
                    let body =
                        r#"{"type":"response","command":"configurationDone","success":true}"#;
                    let reply = format!("Content-Length: {}\r\n\r\n{body}", body.len());
                    theirs.write_all(reply.as_bytes()).await.expect("reply");
                    acknowledged_at = Some(tokio::time::Instant::now());
                }
                if command == "disconnect" {
                    // pydevd's disconnect undoes configurationDone for a main thread
                    // that has not yet seen it: it must come after the settle.
                    let at = acknowledged_at.expect("disconnect after configurationDone");
                    assert!(at.elapsed() >= DISCONNECT_SETTLE, "disconnect too soon");
                }
                commands.push(command.to_string());
            }
        }
        tokio::time::sleep(linger).await;
        flag.store(true, Ordering::Release);
    });
    (task, closed)
}

#[tokio::test(start_paused = true)]
async fn release_keeps_the_connection_until_the_debuggee_closes_it() {
    // Closing right after the acknowledgement reset the connection before debugpy had
    // taken the `disconnect`, and the step stayed held.
    let (mut ours, theirs) = duplex(1 << 16);
    let (debuggee, closed) = acknowledging_debuggee(theirs, std::time::Duration::from_millis(500));
    let mut state = GateState::default();
    release(&mut state, &mut ours).await.expect("acknowledged");
    assert!(
        closed.load(Ordering::Acquire),
        "release returned before the debuggee closed"
    );
    debuggee.await.expect("debuggee");
}

#[tokio::test(start_paused = true)]
async fn release_of_a_debuggee_that_never_closes_is_bounded() {
    let (mut ours, theirs) = duplex(1 << 16);
    let (_debuggee, closed) = acknowledging_debuggee(theirs, std::time::Duration::from_secs(3600));
    let mut state = GateState::default();
    let started = tokio::time::Instant::now();
    release(&mut state, &mut ours).await.expect("acknowledged");
    assert!(state.configured());
    assert!(!closed.load(Ordering::Acquire));
    let bound = crate::session::dap::RELEASE_DRAIN_TIMEOUT * 2 + DISCONNECT_SETTLE;
    assert!(started.elapsed() <= bound);
}

fn response(command: &str, success: bool, message: &str) -> Vec<u8> {
    let body = format!(
        r#"{{"seq":9,"type":"response","request_seq":2,"command":"{command}","success":{success},"message":"{message}"}}"#
    );
    format!("Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// debugpy's adapter fails an `attach` without arguments and gives that session the
/// debuggee all the same: a developer who then stays connected holds it from everyone.
/// However debugpy's bytes are cut, the pump passes the refusal on to a developer who
/// stays and ends with it; a successful `attach` answer does not. A developer who left
/// before the refusal came left during its setup (its connection is held, and ended in
/// order when the next developer or the release comes).
#[tokio::test(start_paused = true)]
async fn a_refused_attach_ends_the_pump_after_the_developer_has_the_refusal() {
    let refusal = response("attach", false, "missing 'arguments'");
    let before = response("initialize", true, "");
    let stream = [before.clone(), refusal.clone()].concat();
    // (what debugpy sends, split where, the developer stays connected, how the pump ends)
    let cases: Vec<(Vec<u8>, usize, bool, &str)> = vec![
        (stream.clone(), stream.len(), true, "refused"),
        (stream.clone(), before.len() + 7, true, "refused"),
        (stream.clone(), 3, true, "refused"),
        (stream.clone(), 3, false, "left"),
        (response("launch", false, "no"), 10, true, "refused"),
        (response("attach", true, ""), 10, true, "goes on"),
        (
            response("configurationDone", false, ""),
            10,
            true,
            "goes on",
        ),
    ];
    for (debugpy_says, cut, stays, ends) in cases {
        let (mut ours, mut theirs) = duplex(1 << 16);
        let (dev_local, mut dev_remote) = duplex(1 << 16);
        let setup = [request("initialize"), request("attach")].concat();
        let developer = tokio::spawn(async move {
            dev_remote.write_all(&setup).await.expect("write");
            if !stays {
                dev_remote.shutdown().await.expect("shutdown");
            }
            let mut got = Vec::new();
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                dev_remote.read_to_end(&mut got),
            )
            .await;
            got
        });
        let said = debugpy_says.clone();
        let debuggee = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            let _ = theirs.read(&mut buf).await;
            let (first, second) = said.split_at(cut.min(said.len()));
            theirs.write_all(first).await.expect("first");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            theirs.write_all(second).await.expect("second");
            // Holds its end open: only the gate may end this.
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            drop(theirs);
        });
        let mut state = GateState::default();
        let started = tokio::time::Instant::now();
        let end = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            pump(&mut state, &mut ours, dev_local),
        )
        .await;
        let case = String::from_utf8_lossy(&debugpy_says).into_owned();
        if ends == "left" {
            assert!(
                matches!(end, Ok(PumpEnd::LeftDuringSetup)),
                "{case}: {end:?}"
            );
        } else if ends == "refused" {
            let Ok(PumpEnd::AttachRefused(said)) = end else {
                panic!("{case}: {end:?}");
            };
            assert!(!said.is_empty());
            assert!(started.elapsed() <= REFUSAL_LINGER + std::time::Duration::from_secs(1));
            assert!(
                state.attach_refusal().is_none(),
                "{case}: taken with the end"
            );
            let got = developer.await.expect("developer");
            assert_eq!(got, debugpy_says, "{case}: the developer has every byte");
        } else {
            // Not decided by the answer: the pump goes on (here until cut off).
            assert!(end.is_err(), "{case}: {end:?}");
            developer.abort();
        }
        debuggee.abort();
    }
}

/// A session with debugpy's adapter ends in order: `disconnect` goes out when the
/// developer's `attach` may have bound the debuggee (`initialize` when it sent no request
/// at all), and the end waits for its answer or the adapter's close, bounded when neither
/// comes; then the connection is closed without a reset.
#[tokio::test(start_paused = true)]
async fn a_session_ends_with_an_answered_disconnect_bounded() {
    // (what the developer got to, the request that ends it, the adapter answers, closes or
    // neither, the answer comes after this long)
    let cases = [
        (
            "bound",
            "disconnect",
            "answers",
            std::time::Duration::from_millis(40),
        ),
        (
            "bound",
            "disconnect",
            "closes",
            std::time::Duration::from_millis(40),
        ),
        (
            "bound",
            "disconnect",
            "silent",
            std::time::Duration::from_secs(3600),
        ),
        (
            "nothing",
            "initialize",
            "answers",
            std::time::Duration::from_millis(40),
        ),
        (
            "nothing",
            "initialize",
            "silent",
            std::time::Duration::from_secs(3600),
        ),
    ];
    for (got_to, ends_with, how, after) in cases {
        let (mut ours, mut theirs) = duplex(1 << 16);
        let adapter = tokio::spawn(async move {
            let mut framer = Framer::default();
            let mut buf = [0u8; 4096];
            loop {
                let n = theirs.read(&mut buf).await.unwrap_or(0);
                assert!(n > 0, "{how}: closed before a {ends_with}");
                framer.push(&buf[..n]);
                if let Ok(Some(message)) = framer.next_message() {
                    assert_eq!(message.request_command().as_deref(), Some(ends_with));
                    break;
                }
            }
            tokio::time::sleep(after).await;
            if how == "answers" {
                let answer = [response("output", true, ""), response(ends_with, true, "")].concat();
                theirs.write_all(&answer).await.expect("answer");
            }
            if how != "silent" {
                drop(theirs);
            } else {
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            }
        });
        let mut state = GateState::default();
        if got_to == "bound" {
            state
                .accept(&[request("initialize"), request("attach")].concat())
                .expect("dap");
            state.unsent.clear();
        }
        let started = tokio::time::Instant::now();
        let within = std::time::Duration::from_secs(3);
        end_session(&mut state, &mut ours, within).await;
        let took = started.elapsed();
        match how {
            // The answer's bound, then the graceful close's.
            "silent" => assert_eq!(took, within + CLOSE_DRAIN, "{got_to}"),
            // After the answer the adapter closes (here at once): no wait.
            "answers" => assert_eq!(took, after, "{got_to}"),
            _ => assert_eq!(took, after, "{got_to} {how}"),
        }
        adapter.abort();
    }
}

/// A configured developer gone from an adapter session without `disconnect` has its
/// session ended in order: the gate sends the `disconnect`, holds the lock developers wait
/// on until debugpy answers it, and only then passes the half-close on. One that sent its
/// own `disconnect` gets none added.
#[tokio::test(start_paused = true)]
async fn a_developer_gone_without_disconnect_has_its_session_ended_in_order() {
    let setup = [
        request("initialize"),
        request("attach"),
        request("configurationDone"),
    ]
    .concat();
    for said_goodbye in [false, true] {
        let lock = Arc::new(tokio::sync::RwLock::new(()));
        let (mut ours, mut theirs) = duplex(1 << 16);
        let (dev_local, mut dev_remote) = duplex(1 << 16);
        let mut sent = setup.clone();
        if said_goodbye {
            sent.extend(request("disconnect"));
        }
        let developer = tokio::spawn(async move {
            dev_remote.write_all(&sent).await.expect("write");
            // Gone once the setup is acknowledged (the gate is transparent by then).
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            drop(dev_remote);
        });
        let watching = Arc::clone(&lock);
        let adapter = tokio::spawn(async move {
            let mut framer = Framer::default();
            let mut buf = [0u8; 4096];
            let mut disconnects = 0;
            let mut held_during_answer = None;
            loop {
                let n = theirs.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return (disconnects, held_during_answer);
                }
                framer.push(&buf[..n]);
                while let Ok(Some(message)) = framer.next_message() {
                    let command = message.request_command().unwrap_or_default();
                    if command == "configurationDone" || command == "disconnect" {
                        if command == "disconnect" {
                            disconnects += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            held_during_answer = Some(watching.try_read().is_err());
                        }
                        let reply = response(&command, true, "");
                        theirs.write_all(&reply).await.expect("reply");
                    }
                }
            }
        });
        let mut state = GateState::default();
        state.end_sessions_in_order(Arc::clone(&lock));
        let end = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            pump(&mut state, &mut ours, dev_local),
        )
        .await;
        assert!(matches!(end, Ok(PumpEnd::Finished)), "{end:?}");
        drop(ours);
        developer.await.expect("developer");
        let (disconnects, held) = adapter.await.expect("adapter");
        assert_eq!(disconnects, 1, "said goodbye itself: {said_goodbye}");
        if !said_goodbye {
            assert_eq!(held, Some(true), "developers did not wait for the end");
        }
    }
}
