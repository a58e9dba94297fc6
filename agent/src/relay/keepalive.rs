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
}
