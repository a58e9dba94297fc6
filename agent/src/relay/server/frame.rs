//! Just enough of RFC 6455 framing to relay frames between two clients: read a client
//! frame header, unmask payloads, write unmasked server frames.
//!
//! The relay frames by hand (instead of through tungstenite) because tungstenite answers
//! a Close at once and then refuses to send, which would break half-close: after one side
//! closes, the other direction must keep flowing until that side closes too.

use tokio::io::{AsyncRead, AsyncReadExt};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Control frames carry at most this many payload bytes (RFC 6455 5.5).
pub const MAX_CONTROL_PAYLOAD: u64 = 125;

/// Close code: protocol error (the protocol module lists only the relay's own codes).
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;

/// One frame header as read from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    /// Clients must mask; an unmasked client frame is tolerated.
    pub mask: Option<[u8; 4]>,
    pub len: u64,
}

impl Header {
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
}

/// Reads one frame header. `Ok(None)`: the peer closed the TCP stream between frames.
/// Not cancel-safe (a partly read header is lost); callers only cancel to tear down.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Header>, FrameError> {
    let mut first = [0u8; 1];
    if r.read(&mut first).await? == 0 {
        return Ok(None);
    }
    let b0 = first[0];
    let b1 = r.read_u8().await?;
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol(
            "reserved bits set (no extension was negotiated)",
        ));
    }
    let opcode = b0 & 0x0F;
    if !matches!(
        opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(FrameError::Protocol("unknown opcode"));
    }
    let len = match b1 & 0x7F {
        126 => u64::from(r.read_u16().await?),
        127 => {
            let len = r.read_u64().await?;
            if len >> 63 != 0 {
                return Err(FrameError::Protocol("frame length has the top bit set"));
            }
            len
        }
        n => u64::from(n),
    };
    let header = Header {
        fin: b0 & 0x80 != 0,
        opcode,
        mask: None,
        len,
    };
    if header.is_control() && (len > MAX_CONTROL_PAYLOAD || !header.fin) {
        return Err(FrameError::Protocol(
            "control frame fragmented or longer than 125 bytes",
        ));
    }
    let mask = if b1 & 0x80 != 0 {
        let mut m = [0u8; 4];
        r.read_exact(&mut m).await?;
        Some(m)
    } else {
        None
    };
    Ok(Some(Header { mask, ..header }))
}

/// Unmasks `buf`, which starts `offset` bytes into the frame's payload.
pub fn unmask(buf: &mut [u8], mask: Option<[u8; 4]>, offset: u64) {
    if let Some(mask) = mask {
        let key = mask.iter().cycle().skip((offset % 4) as usize);
        for (b, k) in buf.iter_mut().zip(key) {
            *b ^= k;
        }
    }
}

/// The header of an unmasked (server-to-client) frame.
pub fn encode_header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    out.push(if fin { 0x80 } else { 0 } | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out
}

/// A whole unmasked control frame.
pub fn control_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = encode_header(true, opcode, payload.len() as u64);
    out.extend_from_slice(payload);
    out
}

/// A Close frame payload: code then a reason trimmed to fit a control frame.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut out = code.to_be_bytes().to_vec();
    out.extend_from_slice(crate::relay::protocol::close_reason(reason).as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with `mask`.
    fn client_frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = encode_header(true, 0, payload.len() as u64);
        out[0] = b0;
        out[1] |= 0x80;
        out.extend_from_slice(&mask);
        let mut body = payload.to_vec();
        unmask(&mut body, Some(mask), 0);
        out.extend_from_slice(&body);
        out
    }

    #[tokio::test]
    async fn reads_headers_of_every_length_form() {
        for len in [0usize, 5, 125, 126, 65535, 65536] {
            let payload = vec![7u8; len];
            let bytes = client_frame(0x82, &payload, [1, 2, 3, 4]);
            let mut input = bytes.as_slice();
            let h = read_header(&mut input)
                .await
                .expect("valid")
                .expect("frame");
            assert_eq!(
                h,
                Header {
                    fin: true,
                    opcode: OP_BINARY,
                    mask: Some([1, 2, 3, 4]),
                    len: len as u64
                }
            );
            let mut body = input.to_vec();
            unmask(&mut body, h.mask, 0);
            assert_eq!(body, payload);
        }
    }

    #[tokio::test]
    async fn rejects_protocol_errors() {
        let cases: &[(&str, Vec<u8>)] = &[
            ("rsv1 (deflate) set", client_frame(0xC2, b"x", [0; 4])),
            ("unknown opcode", client_frame(0x83, b"x", [0; 4])),
            ("fragmented ping", client_frame(0x09, b"x", [0; 4])),
            ("long ping", client_frame(0x89, &[0; 126], [0; 4])),
        ];
        for (name, bytes) in cases {
            let mut input = bytes.as_slice();
            assert!(
                matches!(read_header(&mut input).await, Err(FrameError::Protocol(_))),
                "{name}"
            );
        }
        let mut empty: &[u8] = &[];
        assert!(read_header(&mut empty).await.expect("clean eof").is_none());
    }

    #[test]
    fn unmask_across_chunks_matches_one_pass() {
        let mask = Some([9, 8, 7, 6]);
        let mut whole = b"hello relay".to_vec();
        unmask(&mut whole, mask, 0);
        let mut parts = b"hello relay".to_vec();
        let (a, b) = parts.split_at_mut(3);
        unmask(a, mask, 0);
        unmask(b, mask, 3);
        assert_eq!(whole, parts);
    }

    #[test]
    fn close_payload_fits_a_control_frame() {
        let long = "é".repeat(200);
        let p = close_payload(1001, &long);
        assert!(p.len() <= MAX_CONTROL_PAYLOAD as usize);
        assert_eq!(&p[..2], &1001u16.to_be_bytes());
        assert!(std::str::from_utf8(&p[2..]).is_ok());
    }
}
