//! What the relay costs: throughput and round-trip latency through `relay serve`, each next
//! to the same traffic sent directly in the same run, as ratios.
//!
//! Relayed path: TCP client → `relay connect` (sender forwarder) → `relay serve` (plain ws on
//! 127.0.0.1) → `relay listen` (listener forwarder) → a local sink or echo server. Direct
//! path: the same client to the same server. All three relay pieces are the real binary, with
//! a config file and a freshly generated key in a temp dir and every port picked by binding
//! port 0. Direct and relayed runs alternate so machine noise hits both alike.
//! Run with `cargo bench --bench relay`.

// A crate root resolves `mod` next to itself, where cargo would take it for a bench.
#[path = "relay/procs.rs"]
mod procs;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};

use procs::RelayPath;

/// Each throughput measurement sends for this long, then waits for the sink's byte count.
const SEND_FOR: Duration = Duration::from_secs(1);
/// Throughput measurements per (path, stream count); the median is reported.
const ROUNDS: usize = 3;
/// Concurrent streams of the multi-stream figure.
const STREAMS: usize = 8;
/// Size of each write in the throughput runs.
const CHUNK: usize = 128 * 1024;
/// Request and response size of the round-trip runs.
const PING: usize = 64;
/// Round trips before measuring (the tunnel is open, buffers and caches settle).
const WARMUP_ROUND_TRIPS: usize = 500;
/// Round trips measured per path.
const ROUND_TRIPS: usize = 5000;
/// New connections opened per path for the tunnel-open figure.
const OPENS: usize = 200;
/// Bound for any single wait: a process printing its address, a read, a write, a join.
const WAIT: Duration = Duration::from_secs(30);
/// The Hybrid Connection the benchmark relays through.
const HC: &str = "bench";
/// Port names `relay listen` forwards to the two local servers.
const SINK_NAME: &str = "sink";
const ECHO_NAME: &str = "echo";

fn main() -> ExitCode {
    // Every child is killed by its guard when `run` returns, error or not.
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("relay benchmark failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let sink = serve_each(sink)?;
    let echo = serve_each(echo)?;
    let mut relay = RelayPath::start(sink, echo)?;
    let report = measure(&relay, sink, echo).map_err(|err| anyhow!("{err:#}\n{}", relay.dump()));
    report?.print();
    Ok(())
}

/// Direct and relayed figures of one run.
#[derive(Debug)]
struct Report {
    /// Aggregate MB/s (10^6 bytes) for 1 and [`STREAMS`] streams: (direct, relay).
    throughput: Vec<(usize, f64, f64)>,
    /// Request/response round trips on one open connection: (direct, relay).
    round_trip: (Vec<Duration>, Vec<Duration>),
    /// Connect + 1-byte echo on a new connection (a rendezvous through the relay).
    open: (Vec<Duration>, Vec<Duration>),
}

fn measure(relay: &RelayPath, sink: SocketAddr, echo: SocketAddr) -> anyhow::Result<Report> {
    let relay_sink = relay.sink();
    let relay_echo = relay.echo();
    let mut chunk = vec![0u8; CHUNK];
    rand::fill(chunk.as_mut_slice());
    let chunk: Arc<[u8]> = chunk.into();

    let mut throughput = Vec::new();
    for streams in [1, STREAMS] {
        let (mut direct, mut relayed) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            direct.push(send_for(sink, streams, &chunk).context("direct throughput")?);
            relayed.push(send_for(relay_sink, streams, &chunk).context("relayed throughput")?);
        }
        throughput.push((streams, median_f64(&mut direct), median_f64(&mut relayed)));
    }

    let mut direct = Pinger::connect(echo).context("direct round trips")?;
    let mut relayed = Pinger::connect(relay_echo).context("relayed round trips")?;
    for _ in 0..WARMUP_ROUND_TRIPS {
        direct.ping().context("direct warm-up")?;
        relayed.ping().context("relayed warm-up")?;
    }
    let mut round_trip = (
        Vec::with_capacity(ROUND_TRIPS),
        Vec::with_capacity(ROUND_TRIPS),
    );
    for _ in 0..ROUND_TRIPS {
        round_trip
            .0
            .push(direct.ping().context("direct round trip")?);
        round_trip
            .1
            .push(relayed.ping().context("relayed round trip")?);
    }

    let mut open = (Vec::with_capacity(OPENS), Vec::with_capacity(OPENS));
    for _ in 0..OPENS {
        open.0.push(open_once(echo).context("direct open")?);
        open.1.push(open_once(relay_echo).context("relayed open")?);
    }
    Ok(Report {
        throughput,
        round_trip,
        open,
    })
}

impl Report {
    fn print(mut self) {
        println!("relay benchmark, loopback, one run:");
        println!("  relay:  client -> relay connect -> relay serve (ws) -> relay listen -> server");
        println!("  direct: client -> server (the same client and server)");
        println!(
            "{:<34} {:>12} {:>12} {:>13}",
            "", "direct", "relay", "relay/direct"
        );
        let row = |what: String, direct: f64, relay: f64| {
            let ratio = relay / direct.max(f64::MIN_POSITIVE);
            println!("{what:<34} {direct:>12.1} {relay:>12.1} {ratio:>12.3}x");
        };
        for (streams, direct, relay) in &self.throughput {
            let label = if *streams == 1 { "stream" } else { "streams" };
            row(
                format!("throughput, {streams} {label} (MB/s)"),
                *direct,
                *relay,
            );
        }
        for (what, (direct, relay)) in [
            (format!("round trip {PING} B"), &mut self.round_trip),
            ("open + 1 B echo".to_owned(), &mut self.open),
        ] {
            direct.sort();
            relay.sort();
            for (p, q) in [("p50", 0.50), ("p99", 0.99)] {
                row(
                    format!("{what}, {p} (us)"),
                    micros(percentile(direct, q)),
                    micros(percentile(relay, q)),
                );
            }
        }
        println!(
            "({ROUNDS} x {}s sends per throughput figure, median; {ROUND_TRIPS} round trips \
             after {WARMUP_ROUND_TRIPS} warm-up on one open connection; {OPENS} new \
             connections; MB = 10^6 bytes)",
            SEND_FOR.as_secs_f64()
        );
    }
}

/// `streams` connections to a sink send for [`SEND_FOR`]; returns the aggregate MB/s of
/// what the sink counted, over the time until the last count came back.
fn send_for(addr: SocketAddr, streams: usize, chunk: &Arc<[u8]>) -> anyhow::Result<f64> {
    let start = Arc::new(Barrier::new(streams));
    let workers: Vec<_> = (0..streams)
        .map(|_| {
            let (start, chunk) = (start.clone(), chunk.clone());
            thread::spawn(move || -> anyhow::Result<(u64, Duration)> {
                let mut tcp = connect(addr)?;
                start.wait();
                let began = Instant::now();
                let mut sent = 0u64;
                while began.elapsed() < SEND_FOR {
                    tcp.write_all(&chunk).context("send to the sink")?;
                    sent += chunk.len() as u64;
                }
                tcp.shutdown(Shutdown::Write).context("half-close")?;
                let mut count = [0u8; 8];
                tcp.read_exact(&mut count)
                    .context("the sink's byte count")?;
                let elapsed = began.elapsed();
                let counted = u64::from_be_bytes(count);
                ensure!(
                    counted == sent,
                    "sent {sent} bytes, the sink counted {counted}"
                );
                Ok((counted, elapsed))
            })
        })
        .collect();
    let (mut bytes, mut slowest) = (0u64, Duration::ZERO);
    for worker in workers {
        let (n, elapsed) = worker
            .join()
            .map_err(|_| anyhow!("a sending thread panicked"))??;
        bytes += n;
        slowest = slowest.max(elapsed);
    }
    Ok(bytes as f64 / 1e6 / slowest.as_secs_f64())
}

/// One open connection to an echo server, timing [`PING`]-byte request/response pairs.
#[derive(Debug)]
struct Pinger {
    tcp: TcpStream,
    request: [u8; PING],
    response: [u8; PING],
}

impl Pinger {
    fn connect(addr: SocketAddr) -> anyhow::Result<Pinger> {
        let mut request = [0u8; PING];
        rand::fill(&mut request);
        Ok(Pinger {
            tcp: connect(addr)?,
            request,
            response: [0u8; PING],
        })
    }

    fn ping(&mut self) -> anyhow::Result<Duration> {
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

/// Opens a new connection and waits for one echoed byte (through the relay: a rendezvous
/// and the azbridge preamble before the byte can come back).
fn open_once(addr: SocketAddr) -> anyhow::Result<Duration> {
    let began = Instant::now();
    let mut tcp = connect(addr)?;
    tcp.write_all(b"x").context("send one byte")?;
    let mut back = [0u8; 1];
    tcp.read_exact(&mut back).context("read the echoed byte")?;
    Ok(began.elapsed())
}

/// A client connection with bounded reads and writes and no Nagle delay.
fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let tcp = TcpStream::connect_timeout(&addr, WAIT)
        .with_context(|| format!("could not connect to {addr}"))?;
    tcp.set_nodelay(true).context("set TCP_NODELAY")?;
    tcp.set_read_timeout(Some(WAIT))
        .context("set read timeout")?;
    tcp.set_write_timeout(Some(WAIT))
        .context("set write timeout")?;
    Ok(tcp)
}

/// Reads to EOF, then answers with the number of bytes read (8 bytes, big-endian).
fn sink(mut tcp: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match tcp.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    tcp.write_all(&total.to_be_bytes())?;
    tcp.shutdown(Shutdown::Write)
}

/// Writes back whatever it reads, until EOF.
fn echo(mut tcp: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tcp.read(&mut buf)? {
            0 => return tcp.shutdown(Shutdown::Write),
            n => tcp.write_all(&buf[..n])?,
        }
    }
}

/// A loopback server on a free port running `handle` on each connection in its own thread
/// (threads end with their connection; the accept loop ends with the process).
fn serve_each(handle: fn(TcpStream) -> std::io::Result<()>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("could not bind 127.0.0.1:0")?;
    let addr = listener
        .local_addr()
        .context("bound socket has no address")?;
    thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let _ = tcp.set_nodelay(true);
            let _ = tcp.set_read_timeout(Some(WAIT));
            let _ = tcp.set_write_timeout(Some(WAIT));
            thread::spawn(move || handle(tcp));
        }
    });
    Ok(addr)
}

fn median_f64(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The `q` quantile of sorted `times` (nearest rank).
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
