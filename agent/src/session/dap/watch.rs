//! Reading what a DAP stream says without holding it: debugpy's answers that decide a
//! setup ([`AckScanner`]) and a developer's request that ends the debuggee
//! ([`EndWatcher`]).

use super::framing::content_length;
use super::{Framer, MAX_HEADER_BYTES, Message};

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
    pub(super) at: WatchAt,
    ends_debuggee: bool,
    /// The developer sent `disconnect`: debugpy's adapter ended its session when it
    /// answered.
    disconnected: bool,
}

/// Where [`EndWatcher`] is in the stream.
#[derive(Debug)]
pub(super) enum WatchAt {
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
