//! The traffic the tunnels carry: an echo server and its clients (round trips, new
//! tunnels, idle tunnels held open) and iperf3 (throughput).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};

use super::procs::{self, Proc, WAIT, connect};

/// Request and response size of a round trip.
pub const PING: usize = 100;
/// Stack of one echo thread (thousands of idle tunnels mean thousands of threads).
const ECHO_STACK: usize = 64 * 1024;
/// Slack over the send time an iperf3 run gets before it is killed.
const IPERF_SLACK: Duration = Duration::from_secs(20);

/// A loopback echo server on port 0: one thread per connection writing back what it reads
/// (threads end with their connection; the accept loop ends with the process).
pub fn echo_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("could not bind 127.0.0.1:0")?;
    let addr = listener
        .local_addr()
        .context("bound socket has no address")?;
    thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let _ = tcp.set_nodelay(true);
            let _ = thread::Builder::new()
                .stack_size(ECHO_STACK)
                .spawn(move || echo(tcp));
        }
    });
    Ok(addr)
}

fn echo(mut tcp: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tcp.read(&mut buf)? {
            0 => return tcp.shutdown(Shutdown::Write),
            n => tcp.write_all(&buf[..n])?,
        }
    }
}

/// One open connection to an echo server, timing [`PING`]-byte request/response pairs.
#[derive(Debug)]
pub struct Pinger {
    tcp: TcpStream,
    request: [u8; PING],
    response: [u8; PING],
}

impl Pinger {
    pub fn connect(addr: SocketAddr) -> anyhow::Result<Pinger> {
        let mut request = [0u8; PING];
        rand::fill(&mut request);
        Ok(Pinger {
            tcp: connect(addr)?,
            request,
            response: [0u8; PING],
        })
    }

    pub fn ping(&mut self) -> anyhow::Result<Duration> {
        let began = Instant::now();
        self.tcp.write_all(&self.request).context("send request")?;
        self.tcp
            .read_exact(&mut self.response)
            .context("read response")?;
        let elapsed = began.elapsed();
        ensure!(self.response == self.request, "the echo changed the bytes");
        Ok(elapsed)
    }
}

/// Opens a connection, waits for one echoed byte and closes it: a new tunnel end to end.
pub fn open_once(addr: SocketAddr) -> anyhow::Result<Duration> {
    let began = Instant::now();
    let tcp = echo_one(addr)?;
    drop(tcp);
    Ok(began.elapsed())
}

/// A connection whose first byte came back: the tunnel behind it is up.
pub fn echo_one(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut tcp = connect(addr)?;
    tcp.write_all(b"x").context("send one byte")?;
    let mut back = [0u8; 1];
    tcp.read_exact(&mut back).context("read the echoed byte")?;
    Ok(tcp)
}

/// An iperf3 server on a free loopback port.
#[derive(Debug)]
pub struct Iperf {
    pub addr: SocketAddr,
    _server: Proc,
}

impl Iperf {
    pub fn start() -> anyhow::Result<Iperf> {
        let port = procs::free_port()?;
        let mut cmd = Command::new("iperf3");
        cmd.args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()]);
        let mut server = Proc::spawn("iperf3 -s", cmd)?;
        procs::wait_listening(&mut server, port)?;
        Ok(Iperf {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _server: server,
        })
    }
}

/// What one iperf3 run moved.
#[derive(Debug, Clone, Copy)]
pub struct Moved {
    /// Bytes the server received.
    pub bytes: f64,
    /// Receiver-side rate in Gbit/s (10^9 bits).
    pub gbit_per_s: f64,
}

/// `iperf3 -c` to `addr` with `streams` parallel streams for `secs` seconds.
pub fn iperf(addr: SocketAddr, streams: usize, secs: u64) -> anyhow::Result<Moved> {
    let limit = Duration::from_secs(secs) + IPERF_SLACK;
    let out = Command::new("timeout")
        .args(["-k", "5", &format!("{}", limit.as_secs())])
        .args(["iperf3", "-J", "-c", &addr.ip().to_string()])
        .args(["-p", &addr.port().to_string()])
        .args(["-P", &streams.to_string(), "-t", &secs.to_string()])
        .args(["--connect-timeout", &WAIT.as_millis().to_string()])
        .output()
        .context("could not run iperf3 -c")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 -c {addr} printed no JSON ({})", out.status))?;
    let received = &json["end"]["sum_received"];
    let (Some(bytes), Some(bps)) = (
        received["bytes"].as_f64(),
        received["bits_per_second"].as_f64(),
    ) else {
        anyhow::bail!(
            "iperf3 -c {addr} failed ({}): {}",
            out.status,
            json["error"]
                .as_str()
                .unwrap_or("no sum_received in its JSON")
        );
    };
    Ok(Moved {
        bytes,
        gbit_per_s: bps / 1e9,
    })
}
