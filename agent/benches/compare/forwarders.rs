//! The floor of a relay path on this machine: chains of plain forwarders, the bench's own
//! executable run again as a process that accepts on loopback and copies each connection
//! to the next hop both ways, nothing else (no framing, no authentication, no logging), on
//! the same runtime rathole uses (tokio, a worker per core, `copy_bidirectional`).
//!
//! A tunnel's round trip crosses each of its processes twice, and on a machine whose idle
//! CPUs sleep (this one is a VM) most of a hop's cost is the wake-up of a process on the
//! other CPU, which no program on the path controls. Next to rathole's and bore's two
//! processes, the agent's path has three (`relay connect`, `relay serve`, `relay listen`:
//! the Hybrid Connections topology, both ends outbound to a relay). The two chains say what
//! two and three processes cost here before any program does any work of its own: per
//! round trip (figures 4 to 6) and per byte (figures 1 and 2: each byte is copied through
//! the kernel twice per process).

use std::net::SocketAddr;

use anyhow::Context as _;

use super::procs::{Proc, address_after};
use super::tunnels::{Part, Service, Targets, Tunnel};

/// argv\[1\] that makes the bench executable a plain forwarder to argv\[2\].
pub const FORWARDER_ARG: &str = "plain-forwarder";
/// Columns of the chains of two and three forwarders.
pub const TWO: &str = "2 plain fwd";
pub const THREE: &str = "3 plain fwd";
/// What a forwarder prints once it accepts, before its address.
const LISTENING: &str = "plain forwarder on ";

/// The chains measured, by column: two and three processes, each one chain per service
/// (as every tunnel of the bench carries iperf3 and the echo service apart).
pub fn chains(targets: Targets) -> anyhow::Result<Vec<(&'static str, Tunnel)>> {
    let mut tunnels = Vec::new();
    for (name, hops) in [(TWO, 2), (THREE, 3)] {
        let (mut parts, iperf) = chain(hops, targets.iperf, Service::Iperf)?;
        let (echo_parts, echo) = chain(hops, targets.echo, Service::Echo)?;
        parts.extend(echo_parts);
        tunnels.push((name, Tunnel::of_parts(parts, iperf, echo)?));
    }
    Ok(tunnels)
}

/// `hops` forwarders carrying `service`, the last connecting to `target`; returns them and
/// the chain's entry (the first).
fn chain(
    hops: usize,
    target: SocketAddr,
    service: Service,
) -> anyhow::Result<(Vec<Part>, SocketAddr)> {
    let exe = std::env::current_exe().context("the bench has no path to run again")?;
    let mut next = target;
    let mut parts = Vec::new();
    for _ in 0..hops {
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg(FORWARDER_ARG).arg(next.to_string());
        let mut proc = Proc::spawn("plain forwarder", cmd)?;
        next = address_after(&proc.wait_for(LISTENING)?, LISTENING)?;
        parts.push(Part {
            role: "plain forwarder",
            service: Some(service),
            proc,
        });
    }
    Ok((parts, next))
}

/// The forwarder's process: accepts on 127.0.0.1:0, prints its address, and copies each
/// connection to and from a new connection to `target` until either side closes. It lives
/// until the bench kills it.
pub fn serve(target: &str) -> anyhow::Result<()> {
    let target: SocketAddr = target
        .parse()
        .with_context(|| format!("{FORWARDER_ARG}: {target:?} is not an address"))?;
    let runtime = tokio::runtime::Runtime::new().context("could not start a runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("could not bind 127.0.0.1:0")?;
        println!("{LISTENING}{}", listener.local_addr()?);
        loop {
            let (mut inbound, _) = listener.accept().await.context("accept")?;
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    })
}
