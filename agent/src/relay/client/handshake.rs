//! The client side of the WebSocket upgrade (RFC 6455 section 4), written out so that a
//! non-101 answer's status and text reach the caller and no extension is ever offered.
//!
//! The response comes from the network: it is split and decoded as bytes, never sliced
//! as text (a byte index inside a character panics).
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use url::Url;

use super::error::{ConnectError, Role};
use super::tls::{self, BoxedIo};
use crate::config::Secret;
use crate::relay::connection_string::is_loopback_host;
use crate::relay::protocol;
use crate::relay::websocket::{FrameReader, FrameWriter};

/// Longest response head we read before giving up.
const MAX_HEAD_LEN: usize = 64 * 1024;
/// Longest error body we keep for the message.
const MAX_ERROR_BODY: usize = 8 * 1024;
/// How long we wait for an error body after the head.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest status text we put in a one-line error.
const MAX_TEXT_CHARS: usize = 300;

/// An open WebSocket to the relay, split for a reader task and a writer.
#[derive(Debug)]
pub struct WebSocket {
    pub reader: FrameReader<ReadHalf<BoxedIo>>,
    pub writer: FrameWriter<WriteHalf<BoxedIo>>,
}

/// The URL without its query (tracking ids and app arguments), for messages.
pub fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.to_string()
}

/// Opens `url` and performs the upgrade, sending `token` in `ServiceBusAuthorization`.
pub async fn connect(
    url: &Url,
    token: Option<&Secret>,
    tls_config: Option<&Arc<rustls::ClientConfig>>,
    role: Role,
    timeout: Duration,
) -> Result<WebSocket, ConnectError> {
    let mut target = url.path().to_owned();
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }
    connect_with_target(url, target, token, tls_config, role, timeout).await
}

/// Opens a rendezvous `address` from an accept message, sending its path and query
/// byte for byte as the service wrote them.
pub async fn connect_address(
    address: &str,
    tls_config: Option<&Arc<rustls::ClientConfig>>,
    role: Role,
    timeout: Duration,
) -> Result<WebSocket, ConnectError> {
    const CONTROL: &str = "the relay named a rendezvous address with a control character or \
                           a space in it; refused (it would break the upgrade request)";
    let url = crate::web_url::parse(address).map_err(|e| ConnectError::Protocol {
        url: crate::logging::loggable(address).into_owned(),
        detail: match e {
            // A URL but for its line breaks: the request-smuggling case, said as such.
            crate::web_url::WebUrlError::Control
                if crate::web_url::parse(&address.replace(['\t', '\r', '\n'], "")).is_ok() =>
            {
                CONTROL.to_owned()
            }
            e => format!("the rendezvous address is not a URL: {e}"),
        },
    })?;
    // Its path and query go into our request as written: a line break there would end
    // the request line and let the relay write requests of its own (a whole second
    // request, with a body) to whatever host it named. `Url::parse` drops such
    // characters silently, so the check is on the text.
    if address.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ConnectError::Protocol {
            url: display_url(&url),
            detail: CONTROL.to_owned(),
        });
    }
    // The relay chose this address: no weaker transport than the relay's own (a relay
    // reached over TLS cannot send us to plain ws://), and plain ws:// only to loopback,
    // as for the relay itself.
    let plain = url.scheme() == "ws";
    let host = url.host_str().unwrap_or_default();
    if plain && (tls_config.is_some() || !is_loopback_host(host)) {
        return Err(ConnectError::Protocol {
            url: display_url(&url),
            detail: "the relay named a rendezvous address without TLS (ws://); refused: \
                     plain ws:// is only for a loopback relay reached without TLS"
                .to_owned(),
        });
    }
    // And no stronger one than we have: a relay reached with --insecure-ws that names a
    // wss:// address is misconfigured (TLS advice to us would mislead).
    if url.scheme() == "wss" && tls_config.is_none() {
        return Err(ConnectError::Protocol {
            url: display_url(&url),
            detail: "the relay, reached without TLS, named a wss:// rendezvous address; a \
                     relay reached over ws:// must name ws:// addresses (check its configuration)"
                .to_owned(),
        });
    }
    let target = verbatim_target(address).unwrap_or_else(|| "/".to_owned());
    connect_with_target(&url, target, None, tls_config, role, timeout)
        .await
        .map_err(|err| match err {
            ConnectError::Connect { addr, source } => {
                ConnectError::RendezvousUnreachable { addr, source }
            }
            other => other,
        })
}

/// Path and query of `address` exactly as written (`None` when it has no path).
pub(crate) fn verbatim_target(address: &str) -> Option<String> {
    let after_scheme = address.split_once("://")?.1;
    let start = after_scheme.find('/')?;
    let target = after_scheme.get(start..)?;
    Some(target.split('#').next().unwrap_or(target).to_owned())
}

async fn connect_with_target(
    url: &Url,
    target: String,
    token: Option<&Secret>,
    tls_config: Option<&Arc<rustls::ClientConfig>>,
    role: Role,
    timeout: Duration,
) -> Result<WebSocket, ConnectError> {
    // One bound for all of it: TCP, TLS and the upgrade (the connect's own 30 s bound
    // would otherwise come on top).
    let open = async {
        let io = tls::connect(url, tls_config).await?;
        upgrade(io, url, target, token, role).await
    };
    match tokio::time::timeout(timeout, open).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout {
            url: display_url(url),
            timeout,
        }),
    }
}

pub(crate) async fn upgrade(
    mut io: BoxedIo,
    url: &Url,
    target: String,
    token: Option<&Secret>,
    role: Role,
) -> Result<WebSocket, ConnectError> {
    let shown = display_url(url);
    let broken = |detail: String| ConnectError::Protocol {
        url: shown.clone(),
        detail,
    };
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let mut request = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         User-Agent: amlx-agent/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(token) = token {
        request.push_str(&format!(
            "{}: {}\r\n",
            protocol::HEADER_TOKEN,
            token.expose()
        ));
    }
    request.push_str("\r\n");
    let write = async {
        io.write_all(request.as_bytes()).await?;
        io.flush().await
    };
    write
        .await
        .map_err(|e| broken(format!("sending the upgrade request: {e}")))?;

    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_HEAD_LEN {
            return Err(broken(format!(
                "response head longer than {MAX_HEAD_LEN} bytes"
            )));
        }
        let mut chunk = [0u8; 4096];
        let n = io
            .read(&mut chunk)
            .await
            .map_err(|e| broken(format!("reading the upgrade response: {e}")))?;
        if n == 0 {
            return Err(broken("connection closed before an HTTP response".into()));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    };
    let (head, after_head) = buf.split_at_checked(head_end).unwrap_or((&buf, &[]));
    // Lossy text is only split on ASCII separators below, never indexed.
    let head = String::from_utf8_lossy(head).into_owned();
    let after_head = after_head.to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code, reason) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
    let code: u16 = match (version, code.and_then(|c| c.parse().ok())) {
        (Some(v), Some(c)) if v.starts_with("HTTP/1.") => c,
        _ => return Err(broken(format!("not an HTTP response: {status_line:?}"))),
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };

    if code != 101 {
        let mut body = after_head;
        let want = header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(MAX_ERROR_BODY)
            .min(MAX_ERROR_BODY);
        let read_body = async {
            let mut chunk = [0u8; 1024];
            while body.len() < want {
                match io.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => body.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                }
            }
        };
        let _ = tokio::time::timeout(ERROR_BODY_TIMEOUT, read_body).await;
        let chunked =
            header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let body = if chunked { dechunk(&body) } else { body };
        let body = String::from_utf8_lossy(&body).into_owned();
        let text = one_line(if body.trim().is_empty() {
            reason
        } else {
            &body
        });
        return Err(ConnectError::from_status(role, shown, code, text));
    }

    let accept = header("sec-websocket-accept").unwrap_or_default();
    if accept != tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()) {
        return Err(broken("wrong or missing Sec-WebSocket-Accept".into()));
    }
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err(broken("101 without Upgrade: websocket".into()));
    }
    if header("sec-websocket-extensions").is_some_and(|v| !v.trim().is_empty()) {
        return Err(broken(
            "the relay negotiated a WebSocket extension we never offered".into(),
        ));
    }
    let leftover = after_head;
    let (read_half, write_half) = tokio::io::split(io);
    Ok(WebSocket {
        reader: FrameReader::new(read_half, leftover),
        writer: FrameWriter::new(write_half, true),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The data of a chunked body (best effort: error texts only). Works on bytes, so a
/// chunk boundary inside a multi-byte character (or invalid UTF-8) cannot panic; the
/// caller decodes the result once.
fn dechunk(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(line_end) = find(rest, b"\r\n") {
        let (size_line, after) = rest.split_at_checked(line_end).unwrap_or((rest, &[]));
        let after = after.get(2..).unwrap_or_default();
        let size = std::str::from_utf8(size_line)
            .ok()
            .and_then(|line| line.split(';').next())
            .and_then(|hex| usize::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0);
        let (data, tail) = after
            .split_at_checked(size.min(after.len()))
            .unwrap_or((after, &[]));
        out.extend_from_slice(data);
        if size == 0 || data.len() < size {
            break;
        }
        rest = tail.strip_prefix(b"\r\n").unwrap_or(tail);
    }
    out
}

/// Collapses a status text to one short line of at most `MAX_TEXT_CHARS` characters,
/// with what could steer a terminal escaped (the relay chose it).
fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut chars = joined.chars();
    let short: String = chars.by_ref().take(MAX_TEXT_CHARS).collect();
    let short = crate::logging::loggable(&short).into_owned();
    if chars.next().is_some() {
        format!("{short}...")
    } else {
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rendezvous address the relay sends is refused before any connection when its
    /// transport is weaker than the relay's, plain off loopback, or not a WebSocket.
    #[tokio::test]
    async fn a_rendezvous_address_is_judged_before_anything_is_connected() {
        let watcher = tokio::net::TcpListener::bind("0.0.0.0:0")
            .await
            .expect("bind");
        let port = watcher.local_addr().expect("addr").port();
        let tls = Arc::new(
            tls::config_with_roots(rustls::RootCertStore::empty()).expect("client config"),
        );
        let target = "/$hc/hc?sb-hc-action=accept&sb-hc-id=x";
        let cases: Vec<(String, Option<&Arc<rustls::ClientConfig>>, &str)> = vec![
            (
                format!("ws://127.0.0.1:{port}{target}"),
                Some(&tls),
                "without TLS",
            ),
            (format!("ws://0.0.0.0:{port}{target}"), None, "without TLS"),
            (
                format!("http://127.0.0.1:{port}{target}"),
                None,
                "unsupported scheme",
            ),
            (
                format!("gopher://127.0.0.1:{port}{target}"),
                Some(&tls),
                "unsupported scheme",
            ),
            (
                format!("wss://127.0.0.1:{port}{target}"),
                None,
                "the relay, reached without TLS, named a wss:// rendezvous address",
            ),
            // A relay smuggling a request of its own into ours.
            (
                format!(
                    "ws://127.0.0.1:{port}/x HTTP/1.1\r\nHost: victim\r\n\r\n\
                     POST /admin/delete HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
                ),
                None,
                "control character",
            ),
            (
                format!("ws://127.0.0.1:{port}{target}\n"),
                None,
                "control character",
            ),
            (
                format!("ws://127.0.0.1:{port}/a b{target}"),
                None,
                "control character or a space",
            ),
            // Not a URL: the relay's text is escaped and cut in the error (and the log).
            (
                format!(
                    "\u{1b}[2Jnot a url\n2026-01-01T00:00:00Z INFO forged{}",
                    "h".repeat(5000)
                ),
                None,
                "not a URL",
            ),
        ];
        for (address, tls, why) in cases {
            let result =
                connect_address(&address, tls, Role::Rendezvous, Duration::from_secs(2)).await;
            let err = result
                .err()
                .unwrap_or_else(|| panic!("{address}: connected"));
            assert!(err.to_string().contains(why), "{address}: {err}");
            let shown = err.to_string();
            assert!(
                !shown.contains(['\n', '\r', '\u{1b}']),
                "the error is one safe line: {shown:?}"
            );
            assert!(
                shown.len() < 2048,
                "the error is short: {} bytes",
                shown.len()
            );
            let accepted = tokio::time::timeout(Duration::from_millis(100), watcher.accept()).await;
            assert!(accepted.is_err(), "{address}: a connection was made");
        }
    }

    #[test]
    fn texts() {
        assert_eq!(one_line(" a\r\n b  c\n"), "a b c");
        assert_eq!(one_line("\u{1b}[2Jred"), "\\u{1b}[2Jred");
        assert_eq!(one_line(&"x".repeat(400)).len(), MAX_TEXT_CHARS + 3);
        assert_eq!(
            one_line(&"é".repeat(400)).chars().count(),
            MAX_TEXT_CHARS + 3
        );
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            b"hello world"
        );
        assert_eq!(dechunk(b"ff\r\nshort"), b"short");
        let url = Url::parse("wss://h:1/$hc/p?sb-hc-id=1").expect("valid");
        assert_eq!(display_url(&url), "wss://h:1/$hc/p");
        assert_eq!(
            verbatim_target("wss://H:1/$hc/p?a=%7e&b#frag").as_deref(),
            Some("/$hc/p?a=%7e&b")
        );
        assert_eq!(verbatim_target("wss://h"), None);
        assert_eq!(verbatim_target("wss://é/ü").as_deref(), Some("/ü"));
    }

    #[test]
    fn chunked_bodies_are_decoded_as_bytes() {
        // (body, data)
        let cases: &[(&[u8], &[u8])] = &[
            (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
            (b"ff\r\nshort", b"short"),
            // A chunk ending inside a two-byte character, then the rest of it.
            (b"1\r\n\xc3\r\n1\r\n\xa9\r\n0\r\n\r\n", "é".as_bytes()),
            // Sizes counted in bytes: 4 bytes are two characters.
            ("4\r\néé\r\n0\r\n\r\n".as_bytes(), "éé".as_bytes()),
            // Invalid UTF-8 and a size line that is not hex.
            (b"2\r\n\xff\xfe\r\n", b"\xff\xfe"),
            ("é\r\nabc".as_bytes(), b""),
            (b"3;ext=1\r\nabc\r\n0\r\n", b"abc"),
            (b"", b""),
            (b"\r\n", b""),
            (b"ffffffffffffffffffff\r\nx", b""),
            (b"1\r\n", b""),
        ];
        for (body, want) in cases {
            assert_eq!(dechunk(body), *want, "{:?}", String::from_utf8_lossy(body));
        }
    }

    /// Found by `cargo fuzz` (target `upgrade_response`): a chunk size ending inside a
    /// character of the lossily decoded body panicked while reading a relay's error.
    #[test]
    fn chunks_that_split_a_character_are_joined_before_decoding() {
        let cases: [(&[u8], &[u8]); 4] = [
            (
                b"6\r\nhello\r\n6\r\n wor\x9bd\r\n0\r\n\r\n",
                b"hello\r wor\x9bd",
            ),
            (b"1\r\n\xc3\r\n1\r\n\xa9\r\n0\r\n\r\n", "\u{e9}".as_bytes()),
            (b"1\r\n\xc3\xa9\r\n0\r\n\r\n", b"\xc3"),
            (b"3\r\n\xe2\x82", b"\xe2\x82"),
        ];
        for (body, want) in cases {
            assert_eq!(dechunk(body), want, "{body:?}");
            let _ = one_line(&String::from_utf8_lossy(&dechunk(body)));
        }
    }
}
