//! The step's command line on the target: the agent in front of the user's command
//! (`amlx-agent exec --debug …`), alone or under `mpiexec -n N`, and the environment that
//! carries the relay's credentials (never argv).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{ENV_RELAY_CONNECTION_STRING, Secret};
use crate::ports::PortRange;

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
    pub fn choose(count: u32, path: Option<&OsStr>) -> Launch {
        if count <= 1 {
            return Launch::Single;
        }
        match path.and_then(|path| find_in_path("mpiexec", path)) {
            Some(mpiexec) => Launch::Mpi { mpiexec, count },
            None => Launch::Single,
        }
    }

    /// `count` processes under the `mpiexec` the target's own PATH finds (a container's
    /// or a remote host's, which this machine cannot look into); one process for 1.
    pub fn on_target_path(count: u32) -> Launch {
        if count <= 1 {
            Launch::Single
        } else {
            Launch::Mpi {
                mpiexec: PathBuf::from("mpiexec"),
                count,
            }
        }
    }

    /// How many processes start.
    pub fn count(&self) -> u32 {
        match self {
            Launch::Single => 1,
            Launch::Mpi { count, .. } => *count,
        }
    }

    /// `1 process` / `4 processes under mpiexec`, with why when fewer than asked.
    pub fn describe(&self, asked: u32) -> String {
        match (self, asked) {
            (Launch::Mpi { count, .. }, _) => format!("{count} processes under mpiexec"),
            (Launch::Single, 1) => "1 process".to_owned(),
            (Launch::Single, asked) => {
                format!("1 process (mpiexec is not on PATH, so not the {asked} asked for)")
            }
        }
    }
}

/// The first executable `name` in a `PATH` value.
fn find_in_path(name: &str, path: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Everything the step's command line is made of, as the target sees it.
#[derive(Debug)]
pub struct StepCommand<'a> {
    /// The agent binary's path on the target.
    pub agent: &'a Path,
    pub launch: &'a Launch,
    /// The user's command and its arguments.
    pub command: &'a [OsString],
    /// `--ranks` for the step's agents: which ranks wait for VS Code.
    pub ranks: &'a str,
    pub attach_timeout: Duration,
    pub port_range: PortRange,
    /// A config file for the step's agent (local target only: the path is this machine's).
    pub config: Option<&'a Path>,
    pub connection_string: &'a Secret,
    pub hc: &'a str,
    /// Plain ws:// to the relay (the in-process one, or a loopback `relay serve`).
    pub insecure_ws: bool,
    /// A private CA for the relay's certificate, as the step's agent finds it.
    pub ca_file: Option<&'a Path>,
    /// Where the step's agent keeps its status record, when `run` follows it there.
    pub state_dir: Option<&'a Path>,
    /// `--post-mortem` for the step's agents, with the attach timeout as its timeout.
    pub post_mortem: bool,
    /// Logging flags for the step's agents, right after `exec`.
    pub log_args: &'a [OsString],
}

impl StepCommand<'_> {
    /// The program and arguments: the agent, under mpiexec when asked; rank 0 and the
    /// listed ranks are debug targets, in connect mode, through the run's relay.
    pub fn argv(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if let Launch::Mpi { mpiexec, count } = self.launch {
            args.push(mpiexec.into());
            args.push("-n".into());
            args.push(count.to_string().into());
        }
        args.push(self.agent.into());
        if let Some(config) = self.config {
            args.push("--config".into());
            args.push(config.into());
        }
        args.push("exec".into());
        args.extend(self.log_args.iter().cloned());
        for arg in ["--debug", "--ranks", self.ranks, "--mode", "connect"] {
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
        if self.post_mortem {
            args.push("--post-mortem".into());
            args.push("--post-mortem-timeout".into());
            args.push(
                humantime::format_duration(self.attach_timeout)
                    .to_string()
                    .into(),
            );
        }
        args.push("--".into());
        args.extend(self.command.iter().cloned());
        args
    }

    /// The variables the step's agent needs; the connection string is among them, so
    /// a target passes these by name where a command line would show them.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        let mut env = vec![
            (
                ENV_RELAY_CONNECTION_STRING,
                self.connection_string.expose().into(),
            ),
            ("AMLX_RELAY_HC", self.hc.into()),
        ];
        if self.insecure_ws {
            env.push(("AMLX_RELAY_INSECURE_WS", "true".into()));
        }
        if let Some(ca_file) = self.ca_file {
            env.push(("AMLX_RELAY_CA_FILE", ca_file.into()));
        }
        if let Some(dir) = self.state_dir {
            env.push(("AMLX_STATE_DIR", dir.into()));
        }
        env
    }
}

/// Variables a step started by `run` must not inherit: a run inside another agent's step
/// is still its own session.
pub const ENV_REMOVED: [&str; 1] = ["AMLX_AGENT_ACTIVE"];

#[cfg(test)]
mod tests {
    use super::*;

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

    fn words(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn the_connection_string_never_reaches_argv() {
        let secret = Secret::new(
            "Endpoint=sb://127.0.0.1:1/;SharedAccessKeyName=demo;SharedAccessKey=hunter2",
        );
        let command = vec![OsString::from("python3"), OsString::from("/tmp/x/train.py")];
        let single = Launch::Single;
        let mpi = Launch::Mpi {
            mpiexec: PathBuf::from("/opt/mpiexec"),
            count: 4,
        };
        let json_quiet: Vec<OsString> = ["--log-format", "json", "-q"].map(Into::into).to_vec();
        let cases: [(&Launch, &str, bool, &[OsString], &str); 4] = [
            (
                &single,
                "0",
                false,
                &[],
                "/bin/amlx-agent exec --debug --ranks 0 --mode connect --rank 0 \
                 --attach-timeout 5m --port-range 5700-5799 -- python3 /tmp/x/train.py",
            ),
            (
                &mpi,
                "all",
                false,
                &[],
                "/opt/mpiexec -n 4 /bin/amlx-agent exec --debug --ranks all --mode connect \
                 --attach-timeout 5m --port-range 5700-5799 -- python3 /tmp/x/train.py",
            ),
            (
                &mpi,
                "0",
                true,
                &[],
                "/opt/mpiexec -n 4 /bin/amlx-agent exec --debug --ranks 0 --mode connect \
                 --attach-timeout 5m --port-range 5700-5799 --post-mortem \
                 --post-mortem-timeout 5m -- python3 /tmp/x/train.py",
            ),
            // The command's logging flags reach the step's agents, right after `exec`.
            (
                &single,
                "0",
                false,
                &json_quiet,
                "/bin/amlx-agent exec --log-format json -q --debug --ranks 0 --mode connect \
                 --rank 0 --attach-timeout 5m --port-range 5700-5799 -- python3 /tmp/x/train.py",
            ),
        ];
        for (launch, ranks, post_mortem, log_args, want) in cases {
            let step = StepCommand {
                agent: Path::new("/bin/amlx-agent"),
                launch,
                command: &command,
                ranks,
                attach_timeout: Duration::from_secs(300),
                port_range: PortRange {
                    start: 5700,
                    end: 5799,
                },
                config: None,
                connection_string: &secret,
                hc: "amlx-run-1",
                insecure_ws: true,
                ca_file: None,
                state_dir: None,
                post_mortem,
                log_args,
            };
            let argv = step.argv();
            assert_eq!(words(&argv), want);
            assert!(!words(&argv).contains("hunter2"));
            assert!(
                step.env()
                    .iter()
                    .any(|(_, v)| v.to_string_lossy().contains("hunter2"))
            );
        }
    }
}
