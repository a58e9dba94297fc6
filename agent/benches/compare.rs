//! amlx-agent next to its peers, one figure per row, in one run: the relay tunnel
//! (`relay connect` → `relay serve` → `relay listen`) against rathole, bore and a websocat
//! pair over loopback, and `exec` against `tini`. Each cell of a peer shows the ratio
//! agent/peer. Rounds of every measurement are interleaved so machine noise hits all
//! alike; medians are reported; nothing is asserted about time.
//!
//! Run it with `bash tests/bench.sh`, which installs the peers first (a peer that is missing
//! is named and its cells say so). Settings, from the environment: `BENCH_TUNNELS` (idle
//! tunnels of the memory figure, default 5000, fewer when the hard open-file limit does not
//! allow them, and websocat at most 250), `BENCH_SECONDS` (per iperf3 run, default 2),
//! `BENCH_ROUNDS` (iperf3 runs per figure, default 3), `BENCH_IDLE_SECONDS` (sidecar
//! window, default 10), `BENCH_FIGURES` (which figures, by number: `4,6` or `1-3,8`;
//! default all) for a quick look at one figure after a change.

// A crate root resolves `mod` next to itself, where cargo would take it for a bench.
#[path = "compare/cpus.rs"]
mod cpus;
#[path = "compare/figures.rs"]
mod figures;
#[path = "compare/forwarders.rs"]
mod forwarders;
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

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use report::{AGENT, Report, TINI};
use traffic::Iperf;
use tunnels::{Targets, Tunnel};

/// The tunnel peers, in the order of the table's columns.
const PEERS: [&str; 3] = ["rathole", "bore", "websocat"];
/// What the environment may change.
#[derive(Debug)]
pub struct Settings {
    pub tunnels: usize,
    pub seconds: u64,
    pub rounds: usize,
    pub idle: Duration,
    /// The figures to measure, by number (`BENCH_FIGURES`); all when unset.
    pub figures: Figures,
}

/// The figures a run measures: a set of numbers 1 to [`Figures::LAST`].
#[derive(Debug, Clone, Copy)]
pub struct Figures(u32);

impl Figures {
    /// The highest figure number.
    const LAST: u32 = 12;

    fn all() -> Figures {
        Figures((1..=Self::LAST).fold(0, |set, n| set | 1 << n))
    }

    /// `4,6` or `1-3,8`; every number from 1 to [`Figures::LAST`].
    fn parse(spec: &str) -> anyhow::Result<Figures> {
        let number = |text: &str| -> anyhow::Result<u32> {
            text.trim()
                .parse()
                .ok()
                .filter(|n| (1..=Self::LAST).contains(n))
                .with_context(|| {
                    format!(
                        "BENCH_FIGURES: {text:?} is not a figure from 1 to {}",
                        Self::LAST
                    )
                })
        };
        let mut set = 0;
        for part in spec.split(',') {
            let (from, to) = match part.split_once('-') {
                Some((from, to)) => (number(from)?, number(to)?),
                None => (number(part)?, number(part)?),
            };
            anyhow::ensure!(from <= to, "BENCH_FIGURES: {part:?} is a range backwards");
            set = (from..=to).fold(set, |set, n| set | 1 << n);
        }
        Ok(Figures(set))
    }

    /// Whether any figure from `from` to `to` is measured.
    pub fn any(self, from: u32, to: u32) -> bool {
        (from..=to).any(|n| self.0 & 1 << n != 0)
    }
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
            tunnels: var("BENCH_TUNNELS", 5000)?,
            seconds: var("BENCH_SECONDS", 2)?,
            rounds: var("BENCH_ROUNDS", 3)?,
            idle: Duration::from_secs(var("BENCH_IDLE_SECONDS", 10)?),
            figures: match std::env::var("BENCH_FIGURES") {
                Ok(spec) => Figures::parse(&spec)?,
                Err(_) => Figures::all(),
            },
        })
    }
}

fn main() -> ExitCode {
    // The bench run again as one process of a plain forwarder chain (figures 4 to 6).
    let args: Vec<String> = std::env::args().collect();
    if let [_, role, target] = args.as_slice()
        && role == forwarders::FORWARDER_ARG
    {
        return match forwarders::serve(target) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("{role}: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
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
    let only = settings.figures;
    let load_at_start = load_average();
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
    let mut tunnels: Vec<(&'static str, Tunnel)> = Vec::new();
    // The plain forwarder chains (the floor of a path of two and three processes) take
    // part in figures 1, 2 and 4 to 6.
    if only.any(1, 6) {
        match forwarders::chains(targets) {
            Ok(chains) => tunnels.extend(chains),
            Err(err) => report.note(format!(
                "1-6: the plain forwarder chains did not start, their columns are empty: {err:#}"
            )),
        }
    }
    if only.any(1, 7) {
        let agent = tunnels::agent(agent, targets, false, settings.tunnels)?;
        tunnels.push((AGENT, agent));
    }
    for peer in PEERS.into_iter().filter(|_| only.any(1, 7)) {
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
    let wss = only
        .any(1, 3)
        .then(|| tunnels::agent(agent, targets, true, 16))
        .transpose()?;
    // `exec` and the shipped-build throughput rows are measured on the binary that ships
    // (docker/build-static.sh's static, position-dependent build) when it has been built;
    // `exec` falls back to the release build.
    let shipped = figures::static_build(agent);
    let mut shipped_tunnels = None;
    if let (Some(bin), Some(_), true) = (&shipped, &iperf, only.any(1, 3)) {
        let started = tunnels::agent(bin, targets, false, 16).and_then(|plain| {
            Ok(figures::Shipped {
                plain,
                wss: tunnels::agent(bin, targets, true, 16)?,
            })
        });
        match started {
            Ok(stacks) => shipped_tunnels = Some(stacks),
            Err(err) => report.note(format!(
                "1-3 static musl build: its tunnels did not start, its rows are skipped: {err:#}"
            )),
        }
    }

    if let (Some(iperf), Some(wss)) = (&iperf, &wss) {
        let figure = figures::throughput(
            &settings,
            iperf.addr,
            &tunnels,
            wss,
            shipped_tunnels.as_ref(),
            &mut report,
        );
        report.figures(figure, "1-3 throughput");
    }
    // Six processes that no later figure uses.
    drop(shipped_tunnels);
    if only.any(4, 4) {
        report.figures(figures::round_trips(echo, &tunnels), "4 round trip");
    }
    if strace.is_some() && only.any(5, 5) {
        let figure = figures::syscalls(&mut tunnels);
        report.figures(figure, "5 syscalls");
    }
    if only.any(6, 6) {
        report.figures(figures::opens(echo, &tunnels), "6 new tunnel");
    }
    tunnels.retain(|(name, _)| ![forwarders::TWO, forwarders::THREE].contains(name));
    if only.any(7, 7) {
        let figure = figures::idle_memory(settings.tunnels, &tunnels, &mut report);
        report.figures(figure, "7 idle tunnels");
    }
    drop(tunnels);
    drop(wss);
    let exec_agent = shipped.as_deref().unwrap_or(agent);
    if shipped.is_none() {
        report.note(
            "1-3, 8 and 12: the static build is missing (bash docker/build-static.sh); its throughput rows are skipped and exec and the post-mortem hook are measured on the release build"
                .to_owned(),
        );
    }
    if only.any(8, 8) {
        report.figures(
            figures::exec(exec_agent, tini.as_deref(), valgrind.is_some()),
            "8 exec",
        );
    }
    if let Some(python) = &python {
        if only.any(9, 9) {
            report.figures(figures::target_start(agent, python), "9 target start");
        }
        if only.any(10, 10) {
            report.figures(
                figures::idle_sidecar(agent, python, settings.idle),
                "10 idle sidecar",
            );
        }
        if only.any(12, 12) {
            report.figures(
                figures::post_mortem_hook(exec_agent, python),
                "12 post-mortem hook",
            );
        }
    }
    if only.any(11, 11) {
        let figure = figures::binary(agent, &mut report);
        report.figures(figure, "11 binary");
    }
    report.note(format!(
        "settings: {}x{}s iperf3 runs per figure; {} round trips of {} B after \
         {} warm-up; {} round trips under strace; \
         {} new tunnels; {} idle tunnels; {} exec runs; {} target \
         starts; {}s sidecar window; {} hooked starts",
        settings.rounds,
        settings.seconds,
        figures::ROUND_TRIPS,
        traffic::PING,
        figures::WARMUP_ROUND_TRIPS,
        figures::STRACE_ROUND_TRIPS,
        figures::OPENS,
        settings.tunnels,
        figures::EXEC_RUNS,
        figures::START_ROUNDS,
        settings.idle.as_secs(),
        figures::HOOK_RUNS
    ));
    report.note(format!(
        "load average (1, 5, 15 min) at start {load_at_start}, at end {}: other work on the \
         machine moves every figure",
        load_average()
    ));
    report.print();
    Ok(())
}

/// `python3` when it can import debugpy (figures 9, 10 and 12 need it).
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
            "python3 with debugpy is missing (tests/bench.sh installs it in target/bench-venv): \
             figures 9, 10 and 12 are skipped"
                .to_owned(),
        );
        return None;
    }
    python
}

/// The first three fields of `/proc/loadavg`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Thousands of idle tunnels need thousands of descriptors here and in every tunnel
/// process (they inherit the limit): the soft limit goes up to the hard one.
fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
