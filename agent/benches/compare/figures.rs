//! The figures of the comparison, one function each, returning the table's rows.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use super::Settings;
use super::cpus::OneCpu;
use super::procs;
use super::report::{AGENT, DIRECT, Report, Row, TINI};
use super::session;
use super::traffic::{self, Pinger};
use super::tunnels::Tunnel;

/// Stream count of the multi-stream throughput figure.
pub const STREAMS: usize = 8;
/// Round trips on an open tunnel before measuring.
pub const WARMUP_ROUND_TRIPS: usize = 200;
/// Round trips measured per tunnel, interleaved.
pub const ROUND_TRIPS: usize = 2000;
/// Round trips counted under strace.
pub const STRACE_ROUND_TRIPS: usize = 1000;
/// New tunnels opened per tunnel, interleaved.
pub const OPENS: usize = 200;
/// `exec -- true` runs per variant.
pub const EXEC_RUNS: usize = 300;
/// Debug-target starts per variant: debugpy's own start varies by tens of milliseconds
/// from one run to the next, more than the share measured; 9 rounds gave medians from
/// -91 to +74 ms on a quiet machine.
pub const START_ROUNDS: usize = 25;
/// Starts of a non-crashing step per variant (with and without the post-mortem hook).
pub const HOOK_RUNS: usize = 60;

/// Figures 1-3: iperf3 through every tunnel and directly, 1 and [`STREAMS`] streams, with the
/// CPU time of the tunnel's processes per GB moved; the agent over wss, 1 stream.
pub fn throughput(
    settings: &Settings,
    direct: SocketAddr,
    tunnels: &[(&'static str, Tunnel)],
    wss: &Tunnel,
    shipped: Option<&Shipped>,
    report: &mut Report,
) -> anyhow::Result<Vec<Row>> {
    let mut one = Row::new("1 tunnel throughput, 1 stream (iperf3)", "Gbit/s").higher_is_better();
    // The same through the static build (what ships), next to the same peers' runs.
    let mut shipped_one = Row::new(
        "1 the same through the static musl build that ships, 1 stream",
        "Gbit/s",
    )
    .higher_is_better();
    let mut shipped_tls = Row::new("3 the same over TLS (wss), static musl build", "Gbit/s")
        .higher_is_better()
        .only_agent();
    let mut shipped_cpu = Row::new(
        "2 the same for the static musl build (1-stream runs)",
        "s/GB",
    );
    // A failure of the static build's runs costs only its own rows.
    let mut shipped_failed = None;
    let mut many = Row::new(
        &format!("1 tunnel throughput, {STREAMS} streams (iperf3)"),
        "Gbit/s",
    )
    .higher_is_better();
    let mut cpu = Row::new(
        "2 CPU time of all tunnel processes per GB moved (1- and 8-stream runs)",
        "s/GB",
    );
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
                if streams == 1 && *name != AGENT {
                    shipped_one.sample(name, gbit);
                    shipped_cpu.sample(name, cpu_per_gb);
                }
            }
            if streams == 1 {
                tls.sample(AGENT, measure(wss, 1).context("iperf3 through wss")?.0);
                if let (Some(shipped), None) = (shipped, &shipped_failed) {
                    let runs = measure(&shipped.plain, 1)
                        .context("iperf3 through the static build")
                        .and_then(|plain| {
                            let tls = measure(&shipped.wss, 1)
                                .context("iperf3 through the static build over wss")?;
                            Ok((plain, tls))
                        });
                    match runs {
                        Ok(((gbit, cpu_per_gb), (tls_gbit, _))) => {
                            shipped_one.sample(AGENT, gbit);
                            shipped_cpu.sample(AGENT, cpu_per_gb);
                            shipped_tls.sample(AGENT, tls_gbit);
                        }
                        Err(err) => shipped_failed = Some(err),
                    }
                }
            }
        }
    }
    let mut rows = vec![one, many, cpu, tls];
    match shipped_failed {
        Some(err) => report.note(format!(
            "1-3 static musl build: its rows are skipped: {err:#}"
        )),
        None if shipped.is_some() => rows.extend([shipped_one, shipped_cpu, shipped_tls]),
        None => {}
    }
    Ok(rows)
}

/// The static build's own tunnels (plain ws and wss), for the rows of the binary that ships.
pub struct Shipped {
    pub plain: Tunnel,
    pub wss: Tunnel,
}

/// Figure 4: request/response round trips on one open connection per tunnel, interleaved.
pub fn round_trips(
    echo: SocketAddr,
    tunnels: &[(&'static str, Tunnel)],
) -> anyhow::Result<Vec<Row>> {
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
    let label = format!(
        "4 added round trip p50 over direct, {} B (direct: its own p50)",
        traffic::PING
    );
    let mut rows = vec![ping_rounds(&label, &mut pingers)?];
    let pids: Vec<u32> = tunnels.iter().flat_map(|(_, t)| t.pids()).collect();
    // The two-CPU row stands without this one (a machine without taskset, one CPU).
    match OneCpu::pin(&pids) {
        Ok(Some(_pinned)) => {
            let label = "4 the same with every process on one CPU (no wake-up crosses CPUs: \
                         the programs' own work)";
            rows.push(ping_rounds(label, &mut pingers)?);
        }
        Ok(None) => eprintln!("bench: one CPU only: figure 4 is not measured again on one"),
        Err(err) => eprintln!("bench: figure 4 on one CPU skipped: {err:#}"),
    }
    Ok(rows)
}

/// [`ROUND_TRIPS`] interleaved rounds of one round trip through each of `pingers`.
fn ping_rounds(label: &str, pingers: &mut [(&'static str, Pinger)]) -> anyhow::Result<Row> {
    let mut row = Row::new(label, "us").added_over_direct();
    for _ in 0..ROUND_TRIPS {
        for (name, pinger) in pingers.iter_mut() {
            let rtt = pinger
                .ping()
                .with_context(|| format!("round trip through {name}"))?;
            row.sample(name, micros(rtt));
        }
    }
    Ok(row)
}

/// Figure 5: system calls of every process of a tunnel per round trip.
pub fn syscalls(tunnels: &mut [(&'static str, Tunnel)]) -> anyhow::Result<Vec<Row>> {
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
pub fn opens(echo: SocketAddr, tunnels: &[(&'static str, Tunnel)]) -> anyhow::Result<Vec<Row>> {
    let mut row = Row::new("6 new tunnel p50 (connect, 1 B echo, close)", "ms");
    let mut spare_row = Row::new(
        "6 the same, `relay connect --spare-tunnels 1` (a tunnel opened ahead)",
        "ms",
    );
    for _ in 0..OPENS {
        let direct = millis(traffic::open_once(echo)?);
        row.sample(DIRECT, direct);
        spare_row.sample(DIRECT, direct);
        for (name, tunnel) in tunnels {
            // First, so that like every other open it follows a cheap one (direct's), not
            // the teardown of a tunnel through the same `relay serve` and `relay listen`.
            if let Some((_, spare)) = &tunnel.echo_spare {
                let took = traffic::open_once(*spare)
                    .with_context(|| format!("new tunnel through {name}'s spare"))?;
                spare_row.sample(name, millis(took));
            }
            let took = millis(
                traffic::open_once(tunnel.echo)
                    .with_context(|| format!("new tunnel through {name}"))?,
            );
            row.sample(name, took);
            // The spare row compares with the peers' opens of the same rounds.
            if tunnel.echo_spare.is_none() {
                spare_row.sample(name, took);
            }
        }
    }
    Ok(vec![row, spare_row])
}

/// Most idle tunnels measured through websocat: it opens one in about 0.1 s, so 5,000
/// would take over eight minutes, and its memory per tunnel is the same at 250 as at
/// 5,000 (135 and 132 KiB in both, 2026-12-03).
pub const WEBSOCAT_TUNNEL_CAP: usize = 250;

/// Descriptors the bench process keeps for everything but the idle tunnels.
const FD_HEADROOM: u64 = 256;

/// How many idle tunnels this machine allows: the bench process holds two descriptors
/// per tunnel (the client's socket and the in-process echo server's), and so do the
/// tunnels' own processes; every one of them is limited by the hard `RLIMIT_NOFILE`.
/// `None` when `n` fits; else the most that fit and why.
pub fn tunnel_room(n: usize) -> Option<(usize, String)> {
    use nix::sys::resource::{Resource, getrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let limit = soft.max(hard).min(usize::MAX as u64);
    let room = (limit.saturating_sub(FD_HEADROOM) / 2) as usize;
    (room < n).then(|| {
        (
            room,
            format!(
                "7: measured at {room} idle tunnels, not {n}: the hard open-file limit is \
                 {hard} and each tunnel takes two descriptors in the bench and in each \
                 tunnel process (raise it: ulimit -Hn as root)"
            ),
        )
    })
}

/// Figure 7: RSS growth per idle tunnel of each process, `n` tunnels held open (each
/// carried one echoed byte, so it is set up end to end); websocat at most
/// [`WEBSOCAT_TUNNEL_CAP`]. A tunnel that fails is noted and the others are measured.
pub fn idle_memory(
    n: usize,
    tunnels: &[(&'static str, Tunnel)],
    report: &mut Report,
) -> anyhow::Result<Vec<Row>> {
    let n = match tunnel_room(n) {
        Some((room, why)) => {
            report.note(why);
            room
        }
        None => n,
    };
    let websocat_n = n.min(WEBSOCAT_TUNNEL_CAP);
    let measured = |name: &str| if name == "websocat" { websocat_n } else { n };
    let label = if websocat_n == n || !tunnels.iter().any(|(name, _)| *name == "websocat") {
        format!("7 memory per idle tunnel, all processes ({n} tunnels)")
    } else {
        format!("7 memory per idle tunnel, all processes ({n} tunnels; websocat {websocat_n})")
    };
    let mut total = Row::new(&label, "KiB");
    let mut rows: Vec<Row> = Vec::new();
    for (name, tunnel) in tunnels {
        let n = measured(name);
        let started = std::time::Instant::now();
        match idle_tunnels(n, tunnel) {
            Ok(parts) => {
                eprintln!(
                    "7: {n} idle tunnels through {name} opened and measured in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                total.sample(name, parts.iter().map(|(_, kib)| kib).sum());
                for (role, per_tunnel) in parts {
                    let label = format!("7 memory per idle tunnel: {role}");
                    match rows.iter_mut().find(|r| r.label == label) {
                        Some(row) => row.sample(name, per_tunnel),
                        None => {
                            let mut row = Row::new(&label, "KiB").only(name);
                            row.sample(name, per_tunnel);
                            rows.push(row);
                        }
                    }
                }
            }
            Err(err) => report.note(format!("7 {n} idle tunnels through {name} failed: {err:#}")),
        }
    }
    rows.insert(0, total);
    Ok(rows)
}

/// KiB of RSS per tunnel in each process carrying the echo service, `n` tunnels open.
fn idle_tunnels(n: usize, tunnel: &Tunnel) -> anyhow::Result<Vec<(&'static str, f64)>> {
    drop(traffic::echo_one(tunnel.echo)?);
    let parts: Vec<_> = tunnel.echo_parts().collect();
    let before = parts
        .iter()
        .map(|p| procs::rss_kib(p.proc.pid()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let held = (0..n)
        .map(|i| traffic::echo_one(tunnel.echo).with_context(|| format!("tunnel {}", i + 1)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut out = Vec::new();
    for (part, before) in parts.iter().zip(before) {
        let after = procs::rss_kib(part.proc.pid())?;
        out.push((part.role, (after as f64 - before as f64) / n as f64));
    }
    drop(held);
    Ok(out)
}

/// Figure 8: `exec -- true` for a non-target next to `tini -s -- true`, added over `true`;
/// and the user-space instructions of each wrapper.
pub fn exec(agent: &Path, tini: Option<&Path>, valgrind: bool) -> anyhow::Result<Vec<Row>> {
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
            "8 user-space instructions of the wrapper up to its execve (callgrind Ir, all processes)",
            "M",
        )
        .only(TINI);
        let agent = agent.to_string_lossy();
        row.sample(
            AGENT,
            session::instructions(&[&agent, "exec", "--"])? as f64 / 1e6,
        );
        if let Some(tini) = tini {
            let tini = tini.to_string_lossy();
            row.sample(
                TINI,
                session::instructions(&[&tini, "-s", "--"])? as f64 / 1e6,
            );
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Figure 12: what `--post-mortem` adds to the start of a Python step that does not crash
/// (the hook's installation and the step run through it), over the same `exec` without it:
/// a step as users start it (`site` loaded), and a bare interpreter (`-S`: nothing the
/// hook uses is loaded yet, its worst case).
pub fn post_mortem_hook(agent: &Path, python: &Path) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (python_args, title) in [
        (
            &[][..],
            "12 post-mortem hook: a non-crashing `python step.py`'s start-to-exit, `exec --post-mortem` added over `exec` (direct: `exec` without it)",
        ),
        (
            &["-S"][..],
            "12 the same for `python -S step.py` (no site: the hook's worst case)",
        ),
    ] {
        let (alone, hooked) = session::hook_times(agent, python, python_args, HOOK_RUNS)?;
        let mut row = Row::new(title, "ms").added_over_direct().only_agent();
        for (column, times) in [(DIRECT, alone), (AGENT, hooked)] {
            for t in times {
                row.sample(column, millis(t));
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Figure 9: time to a debug target's first line, connect mode, debugpy injected and a
/// debugger attaching through the relay, added over the plain step; and the part of it
/// that is the agent's and the relay's (over debugpy connecting straight to the
/// debugger). Both are medians of per-round differences: the three variants of a round run
/// back to back, so a slow moment of the machine hits all three.
pub fn target_start(agent: &Path, python: &Path) -> anyhow::Result<Vec<Row>> {
    let starts = session::target_start(agent, python, START_ROUNDS)?;
    let mut row = Row::new(
        "9 debug target start, connect mode + debugpy + relay, added over the step's own start (direct: plain python)",
        "ms",
    )
    .only_agent();
    let mut share = Row::new(
        "9 of that, the agent's and relay's share: added over debugpy alone (direct: debugpy --connect straight to the debugger, no agent)",
        "ms",
    )
    .only_agent();
    for ((plain, alone), debugged) in starts.plain.iter().zip(&starts.debugpy).zip(&starts.agent) {
        row.sample(DIRECT, millis(*plain));
        row.sample(AGENT, millis(*debugged) - millis(*plain));
        share.sample(DIRECT, millis(*alone));
        share.sample(AGENT, millis(*debugged) - millis(*alone));
    }
    Ok(vec![row, share])
}

/// Figure 10: CPU of an idle direct-mode session: the sidecar, its keeper and, for
/// scale, the step (debugpy waiting for a client).
pub fn idle_sidecar(agent: &Path, python: &Path, idle: Duration) -> anyhow::Result<Vec<Row>> {
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

/// The static musl build next to the release build `agent`, when it has been built.
pub fn static_build(agent: &Path) -> Option<std::path::PathBuf> {
    // The musl build lands next to the release one: target/<triple>/release.
    let target = agent.parent().and_then(Path::parent).unwrap_or(agent);
    Some(target.join("x86_64-unknown-linux-musl/release/amlx-agent")).filter(|p| p.exists())
}

/// Figure 11: the binary's size and linkage (`file` and `ldd`).
pub fn binary(agent: &Path, report: &mut Report) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
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

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
