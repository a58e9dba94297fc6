//! `amlx-agent demo`: one whole debug session on this machine with the embedded defaults.
//!
//! A self-hosted relay and the laptop-side listener run in this process (loopback only,
//! a fresh key held in memory); the example step (docker/example/train.py, embedded) runs
//! as rank 0's debug target through the agent's own `exec` path, in connect mode, exactly
//! as in a job. Before the step starts, the demo prints how to attach from VS Code; at the
//! end it says what happened and stops everything it started, bounded.

mod reap;
mod relay;
mod report;
mod step;
mod watch;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;

use crate::launch_json::{self, DebugTarget, LaunchSpec};
use crate::ports::PortRange;
use crate::session::DebugMode;
use relay::{LaptopListener, LocalRelay};
use report::{Report, exit_code};
use step::{Launch, StepCommand};
use watch::Watcher;

pub use step::{EXAMPLE_STEP, STEP_FILE, breakpoint_line};

/// After the step exited, how long the relay and the listener get to stop.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// After the step exited, how long its leftover processes (the relay sidecar publishing
/// its final state) get before they are killed.
const LEFTOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// After Ctrl-C or SIGTERM, how long the step gets to stop before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Random hex characters in the temporary directory's name (short enough to type).
const TEMP_ID_CHARS: usize = 12;

/// What the demo runs, from the command line and the settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where VS Code listens for debugpy (its launch.json `listen` port).
    pub vscode_port: u16,
    pub attach_timeout: Duration,
    /// Processes to start; more than one runs under `mpiexec -n`.
    pub ranks_count: u32,
    /// Debug ports the step's agent may reserve (never the VS Code port).
    pub port_range: PortRange,
    /// Where to write the example step; `None`: a fresh temporary directory, removed after.
    pub dir: Option<PathBuf>,
    pub python: PathBuf,
    /// The config file the demo was given, passed on to the step's agent.
    pub config: Option<PathBuf>,
    /// Where the step's agent keeps its status record (the demo follows it there).
    pub state_dir: PathBuf,
}

/// Runs the demo; returns the step's exit code.
pub fn run(options: &Options) -> anyhow::Result<i32> {
    anyhow::ensure!(
        !options.port_range.contains(options.vscode_port),
        "--vscode-port {} is inside the debug port range {}-{}: both listen on this machine, \
         so pick a --vscode-port or a --port-range that do not overlap",
        options.vscode_port,
        options.port_range.start,
        options.port_range.end
    );
    let agent = std::env::current_exe().context("could not locate the amlx-agent binary")?;
    let launch = Launch::choose(options.ranks_count, std::env::var_os("PATH").as_deref());
    let workdir = WorkDir::new(options.dir.as_deref())?;
    let step_path = step::write_step(workdir.path())?;
    // The step's relay sidecar outlives the step by up to a second: as subreaper, the
    // demo inherits it and can wait for it, so nothing it started outlives it.
    if let Err(err) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!("cannot adopt the step's leftover processes ({err}); they end on their own");
    }
    // One thread for the relay, the listener and the watcher: the quiet log default
    // below is per thread, and a demo needs no more.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let _quiet = quiet_logs();
    let result = runtime.block_on(session(
        options,
        &agent,
        &launch,
        &step_path,
        workdir.path(),
    ));
    runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
    drop(workdir);
    result
}

async fn session(
    options: &Options,
    agent: &Path,
    launch: &Launch,
    step_path: &Path,
    dir: &Path,
) -> anyhow::Result<i32> {
    let relay = LocalRelay::start().await?;
    let listener =
        match LaptopListener::start(&relay, options.vscode_port, options.attach_timeout).await {
            Ok(listener) => listener,
            Err(err) => {
                relay.stop().await;
                return Err(err);
            }
        };
    let connection_string = relay.connection_string();
    let command = StepCommand {
        agent,
        launch,
        python: &options.python,
        step: step_path,
        attach_timeout: options.attach_timeout,
        port_range: options.port_range,
        config: options.config.as_deref(),
        connection_string: &connection_string,
        hc: &relay.hc,
        state_dir: &options.state_dir,
    };
    let spawned = instructions(options, &relay, launch, step_path, dir).and_then(|()| {
        command
            .command()
            .spawn()
            .context("could not start the example step")
    });
    let child = match spawned {
        Ok(child) => child,
        Err(err) => {
            stop_relay(listener, relay).await;
            return Err(err);
        }
    };
    let watcher = Watcher::start(options.state_dir.clone(), format!("relay:{}/", relay.hc));
    let ended = reap::wait_step(child, STOP_GRACE).await;
    let _ = tokio::task::spawn_blocking(|| reap::leftovers(LEFTOVER_TIMEOUT)).await;
    let history = watcher.finish().await;
    let attached = listener.seen.attached.load(Ordering::Relaxed);
    stop_relay(listener, relay).await;
    let ended = ended?;
    let report = Report {
        history,
        attached,
        interrupted: ended.interrupted,
        attach_timeout: options.attach_timeout,
        code: exit_code(ended.status),
    };
    println!("{}", report.summary());
    let code = report.code;
    Ok(code)
}

/// The in-process relay's and listener's own logs: warnings only on this thread, unless
/// `-v` asked for more. The step's agent logs the session itself, which is the point.
fn quiet_logs() -> Option<tracing::subscriber::DefaultGuard> {
    if tracing::enabled!(tracing::Level::DEBUG) {
        return None;
    }
    let quiet = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .finish();
    Some(tracing::subscriber::set_default(quiet))
}

/// Stops the listener, then the relay, within [`SHUTDOWN_TIMEOUT`].
async fn stop_relay(listener: LaptopListener, relay: LocalRelay) {
    let stop = async {
        listener.stop().await;
        relay.stop().await;
    };
    if tokio::time::timeout(SHUTDOWN_TIMEOUT, stop).await.is_err() {
        tracing::warn!(
            "the demo relay did not stop within {}; leaving it to the process exit",
            humantime::format_duration(SHUTDOWN_TIMEOUT)
        );
    }
}

/// Writes `.vscode/launch.json` next to the step and prints how to attach.
fn instructions(
    options: &Options,
    relay: &LocalRelay,
    launch: &Launch,
    step_path: &Path,
    dir: &Path,
) -> anyhow::Result<()> {
    let root = dir.display().to_string();
    let spec = LaunchSpec {
        mode: DebugMode::Connect,
        host: "127.0.0.1".to_owned(),
        targets: vec![DebugTarget {
            rank: Some(0),
            port: options.vscode_port,
        }],
        local_root: root.clone(),
        remote_root: root,
    };
    let launch_json = dir.join(".vscode").join("launch.json");
    launch_json::write(&launch_json, &spec)?;
    let configuration = launch_json::configurations(&spec).join("\n");
    let name = spec.targets[0].name();
    let processes = match (launch, options.ranks_count) {
        (Launch::Mpi { count, .. }, _) => format!("{count} processes under mpiexec"),
        (Launch::Single, 1) => "1 process".to_owned(),
        (Launch::Single, asked) => {
            format!("1 process (mpiexec is not on PATH, so not the {asked} asked for)")
        }
    };
    let mut text = String::new();
    text.push_str("amlx-agent demo: one whole debug session on this machine\n");
    text.push_str(&format!(
        "  relay     ws://{} (in-process, loopback only, a fresh key kept in memory)\n",
        relay.addr
    ));
    text.push_str(&format!(
        "  listener  hands rank 0's debug connection to VS Code on 127.0.0.1:{}\n",
        options.vscode_port
    ));
    text.push_str(&format!(
        "  step      {} as {processes}; rank 0 is the debug target\n\n",
        step_path.display()
    ));
    text.push_str("To attach from VS Code:\n");
    text.push_str(&format!(
        "  1. Open the folder in VS Code: code {}\n     \
         Its .vscode/launch.json holds this configuration (or paste it into yours):\n",
        dir.display()
    ));
    for line in configuration.lines() {
        text.push_str(&format!("     {line}\n"));
    }
    text.push_str(&format!(
        "  2. Open {STEP_FILE} there and set a breakpoint on line {}: {}\n",
        breakpoint_line(),
        step::breakpoint_code()
    ));
    text.push_str(&format!(
        "  3. Start \"{name}\" in VS Code (Run and Debug): the step waits up to {} for it.\n\n",
        humantime::format_duration(options.attach_timeout)
    ));
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("could not print the instructions")
}

/// The directory holding the example step: given (kept), or temporary (removed on drop).
#[derive(Debug)]
struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl WorkDir {
    fn new(given: Option<&Path>) -> anyhow::Result<WorkDir> {
        let (path, remove) = match given {
            Some(dir) => (dir.to_path_buf(), false),
            None => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                let name = format!("amlx-demo-{}", &id[..TEMP_ID_CHARS]);
                (std::env::temp_dir().join(name), true)
            }
        };
        std::fs::create_dir_all(&path)
            .with_context(|| format!("could not create {}", path.display()))?;
        // Breakpoints match on the path debugpy sees: make it the real one.
        let path = path
            .canonicalize()
            .with_context(|| format!("could not resolve {}", path.display()))?;
        Ok(WorkDir { path, remove })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove
            && let Err(err) = std::fs::remove_dir_all(&self.path)
        {
            tracing::warn!("could not remove {}: {err}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_workdir_is_removed_and_a_given_one_kept() {
        let temporary = WorkDir::new(None).expect("temp workdir");
        let path = temporary.path().to_path_buf();
        assert!(path.is_dir());
        drop(temporary);
        assert!(!path.exists());

        let given = tempfile::tempdir().expect("tempdir");
        let kept = WorkDir::new(Some(given.path())).expect("given workdir");
        drop(kept);
        assert!(given.path().is_dir());
    }
}
