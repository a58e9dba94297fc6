//! The two forwarders: relayed connections to local ports by azbridge port name
//! (`relay listen`, azbridge -R) and local connections out through the relay
//! (`relay connect`, azbridge -L).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::listener::{AcceptHandler, DRAIN_TIMEOUT, Decision};
use super::sender::WRONG_LISTENER_ATTEMPTS;
use super::spare::{self, Proof, Spares};
use super::tunnel::{Expect, end_in_order, reset_unless_ended_in_order};
use super::{Endpoint, Tunnel, sender};
use crate::logging::Throttle;
use crate::relay::bridge::{self, BridgeError, Forward, Forwards};
use crate::relay::protocol::{self, Accept, close_code, status};

/// How long connecting to a local forward target may take.
pub const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed local accept (e.g. out of file descriptors) so it cannot spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(200);

/// A network in CIDR notation (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix must be 0-{max}"))?
        };
        Ok(IpNet { addr, prefix })
    }
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> (u128, u8) {
            match ip.to_canonical() {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((net, net_width), (addr, width)) = (bits(self.addr), bits(ip));
        if net_width != width {
            return false;
        }
        let mask = if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix))
        };
        net & mask == addr & mask
    }
}

/// The failures of relayed connections that any sender can make `relay listen` log as
/// fast as it opens them (a hostile sender made 1,100 lines a second): one throttle per
/// kind, for the process.
struct FailedLines {
    /// The tunnel broke before or while the preamble was answered.
    preamble: Throttle,
    /// The forward's target could not be reached.
    target: Throttle,
    /// A tunnel broke while relaying.
    broke: Throttle,
}

static FAILED: FailedLines = FailedLines {
    preamble: Throttle::new(),
    target: Throttle::new(),
    broke: Throttle::new(),
};

/// `relay listen`: forwards relayed connections by port name, rejecting senders from
/// outside the allowed networks with 403, and senders whose path names a port it does not
/// forward with 421 (another listener of the Hybrid Connection serves it: the sender tries
/// again and the relay picks a listener anew).
#[derive(Debug)]
pub struct RemoteForwarder {
    /// The Hybrid Connection, to tell a sender's path suffix (its port name) from it.
    pub entity: String,
    pub forwards: Forwards,
    /// Empty means every sender is allowed.
    pub allow: Vec<IpNet>,
}

impl AcceptHandler for RemoteForwarder {
    fn decide(&self, accept: &Accept) -> Decision {
        if !self.allow.is_empty() {
            let from = accept.remote_endpoint.address.parse::<IpAddr>();
            if !matches!(from, Ok(ip) if self.allow.iter().any(|net| net.contains(ip))) {
                return Decision::Reject {
                    status: status::FORBIDDEN,
                    description: format!(
                        "sender address {} is not allowed by this listener",
                        accept.remote_endpoint.address
                    ),
                };
            }
        }
        // By the preamble's own rule (a lone numeric forward takes any number), so that
        // what is accepted here is never refused at the preamble for its name. A sender
        // that names no port (azbridge, hyco-ws) is judged by its preamble alone.
        match protocol::sender_suffix(&self.entity, &accept.address) {
            Some(named) if self.forwards.resolve(&named).is_none() => Decision::Reject {
                status: status::MISDIRECTED,
                description: format!(
                    "port {named} is not forwarded by this listener (another listener of \
                     the Hybrid Connection may serve it)"
                ),
            },
            _ => Decision::Accept,
        }
    }

    async fn handle(self: Arc<Self>, tunnel: Tunnel, _accept: Accept) {
        self.forward(tunnel, None).await;
    }

    /// Connects to the target the sender's address names while the rendezvous is under
    /// way, rather than after it and the preamble: the two overlap instead of adding up.
    async fn serve(
        self: Arc<Self>,
        rendezvous: impl Future<Output = Option<Tunnel>> + Send,
        accept: Accept,
    ) {
        // A spare's preamble may come much later, or never: its target (a debug adapter
        // takes one client) is only reached for a preamble.
        let named = if spare::is_spare(&accept.address) {
            None
        } else {
            self.named_forward(&accept).cloned()
        };
        let Some(named) = named else {
            if let Some(tunnel) = rendezvous.await {
                self.forward(tunnel, None).await;
            }
            return;
        };
        let (tunnel, early) = tokio::join!(rendezvous, connect_local(&named));
        // Without a tunnel the early connection just closes (the sender is gone).
        if let Some(tunnel) = tunnel {
            self.forward(tunnel, Some((named, early))).await;
        }
    }
}

impl RemoteForwarder {
    /// The forward named by the sender's path suffix (where `relay connect` and the debug
    /// sidecar put the port name), if one is named exactly.
    fn named_forward(&self, accept: &Accept) -> Option<&Forward> {
        let name = protocol::sender_suffix(&self.entity, &accept.address)?;
        self.forwards.0.iter().find(|f| f.name == name)
    }

    /// Reads the preamble and splices the tunnel to its target; `early` is a connection
    /// made before the preamble to the forward the address named, used only when the
    /// preamble names that same forward.
    async fn forward(&self, tunnel: Tunnel, early: Option<(Forward, Result<TcpStream, String>)>) {
        let (mut tunnel, forward) = match bridge::accept(tunnel, &self.forwards).await {
            Ok(Some(found)) => found,
            Ok(None) => return,
            Err(e) => {
                FAILED.preamble.log(|left_out| {
                    tracing::warn!("relayed connection failed: {e}{left_out}");
                });
                return;
            }
        };
        let (host, port) = (forward.host.as_str(), forward.port);
        let tcp = match early {
            Some((named, tcp)) if named == forward => tcp,
            _ => connect_local(&forward).await,
        };
        let mut tcp = match tcp {
            Ok(tcp) => tcp,
            Err(why) => {
                FAILED.target.log(|left_out| {
                    tracing::warn!(port_name = forward.name, "{why}{left_out}");
                });
                tunnel
                    .finish(close_code::SERVER_ERROR, "local target unreachable")
                    .await;
                return;
            }
        };
        let _ = tcp.set_nodelay(true);
        reset_unless_ended_in_order(&tcp);
        // The sender's first bytes (sent with its preamble) reach the target before the
        // answer goes back: the target starts on them one write sooner.
        if let Err(e) = tunnel.deliver_pending(&mut tcp).await {
            FAILED.target.log(|left_out| {
                tracing::warn!(
                    port_name = forward.name,
                    "{host}:{port} took no bytes: {e}{left_out}"
                );
            });
            tunnel
                .finish(close_code::SERVER_ERROR, "local target took no bytes")
                .await;
            return;
        }
        if let Err(e) = bridge::confirm(&tunnel).await {
            FAILED.preamble.log(|left_out| {
                tracing::warn!("relayed connection failed: {e}{left_out}");
            });
            return;
        }
        tracing::info!(port_name = forward.name, "forwarding to {host}:{port}");
        splice(tunnel, tcp).await;
    }
}

/// Connects to a forward's target within [`LOCAL_CONNECT_TIMEOUT`]; `Err` says why not.
async fn connect_local(forward: &Forward) -> Result<TcpStream, String> {
    let (host, port) = (forward.host.as_str(), forward.port);
    let connect = tokio::time::timeout(LOCAL_CONNECT_TIMEOUT, TcpStream::connect((host, port)));
    match connect.await {
        Ok(Ok(tcp)) => Ok(tcp),
        Ok(Err(e)) => Err(format!("cannot connect to {host}:{port}: {e}")),
        Err(_) => Err(format!(
            "connecting to {host}:{port} took over {LOCAL_CONNECT_TIMEOUT:?}"
        )),
    }
}

/// `relay connect`: accepts on `listener` and forwards each connection through the
/// relay under `port_name`, until `shutdown`; at most `max_tunnels` at once (later
/// connections wait in the kernel's accept backlog until one ends). Keeps `spares`
/// tunnels open ahead of them ([`spare`]).
pub async fn serve_local(
    listener: TcpListener,
    endpoint: Arc<Endpoint>,
    port_name: String,
    limits: LocalLimits,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(limits.max_tunnels));
    let spares = Arc::new(Spares::default());
    spare::keep(
        &spares,
        limits.spares,
        &endpoint,
        &port_name,
        &tracker,
        &shutdown,
    );
    loop {
        // Both branches are cancel-safe: a permit not yet granted is simply not taken.
        let slot = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed; stop rather than spin if it were
            },
            () = shutdown.cancelled() => break,
        };
        // Cancel-safe too: an un-accepted connection stays in the backlog.
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = shutdown.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!("accepting a local connection failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let endpoint = Arc::clone(&endpoint);
        let port_name = port_name.clone();
        let spares = Arc::clone(&spares);
        let span = tracing::info_span!("local", peer = %peer);
        let forward = async move {
            forward_local(tcp, peer, &endpoint, &spares, port_name).await;
            drop(slot);
        };
        tracker.spawn(forward.instrument(span));
    }
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("relayed connections still open after {DRAIN_TIMEOUT:?}; dropping them");
    }
}

/// What `relay connect` holds open at most, and ahead of time.
#[derive(Debug, Clone, Copy)]
pub struct LocalLimits {
    /// Local connections forwarded at once.
    pub max_tunnels: usize,
    /// Tunnels kept open before a local connection needs one ([`spare`]).
    pub spares: u8,
}

async fn forward_local(
    tcp: TcpStream,
    peer: SocketAddr,
    endpoint: &Endpoint,
    spares: &Spares,
    port_name: String,
) {
    let _ = tcp.set_nodelay(true);
    reset_unless_ended_in_order(&tcp);
    let spare = spares.take().await;
    let used_spare = spare.is_some();
    let fresh = || sender::connect_to_owner(endpoint, &port_name, &[], WRONG_LISTENER_ATTEMPTS);
    let tunnel = match spare {
        Some(tunnel) => tunnel,
        None => match fresh().await {
            Ok(tunnel) => tunnel,
            Err(e) => {
                // One line naming the cause and the fix; the local client sees its
                // connection reset (it is armed to reset as it is dropped).
                tracing::error!("{e}");
                return;
            }
        },
    };
    let Some(first) = waiting_bytes(&tcp) else {
        // The client reset its connection already.
        tunnel.finish(close_code::NORMAL, "").await;
        return;
    };
    tracing::info!(
        port_name,
        spare = used_spare,
        "connection from {peer} relayed"
    );
    if used_spare {
        let proof = spare::prove(tunnel, &port_name, &first).await;
        match proof {
            Proof::Answered(tunnel) => {
                let sent = first.len();
                // Not held for the tunnel's life.
                drop(first);
                return splice_local(tunnel, tcp, None, sent).await;
            }
            Proof::Failed(e) => {
                tracing::error!("{e}");
                return;
            }
            // Nothing reached the client: the same bytes go through a new tunnel.
            Proof::Dead(why) => {
                tracing::info!("the spare tunnel was dead ({why}); opening a new one")
            }
        }
        match fresh().await {
            Ok(tunnel) => return fresh_local(tunnel, tcp, &port_name, first).await,
            Err(e) => tracing::error!("{e}"),
        }
        return;
    }
    fresh_local(tunnel, tcp, &port_name, first).await;
}

/// A new tunnel's side of [`forward_local`]: the preamble with the client's `first` bytes,
/// and the client's further bytes at once instead of a round trip through the relay later;
/// the listener's answer is checked before any byte reaches the client.
async fn fresh_local(tunnel: Tunnel, tcp: TcpStream, port_name: &str, first: Vec<u8>) {
    if let Err(e) = bridge::request_with(&tunnel, port_name, &first).await {
        tracing::error!("{e}");
        tunnel.finish(close_code::NORMAL, "").await;
        return;
    }
    let sent = first.len();
    // Not held for the tunnel's life.
    drop(first);
    let name = port_name.to_owned();
    let expect = Expect {
        len: bridge::REPLY_LEN,
        within: bridge::PREAMBLE_TIMEOUT,
        check: Box::new(move |answer, closed_with| {
            bridge::check_reply(answer, closed_with, &name).map_err(std::io::Error::other)
        }),
    };
    splice_local(tunnel, tcp, Some(expect), sent).await;
}

/// Splices a local connection with its tunnel (after `expect`, if given), then logs the
/// byte counts, `first_sent` bytes sent with the preamble included, or why it broke (the
/// local connection then reset).
async fn splice_local(
    tunnel: Tunnel,
    mut tcp: TcpStream,
    expect: Option<Expect>,
    first_sent: usize,
) {
    let spliced = match expect {
        Some(expect) => tunnel.splice_after(&mut tcp, expect).await,
        None => tunnel.splice(&mut tcp).await,
    };
    // Broken, it is dropped armed: a reset.
    if spliced.is_ok() {
        end_in_order(&tcp);
    }
    match spliced {
        Ok(stats) => tracing::info!(
            sent = stats.sent + first_sent as u64,
            received = stats.received,
            "relayed connection closed"
        ),
        // A refusal reads as before: one line naming the cause and the fix.
        Err(e) if e.get_ref().is_some_and(|inner| inner.is::<BridgeError>()) => {
            tracing::error!("{e}")
        }
        Err(e) => tracing::warn!("relayed connection broke: {e}"),
    }
}

/// What the local client has sent already, read without waiting (empty when nothing is
/// there yet, or at its end, which the splice reads again); `None` when its connection
/// failed. A client that speaks first (a debugger's `initialize`) has its first bytes go out
/// with the preamble.
fn waiting_bytes(tcp: &TcpStream) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd as _;

    use nix::errno::Errno;
    use nix::sys::socket::{MsgFlags, recv};

    // A DAP `initialize` fits; whatever else is waiting follows in the splice.
    let mut first = [0; 4096];
    // Straight from the socket: tokio's own read would answer "not ready" until its
    // reactor has seen the socket readable, however long the bytes have waited.
    match recv(tcp.as_raw_fd(), &mut first, MsgFlags::MSG_DONTWAIT) {
        Ok(n) => Some(first.get(..n).unwrap_or_default().to_vec()),
        Err(Errno::EAGAIN | Errno::EINTR) => Some(Vec::new()),
        Err(_) => None,
    }
}

/// Splices a relayed connection with its local socket until both ends close, logging
/// the byte counts or why it broke (the local connection then reset).
async fn splice(tunnel: Tunnel, mut tcp: TcpStream) {
    let spliced = tunnel.splice(&mut tcp).await;
    // Broken, it is dropped armed: a reset.
    if spliced.is_ok() {
        end_in_order(&tcp);
    }
    match spliced {
        Ok(stats) => tracing::info!(
            sent = stats.sent,
            received = stats.received,
            "relayed connection closed"
        ),
        Err(e) => FAILED.broke.log(|left_out| {
            tracing::warn!("relayed connection broke: {e}{left_out}");
        }),
    }
}

#[cfg(test)]
#[path = "forward_tests.rs"]
mod tests;
