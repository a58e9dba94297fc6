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

use std::time::Duration;

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

/// The longest header section (everything before the blank line) a DAP peer may send:
/// real clients send one `Content-Length` line, so anything longer is not a debugger.
pub const MAX_HEADER_BYTES: usize = 1024;

/// The largest DAP message held back whole before the debuggee is configured: debugpy's
/// own limit (`MAX_BODY_SIZE`, one byte under 16 MiB; debugpy fails the connection on a
/// larger one). Setup messages are small; a larger one is not a debugger setting up a
/// session.
pub const MAX_MESSAGE_BYTES: usize = 0xFF_FFFF;

/// Why a byte stream is not the Debug Adapter Protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotDap {
    #[error("a header section longer than {MAX_HEADER_BYTES} bytes")]
    HeaderTooLong,
    #[error("a header byte {0:#04x} that no DAP header contains")]
    BadHeaderByte(u8),
    #[error("a header section without a valid Content-Length")]
    MissingLength,
    #[error("a message of {0} bytes (at most {MAX_MESSAGE_BYTES} are accepted during setup)")]
    TooLarge(usize),
    #[error("a message whose body is not a DAP JSON object with a \"type\"")]
    BadBody,
}

/// One whole DAP message as it arrived: the header section, the blank line, the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub raw: Vec<u8>,
    body_start: usize,
}

impl Message {
    /// The JSON body.
    pub fn body(&self) -> &[u8] {
        self.raw.get(self.body_start..).unwrap_or_default()
    }

    /// The command of a request (`None` for responses, events and unreadable bodies).
    ///
    /// ```
    /// use amlx_agent::session::dap::Framer;
    /// let mut framer = Framer::default();
    /// framer.push(b"Content-Length: 45\r\n\r\n{\"seq\":1,\"type\":\"request\",\"command\":\"attach\"}");
    /// let message = framer.next_message().unwrap().unwrap();
    /// assert_eq!(message.request_command().as_deref(), Some("attach"));
    /// ```
    pub fn request_command(&self) -> Option<String> {
        self.head()?.request_command()
    }

    /// The command a response answers (`None` for requests, events and unreadable
    /// bodies).
    pub fn response_command(&self) -> Option<String> {
        self.head()?.command_of("response")
    }

    /// The body's `type` and `command`, or `None` when the body is not a JSON object with
    /// a string `type`, as every DAP message is. debugpy's adapter ends its session on a
    /// body it cannot parse, leaving the step held with nobody to release it: the gate
    /// does not pass one on.
    ///
    /// ```
    /// use amlx_agent::session::dap::Framer;
    /// let mut framer = Framer::default();
    /// framer.push(b"Content-Length: 5\r\n\r\n{{{{{");
    /// assert!(framer.next_message().unwrap().unwrap().head().is_none());
    /// ```
    pub fn head(&self) -> Option<Head> {
        serde_json::from_slice(self.body()).ok()
    }
}

/// What the gate reads of a DAP message: its kind and, for requests and responses, its
/// command.
#[derive(Debug, serde::Deserialize)]
pub struct Head {
    #[serde(rename = "type")]
    kind: String,
    command: Option<String>,
}

impl Head {
    /// The command of a request (`None` for responses and events).
    pub fn request_command(self) -> Option<String> {
        self.command_of("request")
    }

    fn command_of(self, kind: &str) -> Option<String> {
        (self.kind == kind).then_some(self.command).flatten()
    }
}

/// Splits a byte stream into whole DAP messages (`Content-Length` framing), refusing
/// streams that are not DAP early and never buffering more than one bounded message.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    /// Adds bytes from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received that do not make a whole message yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes whatever is buffered, whole or not (the gate turns transparent).
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// The next whole message, `Ok(None)` while more bytes are needed, or why the
    /// stream is not DAP. Never panics, whatever the bytes.
    pub fn next_message(&mut self) -> Result<Option<Message>, NotDap> {
        const BLANK_LINE: &[u8] = b"\r\n\r\n";
        let end = self
            .buf
            .windows(BLANK_LINE.len())
            .position(|window| window == BLANK_LINE);
        let header_len = end.unwrap_or(self.buf.len());
        let header = self.buf.get(..header_len).unwrap_or_default();
        if let Some(&bad) = header
            .iter()
            .find(|&&byte| !(byte == b'\r' || byte == b'\n' || (0x20..0x7f).contains(&byte)))
        {
            return Err(NotDap::BadHeaderByte(bad));
        }
        if header_len > MAX_HEADER_BYTES {
            return Err(NotDap::HeaderTooLong);
        }
        let Some(header_len) = end else {
            return Ok(None);
        };
        let length = content_length(header).ok_or(NotDap::MissingLength)?;
        if length > MAX_MESSAGE_BYTES {
            return Err(NotDap::TooLarge(length));
        }
        let body_start = header_len + BLANK_LINE.len();
        let total = body_start + length;
        if self.buf.len() < total {
            return Ok(None);
        }
        let rest = self.buf.split_off(total);
        let raw = std::mem::replace(&mut self.buf, rest);
        Ok(Some(Message { raw, body_start }))
    }
}

/// The `Content-Length` of a header section, read as debugpy reads it
/// (`debugpy/common/messaging.py`): lines end with CRLF (a lone LF does not end one), the
/// name is exactly `Content-Length`, and a later one replaces an earlier one. Read any other
/// way, the gate and debugpy would disagree on where a message ends, and a message the gate
/// passed on would be one debugpy cannot read.
fn content_length(header: &[u8]) -> Option<usize> {
    let mut length = None;
    let mut rest = Some(header);
    while let Some(lines) = rest {
        let end = lines.windows(2).position(|pair| pair == b"\r\n");
        let line = end.map_or(Some(lines), |end| lines.get(..end))?;
        rest = end.and_then(|end| lines.get(end + 2..));
        let colon = line.iter().position(|&byte| byte == b':');
        let name = colon.map_or(Some(line), |colon| line.get(..colon))?;
        if name != b"Content-Length" {
            continue;
        }
        let value = colon
            .and_then(|colon| line.get(colon + 1..))
            .unwrap_or_default();
        length = std::str::from_utf8(value.trim_ascii())
            .ok()
            .and_then(|value| value.parse().ok());
    }
    length
}

/// What debugpy answered that decides a setup, as [`AckScanner::next_answer`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `configurationDone` succeeded: the step runs.
    Configured,
    /// `configurationDone` was refused (sent out of order, or the adapter was not ready).
    ConfigurationRefused,
    /// `attach` (or `launch`) failed, with debugpy's message. The adapter may already
    /// have given this connection's session the debuggee, and it refuses that session's
    /// `configurationDone` from now on: kept open, the connection holds the debuggee
    /// where no debugger (and no release) can reach it; closed, it frees it.
    AttachRefused(String),
    /// `disconnect` was answered: debugpy's adapter has let go of the debuggee (it
    /// answers only after that).
    Disconnected,
    /// `initialize` was answered.
    Initialized,
}

/// The longest part of debugpy's message on a refused `attach` that is kept (for the log
/// and `status`): it may repeat what the developer's side sent.
pub const MAX_REFUSAL_MESSAGE_BYTES: usize = 200;

/// Finds a debuggee's answers to `attach` and `configurationDone` in its byte stream,
/// which may start in the middle of a message (a developer read part of it and left):
/// framing resumes at the next `Content-Length` header.
#[derive(Debug, Default)]
pub struct AckScanner {
    framer: Framer,
}

impl AckScanner {
    const HEADER: &'static [u8] = b"Content-Length";

    /// Scans the next bytes for the answer to `configurationDone` alone (what a release
    /// waits for; the refusal of its own repeated `attach` is expected on a connection a
    /// developer left): `Some(true)` once it succeeded, `Some(false)` if debugpy refused
    /// it (a retry is due), `None` while neither.
    pub fn scan(&mut self, bytes: &[u8]) -> Option<bool> {
        let mut next = self.next_answer(bytes);
        loop {
            match next? {
                Answer::Configured => return Some(true),
                Answer::ConfigurationRefused => return Some(false),
                Answer::AttachRefused(_) | Answer::Disconnected | Answer::Initialized => {
                    next = self.next_answer(&[]);
                }
            }
        }
    }

    /// Scans the next bytes for the next answer that decides a setup; `None` once the
    /// bytes so far hold no more. Call again with no bytes after an answer: one read may
    /// hold several.
    ///
    /// ```
    /// use amlx_agent::session::dap::{AckScanner, Answer};
    /// let body = r#"{"type":"response","command":"attach","success":false,"message":"no"}"#;
    /// let bytes = format!("Content-Length: {}\r\n\r\n{body}", body.len());
    /// let mut scanner = AckScanner::default();
    /// assert_eq!(scanner.next_answer(bytes.as_bytes()), Some(Answer::AttachRefused("no".into())));
    /// assert_eq!(scanner.next_answer(&[]), None);
    /// ```
    pub fn next_answer(&mut self, bytes: &[u8]) -> Option<Answer> {
        self.framer.push(bytes);
        loop {
            match self.framer.next_message() {
                Ok(Some(message)) => {
                    if let Some(answer) = answer_of(&message) {
                        return Some(answer);
                    }
                }
                Ok(None) => return None,
                // Not at a message start: skip to the next header.
                Err(_) => {
                    let rest = self.framer.take_rest();
                    let next = rest
                        .windows(Self::HEADER.len())
                        .skip(1)
                        .position(|window| window == Self::HEADER)
                        .map(|at| at + 1);
                    match next {
                        Some(at) => self.framer.push(rest.get(at..).unwrap_or_default()),
                        None => {
                            // Keep a tail that may hold the start of a header.
                            let keep = rest.len().saturating_sub(Self::HEADER.len());
                            self.framer.push(rest.get(keep..).unwrap_or_default());
                            return None;
                        }
                    }
                }
            }
        }
    }
}

/// The setup answer `message` is, if it is one.
fn answer_of(message: &Message) -> Option<Answer> {
    let command = message.response_command()?;
    let body: serde_json::Value = serde_json::from_slice(message.body()).unwrap_or_default();
    let success = body["success"] == true;
    match command.as_str() {
        "configurationDone" if success => Some(Answer::Configured),
        "configurationDone" => Some(Answer::ConfigurationRefused),
        "attach" | "launch" if !success => {
            let said = body["message"].as_str().unwrap_or("no reason given");
            let said = crate::relay::protocol::prefix_within(said, MAX_REFUSAL_MESSAGE_BYTES);
            Some(Answer::AttachRefused(said.to_owned()))
        }
        "disconnect" => Some(Answer::Disconnected),
        "initialize" => Some(Answer::Initialized),
        _ => None,
    }
}

/// The largest message body [`EndWatcher`] reads; the body of a longer one is skipped
/// unread. A request that ends a session is a few dozen bytes.
pub const WATCHED_BODY_BYTES: usize = 4096;

/// Watches a developer's DAP stream once the gate passes it on as it comes (after
/// `configurationDone`) for a request that ends the debuggee: `terminate`, or
/// `disconnect` with `terminateDebuggee: true` (VS Code's Stop on a session it may end).
/// Only for what the log says when the debugger leaves: the bytes are forwarded whatever
/// it finds. It holds at most one header section and one small body; a stream that stops
/// looking like DAP ends the watch, never the connection. Never panics, whatever the bytes.
#[derive(Debug)]
pub struct EndWatcher {
    at: WatchAt,
    ends_debuggee: bool,
    /// The developer sent `disconnect`: debugpy's adapter ended its session when it
    /// answered.
    disconnected: bool,
}

/// Where [`EndWatcher`] is in the stream.
#[derive(Debug)]
enum WatchAt {
    /// In a header section: what it has of it so far.
    Header(Vec<u8>),
    /// In a body: bytes left, and the body so far when it is small enough to read.
    Body { left: usize, kept: Option<Vec<u8>> },
    /// Not DAP any more (a header too long or without a length): no longer watched.
    Lost,
}

impl Default for EndWatcher {
    fn default() -> EndWatcher {
        EndWatcher {
            at: WatchAt::Header(Vec::new()),
            ends_debuggee: false,
            disconnected: false,
        }
    }
}

impl EndWatcher {
    /// Whether the developer asked debugpy to end the debuggee.
    pub fn ends_debuggee(&self) -> bool {
        self.ends_debuggee
    }

    /// Whether the developer sent `disconnect` (its session with debugpy's adapter ended
    /// in order).
    pub fn disconnected(&self) -> bool {
        self.disconnected
    }

    /// Whether the stream so far ends between two whole messages (a message written
    /// after it is read as one).
    pub fn at_boundary(&self) -> bool {
        matches!(&self.at, WatchAt::Header(header) if header.is_empty())
    }

    /// Reads the next bytes of the developer's stream, which must start at a message
    /// boundary the first time.
    pub fn push(&mut self, mut bytes: &[u8]) {
        const BLANK_LINE: &[u8] = b"\r\n\r\n";
        while !bytes.is_empty() {
            match &mut self.at {
                WatchAt::Lost => return,
                WatchAt::Header(header) => {
                    let room = (MAX_HEADER_BYTES + BLANK_LINE.len()).saturating_sub(header.len());
                    let taken = bytes.len().min(room);
                    // A blank line may straddle two reads: look from just before the new bytes.
                    let from = header.len().saturating_sub(BLANK_LINE.len() - 1);
                    header.extend_from_slice(bytes.get(..taken).unwrap_or_default());
                    let found = header.get(from..).and_then(|tail| {
                        tail.windows(BLANK_LINE.len()).position(|w| w == BLANK_LINE)
                    });
                    let Some(at) = found else {
                        if taken < bytes.len()
                            || header.len() >= MAX_HEADER_BYTES + BLANK_LINE.len()
                        {
                            self.at = WatchAt::Lost;
                            return;
                        }
                        bytes = &[];
                        continue;
                    };
                    let end = from + at + BLANK_LINE.len();
                    // Bytes taken past the blank line belong to the body.
                    let past = header.len().saturating_sub(end);
                    bytes = bytes.get(taken.saturating_sub(past)..).unwrap_or_default();
                    self.at = match content_length(header.get(..end).unwrap_or_default()) {
                        Some(left) => WatchAt::Body {
                            left,
                            kept: (left <= WATCHED_BODY_BYTES).then(|| Vec::with_capacity(left)),
                        },
                        None => WatchAt::Lost,
                    };
                }
                WatchAt::Body { left, kept } => {
                    let n = (*left).min(bytes.len());
                    if let Some(kept) = kept {
                        kept.extend_from_slice(bytes.get(..n).unwrap_or_default());
                    }
                    *left -= n;
                    bytes = bytes.get(n..).unwrap_or_default();
                }
            }
            self.finish_body();
        }
        self.finish_body();
    }

    /// A body read to its end: looked at (when kept), and the next header begins.
    fn finish_body(&mut self) {
        let WatchAt::Body { left: 0, kept } = &mut self.at else {
            return;
        };
        if let Some(body) = kept.take() {
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let request = body["type"] == "request";
            let command = &body["command"];
            if request
                && (command == "terminate"
                    || (command == "disconnect" && body["arguments"]["terminateDebuggee"] == true))
            {
                self.ends_debuggee = true;
            }
            if request && command == "disconnect" {
                self.disconnected = true;
            }
        }
        self.at = WatchAt::Header(Vec::new());
    }
}

#[cfg(test)]
mod tests {
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
