//! amlx-agent next to its peers, one figure per row, in one run: the relay tunnel
//! (`relay connect` → `relay serve` → `relay listen`) against rathole, bore and a websocat
//! pair over loopback, and `exec` against `tini`. Each cell of a peer shows the ratio
//! agent/peer. Rounds of every measurement are interleaved so machine noise hits all
//! alike; medians are reported; nothing is asserted about time.
//!
//! Run it with `bash tests/bench.sh`, which installs the peers first (a peer that is missing
//! is named and its cells say so). Settings, from the environment: `BENCH_TUNNELS` (idle
//! tunnels of the memory figure, default 500), `BENCH_SECONDS` (per iperf3 run, default 2),
//! `BENCH_ROUNDS` (iperf3 runs per figure, default 3), `BENCH_IDLE_SECONDS` (sidecar
//! window, default 10).

// A crate root resolves `mod` next to itself, where cargo would take it for a bench.
#[path = "compare/procs.rs"]
mod procs;
#[path = "compare/report.rs"]
mod report;
#[path = "compare/session.rs"]
mod session;
#[path = "compare/traffic.rs"]
mod traffic;
#[path = "compare/tunnels.rs"]
mod tunnels;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use report::{AGENT, DIRECT, Report, Row, TINI};
use traffic::{Iperf, Pinger};
use tunnels::{Targets, Tunnel};

/// The tunnel peers, in the order of the table's columns.
const PEERS: [&str; 3] = ["rathole", "bore", "websocat"];
/// Stream count of the multi-stream throughput figure.
const STREAMS: usize = 8;
/// Round trips on an open tunnel before measuring.
const WARMUP_ROUND_TRIPS: usize = 200;
/// Round trips measured per tunnel, interleaved.
const ROUND_TRIPS: usize = 2000;
/// Round trips counted under strace.
const STRACE_ROUND_TRIPS: usize = 1000;
/// New tunnels opened per tunnel, interleaved.
const OPENS: usize = 200;
/// `exec -- true` runs per variant.
const EXEC_RUNS: usize = 300;
/// Debug-target starts per variant.
const START_ROUNDS: usize = 5;

/// What the environment may change.
#[derive(Debug)]
struct Settings {
    tunnels: usize,
    seconds: u64,
    rounds: usize,
    idle: Duration,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .ok()
                    .with_context(|| format!("{name}={v:?} is not a number")),
                Err(_) => Ok(default),
            }
        }
        Ok(Settings {
            tunnels: var("BENCH_TUNNELS", 500)?,
            seconds: var("BENCH_SECONDS", 2)?,
            rounds: var("BENCH_ROUNDS", 3)?,
            idle: Duration::from_secs(var("BENCH_IDLE_SECONDS", 10)?),
        })
    }
}

fn main() -> ExitCode {
    // Every child is killed by its guard when `run` returns, error or not.
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("benchmark failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    raise_open_files();
    let agent = Path::new(env!("CARGO_BIN_EXE_amlx-agent"));
    let mut report = Report::default();
    let tool = |name: &str, report: &mut Report| {
        let found = procs::which(name);
        if found.is_none() {
            report.note(format!(
                "{name} is not installed: the figures that need it are skipped"
            ));
        }
        found
    };
    let iperf3 = tool("iperf3", &mut report);
    let strace = tool("strace", &mut report);
    let valgrind = tool("valgrind", &mut report);
    let tini = tool("tini", &mut report);
    if tini.is_none() {
        report.missing(TINI, "not installed");
    }
    let python = python_with_debugpy(&mut report);

    let echo = traffic::echo_server()?;
    let iperf = iperf3.map(|_| Iperf::start()).transpose()?;
    let targets = Targets {
        iperf: iperf.as_ref().map_or(echo, |i| i.addr),
        echo,
    };
    let mut tunnels: Vec<(&'static str, Tunnel)> = vec![(
        AGENT,
        tunnels::agent(agent, targets, false, settings.tunnels)?,
    )];
    for peer in PEERS {
        let Some(bin) = procs::which(peer) else {
            report.missing(peer, "not installed");
            continue;
        };
        let started = match peer {
            "rathole" => tunnels::rathole(&bin, targets),
            "bore" => tunnels::bore(&bin, targets),
            _ => tunnels::websocat(&bin, targets),
        };
        match started {
            Ok(tunnel) => tunnels.push((peer, tunnel)),
            Err(err) => report.missing(peer, &format!("did not start: {err:#}")),
        }
    }
    let wss = tunnels::agent(agent, targets, true, 16)?;

    if let Some(iperf) = &iperf {
        let figure = throughput(&settings, iperf.addr, &tunnels, &wss);
        report.figures(figure, "1-3 throughput");
    }
    report.figures(round_trips(echo, &tunnels), "4 round trip");
    if strace.is_some() {
        let figure = syscalls(&mut tunnels);
        report.figures(figure, "5 syscalls");
    }
    report.figures(opens(echo, &tunnels), "6 new tunnel");
    report.figures(idle_memory(settings.tunnels, &tunnels), "7 idle tunnels");
    drop(tunnels);
    drop(wss);
    report.figures(exec(agent, tini.as_deref(), valgrind.is_some()), "8 exec");
    if let Some(python) = &python {
        report.figures(target_start(agent, python), "9 target start");
        report.figures(
            idle_sidecar(agent, python, settings.idle),
            "10 idle sidecar",
        );
    }
    let figure = binary(agent, &mut report);
    report.figures(figure, "11 binary");
    report.note(format!(
        "settings: {}x{}s iperf3 runs per figure; {ROUND_TRIPS} round trips of {} B after \
         {WARMUP_ROUND_TRIPS} warm-up; {STRACE_ROUND_TRIPS} round trips under strace; \
         {OPENS} new tunnels; {} idle tunnels; {EXEC_RUNS} exec runs; {START_ROUNDS} target \
         starts; {}s sidecar window",
        settings.rounds,
        settings.seconds,
        traffic::PING,
        settings.tunnels,
        settings.idle.as_secs()
    ));
    report.print();
    Ok(())
}

/// Figures 1-3: iperf3 through every tunnel and directly, 1 and [`STREAMS`] streams, with the
/// CPU time of the tunnel's processes per GB moved; the agent over wss, 1 stream.
fn throughput(
    settings: &Settings,
    direct: SocketAddr,
    tunnels: &[(&'static str, Tunnel)],
    wss: &Tunnel,
) -> anyhow::Result<Vec<Row>> {
    let mut one = Row::new("1 tunnel throughput, 1 stream (iperf3)", "Gbit/s").higher_is_better();
    let mut many = Row::new(
        &format!("1 tunnel throughput, {STREAMS} streams (iperf3)"),
        "Gbit/s",
    )
    .higher_is_better();
    let mut cpu = Row::new("2 CPU time of all tunnel processes per GB moved", "s/GB");
    let mut tls = Row::new("3 throughput over TLS (wss), 1 stream", "Gbit/s")
        .higher_is_better()
        .only_agent();
    let ticks = procs::ticks_per_second();
    let measure = |tunnel: &Tunnel, streams: usize| -> anyhow::Result<(f64, f64)> {
        let before = tunnel.cpu_ticks()?;
        let moved = traffic::iperf(tunnel.iperf, streams, settings.seconds)?;
        let cpu = (tunnel.cpu_ticks()? - before) as f64 / ticks;
        Ok((moved.gbit_per_s, cpu / (moved.bytes / 1e9)))
    };
    for _ in 0..settings.rounds {
        for (streams, row) in [(1, &mut one), (STREAMS, &mut many)] {
            row.sample(
                DIRECT,
                traffic::iperf(direct, streams, settings.seconds)?.gbit_per_s,
            );
            for (name, tunnel) in tunnels {
                let (gbit, cpu_per_gb) =
                    measure(tunnel, streams).with_context(|| format!("iperf3 through {name}"))?;
                row.sample(name, gbit);
                cpu.sample(name, cpu_per_gb);
            }
            if streams == 1 {
                tls.sample(AGENT, measure(wss, 1).context("iperf3 through wss")?.0);
            }
        }
    }
    Ok(vec![one, many, cpu, tls])
}

/// Figure 4: request/response round trips on one open connection per tunnel, interleaved.
fn round_trips(echo: SocketAddr, tunnels: &[(&'static str, Tunnel)]) -> anyhow::Result<Vec<Row>> {
    let mut pingers = vec![(DIRECT, Pinger::connect(echo)?)];
    for (name, tunnel) in tunnels {
        pingers.push((name, Pinger::connect(tunnel.echo)?));
    }
    for _ in 0..WARMUP_ROUND_TRIPS {
        for (name, pinger) in &mut pingers {
            pinger
                .ping()
                .with_context(|| format!("warm-up through {name}"))?;
        }
    }
    let mut row = Row::new(
        &format!(
            "4 added round trip p50 over direct, {} B (direct: its own p50)",
            traffic::PING
        ),
        "us",
    )
    .added_over_direct();
    for _ in 0..ROUND_TRIPS {
        for (name, pinger) in &mut pingers {
            let rtt = pinger
                .ping()
                .with_context(|| format!("round trip through {name}"))?;
            row.sample(name, micros(rtt));
        }
    }
    Ok(vec![row])
}

/// Figure 5: system calls of every process of a tunnel per round trip.
fn syscalls(tunnels: &mut [(&'static str, Tunnel)]) -> anyhow::Result<Vec<Row>> {
    let mut row = Row::new(
        "5 syscalls per round trip, all tunnel processes (strace -c -f)",
        "calls",
    );
    for (name, tunnel) in tunnels.iter_mut() {
        let mut pinger = Pinger::connect(tunnel.echo)?;
        for _ in 0..WARMUP_ROUND_TRIPS {
            pinger.ping()?;
        }
        let calls = procs::syscalls_during(&tunnel.pids(), || {
            for _ in 0..STRACE_ROUND_TRIPS {
                pinger.ping()?;
            }
            Ok(())
        })
        .with_context(|| format!("strace of {name}\n{}", tunnel.dump()))?;
        row.sample(name, calls as f64 / STRACE_ROUND_TRIPS as f64);
    }
    Ok(vec![row])
}

/// Figure 6: connect, 1-byte echo, close, through each tunnel in turn.
fn opens(echo: SocketAddr, tunnels: &[(&'static str, Tunnel)]) -> anyhow::Result<Vec<Row>> {
    let mut row = Row::new("6 new tunnel p50 (connect, 1 B echo, close)", "ms");
    for _ in 0..OPENS {
        row.sample(DIRECT, millis(traffic::open_once(echo)?));
        for (name, tunnel) in tunnels {
            let took = traffic::open_once(tunnel.echo)
                .with_context(|| format!("new tunnel through {name}"))?;
            row.sample(name, millis(took));
        }
    }
    Ok(vec![row])
}

/// Figure 7: RSS growth per idle tunnel of each process, `n` tunnels held open (each
/// carried one echoed byte, so it is set up end to end).
fn idle_memory(n: usize, tunnels: &[(&'static str, Tunnel)]) -> anyhow::Result<Vec<Row>> {
    let mut total = Row::new(
        &format!("7 memory per idle tunnel, all processes ({n} tunnels)"),
        "KiB",
    );
    let mut rows: Vec<Row> = Vec::new();
    for (name, tunnel) in tunnels {
        drop(traffic::echo_one(tunnel.echo)?);
        let parts: Vec<_> = tunnel.echo_parts().collect();
        let before = parts
            .iter()
            .map(|p| procs::rss_kib(p.proc.pid()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let held = (0..n)
            .map(|_| traffic::echo_one(tunnel.echo))
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("{n} idle tunnels through {name}"))?;
        let mut sum = 0.0;
        for (part, before) in parts.iter().zip(before) {
            let after = procs::rss_kib(part.proc.pid())?;
            let per_tunnel = (after as f64 - before as f64) / n as f64;
            sum += per_tunnel;
            let label = format!("7 memory per idle tunnel: {}", part.role);
            match rows.iter_mut().find(|r| r.label == label) {
                Some(row) => row.sample(name, per_tunnel),
                None => {
                    let mut row = Row::new(&label, "KiB").only(name);
                    row.sample(name, per_tunnel);
                    rows.push(row);
                }
            }
        }
        total.sample(name, sum);
        drop(held);
    }
    rows.insert(0, total);
    Ok(rows)
}

/// Figure 8: `exec -- true` for a non-target next to `tini -s -- true`, added over `true`;
/// and the user-space instructions of each wrapper.
fn exec(agent: &Path, tini: Option<&Path>, valgrind: bool) -> anyhow::Result<Vec<Row>> {
    let (direct, through_agent, through_tini) = session::exec_times(agent, tini, EXEC_RUNS)?;
    let mut row = Row::new(
        "8 `exec -- true` (non-target) added over `true` (direct: `true` itself)",
        "ms",
    )
    .added_over_direct()
    .only(TINI);
    for (column, times) in [
        (DIRECT, direct),
        (AGENT, through_agent),
        (TINI, through_tini),
    ] {
        for t in times {
            row.sample(column, millis(t));
        }
    }
    let mut rows = vec![row];
    if valgrind {
        let mut row = Row::new(
            "8 user-space instructions of the wrapper until it execs `true` (callgrind Ir)",
            "M",
        )
        .only(TINI);
        let agent = agent.to_string_lossy();
        row.sample(
            AGENT,
            session::instructions(&[&agent, "exec", "--", "true"])? as f64 / 1e6,
        );
        if let Some(tini) = tini {
            let tini = tini.to_string_lossy();
            row.sample(
                TINI,
                session::instructions(&[&tini, "-s", "--", "true"])? as f64 / 1e6,
            );
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Figure 9: time to a debug target's first line, connect mode, debugpy injected and a
/// debugger attaching through the relay, added over the plain step; debugpy's own share
/// (no agent, no relay) as a reference.
fn target_start(agent: &Path, python: &Path) -> anyhow::Result<Vec<Row>> {
    let starts = session::target_start(agent, python, START_ROUNDS)?;
    let mut row = Row::new(
        "9 debug target start, connect mode + debugpy + relay, added over the step's own start (direct: plain python)",
        "ms",
    )
    .added_over_direct()
    .only_agent();
    let mut share = Row::new(
        "9 of that, the agent's and relay's share: added over debugpy alone (direct: debugpy --connect straight to the debugger, no agent)",
        "ms",
    )
    .added_over_direct()
    .only_agent();
    for ((plain, alone), debugged) in starts.plain.iter().zip(&starts.debugpy).zip(&starts.agent) {
        row.sample(DIRECT, millis(*plain));
        row.sample(AGENT, millis(*debugged));
        share.sample(DIRECT, millis(*alone));
        share.sample(AGENT, millis(*debugged));
    }
    Ok(vec![row, share])
}

/// Figure 10: CPU of an idle direct-mode session: the sidecar, its keeper and, for
/// scale, the step (debugpy waiting for a client).
fn idle_sidecar(agent: &Path, python: &Path, idle: Duration) -> anyhow::Result<Vec<Row>> {
    let [sidecar, keeper, step] = session::idle_sidecar(agent, python, idle)?;
    let secs = idle.as_secs();
    let mut rows = Vec::new();
    for (what, value) in [
        ("10 idle direct-mode sidecar CPU", sidecar),
        ("10 its keeper", keeper),
        (
            "10 for scale: the step (debugpy waiting for a client)",
            step,
        ),
    ] {
        let mut row = Row::new(&format!("{what}, over {secs} s"), "% core").only_agent();
        row.sample(AGENT, value);
        rows.push(row);
    }
    Ok(rows)
}

/// Figure 11: the binary's size and linkage (`file` and `ldd`).
fn binary(agent: &Path, report: &mut Report) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    // The musl build lands next to the release one: target/<triple>/release.
    let target = agent.parent().and_then(Path::parent).unwrap_or(agent);
    let musl = target.join("x86_64-unknown-linux-musl/release/amlx-agent");
    for (what, path) in [("release build", agent.to_owned()), ("musl build", musl)] {
        if !path.exists() {
            report.note(format!(
                "11 {what}: not built here ({}; bash docker/build-static.sh builds it)",
                path.display()
            ));
            continue;
        }
        let b = session::binary(&path)?;
        let linkage = if b.is_static { "static" } else { "dynamic" };
        let mut row = Row::new(&format!("11 {what} size, {linkage} per ldd"), "MB").only_agent();
        row.sample(AGENT, b.bytes as f64 / 1e6);
        rows.push(row);
        report.note(format!(
            "11 {what} ({}): `file`: {}",
            path.display(),
            b.file
        ));
    }
    Ok(rows)
}

/// `python3` when it can import debugpy (figures 9 and 10 need it).
/// The interpreter itself (`sys.executable`), not a launcher script such as pyenv's shim,
/// whose own start would count as the step's.
fn python_with_debugpy(report: &mut Report) -> Option<PathBuf> {
    let python = procs::which("python3").and_then(|p| {
        let out = std::process::Command::new(p)
            .args(["-c", "import debugpy, sys; print(sys.executable)"])
            .output()
            .ok()?;
        let path = String::from_utf8(out.stdout).ok()?;
        out.status.success().then(|| PathBuf::from(path.trim()))
    });
    if python.is_none() {
        report.note(
            "python3 with debugpy is missing (pip install -r tests/requirements.txt): \
             figures 9 and 10 are skipped"
                .to_owned(),
        );
        return None;
    }
    python
}

/// Thousands of idle tunnels need thousands of descriptors here and in every tunnel
/// process (they inherit the limit): the soft limit goes up to the hard one.
fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
