//! The HTTP/1.1 side of a WebSocket upgrade: reading the request head, answering with a
//! plain status (reason phrase = description, short text body) or with `101`.
//!
//! The server does its own handshake instead of tungstenite's because a sender's upgrade
//! stays pending until a listener decides, and that decision (status and description)
//! must reach the sender as the HTTP answer.

use std::fmt::Write as _;

use percent_encoding::percent_decode_str;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Largest request head we read (Azure's header limit is 32 kB).
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Most header lines we parse in one request.
pub const MAX_HEADERS: usize = 100;

/// Longest reason phrase we send; descriptions come from listeners and are trimmed.
const MAX_REASON_CHARS: usize = 512;

/// A request head that could not be used; `status` is what we answer.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct HeadError {
    pub status: u16,
    pub message: String,
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path as sent, still percent-encoded (forwarded as-is in accept addresses).
    pub raw_path: String,
    /// The query as sent (without `?`), still encoded.
    pub raw_query: String,
    /// Header lines in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// First header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True when a comma-separated header contains `token` (case-insensitive).
    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The request target as sent (`path?query`).
    pub fn target(&self) -> String {
        if self.raw_query.is_empty() {
            self.raw_path.clone()
        } else {
            format!("{}?{}", self.raw_path, self.raw_query)
        }
    }

    /// The path percent-decoded (for routing; `$` may arrive as `%24`).
    pub fn decoded_path(&self) -> String {
        percent_decode_str(&self.raw_path)
            .decode_utf8_lossy()
            .into_owned()
    }

    /// Checks this is a WebSocket (version 13) upgrade and returns the client's key.
    pub fn websocket_key(&self) -> Result<&str, HeadError> {
        let bad = |message: &str| HeadError {
            status: 400,
            message: message.to_owned(),
        };
        if self.method != "GET" {
            return Err(bad("Bad Request: a WebSocket upgrade is a GET"));
        }
        if !self.header_has_token("Upgrade", "websocket")
            || !self.header_has_token("Connection", "upgrade")
        {
            return Err(bad("Bad Request: not a WebSocket upgrade"));
        }
        if self.header("Sec-WebSocket-Version").map(str::trim) != Some("13") {
            return Err(bad("Bad Request: Sec-WebSocket-Version must be 13"));
        }
        self.header("Sec-WebSocket-Key")
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| bad("Bad Request: no Sec-WebSocket-Key"))
    }
}

/// Reads one request head. Returns the request and any bytes read past its end.
/// `Ok(None)` means the client closed before sending anything.
pub async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<Option<Result<(Request, Vec<u8>), HeadError>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let new = chunk.get(..n).unwrap_or_default();
        buf.extend_from_slice(new);
        // A head is whole only at the end of a line, so it is parsed only when a line
        // ended: parsing after every read let a client that sends a byte at a time make
        // the relay scan its head once per byte (0.16 s of CPU for a 31 KB head), where
        // once per line is at most `MAX_HEADERS` + 1 parses.
        if new.contains(&b'\n') {
            match parse(&buf) {
                Ok(Some((request, used))) => {
                    return Ok(Some(Ok((request, buf.split_off(used)))));
                }
                Ok(None) => {}
                Err(err) => return Ok(Some(Err(err))),
            }
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Ok(Some(Err(HeadError {
                status: 431,
                message: format!("Request Header Fields Too Large: over {MAX_HEAD_BYTES} bytes"),
            })));
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Heads parsed on this thread (each test runs on a thread of its own).
    static PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, HeadError> {
    #[cfg(test)]
    PARSES.with(|p| p.set(p.get() + 1));
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError {
                status: 431,
                message: format!("Request Header Fields Too Large: over {MAX_HEADERS} headers"),
            });
        }
        Err(err) => {
            // httparse names the part in its own words ("invalid token" is a malformed
            // method or header name, which a reader takes for a SAS token): say which part.
            let part = match err {
                httparse::Error::Token => "a malformed method or header name",
                httparse::Error::HeaderName => "a malformed header name",
                httparse::Error::HeaderValue => "a malformed header value",
                httparse::Error::NewLine | httparse::Error::Status => "a malformed line",
                httparse::Error::Version => "not HTTP/1.x",
                httparse::Error::TooManyHeaders => "too many headers",
            };
            return Err(HeadError {
                status: 400,
                message: format!(
                    "Bad Request: {part} (expected a WebSocket upgrade: GET /$hc/PATH?sb-hc-action=... HTTP/1.1)"
                ),
            });
        }
    };
    let target = req.path.unwrap_or("/");
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let request = Request {
        method: req.method.unwrap_or("").to_owned(),
        raw_path: raw_path.to_owned(),
        raw_query: raw_query.to_owned(),
        headers: req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    };
    Ok(Some((request, used)))
}

/// Standard reason phrase for the statuses we send.
fn standard_reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        410 => "Gone",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// A reason phrase safe to put on the status line: printable ASCII, bounded.
pub fn reason_phrase(description: &str) -> String {
    let cleaned: String = description
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                ' '
            }
        })
        .take(MAX_REASON_CHARS)
        .collect();
    cleaned.trim().to_owned()
}

/// The full response for a failed upgrade. The .NET client reports the reason phrase,
/// so it carries the description; the body repeats it for everyone else.
pub fn status_response(status: u16, description: &str) -> Vec<u8> {
    let mut reason = reason_phrase(description);
    if reason.is_empty() {
        reason = standard_reason(status).to_owned();
    }
    let body = format!("{description}\n");
    let mut head = String::new();
    let _ = write!(
        head,
        "HTTP/1.1 {status} {reason}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Writes a failed-upgrade answer and flushes it; errors are the client's problem.
pub async fn write_status<S: AsyncWrite + Unpin>(stream: &mut S, status: u16, description: &str) {
    let response = status_response(status, description);
    if stream.write_all(&response).await.is_ok() {
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
    }
}

/// The `101` that completes a WebSocket handshake. No extension is ever negotiated.
pub fn switching_protocols(client_key: &str, protocol: Option<&str>) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        derive_accept_key(client_key.as_bytes())
    );
    if let Some(p) = protocol {
        let _ = write!(head, "Sec-WebSocket-Protocol: {}\r\n", reason_phrase(p));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Writes the `101`.
pub async fn write_switching<S: AsyncWrite + Unpin>(
    stream: &mut S,
    client_key: &str,
    protocol: Option<&str>,
) -> std::io::Result<()> {
    stream
        .write_all(&switching_protocols(client_key, protocol))
        .await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /$hc/hc1/sub?x=1&sb-hc-action=connect&sb-hc-token=a%20b&y HTTP/1.1\r\n\
        Host: relay:9443\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
        0: Sec-WebSocket-Extensions: permessage-deflate; junk\r\n\r\nEXTRA";

    #[tokio::test]
    async fn reads_a_head_and_keeps_the_rest() {
        let mut input = UPGRADE.as_bytes();
        let (req, rest) = read_request(&mut input)
            .await
            .expect("in-memory read")
            .expect("not empty")
            .expect("valid head");
        assert_eq!(rest, b"EXTRA");
        assert_eq!(req.raw_path, "/$hc/hc1/sub");
        assert_eq!(
            req.target(),
            "/$hc/hc1/sub?x=1&sb-hc-action=connect&sb-hc-token=a%20b&y"
        );
        assert_eq!(
            req.websocket_key().expect("upgrade"),
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        assert_eq!(req.header("host"), Some("relay:9443"));
    }

    #[tokio::test]
    async fn rejects_bad_heads_with_a_status() {
        let cases: &[(&str, u16)] = &[
            ("GARBAGE\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (
                "POST /$hc/a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: k\r\n\r\n",
                400,
            ),
            (
                "GET /$hc/a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: k\r\n\r\n",
                400,
            ),
        ];
        for (head, status) in cases {
            let mut input = head.as_bytes();
            let got = match read_request(&mut input).await.expect("read").expect("some") {
                Ok((req, _)) => req.websocket_key().map(|_| ()).map_err(|e| e.status),
                Err(err) => Err(err.status),
            };
            assert_eq!(got, Err(*status), "{head:?}");
        }
    }

    /// A head the parser refuses says which part is wrong in words a reader of the relay's
    /// answer understands ("invalid token" read as a SAS token's fault).
    #[tokio::test]
    async fn a_malformed_head_names_the_part() {
        let cases = [
            ("GARBAGE\r\n\r\n", "Bad Request: a malformed"),
            (
                "G(T / HTTP/1.1\r\n\r\n",
                "a malformed method or header name",
            ),
            ("GET / HTTP/9.9\r\n\r\n", "not HTTP/1.x"),
            (
                "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                "a malformed header name",
            ),
        ];
        for (head, want) in cases {
            let mut input = head.as_bytes();
            let err = match read_request(&mut input).await.expect("read").expect("some") {
                Ok(_) => panic!("{head:?} parsed"),
                Err(err) => err,
            };
            assert_eq!(err.status, 400, "{head:?}");
            assert!(err.message.contains(want), "{head:?}: {}", err.message);
            assert!(err.message.contains("GET /$hc/PATH"), "{}", err.message);
            assert!(!err.message.contains("token"), "{}", err.message);
        }
    }

    /// A reader that hands out one byte per read (the slowest client).
    struct ByteByByte<'a>(&'a [u8]);

    impl tokio::io::AsyncRead for ByteByByte<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            out: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some((first, rest)) = self.0.split_first() {
                out.put_slice(&[*first]);
                self.0 = rest;
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_head_sent_a_byte_at_a_time_is_parsed_once_per_line() {
        let lines = UPGRADE.matches("\r\n").count();
        PARSES.with(|p| p.set(0));
        let (req, rest) = read_request(&mut ByteByByte(UPGRADE.as_bytes()))
            .await
            .expect("in-memory read")
            .expect("not empty")
            .expect("valid head");
        assert_eq!(req.raw_path, "/$hc/hc1/sub");
        assert!(
            rest.is_empty(),
            "one byte per read: nothing read past the head"
        );
        let parses = PARSES.with(|p| p.get());
        assert!(
            parses <= lines,
            "{parses} parses for {} bytes in {lines} lines",
            UPGRADE.len()
        );
        // A broken request line is still refused as soon as it ends.
        let mut garbage = ByteByByte(b"GARBAGE\r\nmore that never ends");
        let err = read_request(&mut garbage)
            .await
            .expect("read")
            .expect("some")
            .expect_err("garbage");
        assert_eq!(err.status, 400);
    }

    #[tokio::test]
    async fn oversized_head_is_431() {
        let head = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        let mut input = head.as_bytes();
        let err = read_request(&mut input)
            .await
            .expect("read")
            .expect("some")
            .expect_err("too big");
        assert_eq!(err.status, 431);
    }

    /// Hostile heads: each is answered with a status (or read as a request that later
    /// fails routing), never a panic. (head, status from reading, or `None` when it reads)
    #[tokio::test]
    async fn hostile_heads_never_panic() {
        let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(2 * MAX_HEAD_BYTES));
        let many_headers = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        let cases: Vec<(Vec<u8>, Option<u16>)> = vec![
            (
                b"GET /$hc/x?sb-hc-action=listen&a=%C3%A9%FF HTTP/1.1\r\n\r\n".to_vec(),
                None,
            ),
            (
                "GET /$hc/é?ü=ö HTTP/1.1\r\nHost: h\r\n\r\n"
                    .as_bytes()
                    .to_vec(),
                None,
            ),
            (b"GET /$hc/\xff\xfe HTTP/1.1\r\n\r\n".to_vec(), Some(400)),
            ("GÉT / HTTP/1.1\r\n\r\n".as_bytes().to_vec(), Some(400)),
            ("GET / HTTP/1.1é\r\n\r\n".as_bytes().to_vec(), Some(400)),
            (
                "GET / HTTP/1.1\r\nHöst: h\r\n\r\n".as_bytes().to_vec(),
                Some(400),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\xc3\xa9\xff\r\n\r\n".to_vec(),
                None,
            ),
            (b"GET / HTTP/1.1\r\nX: \xc3\r\n\r\n".to_vec(), None),
            (b"GET /%%%% HTTP/1.1\r\n\r\n".to_vec(), None),
            (b"\x00\x01\x02\r\n\r\n".to_vec(), Some(400)),
            (long_line.into_bytes(), Some(431)),
            (many_headers.into_bytes(), Some(431)),
        ];
        for (head, want) in cases {
            let mut input = head.as_slice();
            let shown = String::from_utf8_lossy(head.get(..60).unwrap_or(&head)).into_owned();
            let got = match read_request(&mut input).await {
                Ok(Some(Ok((req, _)))) => {
                    // Routing helpers must not panic on what was read either.
                    let _ = (
                        req.decoded_path(),
                        req.target(),
                        req.websocket_key().is_ok(),
                    );
                    let _ = crate::relay::protocol::HcRequest::parse(&req.target());
                    None
                }
                Ok(Some(Err(err))) => Some(err.status),
                other => panic!("{shown:?}: {other:?}"),
            };
            assert_eq!(got, want, "{shown:?}");
        }
    }

    #[test]
    fn status_response_carries_the_description() {
        let text = String::from_utf8(status_response(404, "There are no listeners\r\nX: y"))
            .expect("ascii");
        assert!(
            text.starts_with("HTTP/1.1 404 There are no listeners  X: y\r\n"),
            "{text}"
        );
        assert!(
            text.ends_with("\r\n\r\nThere are no listeners\r\nX: y\n"),
            "{text}"
        );
    }

    #[test]
    fn switching_protocols_uses_the_rfc_example_key() {
        let text = String::from_utf8(switching_protocols("dGhlIHNhbXBsZSBub25jZQ==", Some("p1")))
            .expect("ascii");
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: p1\r\n"));
        assert!(!text.contains("Extensions"));
    }
}
