//! A frame-level WebSocket client for the tests that need control a library would take
//! away (sending after a Close), and the raw upgrade head used with `harness::http`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::harness::{DEADLINE, KEY, ROOT, Relay, Ws, next_accept, token};

/// A WebSocket upgrade request head for raw HTTP.
pub fn upgrade_head(url: &str, extra_headers: &[(&str, &str)]) -> String {
    let url = url::Url::parse(url).expect("valid URL");
    let host = format!(
        "{}:{}",
        url.host_str().expect("host"),
        url.port().expect("port")
    );
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let mut head = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// A masked client frame with any first byte and any *declared* payload length (which
/// may differ from, or dwarf, the payload actually appended).
pub fn masked_frame(b0: u8, declared_len: u64, payload: &[u8]) -> Vec<u8> {
    let mask = [0x0f, 0x1e, 0x2d, 0x3c];
    let mut frame = vec![b0];
    match declared_len {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= u64::from(u16::MAX) => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&n.to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// A whole masked frame: FIN set, `opcode`, the payload's own length.
pub fn whole_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    masked_frame(0x80 | opcode, payload.len() as u64, payload)
}

/// A frame-level WebSocket client: it never answers a Close by itself, so a test can
/// keep sending after receiving one (what a half-closing peer does).
pub struct RawWs {
    tcp: TcpStream,
}

/// Opcodes the raw client uses.
pub const OP_BINARY: u8 = 2;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;
pub const OP_PONG: u8 = 10;

impl RawWs {
    /// Upgrades to `url` (ws only); panics unless the answer is 101.
    pub async fn connect(url: &str, extra_headers: &[(&str, &str)]) -> RawWs {
        let parsed = url::Url::parse(url).expect("valid URL");
        let addr = format!(
            "{}:{}",
            parsed.host_str().expect("host"),
            parsed.port().expect("port")
        );
        let tcp = TcpStream::connect(addr).await.expect("connect");
        RawWs::upgrade(tcp, url, extra_headers).await
    }

    /// Upgrades `tcp`, already connected to `url`'s relay; panics unless the answer is 101.
    pub async fn upgrade(mut tcp: TcpStream, url: &str, extra_headers: &[(&str, &str)]) -> RawWs {
        tcp.write_all(upgrade_head(url, extra_headers).as_bytes())
            .await
            .expect("send upgrade");
        // Read the response head byte by byte so no frame bytes are swallowed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let b = tokio::time::timeout(DEADLINE, tcp.read_u8())
                .await
                .expect("101 in time")
                .expect("read 101");
            head.push(b);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        RawWs { tcp }
    }

    /// Sends one masked frame.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&frame).await.expect("send frame");
    }

    /// Sends bytes as they are: a hand-made (possibly broken) frame, or garbage.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        // The relay may already have hung up on an earlier part: that is not our concern.
        let _ = self.tcp.write_all(bytes).await;
    }

    /// Receives frames until a Close (its payload) or the end of the stream (`None`).
    pub async fn recv_close(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.recv().await? {
                (OP_CLOSE, payload) => return Some(payload),
                _ => continue,
            }
        }
    }

    /// Receives one (unmasked, unfragmented) frame; `None` on TCP EOF.
    pub async fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        tokio::time::timeout(DEADLINE, self.recv_inner())
            .await
            .expect("frame in time")
    }

    async fn recv_inner(&mut self) -> Option<(u8, Vec<u8>)> {
        // Bounded: a test frame is small; anything bigger is a relay bug, not a test hang.
        const MAX_TEST_FRAME: u64 = 1 << 20;
        let b0 = self.tcp.read_u8().await.ok()?;
        let b1 = self.tcp.read_u8().await.ok()?;
        let len = match b1 & 0x7F {
            126 => u64::from(self.tcp.read_u16().await.ok()?),
            127 => self.tcp.read_u64().await.ok()?,
            n => u64::from(n),
        };
        assert!(len <= MAX_TEST_FRAME, "the relay sent a {len}-byte frame");
        let mut payload = vec![0u8; len as usize];
        self.tcp.read_exact(&mut payload).await.ok()?;
        Some((b0 & 0x0F, payload))
    }
}

/// A sender on `path` (root key) and the listener's rendezvous leg for it, both raw, with
/// `control` the listener's control channel on `path`: (sender, listener's leg).
pub async fn raw_rendezvous(relay: &Relay, control: &mut Ws, path: &str) -> (RawWs, RawWs) {
    let tok = token(ROOT, KEY, path, 3600);
    let url = relay.url(path, "connect");
    let sender =
        tokio::spawn(
            async move { RawWs::connect(&url, &[("ServiceBusAuthorization", &tok)]).await },
        );
    let accept = next_accept(control).await;
    let address = accept["accept"]["address"].as_str().expect("address");
    let leg = RawWs::connect(address, &[]).await;
    (sender.await.expect("sender task"), leg)
}
