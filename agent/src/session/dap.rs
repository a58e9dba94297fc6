//! Releasing a debuggee that is waiting for a debugger that never came.
//!
//! debugpy has no bounded wait: `--connect` blocks in pydevd until the IDE says
//! `configurationDone`, and closing its socket does not release it (it waits forever).
//! `--listen --wait-for-client` blocks the same way. What does release both is a
//! debugger that attaches and leaves at once, so at the attach timeout the sidecar
//! plays that debugger: `initialize`, `attach`, `configurationDone`, then, once
//! `configurationDone` is acknowledged and [`DISCONNECT_SETTLE`] has passed,
//! `disconnect` with `terminateDebuggee: false`. This is plain Debug Adapter Protocol,
//! understood by pydevd (connect mode) and by the debugpy adapter (listen mode) alike.
//!
//! Why the pause before `disconnect`: pydevd's `configurationDone` *sets* the event the
//! waiting main thread polls, and its `disconnect` *clears* it again. Sent back to back,
//! both are handled by pydevd's reader thread before a loaded machine schedules the main
//! thread, which then never sees the event and waits forever (seen in debugpy's own
//! logs: both requests answered, the main thread still in
//! `block_until_configuration_done`).
//!
//! `framing` reads DAP messages out of a byte stream; `watch` finds the answers and
//! requests that matter to a session in one.

use std::time::Duration;

mod framing;
mod watch;

pub use framing::{Framer, Head, MAX_HEADER_BYTES, MAX_MESSAGE_BYTES, Message, NotDap};
pub use watch::{AckScanner, Answer, EndWatcher, MAX_REFUSAL_MESSAGE_BYTES, WATCHED_BODY_BYTES};

/// How long to wait for the debuggee to answer before closing the socket anyway.
pub const RELEASE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What the released debuggee is left to before `disconnect` is sent: long enough for
/// its main thread to get the interpreter lock and leave its wait (milliseconds on an
/// idle machine) on a loaded one.
pub const DISCONNECT_SETTLE: Duration = Duration::from_secs(1);

/// The requests that let a waiting debuggee run on, framed as DAP messages; the
/// `disconnect` ([`disconnect_request`]) follows once `configurationDone` is answered.
///
/// ```
/// let bytes = amlx_agent::session::dap::release_requests();
/// let text = String::from_utf8(bytes).unwrap();
/// assert!(text.starts_with("Content-Length: "));
/// assert!(text.contains(r#""command":"configurationDone""#));
/// assert!(!text.contains("disconnect"));
/// // The attach carries arguments: an empty object fails in the debugpy adapter.
/// assert!(text.contains(r#""name":"amlx-agent release""#));
/// ```
pub fn release_requests() -> Vec<u8> {
    let requests = [
        (
            "initialize",
            serde_json::json!({"adapterID": "amlx-agent", "clientID": "amlx-agent"}),
        ),
        // Not `{}`: the debugpy adapter forwards empty arguments as none at all, and
        // pydevd then fails the attach ("missing ... 'arguments'"), which leaves a
        // listening debuggee waiting forever.
        ("attach", serde_json::json!({"name": "amlx-agent release"})),
        ("configurationDone", serde_json::json!({})),
    ];
    let mut out = Vec::new();
    for (seq, (command, arguments)) in (1..).zip(requests) {
        out.extend(request(seq, command, arguments));
    }
    out
}

/// An `initialize` of the agent's own, for an adapter session the developer left before
/// sending any request (see `gate::end_session`).
///
/// ```
/// let text = String::from_utf8(amlx_agent::session::dap::initialize_request()).unwrap();
/// assert!(text.contains(r#""command":"initialize""#));
/// ```
pub fn initialize_request() -> Vec<u8> {
    request(
        1,
        "initialize",
        serde_json::json!({"adapterID": "amlx-agent", "clientID": "amlx-agent"}),
    )
}

/// The `disconnect` that ends the release, leaving the debuggee running.
///
/// ```
/// let text = String::from_utf8(amlx_agent::session::dap::disconnect_request()).unwrap();
/// assert!(text.contains(r#""terminateDebuggee":false"#));
/// ```
pub fn disconnect_request() -> Vec<u8> {
    request(
        4,
        "disconnect",
        serde_json::json!({"terminateDebuggee": false}),
    )
}

/// One DAP request, framed.
fn request(seq: u32, command: &str, arguments: serde_json::Value) -> Vec<u8> {
    framed(
        &serde_json::json!({
            "seq": seq,
            "type": "request",
            "command": command,
            "arguments": arguments,
        })
        .to_string(),
    )
}

/// A DAP message: `body` behind its `Content-Length` header.
fn framed(body: &str) -> Vec<u8> {
    let mut out = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// A failed answer to `request` saying `why` (VS Code shows an answer's `message` to the
/// developer, where a closed connection says only that it closed); `None` when `request`
/// is not a request with a numeric `seq` (nothing to answer).
///
/// ```
/// use amlx_agent::session::dap::{Framer, refusal_response};
/// let mut framer = Framer::default();
/// framer.push(b"Content-Length: 49\r\n\r\n{\"seq\":7,\"type\":\"request\",\"command\":\"initialize\"}");
/// let request = framer.next_message().unwrap().unwrap();
/// let text = String::from_utf8(refusal_response(&request, "debugpy did not start").unwrap()).unwrap();
/// assert!(text.contains(r#""request_seq":7"#) && text.contains(r#""success":false"#));
/// ```
pub fn refusal_response(request: &Message, why: &str) -> Option<Vec<u8>> {
    // As text, as the relay's control messages are read (one parser in the binary).
    let body = std::str::from_utf8(request.body()).ok()?;
    let body: serde_json::Map<String, serde_json::Value> = serde_json::from_str(body).ok()?;
    if body.get("type")?.as_str()? != "request" {
        return None;
    }
    let seq = body.get("seq")?.as_u64()?;
    let command = serde_json::to_string(body.get("command")?.as_str()?).ok()?;
    let message = serde_json::to_string(why).ok()?;
    Some(framed(&format!(
        r#"{{"seq":1,"type":"response","request_seq":{seq},"success":false,"command":{command},"message":{message}}}"#
    )))
}

#[cfg(test)]
mod tests {
    use super::watch::WatchAt;
    use super::*;

    #[test]
    fn messages_split_at_any_byte_come_out_whole() {
        let stream = [
            framed(r#"{"type":"request","command":"initialize"}"#),
            b"Content-Length:2\r\nContent-Type: x\r\n\r\n{}".to_vec(),
            framed(r#"{"type":"request","command":"attach","x":"é"}"#),
        ]
        .concat();
        for cut in 0..=stream.len() {
            let mut framer = Framer::default();
            let mut commands = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                framer.push(part);
                while let Some(message) = framer.next_message().expect("dap") {
                    commands.push(message.request_command());
                }
            }
            assert_eq!(
                commands,
                [
                    Some("initialize".to_owned()),
                    None,
                    Some("attach".to_owned())
                ],
                "cut at {cut}"
            );
            assert_eq!(framer.buffered(), 0);
        }
    }

    #[test]
    fn streams_that_are_not_dap_are_refused_early() {
        let cases: &[(&[u8], NotDap)] = &[
            (b"\x16\x03\x01", NotDap::BadHeaderByte(0x16)),
            ("Content-Length: é".as_bytes(), NotDap::BadHeaderByte(0xc3)),
            (b"Content-Type: x\r\n\r\n", NotDap::MissingLength),
            (b"Content-Length: -1\r\n\r\n", NotDap::MissingLength),
            (
                b"Content-Length: 99999999999999999999999\r\n\r\n",
                NotDap::MissingLength,
            ),
            (
                b"Content-Length: 16777216\r\n\r\n",
                NotDap::TooLarge(16_777_216),
            ),
            // As debugpy reads headers: the exact name, lines ended by CRLF, the last one.
            (b"content-length: 2\r\n\r\n", NotDap::MissingLength),
            (b" Content-Length: 2\r\n\r\n", NotDap::MissingLength),
            (b"X: y\nContent-Length: 2\r\n\r\n", NotDap::MissingLength),
            (b"Content-Length\r\n\r\n", NotDap::MissingLength),
            (
                b"Content-Length: 2\r\nContent-Length: x\r\n\r\n",
                NotDap::MissingLength,
            ),
        ];
        for (bytes, expected) in cases {
            let mut framer = Framer::default();
            framer.push(bytes);
            assert_eq!(framer.next_message().as_ref(), Err(expected), "{bytes:?}");
        }
        let mut framer = Framer::default();
        framer.push(&[b'a'; MAX_HEADER_BYTES + 1]);
        assert_eq!(framer.next_message(), Err(NotDap::HeaderTooLong));
    }

    /// The length comes from the header debugpy would read it from.
    #[test]
    fn the_length_is_read_as_debugpy_reads_it() {
        let cases: &[&[u8]] = &[
            b"Content-Length: 9\r\nContent-Length: 2\r\n\r\n{}",
            b"Content-Type: x\r\nContent-Length:  2 \r\n\r\n{}",
            b"Content-Length: 002\r\nX-Any: Content-Length: 7\r\n\r\n{}",
        ];
        for bytes in cases {
            let mut framer = Framer::default();
            framer.push(bytes);
            let message = framer.next_message().expect("dap").expect("whole");
            assert_eq!(message.body(), b"{}", "{bytes:?}");
            assert_eq!(framer.buffered(), 0, "{bytes:?}");
        }
    }

    /// The requests that end the debuggee are seen wherever the reads split them, next to
    /// messages too big to read, after an empty body, and never in a stream that is not DAP.
    #[test]
    fn a_request_that_ends_the_debuggee_is_seen_across_reads() {
        let big = framed(&format!(
            r#"{{"type":"request","command":"evaluate","arguments":{{"expression":"{}"}}}}"#,
            "x".repeat(WATCHED_BODY_BYTES)
        ));
        let empty = b"Content-Length: 0\r\n\r\n".to_vec();
        let detach = framed(
            r#"{"type":"request","command":"disconnect","arguments":{"terminateDebuggee":false}}"#,
        );
        let cases: [(Vec<u8>, bool); 8] = [
            (
                framed(
                    r#"{"type":"request","command":"disconnect","arguments":{"terminateDebuggee":true}}"#,
                ),
                true,
            ),
            (
                framed(r#"{"type":"request","command":"terminate","seq":9}"#),
                true,
            ),
            (detach.clone(), false),
            (
                framed(r#"{"type":"request","command":"disconnect"}"#),
                false,
            ),
            // A response or event that names the command is no request to end anything.
            (
                framed(r#"{"type":"response","command":"terminate","success":true}"#),
                false,
            ),
            // A big body hiding the words is skipped unread.
            (
                framed(&format!(
                    r#"{{"type":"request","command":"terminate","pad":"{}"}}"#,
                    "y".repeat(WATCHED_BODY_BYTES)
                )),
                false,
            ),
            (
                [
                    big.clone(),
                    empty.clone(),
                    detach.clone(),
                    framed(r#"{"type":"request","command":"terminate"}"#),
                ]
                .concat(),
                true,
            ),
            // Not DAP: the watch ends, whatever follows.
            (
                [
                    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                    framed(r#"{"type":"request","command":"terminate"}"#),
                ]
                .concat(),
                false,
            ),
        ];
        for (stream, ends) in cases {
            for cut in 0..=stream.len() {
                let mut watcher = EndWatcher::default();
                watcher.push(&stream[..cut]);
                watcher.push(&stream[cut..]);
                assert_eq!(
                    watcher.ends_debuggee(),
                    ends,
                    "cut at {cut} of {}",
                    String::from_utf8_lossy(&stream)
                );
            }
            let mut byte_by_byte = EndWatcher::default();
            for byte in &stream {
                byte_by_byte.push(std::slice::from_ref(byte));
            }
            assert_eq!(byte_by_byte.ends_debuggee(), ends);
        }
        // A header section that never ends is given up on, holding no more than its bound.
        let mut watcher = EndWatcher::default();
        watcher.push(&[b'a'; 10 * MAX_HEADER_BYTES]);
        assert!(matches!(watcher.at, WatchAt::Lost));
    }

    /// A `disconnect` of any kind is seen (the session ended in order), and the watch
    /// knows whether the stream stops between two messages.
    #[test]
    fn a_disconnect_and_the_message_boundaries_are_seen() {
        let detach = framed(r#"{"type":"request","command":"disconnect"}"#);
        let threads = framed(r#"{"type":"request","command":"threads"}"#);
        let cases: [(Vec<u8>, bool); 4] = [
            (detach.clone(), true),
            (threads.clone(), false),
            ([threads.clone(), detach.clone()].concat(), true),
            (framed(r#"{"type":"event","command":"disconnect"}"#), false),
        ];
        for (stream, disconnected) in cases {
            let mut watcher = EndWatcher::default();
            assert!(watcher.at_boundary());
            for (at, byte) in stream.iter().enumerate() {
                watcher.push(std::slice::from_ref(byte));
                let whole = at + 1 == stream.len();
                assert_eq!(
                    watcher.at_boundary(),
                    whole || at + 1 == threads.len() && stream.starts_with(&threads),
                    "{at}"
                );
            }
            assert_eq!(watcher.disconnected(), disconnected);
        }
    }

    #[test]
    fn the_acknowledgement_is_found_across_reads_and_after_a_partial_message() {
        let done = framed(r#"{"type":"response","command":"configurationDone","success":true}"#);
        let refused =
            framed(r#"{"type":"response","command":"configurationDone","success":false}"#);
        let capabilities = framed(
            r#"{"type":"response","command":"initialize","body":{"supportsConfigurationDoneRequest":true}}"#,
        );
        // A stream joined in the middle of a message, then whole ones.
        let stream = [
            capabilities.get(7..).unwrap_or_default().to_vec(),
            capabilities.clone(),
            done,
        ]
        .concat();
        for cut in 0..=stream.len() {
            let mut scanner = AckScanner::default();
            let first = scanner.scan(&stream[..cut]);
            let second = scanner.scan(&stream[cut..]);
            assert_eq!(first.or(second), Some(true), "cut at {cut}");
        }
        assert_eq!(AckScanner::default().scan(&refused), Some(false));
        assert_eq!(AckScanner::default().scan(&capabilities), None);
        assert_eq!(AckScanner::default().scan(b"garbage with no header"), None);
    }

    #[test]
    fn a_refused_attach_is_an_answer_of_its_own() {
        let refused_attach = framed(
            r#"{"type":"response","command":"attach","success":false,"message":"AttachRequest.__init__() missing 1 required positional argument: 'arguments'"}"#,
        );
        let refused_launch = framed(r#"{"type":"response","command":"launch","success":false}"#);
        let attached = framed(r#"{"type":"response","command":"attach","success":true}"#);
        let done = framed(r#"{"type":"response","command":"configurationDone","success":true}"#);
        let long = "é".repeat(MAX_REFUSAL_MESSAGE_BYTES);
        let long_refusal = framed(&format!(
            r#"{{"type":"response","command":"attach","success":false,"message":"{long}"}}"#
        ));
        let cases: [(&[u8], Vec<Answer>); 5] = [
            (
                &refused_attach,
                vec![Answer::AttachRefused(
                    "AttachRequest.__init__() missing 1 required positional argument: 'arguments'"
                        .into(),
                )],
            ),
            (
                &refused_launch,
                vec![Answer::AttachRefused("no reason given".into())],
            ),
            // debugpy answers a good attach after configurationDone: not a setup answer.
            (&[attached.clone(), done.clone()].concat(), vec![Answer::Configured]),
            (
                &[refused_attach.clone(), done.clone()].concat(),
                vec![
                    Answer::AttachRefused(
                        "AttachRequest.__init__() missing 1 required positional argument: 'arguments'"
                            .into(),
                    ),
                    Answer::Configured,
                ],
            ),
            (
                &long_refusal,
                vec![Answer::AttachRefused("é".repeat(MAX_REFUSAL_MESSAGE_BYTES / 2))],
            ),
        ];
        for (stream, expected) in cases {
            for cut in 0..=stream.len() {
                let mut scanner = AckScanner::default();
                let mut found = Vec::new();
                for part in [&stream[..cut], &stream[cut..]] {
                    let mut next = scanner.next_answer(part);
                    while let Some(answer) = next {
                        found.push(answer);
                        next = scanner.next_answer(&[]);
                    }
                }
                assert_eq!(found, expected, "cut at {cut}");
            }
        }
        // A release waits past the refusal of its own repeated attach.
        let stream = [refused_attach, done].concat();
        assert_eq!(AckScanner::default().scan(&stream), Some(true));
    }
}
