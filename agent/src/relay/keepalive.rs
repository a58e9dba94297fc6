//! TCP keepalive for every connection between a relay and its clients, on both ends.
//!
//! Nothing else notices a peer that vanished without a FIN or RST (a network partition, a
//! machine switched off): `relay serve` sends no Pings of its own, and a tunnel's data
//! connection carries none either. Without it a dead listener kept its registration on
//! the relay (drawing senders that then waited 30 s for nothing) until its token expired,
//! a relayed pair whose two ends vanished was held for good, and a client's tunnel
//! through a partitioned relay looked attached but was dead, its local socket open,
//! long after the partition ended. The probes are the kernel's: no peer sees a byte.

use std::os::fd::AsFd;
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};

/// A connection silent for this long has its peer probed...
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// ...every this long...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ...and this many unanswered probes end it: a vanished peer is noticed within about a
/// minute of silence.
pub const KEEPALIVE_PROBES: u32 = 3;

/// Turns on TCP keepalive for `tcp` with the timing above.
pub fn probe_when_silent(tcp: &impl AsFd) -> nix::Result<()> {
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    setsockopt(tcp, sockopt::TcpKeepIdle, &secs(KEEPALIVE_IDLE))?;
    setsockopt(tcp, sockopt::TcpKeepInterval, &secs(KEEPALIVE_INTERVAL))?;
    setsockopt(tcp, sockopt::TcpKeepCount, &KEEPALIVE_PROBES)?;
    setsockopt(tcp, sockopt::KeepAlive, &true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_is_probed_with_our_timing() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let tcp =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        probe_when_silent(&tcp).expect("keepalive set");
        use nix::sys::socket::getsockopt;
        assert!(getsockopt(&tcp, sockopt::KeepAlive).expect("SO_KEEPALIVE"));
        assert_eq!(getsockopt(&tcp, sockopt::TcpKeepIdle).expect("idle"), 30);
        assert_eq!(
            getsockopt(&tcp, sockopt::TcpKeepInterval).expect("interval"),
            10
        );
        assert_eq!(getsockopt(&tcp, sockopt::TcpKeepCount).expect("count"), 3);
    }

    /// The kernel's timer on our end of the connection from local port `ours` to `theirs`
    /// (`/proc/self/net/tcp`: `tr` 2 is a keepalive timer).
    fn timer(ours: u16, theirs: u16) -> Option<u8> {
        let table = std::fs::read_to_string("/proc/self/net/tcp").ok()?;
        let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
        table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if port(fields.get(1)?)? != ours || port(fields.get(2)?)? != theirs {
                return None;
            }
            fields.get(5)?.split_once(':')?.0.parse().ok()
        })
    }

    #[tokio::test]
    async fn a_client_connection_to_a_relay_is_probed() {
        let relay = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let relay_port = relay.local_addr().expect("addr").port();
        let url = url::Url::parse(&format!("ws://127.0.0.1:{relay_port}/")).expect("url");
        let within = Duration::from_secs(10);
        let (client, accepted) = tokio::join!(
            tokio::time::timeout(within, crate::relay::client::tls::connect(&url, None)),
            tokio::time::timeout(within, relay.accept()),
        );
        let _client = client.expect("connected in time").expect("connected");
        let (_tcp, from) = accepted.expect("accepted in time").expect("accepted");
        assert_eq!(
            timer(from.port(), relay_port),
            Some(2),
            "a keepalive timer runs"
        );
    }
}
