//! `amlx-agent run`: one command on the developer's machine runs a step on a compute
//! target with VS Code attached through the same relay path a cluster job uses.
//!
//! A self-hosted relay and the laptop-side listener run in this process (loopback only,
//! a fresh key held in memory); `.vscode/launch.json` gets one `listen` configuration per
//! debugged rank and a compound; the step runs on the target behind the agent's own
//! `exec --debug` (under `mpiexec -n N` when asked), exactly as on a node. Before the
//! step starts, `run` prints how to attach; at the end it says what happened, returns the
//! step's exit code, and stops everything it started, bounded. `demo` is `run` with the
//! embedded example step.

/// Prints one line for the developer on stdout and never panics: with stdout a closed
/// pipe (`run … | head`) the line is lost and the run goes on — a panic here would skip
/// stopping the step, and dropping the runtime would then wait for the step to end.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod instructions;
mod ranks;
mod reap;
mod relay;
mod report;
mod start;
mod step;
pub mod target;
mod vscode_ports;
mod watch;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::Signal;

use crate::policy::ProcessKind;
use crate::ports::PortRange;
use instructions::rank_list;
use relay::{LaptopListener, LocalRelay, PostMortemRoute, Route};
use report::{Report, exit_code};
use target::Target;
use watch::Watcher;

pub use step::{Launch, StepCommand};

/// After the step exited, how long the relay and the listener get to stop.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// After the step exited, how long its leftover processes (the relay sidecar publishing
/// its final state) get before they are killed.
const LEFTOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// After Ctrl-C or SIGTERM, how long the step gets to stop before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// What `run` runs, from the command line and the settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// How the lines this command prints start: `amlx-agent run` or `amlx-agent demo`.
    pub label: &'static str,
    /// The step: the user's command and its arguments.
    pub command: Vec<OsString>,
    /// The project folder on this machine (the step's working directory on the target,
    /// and the folder whose `.vscode/launch.json` gets the configurations).
    pub project: PathBuf,
    /// The first port VS Code listens on (one per debugged rank, from here up).
    pub vscode_port: u16,
    pub attach_timeout: Duration,
    /// Processes to start; more than one runs under `mpiexec -n`.
    pub ranks_count: u32,
    /// With more than one rank asked for and no `mpiexec` on this machine's PATH, run
    /// one process and say so (the demo: it shows the debugger either way) instead of
    /// refusing (`run`: the user asked for that many ranks).
    pub one_process_without_mpiexec: bool,
    /// Which ranks wait for VS Code: `all` or explicit ranks (`0`, `0,2`, `1-3`).
    pub ranks: String,
    /// Debug ports the step's agents may reserve on the target; `None`: a free block.
    pub port_range: Option<PortRange>,
    /// The config file `run` was given, passed on to a local step's agent.
    pub config: Option<PathBuf>,
    /// Where a local step's agent keeps its status record (`run` follows it there).
    pub state_dir: PathBuf,
    /// Where VS Code port reservations are kept (the node's ports lock directory);
    /// `None`: none usable, the ports are used unreserved.
    pub lock_dir: Option<PathBuf>,
    /// An extra numbered step of the attach instructions (the demo names its breakpoint).
    pub hint: Option<String>,
    /// The relay between the step and this machine.
    pub relay: RelayChoice,
    /// `--post-mortem`: every other rank's step is hooked, and a rank that crashes
    /// reaches VS Code on one more port ("amlx: post-mortem (any rank)"), waiting up to
    /// the attach timeout.
    pub post_mortem: bool,
    /// Logging flags for the step's agents (`--log-format json`, `-v`, `-q`): the same
    /// as the command's own.
    pub log_args: Vec<OsString>,
}

/// Which relay carries the debug connections.
#[derive(Debug, Clone, Default)]
pub enum RelayChoice {
    /// A relay inside this process, on loopback, with a fresh key (the default).
    #[default]
    InProcess,
    /// A relay of the user's settings (Azure Relay, or a `relay serve` elsewhere), for
    /// targets that reach it but not this machine. One connection string serves both
    /// ends, so its key needs Listen and Send rights.
    External(ExternalRelay),
}

/// The user's relay, as the listener here and the step's agent use it.
#[derive(Debug, Clone)]
pub struct ExternalRelay {
    pub endpoint: std::sync::Arc<crate::relay::client::Endpoint>,
    /// The connection string the step's agent gets (environment only).
    pub connection_string: crate::config::Secret,
    /// Plain ws:// (a loopback `relay serve` with `insecure_ws`).
    pub insecure_ws: bool,
    /// A private CA's PEM file (local target only: its path is this machine's).
    pub ca_file: Option<PathBuf>,
}

/// Runs the step on `target`; returns the step's exit code.
pub fn run(options: &Options, target: &mut dyn Target) -> anyhow::Result<i32> {
    anyhow::ensure!(
        !options.command.is_empty(),
        "no command to run: put it after --, e.g. `amlx-agent run -- python train.py`"
    );
    if let ProcessKind::Launcher(launcher) = crate::policy::kind_of(&options.command) {
        anyhow::bail!(start::launcher_refusal(launcher));
    }
    let launch = target.launch(options.ranks_count);
    anyhow::ensure!(
        launch.count() >= options.ranks_count || options.one_process_without_mpiexec,
        "{} ranks (--ranks-count, or ranks_count in the target's settings) run under \
         mpiexec, and this machine's PATH has no mpiexec: install an MPI where the step runs \
         (for example `pip install mpich` in its environment), or ask for one rank",
        options.ranks_count
    );
    let ranks = ranks::debugged_ranks(&options.ranks, launch.count())?;
    // With --post-mortem any rank may take its port (base + rank) for a crash.
    let last_rank = match options.post_mortem {
        true => launch.count().saturating_sub(1),
        false => *ranks.last().expect("debugged_ranks is never empty"),
    };
    let port_range = match options.port_range {
        Some(range) => range,
        None => ranks::free_debug_ports(last_rank, target.shares_this_network())?,
    };
    let vscode = vscode_ports::reserve(
        options.lock_dir.as_deref(),
        options.vscode_port,
        ranks.len() + usize::from(options.post_mortem),
    )?;
    let routes = ranks::routes(
        &ranks,
        vscode.ports(),
        port_range,
        target.shares_this_network(),
    )?;
    let post_mortem = match options.post_mortem {
        true => Some(PostMortemRoute {
            debug_ports: port_range,
            vscode_port: vscode
                .ports()
                .last()
                .context("no VS Code port for post-mortem")?,
        }),
        false => None,
    };
    // The step's relay sidecars outlive the step by up to a second: as subreaper, `run`
    // inherits them and can wait for them, so nothing it started outlives it.
    if let Err(err) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!("cannot adopt the step's leftover processes ({err}); they end on their own");
    }
    // One thread for the relay, the listener and the watcher: the quiet log default
    // below is per thread, and a run needs no more.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let mut stops = {
        let _context = runtime.enter();
        reap::Stops::catch()
    };
    if let Some(signal) = prepare_unless_stopped(&runtime, target, stops.as_mut())? {
        say!(
            "{}: {signal} before the step started; stopped what the target's preparation ran",
            options.label
        );
        target.cleanup();
        runtime.block_on(async {
            let _ = tokio::task::spawn_blocking(|| reap::leftovers(LEFTOVER_TIMEOUT, None)).await;
        });
        return Ok(report::signal_exit_code(signal));
    }
    let _quiet = quiet_logs();
    let plan = Plan {
        options,
        launch: &launch,
        ranks: &ranks,
        routes: &routes,
        post_mortem,
        port_range,
    };
    let result = runtime.block_on(session(&plan, target, stops.as_mut()));
    runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
    target.cleanup();
    drop(vscode);
    result
}

/// Between two looks whether a stopped preparation has ended.
const PREPARE_POLL: Duration = Duration::from_millis(20);

/// Gets the target ready (a docker build, an ssh copy: bounded by the target) on a thread
/// of its own while this one watches for a stop signal. On one, every child of this
/// process (the commands the preparation waits on) is asked to stop, the preparation is
/// waited for (its own bounds hold) and the signal returned.
fn prepare_unless_stopped(
    runtime: &tokio::runtime::Runtime,
    target: &mut dyn Target,
    stops: Option<&mut reap::Stops>,
) -> anyhow::Result<Option<Signal>> {
    std::thread::scope(|scope| {
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let preparing = scope.spawn(move || {
            let prepared = target.prepare();
            let _ = done.send(());
            prepared
        });
        let stopped = runtime.block_on(async {
            tokio::select! {
                _ = finished => None,
                signal = reap::Stops::asked(stops) => Some(signal),
            }
        });
        if stopped.is_some() {
            // SIGTERM first (docker cancels its build), SIGKILL past the grace.
            reap::stop_children(Signal::SIGTERM);
            let asked = Instant::now();
            while !preparing.is_finished() {
                if asked.elapsed() >= STOP_GRACE {
                    reap::stop_children(Signal::SIGKILL);
                }
                std::thread::sleep(PREPARE_POLL);
            }
        }
        let prepared = preparing
            .join()
            .map_err(|_| anyhow::anyhow!("the target's preparation panicked"))?;
        match stopped {
            Some(signal) => Ok(Some(signal)),
            None => prepared.map(|()| None),
        }
    })
}

/// Everything decided before the session starts.
struct Plan<'a> {
    options: &'a Options,
    launch: &'a Launch,
    ranks: &'a [u32],
    routes: &'a [Route],
    post_mortem: Option<PostMortemRoute>,
    port_range: PortRange,
}

/// The relay of this run, running (in-process) or configured (external).
enum Relay {
    InProcess(LocalRelay),
    External(ExternalRelay),
}

impl Relay {
    async fn start(choice: &RelayChoice) -> anyhow::Result<Relay> {
        Ok(match choice {
            RelayChoice::InProcess => Relay::InProcess(LocalRelay::start().await?),
            RelayChoice::External(external) => Relay::External(external.clone()),
        })
    }

    fn endpoint(&self) -> anyhow::Result<std::sync::Arc<crate::relay::client::Endpoint>> {
        match self {
            Relay::InProcess(local) => Ok(std::sync::Arc::new(local.endpoint()?)),
            Relay::External(external) => Ok(external.endpoint.clone()),
        }
    }

    fn hc(&self) -> &str {
        match self {
            Relay::InProcess(local) => &local.hc,
            Relay::External(external) => &external.endpoint.entity,
        }
    }

    /// For the instructions: where the relay is and what it is.
    fn describe(&self) -> String {
        match self {
            Relay::InProcess(local) => format!(
                "ws://{} (in-process, loopback only, a fresh key kept in memory)",
                local.addr
            ),
            Relay::External(external) => format!(
                "{} (from your relay settings), Hybrid Connection {}",
                external.endpoint.base, external.endpoint.entity
            ),
        }
    }

    async fn stop(self) {
        if let Relay::InProcess(local) = self {
            local.stop().await;
        }
    }
}

async fn session(
    plan: &Plan<'_>,
    target: &mut dyn Target,
    stops: Option<&mut reap::Stops>,
) -> anyhow::Result<i32> {
    let options = plan.options;
    let relay = Relay::start(&options.relay).await?;
    let listener = match relay.endpoint() {
        Ok(endpoint) => {
            LaptopListener::start(
                endpoint,
                plan.routes,
                plan.post_mortem,
                options.attach_timeout,
                options.label,
            )
            .await
        }
        Err(err) => Err(err),
    };
    let listener = match listener {
        Ok(listener) => listener,
        Err(err) => {
            relay.stop().await;
            return Err(err);
        }
    };
    let started = start::start_step(plan, target, &relay);
    let (child, lifeline, state_dir) = match started {
        Ok(started) => started,
        Err(err) => {
            stop_relay(listener, relay).await;
            return Err(err);
        }
    };
    let watcher = state_dir.map(|dir| Watcher::start(dir, format!("relay:{}/", relay.hc())));
    let ended = reap::wait_step(child, lifeline, stops, STOP_GRACE, options.label).await;
    // A step the kernel holds after SIGKILL was killed on request (a second Ctrl-C, or the
    // grace ran out): what it left gets SIGKILL at once too, and the step itself is not
    // waited for again.
    let (leftover_timeout, left_behind) = match &ended {
        Ok(reap::Ended {
            status: None, pid, ..
        }) => (Duration::ZERO, Some(*pid)),
        _ => (LEFTOVER_TIMEOUT, None),
    };
    let _ =
        tokio::task::spawn_blocking(move || reap::leftovers(leftover_timeout, left_behind)).await;
    let followed = watcher.is_some();
    let history = match watcher {
        Some(watcher) => watcher.finish().await,
        None => Default::default(),
    };
    let attached = listener.seen.attached();
    stop_relay(listener, relay).await;
    let ended = ended?;
    let report = Report {
        label: options.label,
        ranks: plan.ranks.to_vec(),
        history,
        attached,
        stopped_by: ended.interrupted,
        attach_timeout: options.attach_timeout,
        step_code: ended.status.map(exit_code),
        followed,
    };
    say!("{}", report.summary());
    Ok(report.code())
}

/// The in-process relay's and listener's own logs: warnings only on this thread, unless
/// `-v` asked for more. The step's agent logs the session itself, which is the point.
fn quiet_logs() -> Option<tracing::subscriber::DefaultGuard> {
    if tracing::enabled!(tracing::Level::DEBUG) {
        return None;
    }
    let quiet = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(crate::logging::stderr::Stderr)
        .with_ansi(false)
        .with_target(false)
        .finish();
    Some(tracing::subscriber::set_default(quiet))
}

/// Stops the listener, then the relay, within [`SHUTDOWN_TIMEOUT`].
async fn stop_relay(listener: LaptopListener, relay: Relay) {
    let stop = async {
        listener.stop().await;
        relay.stop().await;
    };
    if tokio::time::timeout(SHUTDOWN_TIMEOUT, stop).await.is_err() {
        tracing::warn!(
            "the in-process relay did not stop within {}; leaving it to the process exit",
            humantime::format_duration(SHUTDOWN_TIMEOUT)
        );
    }
}

/// `path` made absolute and real: breakpoints match on the path debugpy sees.
pub fn project_dir(path: &Path) -> anyhow::Result<PathBuf> {
    let dir = path
        .canonicalize()
        .with_context(|| format!("the project folder {} is not usable", path.display()))?;
    anyhow::ensure!(
        dir.is_dir(),
        "the project folder {} is not a folder: give --dir the folder that holds the step \
         (its .vscode/launch.json is written there)",
        path.display()
    );
    // launch.json's localRoot must name the folder exactly: a name that is not UTF-8
    // would be written with U+FFFD in it, and no breakpoint would ever match.
    anyhow::ensure!(
        dir.to_str().is_some(),
        "the project folder {} has a path that is not UTF-8, which launch.json cannot \
         name; rename it or run from a folder whose path is UTF-8",
        dir.display()
    );
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_folder_must_be_a_folder_with_a_utf8_path() {
        use std::os::unix::ffi::OsStrExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(project_dir(dir.path()).is_ok());
        let file = dir.path().join("step.py");
        std::fs::write(&file, "").expect("write");
        let err = format!("{:#}", project_dir(&file).expect_err("a file"));
        assert!(err.contains("is not a folder"), "{err}");
        let odd = dir.path().join(std::ffi::OsStr::from_bytes(b"bad\xffname"));
        std::fs::create_dir(&odd).expect("mkdir");
        let err = format!("{:#}", project_dir(&odd).expect_err("not UTF-8"));
        assert!(err.contains("not UTF-8"), "{err}");
        let missing = format!(
            "{:#}",
            project_dir(&dir.path().join("nope")).expect_err("gone")
        );
        assert!(missing.contains("is not usable"), "{missing}");
    }

    #[test]
    fn rank_lists_read_naturally() {
        assert_eq!(rank_list(&[0]), "rank 0");
        assert_eq!(rank_list(&[0, 2, 3]), "ranks 0, 2, 3");
    }
}
