//! Framing a DAP byte stream: `Content-Length` headers (bounded), messages handed out
//! whole however the bytes were split, and a refusal of anything that is not DAP.

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
pub(super) fn content_length(header: &[u8]) -> Option<usize> {
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
