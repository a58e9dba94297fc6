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

use crate::logging::Throttle;
use crate::relay::client::Tunnel;
use crate::relay::client::tunnel::Answer;
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
        "the listener closed the connection before answering: either port {0:?} is not forwarded there (check its --ports/--forward or azbridge -R list) or nothing listens on the port it forwards to (is the debugger, e.g. VS Code's \"listen\" configuration, started?)"
    )]
    Refused(String),
    /// The listener closed with a reason (ours say why their target was unreachable).
    #[error("the listener closed the connection before answering: {0}")]
    RefusedWith(String),
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
    request(tunnel, port_name).await?;
    let reply = tokio::time::timeout(PREAMBLE_TIMEOUT, tunnel.read_exact(REPLY_LEN)).await;
    check_reply(reply, tunnel.peer_close_reason(), port_name)
}

/// Length of the listener's answer to a preamble.
pub const REPLY_LEN: usize = 3;

/// Sender side, first half of [`open`]: writes the preamble for `port_name` only. The
/// answer is then read by [`Tunnel::splice_after`] with [`check_reply`], while the
/// client's first bytes already travel (the listener keeps them until its target is
/// connected; a refusing listener drops them with the connection).
pub async fn request(tunnel: &Tunnel, port_name: &str) -> Result<(), BridgeError> {
    request_with(tunnel, port_name, &[]).await
}

/// [`request`], with the client's first bytes `first` in the same frame: one write, and on
/// the first exchange one wake-up fewer of the relay and of the listener (which reads the
/// preamble and keeps the rest for its target).
pub async fn request_with(
    tunnel: &Tunnel,
    port_name: &str,
    first: &[u8],
) -> Result<(), BridgeError> {
    let mut request = encode_request(port_name)?;
    request.extend_from_slice(first);
    tunnel.write(&request).await?;
    Ok(())
}

/// Sender side: what the listener's answer (read within [`PREAMBLE_TIMEOUT`]) means;
/// `closed_with` is the reason of the listener's Close, when it closed with one instead.
pub fn check_reply(
    answer: Answer,
    closed_with: Option<&str>,
    port_name: &str,
) -> Result<(), BridgeError> {
    let reply = answer
        .map_err(|_| BridgeError::Timeout)??
        .ok_or_else(|| match closed_with {
            // The listener's text: escaped and short in our messages.
            Some(reason) => BridgeError::RefusedWith(crate::logging::loggable(reason).into_owned()),
            None => BridgeError::Refused(port_name.to_owned()),
        })?;
    match reply.as_slice() {
        [a, b, c] => match [*a, *b, *c] {
            REPLY_OK_TCP => Ok(()),
            REPLY_UNKNOWN_VERSION => Err(BridgeError::UnknownVersion),
            REPLY_EXPECTED_UDP => Err(BridgeError::ExpectedUdp(port_name.to_owned())),
            other => Err(BridgeError::BadReply(other)),
        },
        _ => Err(BridgeError::Refused(port_name.to_owned())),
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
    tunnel: Tunnel,
    forwards: &Forwards,
) -> Result<Option<(Tunnel, Forward)>, BridgeError> {
    accept_matching(tunnel, forwards, Forwards::resolve).await
}

/// [`accept`] without azbridge's lone-forward rule: the port name must match exactly
/// (a debug target must never hand a developer another rank's debugger).
pub async fn accept_exact(
    tunnel: Tunnel,
    forwards: &Forwards,
) -> Result<Option<(Tunnel, Forward)>, BridgeError> {
    accept_matching(tunnel, forwards, |forwards, name| {
        forwards.0.iter().find(|f| f.name == name)
    })
    .await
}

/// The refusals any sender can make a listener log as fast as it opens connections (one
/// with the Send right wrote 1,100 lines a second of bad preambles): one throttle per kind,
/// for the whole process, whichever listener refused.
struct RefusedLines {
    unknown_version: Throttle,
    no_preamble: Throttle,
    unknown_name: Throttle,
    udp: Throttle,
}

static REFUSED: RefusedLines = RefusedLines {
    unknown_version: Throttle::new(),
    no_preamble: Throttle::new(),
    unknown_name: Throttle::new(),
    udp: Throttle::new(),
};

async fn accept_matching(
    mut tunnel: Tunnel,
    forwards: &Forwards,
    resolve: impl for<'f> Fn(&'f Forwards, &str) -> Option<&'f Forward>,
) -> Result<Option<(Tunnel, Forward)>, BridgeError> {
    let request = tokio::time::timeout(PREAMBLE_TIMEOUT, read_request(&mut tunnel)).await;
    let (mode, name) = match request {
        Ok(Ok(Request::Valid { mode, name })) => (mode, name),
        Ok(Ok(Request::UnknownVersion(head))) => {
            REFUSED.unknown_version.log(|left_out| {
                tracing::warn!(?head, "sender speaks an unknown preamble version{left_out}");
            });
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
            REFUSED.no_preamble.log(|left_out| {
                tracing::warn!("sender sent no preamble within {PREAMBLE_TIMEOUT:?}{left_out}");
            });
            tunnel.finish(close_code::NORMAL, "").await;
            return Ok(None);
        }
    };
    let Some(forward) = resolve(forwards, &name).cloned() else {
        REFUSED.unknown_name.log(|left_out| {
            tracing::warn!(
                port_name = name,
                "refused: port name not in the forward list{left_out}"
            );
        });
        tunnel.finish(close_code::NORMAL, "").await;
        return Ok(None);
    };
    if mode == MODE_UDP {
        REFUSED.udp.log(|left_out| {
            tracing::warn!(
                port_name = name,
                "refused: UDP asked for a TCP forward{left_out}"
            );
        });
        tunnel.write(&REPLY_EXPECTED_TCP).await?;
        tunnel.finish(close_code::NORMAL, "").await;
        return Ok(None);
    }
    if forward.name != name {
        // azbridge's lone-forward rule took another number: say so, since a listener that
        // shares its Hybrid Connection may have been meant.
        tracing::info!(
            port_name = forward.name,
            asked = name,
            "the sender asked for port {name}; this listener's only forward takes any number"
        );
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
#[path = "bridge_tests.rs"]
mod tests;
