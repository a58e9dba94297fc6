//! `amlx-agent demo`: `run` with the embedded example step, on this machine.
//!
//! The example step (docker/example/train.py, embedded) is written into a folder (a fresh
//! temporary one by default, removed at the end) and run as rank 0's debug target under
//! `mpiexec -n N`, through the same in-process relay, listener and launch.json that
//! `amlx-agent run` uses; the instructions also name the line worth a breakpoint.

mod step;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::ports::PortRange;
use crate::run::{self, target::Local};

pub use step::{EXAMPLE_STEP, STEP_FILE, breakpoint_line};

/// Random hex characters in the temporary directory's name (short enough to type).
const TEMP_ID_CHARS: usize = 12;
/// How the demo's lines start.
const LABEL: &str = "amlx-agent demo";

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
    /// The node's ports lock directory (VS Code's port is held there while the demo runs).
    pub lock_dir: Option<PathBuf>,
    /// `--post-mortem`: the other ranks are hooked (see `run::Options::post_mortem`).
    pub post_mortem: bool,
    /// Logging flags for the step's agents (see `run::Options::log_args`).
    pub log_args: Vec<std::ffi::OsString>,
}

/// How long `--python` may take to say whether it can import debugpy.
const DEBUGPY_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Refuses a `--python` that cannot import debugpy, before any instructions are printed:
/// the demo is about the debugger, and its step would only run on without one. (Steps of
/// `run` are not checked: they run whatever happens, and their agent's log says why.)
fn has_debugpy(python: &Path) -> anyhow::Result<()> {
    let mut check = std::process::Command::new(python);
    check.args(["-c", "import debugpy"]);
    let fix = format!(
        "install it there (`{} -m pip install debugpy`, in a virtual environment), or give \
         --python an interpreter that has it",
        python.display()
    );
    let what = format!("{} -c 'import debugpy'", python.display());
    match crate::run::target::command::output_within(check, DEBUGPY_CHECK_TIMEOUT, &what) {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => {
            // What Python said (its last line: `ModuleNotFoundError: …`, or why an
            // installed debugpy does not load), escaped and short.
            let stderr = String::from_utf8_lossy(&output.stderr);
            let said = stderr.lines().rev().find(|l| !l.trim().is_empty());
            let said = said.map_or_else(String::new, |line| {
                format!(" ({})", crate::logging::loggable(line.trim()))
            });
            anyhow::bail!(
                "the demo's step needs debugpy, and {} cannot import it{said}: {fix}",
                python.display()
            )
        }
        Err(err) => Err(err).context("give --python a Python interpreter that has debugpy"),
    }
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
    has_debugpy(&options.python)?;
    let workdir = WorkDir::new(options.dir.as_deref())?;
    let step_path = step::write_step(workdir.path())?;
    let hint = format!(
        "Open {STEP_FILE} there and set a breakpoint on line {}: {}",
        breakpoint_line(),
        step::breakpoint_code()
    );
    let run_options = run::Options {
        label: LABEL,
        command: vec![options.python.clone().into(), step_path.into()],
        project: workdir.path().to_path_buf(),
        vscode_port: options.vscode_port,
        attach_timeout: options.attach_timeout,
        ranks_count: options.ranks_count,
        one_process_without_mpiexec: true,
        ranks: "0".to_owned(),
        port_range: Some(options.port_range),
        config: options.config.clone(),
        state_dir: options.state_dir.clone(),
        lock_dir: options.lock_dir.clone(),
        hint: Some(hint),
        relay: run::RelayChoice::InProcess,
        post_mortem: options.post_mortem,
        log_args: options.log_args.clone(),
    };
    let mut target = Local {
        project: workdir.path().to_path_buf(),
    };
    let result = run::run(&run_options, &mut target);
    drop(workdir);
    result
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
        if let Err(err) = std::fs::create_dir_all(&path) {
            // Something that is not a folder where it goes (--dir naming a file): say so.
            anyhow::ensure!(
                path.is_dir() || !path.exists(),
                "--dir {} is not a folder: give --dir an empty or new folder (or leave it out \
                 for a temporary one)",
                path.display()
            );
            return Err(err).with_context(|| format!("could not create {}", path.display()));
        }
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
