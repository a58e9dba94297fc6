//! The demo's example step (docker/example/train.py, embedded) and the command that runs
//! it through the agent's own `exec` path, alone or under `mpiexec -n N`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::{ENV_RELAY_CONNECTION_STRING, Secret};
use crate::ports::PortRange;

/// The example training step: dependency-free, about a second long once released.
pub const EXAMPLE_STEP: &str = include_str!("../../../docker/example/train.py");
/// The file name the step is written under.
pub const STEP_FILE: &str = "train.py";
/// The comment that marks the line worth a breakpoint in [`EXAMPLE_STEP`].
const BREAKPOINT_MARKER: &str = "# breakpoint:";

/// The 1-based line of the example step that carries the breakpoint marker.
///
/// ```
/// let line = amlx_agent::demo::breakpoint_line();
/// let text = amlx_agent::demo::EXAMPLE_STEP.lines().nth(line as usize - 1).unwrap();
/// assert!(text.contains("# breakpoint:"));
/// ```
pub fn breakpoint_line() -> u32 {
    EXAMPLE_STEP
        .lines()
        .position(|line| line.contains(BREAKPOINT_MARKER))
        .and_then(|index| u32::try_from(index + 1).ok())
        .expect("docker/example/train.py marks one line with `# breakpoint:`")
}

/// That line's code, without the marker comment (for the instructions).
pub fn breakpoint_code() -> &'static str {
    let line = EXAMPLE_STEP
        .lines()
        .nth(breakpoint_line() as usize - 1)
        .expect("breakpoint_line is a line of the step");
    line.split('#').next().unwrap_or(line).trim()
}

/// Writes the example step into `dir`; returns its path.
pub fn write_step(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(STEP_FILE);
    std::fs::write(&path, EXAMPLE_STEP)
        .with_context(|| format!("could not write the example step {}", path.display()))?;
    Ok(path)
}

/// How the step's processes are started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// One process, rank 0 by `--rank 0`.
    Single,
    /// `mpiexec -n N`: the launcher gives each process its rank.
    Mpi { mpiexec: PathBuf, count: u32 },
}

impl Launch {
    /// `mpiexec -n count` when more than one process is asked for and `mpiexec` is found
    /// on `path` (a `PATH` value); otherwise one process.
    pub fn choose(count: u32, path: Option<&std::ffi::OsStr>) -> Launch {
        if count <= 1 {
            return Launch::Single;
        }
        match path.and_then(|path| find_in_path("mpiexec", path)) {
            Some(mpiexec) => Launch::Mpi { mpiexec, count },
            None => Launch::Single,
        }
    }
}

/// The first executable `name` in a `PATH` value.
fn find_in_path(name: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// What the step's command needs.
#[derive(Debug)]
pub struct StepCommand<'a> {
    pub agent: &'a Path,
    pub launch: &'a Launch,
    pub python: &'a Path,
    pub step: &'a Path,
    pub attach_timeout: Duration,
    pub port_range: PortRange,
    /// The config file the demo was given, passed on.
    pub config: Option<&'a Path>,
    pub connection_string: &'a Secret,
    pub hc: &'a str,
    pub state_dir: &'a Path,
}

impl StepCommand<'_> {
    /// The agent's arguments: rank 0 is the debug target, in connect mode, through the
    /// demo relay.
    pub fn agent_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if let Some(config) = self.config {
            args.push("--config".into());
            args.push(config.into());
        }
        for arg in ["exec", "--debug", "--ranks", "0", "--mode", "connect"] {
            args.push(arg.into());
        }
        if *self.launch == Launch::Single {
            args.push("--rank".into());
            args.push("0".into());
        }
        args.push("--attach-timeout".into());
        args.push(
            humantime::format_duration(self.attach_timeout)
                .to_string()
                .into(),
        );
        args.push("--port-range".into());
        args.push(format!("{}-{}", self.port_range.start, self.port_range.end).into());
        args.push("--".into());
        args.push(self.python.into());
        args.push(self.step.into());
        args
    }

    /// The whole command: the agent, under mpiexec when asked; the relay credentials in
    /// the environment only.
    pub fn command(&self) -> Command {
        let mut cmd = match self.launch {
            Launch::Single => Command::new(self.agent),
            Launch::Mpi { mpiexec, count } => {
                let mut cmd = Command::new(mpiexec);
                cmd.arg("-n").arg(count.to_string()).arg(self.agent);
                cmd
            }
        };
        cmd.args(self.agent_args())
            .env(ENV_RELAY_CONNECTION_STRING, self.connection_string.expose())
            .env("AMLX_RELAY_HC", self.hc)
            .env("AMLX_RELAY_INSECURE_WS", "true")
            .env("AMLX_STATE_DIR", self.state_dir)
            // A demo run inside another agent's step is still its own session.
            .env_remove("AMLX_AGENT_ACTIVE")
            .stdin(std::process::Stdio::null());
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breakpoint_line_is_code_in_the_loop() {
        assert!(breakpoint_line() > 1);
        assert_eq!(breakpoint_code(), "loss = loss * 0.9");
    }

    #[test]
    fn launch_uses_mpiexec_only_when_asked_and_found() {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_path_buf();
        let mpiexec = dir.join("mpiexec");
        std::fs::write(&mpiexec, "#!/bin/sh\n").expect("write");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&mpiexec, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let with = std::env::join_paths(["/nonexistent".into(), dir.clone()]).expect("PATH");
        let cases = [
            ("one process", 1, Some(with.clone()), Launch::Single),
            (
                "found",
                3,
                Some(with.clone()),
                Launch::Mpi {
                    mpiexec: mpiexec.clone(),
                    count: 3,
                },
            ),
            (
                "not on PATH",
                3,
                Some("/nonexistent".into()),
                Launch::Single,
            ),
            ("no PATH", 3, None, Launch::Single),
        ];
        for (why, count, path, want) in cases {
            assert_eq!(Launch::choose(count, path.as_deref()), want, "{why}");
        }
    }

    #[test]
    fn the_connection_string_never_reaches_argv() {
        let secret = Secret::new(
            "Endpoint=sb://127.0.0.1:1/;SharedAccessKeyName=demo;SharedAccessKey=hunter2",
        );
        let launch = Launch::Single;
        let command = StepCommand {
            agent: Path::new("/bin/amlx-agent"),
            launch: &launch,
            python: Path::new("python3"),
            step: Path::new("/tmp/x/train.py"),
            attach_timeout: Duration::from_secs(300),
            port_range: PortRange {
                start: 5700,
                end: 5799,
            },
            config: None,
            connection_string: &secret,
            hc: "amlx-demo-1",
            state_dir: Path::new("/tmp/x/state"),
        };
        let args: Vec<String> = command
            .agent_args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "exec --debug --ranks 0 --mode connect --rank 0 --attach-timeout 5m \
             --port-range 5700-5799 -- python3 /tmp/x/train.py"
        );
        assert!(!args.iter().any(|a| a.contains("hunter2")));
    }
}
