//! azbridge's stream preamble, so one Hybrid Connection carries many ports and the agent
//! interoperates with azbridge and the VS Code "Azure Debugging Relay" extension.
//!
//! Checked against azbridge (`TcpLocalForwardBridge`, `RemoteForwardBridge`):
//! - sender, right after the WebSocket opens: `[1, 0, mode]`, one length byte, the UTF-8
//!   port name (mode 0 = TCP, 1 = UDP; azbridge sends them as two writes);
//! - listener: `[1, 0, mode]` on success, `[0, 0, 0]` for a version (or mode byte) it does
//!   not know, `[0, 0, 1]` when a UDP forward is asked for TCP, `[0, 0, 255]` when a TCP
//!   forward is asked for UDP; an unknown port name is closed without a reply;
//! - when the listener has exactly one forward, any numeric port name selects it.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::time::Duration;

use crate::relay::client::Tunnel;
use crate::relay::protocol::close_code;

/// Preamble version we speak (1.0).
pub const VERSION: [u8; 2] = [1, 0];
/// Mode byte for a TCP stream (the only mode we forward).
pub const MODE_TCP: u8 = 0;
/// Mode byte for UDP datagrams.
pub const MODE_UDP: u8 = 1;
/// Listener reply: version (or mode byte) not understood.
pub const REPLY_UNKNOWN_VERSION: [u8; 3] = [0, 0, 0];
/// Listener reply: the port is a UDP forward but TCP was asked for.
pub const REPLY_EXPECTED_UDP: [u8; 3] = [0, 0, 1];
/// Listener reply: the port is a TCP forward but UDP was asked for.
pub const REPLY_EXPECTED_TCP: [u8; 3] = [0, 0, 255];
/// Listener reply: accepted, TCP.
pub const REPLY_OK_TCP: [u8; 3] = [1, 0, MODE_TCP];
/// Longest port name (its length travels in one byte).
pub const MAX_PORT_NAME_BYTES: usize = 255;
/// How long either side waits for the other's preamble (azbridge uses 60 s write timeouts).
pub const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the preamble failed.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("port name {0:?} is longer than {MAX_PORT_NAME_BYTES} bytes")]
    NameTooLong(String),
    #[error(
        "the listener closed the connection before answering: port {0:?} is not forwarded there (check its --ports/--forward or azbridge -R list)"
    )]
    Refused(String),
    #[error("the listener does not speak azbridge preamble 1.0 (it answered [0,0,0])")]
    UnknownVersion,
    #[error("the listener forwards port {0:?} as UDP, not TCP")]
    ExpectedUdp(String),
    #[error("the listener answered {0:?} instead of [1,0,0]")]
    BadReply([u8; 3]),
    #[error("the listener did not answer the preamble within {PREAMBLE_TIMEOUT:?}")]
    Timeout,
    #[error("the relayed connection failed during the preamble: {0}")]
    Io(#[from] io::Error),
}

/// The bytes a sender writes for a TCP connection to `port_name`.
pub fn encode_request(port_name: &str) -> Result<Vec<u8>, BridgeError> {
    let name = port_name.as_bytes();
    let len =
        u8::try_from(name.len()).map_err(|_| BridgeError::NameTooLong(port_name.to_owned()))?;
    let mut out = vec![VERSION[0], VERSION[1], MODE_TCP, len];
    out.extend_from_slice(name);
    Ok(out)
}

/// Sender side: writes the preamble for `port_name` and waits for the listener's answer.
pub async fn open(tunnel: &mut Tunnel, port_name: &str) -> Result<(), BridgeError> {
    let request = encode_request(port_name)?;
    tunnel.write(&request).await?;
    let reply = tokio::time::timeout(PREAMBLE_TIMEOUT, tunnel.read_exact(3))
        .await
        .map_err(|_| BridgeError::Timeout)??
        .ok_or_else(|| BridgeError::Refused(port_name.to_owned()))?;
    match [reply[0], reply[1], reply[2]] {
        REPLY_OK_TCP => Ok(()),
        REPLY_UNKNOWN_VERSION => Err(BridgeError::UnknownVersion),
        REPLY_EXPECTED_UDP => Err(BridgeError::ExpectedUdp(port_name.to_owned())),
        other => Err(BridgeError::BadReply(other)),
    }
}

/// Where a listener sends one port name's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The port name senders ask for (azbridge: the local port number, as text).
    pub name: String,
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}:{}", self.name, self.host, self.port)
    }
}

impl FromStr for Forward {
    type Err = String;

    /// `name=host:port` (IPv6 hosts in brackets).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, target) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not name=host:port"))?;
        let (host, port) = target
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not name=host:port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{s:?}: {port:?} is not a port number 1-65535"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if name.is_empty() || name.len() > MAX_PORT_NAME_BYTES || host.is_empty() {
            return Err(format!("{s:?}: empty or over-long name or host"));
        }
        Ok(Forward {
            name: name.to_owned(),
            host: host.to_owned(),
            port,
        })
    }
}

/// The allowlist of port names a listener forwards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwards(pub Vec<Forward>);

impl Forwards {
    /// `--ports 5678,5679`: each port forwards to 127.0.0.1 under its own number.
    pub fn from_ports(ports: &[u16]) -> Forwards {
        Forwards(
            ports
                .iter()
                .map(|p| Forward {
                    name: p.to_string(),
                    host: "127.0.0.1".to_owned(),
                    port: *p,
                })
                .collect(),
        )
    }

    /// The forward for `name`: an exact match, or (azbridge rule) the only forward when
    /// there is exactly one and `name` is a number.
    pub fn resolve(&self, name: &str) -> Option<&Forward> {
        if let [only] = self.0.as_slice()
            && name.parse::<i64>().is_ok()
        {
            return Some(only);
        }
        self.0.iter().find(|f| f.name == name)
    }
}

/// Listener side: reads the sender's preamble and finds its forward. Answers and closes
/// the tunnel itself for a version or mode it cannot serve; returns `None` then, and for
/// an unknown name (closed without a reply, as azbridge does).
pub async fn accept(
    mut tunnel: Tunnel,
    forwards: &Forwards,
) -> Result<Option<(Tunnel, Forward)>, BridgeError> {
    let request = tokio::time::timeout(PREAMBLE_TIMEOUT, read_request(&mut tunnel)).await;
    let (mode, name) = match request {
        Ok(Ok(Request::Valid { mode, name })) => (mode, name),
        Ok(Ok(Request::UnknownVersion(head))) => {
            tracing::warn!(?head, "sender speaks an unknown preamble version");
            tunnel.write(&REPLY_UNKNOWN_VERSION).await?;
            tunnel.finish(close_code::NORMAL, "").await;
            return Ok(None);
        }
        Ok(Ok(Request::Closed)) => {
            tunnel.finish(close_code::NORMAL, "").await;
            return Ok(None);
        }
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            tracing::warn!("sender sent no preamble within {PREAMBLE_TIMEOUT:?}");
            tunnel.finish(close_code::NORMAL, "").await;
            return Ok(None);
        }
    };
    let Some(forward) = forwards.resolve(&name).cloned() else {
        tracing::warn!(
            port_name = name,
            "refused: port name not in the forward list"
        );
        tunnel.finish(close_code::NORMAL, "").await;
        return Ok(None);
    };
    if mode == MODE_UDP {
        tracing::warn!(port_name = name, "refused: UDP asked for a TCP forward");
        tunnel.write(&REPLY_EXPECTED_TCP).await?;
        tunnel.finish(close_code::NORMAL, "").await;
        return Ok(None);
    }
    Ok(Some((tunnel, forward)))
}

/// What a sender's preamble said.
enum Request {
    Valid {
        mode: u8,
        name: String,
    },
    UnknownVersion([u8; 3]),
    /// The sender closed before a whole preamble.
    Closed,
}

async fn read_request(tunnel: &mut Tunnel) -> io::Result<Request> {
    let Some(head) = tunnel.read_exact(3).await? else {
        return Ok(Request::Closed);
    };
    let (version, mode) = ([head[0], head[1]], head[2]);
    if version != VERSION || !(mode == MODE_TCP || mode == MODE_UDP) {
        return Ok(Request::UnknownVersion([head[0], head[1], head[2]]));
    }
    let Some(len) = tunnel.read_exact(1).await? else {
        return Ok(Request::Closed);
    };
    let Some(name) = tunnel.read_exact(usize::from(len[0])).await? else {
        return Ok(Request::Closed);
    };
    Ok(Request::Valid {
        mode,
        name: String::from_utf8_lossy(&name).into_owned(),
    })
}

/// Listener side, after the local target is connected: tells the sender to go ahead.
pub async fn confirm(tunnel: &Tunnel) -> Result<(), BridgeError> {
    tunnel.write(&REPLY_OK_TCP).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes() {
        assert_eq!(
            encode_request("5678").expect("short"),
            [1, 0, 0, 4, b'5', b'6', b'7', b'8']
        );
        assert_eq!(encode_request("").expect("short"), [1, 0, 0, 0]);
        assert!(matches!(
            encode_request(&"x".repeat(256)),
            Err(BridgeError::NameTooLong(_))
        ));
    }

    /// The listener's answers, against a scripted sender.
    #[tokio::test]
    async fn listener_replies_follow_azbridge() {
        use crate::relay::client::frame::OpCode;
        use crate::relay::client::tunnel::test_support::tunnel_and_peer;

        let forwards = Forwards::from_ports(&[5678, 5679]);
        // (what the sender writes, in separate messages; the reply bytes before Close)
        let cases: &[(&[&[u8]], &[u8], bool)] = &[
            (&[&[1, 0, 0, 4], b"5679"], &[], true),
            (&[&[2, 0, 0, 4], b"5679"], &REPLY_UNKNOWN_VERSION, false),
            (&[&[1, 0, 7, 4], b"5679"], &REPLY_UNKNOWN_VERSION, false),
            (&[&[1, 0, 1, 4], b"5678"], &REPLY_EXPECTED_TCP, false),
            (&[&[1, 0, 0, 3], b"web"], &[], false),
        ];
        for (messages, reply, accepted) in cases {
            let (tunnel, (mut peer_reader, mut peer_writer)) = tunnel_and_peer();
            for m in *messages {
                peer_writer
                    .write_frame(OpCode::Binary, m)
                    .await
                    .expect("write");
            }
            let got = accept(tunnel, &forwards).await.expect("no transport error");
            assert_eq!(got.is_some(), *accepted, "{messages:?}");
            if let Some((tunnel, forward)) = got {
                assert_eq!(forward.port, 5679);
                confirm(&tunnel).await.expect("reply");
                let f = peer_reader
                    .read_frame()
                    .await
                    .expect("read")
                    .expect("frame");
                assert_eq!(f.payload, REPLY_OK_TCP);
                continue;
            }
            let mut bytes = Vec::new();
            let close = loop {
                let f = peer_reader
                    .read_frame()
                    .await
                    .expect("read")
                    .expect("frame");
                match f.opcode {
                    OpCode::Close => break f,
                    _ => bytes.extend_from_slice(&f.payload),
                }
            };
            assert_eq!(bytes, *reply, "{messages:?}");
            assert_eq!(close.close_code().0, close_code::NORMAL);
        }
    }

    /// The sender's view of each answer.
    #[tokio::test]
    async fn sender_understands_every_reply() {
        use crate::relay::client::frame::OpCode;
        use crate::relay::client::tunnel::test_support::tunnel_and_peer;

        let cases: &[(Option<[u8; 3]>, &str)] = &[
            (Some(REPLY_OK_TCP), "ok"),
            (Some(REPLY_UNKNOWN_VERSION), "does not speak"),
            (Some(REPLY_EXPECTED_UDP), "as UDP"),
            (Some([9, 9, 9]), "instead of [1,0,0]"),
            (None, "not forwarded there"),
        ];
        for (reply, expected) in cases {
            let (mut tunnel, (mut peer_reader, mut peer_writer)) = tunnel_and_peer();
            match reply {
                Some(r) => peer_writer
                    .write_frame(OpCode::Binary, r)
                    .await
                    .expect("write"),
                None => peer_writer
                    .write_close(close_code::NORMAL, "")
                    .await
                    .expect("write"),
            }
            let got = match open(&mut tunnel, "5678").await {
                Ok(()) => "ok".to_owned(),
                Err(e) => e.to_string(),
            };
            assert!(got.contains(expected), "{reply:?}: {got}");
            let request = peer_reader
                .read_frame()
                .await
                .expect("read")
                .expect("frame");
            assert_eq!(request.payload, encode_request("5678").expect("short"));
        }
    }

    #[test]
    fn forward_specs() {
        let cases = [
            ("dbg=127.0.0.1:5678", Some(("dbg", "127.0.0.1", 5678))),
            ("5679=[::1]:5679", Some(("5679", "::1", 5679))),
            ("a=host.example:1", Some(("a", "host.example", 1))),
            ("noequals", None),
            ("a=host", None),
            ("a=host:0", None),
            ("a=host:70000", None),
            ("=host:1", None),
        ];
        for (spec, expected) in cases {
            let got = spec.parse::<Forward>().ok();
            let got = got
                .as_ref()
                .map(|f| (f.name.as_str(), f.host.as_str(), f.port));
            assert_eq!(got, expected, "{spec}");
        }
    }

    #[test]
    fn resolution_follows_azbridge() {
        let one = Forwards::from_ports(&[5678]);
        let two = Forwards::from_ports(&[5678, 5679]);
        let named = Forwards(vec!["dbg=127.0.0.1:1".parse().expect("valid")]);
        let cases: &[(&Forwards, &str, Option<u16>)] = &[
            (&one, "5678", Some(5678)),
            (&one, "9999", Some(5678)),
            (&one, "web", None),
            (&two, "5679", Some(5679)),
            (&two, "9999", None),
            (&named, "dbg", Some(1)),
            (&named, "42", Some(1)),
            (&named, "other", None),
        ];
        for (forwards, name, port) in cases {
            assert_eq!(
                forwards.resolve(name).map(|f| f.port),
                *port,
                "{name} in {forwards:?}"
            );
        }
    }
}
