//! The `ssh` target: a remote Linux host reached with the developer's own SSH (agent or
//! key file; never a password). The agent binary is copied once per content (by its
//! SHA-256), the project folder is copied next to it, and the step runs there behind
//! the agent while one SSH connection carries its output and a reverse forward of the
//! in-process relay: the host needs no inbound port but SSH, and no Azure Relay.
//!
//! The relay's credentials reach the host on the connection's stdin, never on a command
//! line. That stdin then stays open as the step's lifeline: when it ends (Ctrl-C here,
//! this process killed, the connection lost) the remote script stops the step's process
//! group, bounded.

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

use super::command::succeed_within;
use super::docker::{AGENT_IN_CONTAINER, Mounts, PROJECT_IN_CONTAINER, run_args};
use super::{SshAddress, StateDirs, Target};
use crate::config::ENV_RELAY_CONNECTION_STRING;
use crate::process::shell_quote as quote;
use crate::run::step::{Launch, StepCommand};

/// The SSH client program (OpenSSH: the user's config, agent and known hosts apply).
const SSH_CLIENT: &str = "ssh";
/// Where the agent and project copies live on the host without `remote_dir`.
const DEFAULT_REMOTE_DIR: &str = "~/.cache/amlx";
/// Longest one SSH round (probe, connection set-up) may take.
const SSH_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest copying the agent or the project may take (a slow link, a big project).
const COPY_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// `ConnectTimeout` for every ssh call: an unreachable host fails fast.
const CONNECT_TIMEOUT_SECS: u32 = 10;
/// Keepalives: a dead connection is noticed within about 45 s, and the remote
/// side's stdin then ends, which stops the step.
const ALIVE_INTERVAL_SECS: u32 = 15;
const ALIVE_COUNT: u32 = 3;
/// After the lifeline ends, how long the step gets between SIGTERM and SIGKILL.
const REMOTE_STOP_GRACE_SECS: u32 = 5;
/// Where the remote end of the relay's reverse forward may listen on the host: the
/// same window as the default debug ports, which never overlaps them per run (the
/// forward's port is chosen outside the run's block).
const FORWARD_PORTS: std::ops::Range<u16> = 33000..39000;
/// Hex characters of the agent's SHA-256 in its remote file name.
const HASH_CHARS: usize = 16;
/// Exit code of the remote script when it cannot even start the step.
const SETUP_FAILED: u8 = 97;
/// Characters of the project folder's own name kept in its copy's name.
const PROJECT_NAME_CHARS: usize = 64;
/// Files and folders of the project that are not copied.
const NOT_COPIED: [&str; 3] = ["./.git", "./.vscode", "./.amlx"];

/// A remote host over SSH.
#[derive(Debug)]
pub struct Ssh {
    /// The `ssh` client program.
    pub client: PathBuf,
    pub address: SshAddress,
    pub identity_file: Option<PathBuf>,
    /// An ssh config file used instead of the user's (`-F`).
    pub ssh_config: Option<PathBuf>,
    /// Where the copies live on the host (`~/` is the remote home).
    pub remote_dir: String,
    /// The project folder on this machine.
    pub project: PathBuf,
    /// The agent binary to copy (a static build runs on any Linux host).
    pub agent: PathBuf,
    /// Extra variables for the step (exported on the host, and passed into a container).
    pub env: Vec<(String, String)>,
    /// Run the step in a container of this image on the host's Docker engine.
    pub image: Option<String>,
    /// That container's name (unique per run, so the lifeline removes exactly it).
    container: String,
    /// The remote port of the relay's reverse forward.
    forward_port: u16,
    /// Found by `prepare`: the project's and the agent's paths on the host.
    remote: Option<Remote>,
}

#[derive(Debug, Clone)]
struct Remote {
    project: String,
    agent: String,
}

impl Ssh {
    /// The host `spec` names, for `project`, copying `agent`; the step runs in a
    /// container of `image` there when one is given.
    pub fn from_spec(
        spec: &crate::config::TargetSpec,
        project: PathBuf,
        agent: PathBuf,
        image: Option<String>,
    ) -> anyhow::Result<Ssh> {
        let host = spec
            .host
            .clone()
            .with_context(|| format!("target {}: an ssh target needs a host", spec.name))?;
        Ok(Ssh {
            client: PathBuf::from(SSH_CLIENT),
            address: SshAddress {
                user: spec.user.clone(),
                host,
                port: spec.port,
            },
            identity_file: spec.identity_file.clone(),
            ssh_config: spec.ssh_config.clone(),
            remote_dir: spec
                .remote_dir
                .clone()
                .unwrap_or_else(|| DEFAULT_REMOTE_DIR.to_owned()),
            project,
            agent,
            env: spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            image,
            container: super::docker::container_name(),
            forward_port: rand::random_range(FORWARD_PORTS),
            remote: None,
        })
    }

    /// `ssh` with the options every call uses, up to and including the host.
    fn ssh(&self) -> Command {
        self.ssh_with(&[])
    }

    /// [`ssh`](Self::ssh) with `extra` options before the host.
    fn ssh_with(&self, extra: &[String]) -> Command {
        let mut cmd = Command::new(&self.client);
        if let Some(config) = &self.ssh_config {
            cmd.arg("-F").arg(config);
        }
        cmd.args(["-o", "BatchMode=yes"])
            .args(["-o", &format!("ConnectTimeout={CONNECT_TIMEOUT_SECS}")])
            .args(["-o", &format!("ServerAliveInterval={ALIVE_INTERVAL_SECS}")])
            .args(["-o", &format!("ServerAliveCountMax={ALIVE_COUNT}")]);
        if let Some(identity) = &self.identity_file {
            cmd.arg("-i")
                .arg(identity)
                .args(["-o", "IdentitiesOnly=yes"]);
        }
        if let Some(port) = self.address.port {
            cmd.args(["-p", &port.to_string()]);
        }
        if let Some(user) = &self.address.user {
            cmd.args(["-l", user]);
        }
        cmd.args(extra);
        // The host was checked not to start with '-': ssh cannot take it for an option.
        cmd.arg(&self.address.host);
        cmd
    }

    /// `[USER@]HOST[:PORT]` for messages.
    fn place(&self) -> String {
        let mut place = String::new();
        if let Some(user) = &self.address.user {
            let _ = write!(place, "{user}@");
        }
        place.push_str(&self.address.host);
        if let Some(port) = self.address.port {
            let _ = write!(place, ":{port}");
        }
        place
    }

    /// The remote directory as shell text: `~/x` becomes `"$HOME"/'x'`.
    fn remote_base(&self) -> String {
        match self.remote_dir.strip_prefix("~/") {
            Some(rest) => format!("\"$HOME\"/{}", quote(rest)),
            None if self.remote_dir == "~" => "\"$HOME\"".to_owned(),
            None => quote(&self.remote_dir),
        }
    }

    /// The project copy's folder name: its own name and a hash of where it lives here,
    /// so two projects named alike do not share a copy.
    fn project_name(&self) -> String {
        let base: String = self
            .project
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            // A folder name is at most 255 bytes on the host: the hash follows.
            .take(PROJECT_NAME_CHARS)
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let digest = Sha256::digest(self.project.as_os_str().as_encoded_bytes());
        format!("{base}-{}", hex(&digest, 8))
    }
}

impl Target for Ssh {
    fn describe(&self) -> String {
        match &self.image {
            Some(image) => format!(
                "Docker container {} of {image} on {} over SSH",
                self.container,
                self.place()
            ),
            None => format!("{} over SSH", self.place()),
        }
    }

    fn remote_root(&self) -> String {
        if self.image.is_some() {
            return PROJECT_IN_CONTAINER.to_owned();
        }
        self.remote
            .as_ref()
            .map_or_else(String::new, |remote| remote.project.clone())
    }

    fn agent_path(&self) -> anyhow::Result<PathBuf> {
        if self.image.is_some() {
            return Ok(PathBuf::from(AGENT_IN_CONTAINER));
        }
        self.remote
            .as_ref()
            .map(|remote| PathBuf::from(&remote.agent))
            .context("the ssh target was not prepared")
    }

    fn relay_address(&self, _local: SocketAddr) -> String {
        format!("127.0.0.1:{}", self.forward_port)
    }

    fn shares_this_network(&self) -> bool {
        false
    }

    fn passes_config(&self) -> bool {
        false
    }

    fn state_dir(&self, _local: &Path) -> Option<StateDirs> {
        None
    }

    fn launch(&self, count: u32) -> Launch {
        Launch::on_target_path(count)
    }

    fn prepare(&mut self) -> anyhow::Result<()> {
        let hash = file_hash(&self.agent)?;
        // A copy cut short (a Ctrl-C kills ssh, and the remote `cat` sees a clean end)
        // must never pass for the agent: the size is checked before it takes its name, and
        // again by the probe, which copies anew over a short file left by an older agent.
        let size = std::fs::metadata(&self.agent)
            .with_context(|| format!("could not read {}", self.agent.display()))?
            .len();
        let base = self.remote_base();
        let name = quote(&self.project_name());
        let agent_file = format!("agent-{hash}");
        // One round: make the folders, say where they are, and whether the agent of this
        // content is there already.
        let probe = format!(
            "set -e; mkdir -p {base}/projects/{name}; cd {base}/projects/{name}; pwd; \
             cd {base}; pwd; if [ -x {agent_file} ] && [ \"$(wc -c < {agent_file})\" -eq {size} ]; \
             then echo present; else echo missing; fi"
        );
        let mut cmd = self.ssh();
        cmd.arg(remote_sh(&probe));
        let out = succeed_within(cmd, SSH_TIMEOUT, &format!("ssh {}", self.place()))
            .with_context(|| format!("cannot reach {} over SSH", self.place()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let [project, base_dir, agent_state] = lines.as_slice() else {
            anyhow::bail!(
                "{} answered the set-up probe unexpectedly: {:?}",
                self.place(),
                text.trim()
            );
        };
        let agent = format!("{base_dir}/{agent_file}");
        if *agent_state == "present" {
            say!(
                "amlx-agent run: the agent is on {} already ({agent})",
                self.place()
            );
        } else {
            let part = format!("{agent_file}.part.$$");
            // Only a copy measured whole takes the name: a size that cannot be read
            // fails like a short one, and the part file goes whatever ends the script.
            let copy = format!(
                "set -e; cd {}; trap \"rm -f {part}\" EXIT; cat > {part}; \
                 if [ \"$(wc -c < {part})\" -eq {size} ]; then \
                 chmod 755 {part}; mv -f {part} {agent_file}; \
                 else echo \"the copy of the agent arrived incomplete\" >&2; exit 1; fi",
                quote(base_dir)
            );
            let mut cmd = self.ssh();
            cmd.arg(remote_sh(&copy));
            pipe_file_into(cmd, &self.agent, COPY_TIMEOUT, "copying the agent")?;
            say!(
                "amlx-agent run: copied the agent to {}:{agent}",
                self.place()
            );
        }
        self.copy_project(project)?;
        if let Some(image) = &self.image {
            let check = format!(
                "{}docker version --format '{{{{.Server.Version}}}}'",
                self.exports()
            );
            let mut cmd = self.ssh();
            cmd.arg(remote_sh(&check));
            succeed_within(cmd, SSH_TIMEOUT, "docker version").with_context(|| {
                format!(
                    "the Docker engine on {} does not answer, so the step cannot run in {image} \
                     there (start it, or set DOCKER_HOST in the target's env)",
                    self.place()
                )
            })?;
        }
        self.remote = Some(Remote {
            project: (*project).to_owned(),
            agent,
        });
        Ok(())
    }

    fn command(
        &self,
        step: &StepCommand<'_>,
        relay: Option<SocketAddr>,
    ) -> anyhow::Result<Command> {
        let remote = self
            .remote
            .as_ref()
            .context("the ssh target was not prepared")?;
        // The script is text: refuse what it would mangle rather than run something else.
        if let Some(bad) = step.command.iter().find(|arg| arg.to_str().is_none()) {
            anyhow::bail!(
                "the ssh target passes the command to the host's shell as text, and \
                 argument {:?} is not UTF-8; rename it or run the step locally",
                bad
            );
        }
        let mut script = String::new();
        // fd 3 keeps the connection's stdin: the secret's line, then the lifeline.
        script.push_str("exec 3<&0\n");
        let _ = writeln!(
            script,
            "IFS= read -r {ENV_RELAY_CONNECTION_STRING} <&3 || exit {SETUP_FAILED}\nexport {ENV_RELAY_CONNECTION_STRING}"
        );
        for (name, value) in step.env() {
            if name != ENV_RELAY_CONNECTION_STRING {
                let _ = writeln!(script, "export {name}={}", quote_os(&value));
            }
        }
        script.push_str(&self.exports());
        let _ = writeln!(
            script,
            "cd {} || exit {SETUP_FAILED}",
            quote(&remote.project)
        );
        let words = |args: &[std::ffi::OsString]| -> String {
            args.iter()
                .map(|a| quote_os(a))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let (argv, stop_container) = match &self.image {
            None => (words(&step.argv()), String::new()),
            Some(image) => {
                let mounts = Mounts {
                    agent: std::ffi::OsStr::new(&remote.agent),
                    project: std::ffi::OsStr::new(&remote.project),
                    state: None,
                };
                let args = run_args(&self.container, image, None, &mounts, &self.env, step);
                // `run` first, then the host user's own ids (only the host knows them).
                let rest = args.get(1..).unwrap_or_default();
                (
                    format!("docker run --user \"$(id -u):$(id -g)\" {}", words(rest)),
                    format!("docker rm -f {} >/dev/null 2>&1; ", quote(&self.container)),
                )
            }
        };
        // A session of its own (setsid, where the host has it) lets the lifeline stop the
        // step's whole process group (mpiexec and every rank); without it, the step's
        // process alone (its relay sidecar follows it, mpiexec passes the signal on).
        // `sh -c` has no job control without a terminal, so `set -m` cannot do this.
        let _ = writeln!(
            script,
            "if command -v setsid >/dev/null 2>&1; then setsid {argv} </dev/null 3<&- &\n\
             else {argv} </dev/null 3<&- &\nfi\nstep=$!"
        );
        let _ = writeln!(
            script,
            "{{ while IFS= read -r _; do :; done; \
             kill -TERM -$step 2>/dev/null || kill -TERM $step 2>/dev/null; \
             sleep {REMOTE_STOP_GRACE_SECS}; {stop_container}\
             kill -KILL -$step 2>/dev/null || kill -KILL $step 2>/dev/null; }} <&3 3<&- >/dev/null 2>&1 &\nwatch=$!"
        );
        // The watcher's output goes nowhere: its `sleep` must not hold the connection's
        // stdout open after the step ended (ssh would wait for it). Whatever the step
        // left behind in its process group (a daemon holding the connection's output)
        // is stopped too, as a local step's leftovers are: ssh returns once they are gone.
        let _ = writeln!(
            script,
            "wait $step\ncode=$?\nkill -TERM $watch 2>/dev/null\n\
             if kill -TERM -$step 2>/dev/null; then sleep 1; kill -KILL -$step 2>/dev/null; fi\n\
             exit $code"
        );
        // The forward must work, or the step could never reach the relay: fail instead.
        let forward = match relay {
            Some(relay) => vec![
                "-o".to_owned(),
                "ExitOnForwardFailure=yes".to_owned(),
                "-R".to_owned(),
                format!("127.0.0.1:{}:127.0.0.1:{}", self.forward_port, relay.port()),
            ],
            None => Vec::new(),
        };
        let mut ssh = self.ssh_with(&forward);
        ssh.arg(remote_sh(&script));
        // Its own process group: a terminal's Ctrl-C reaches `run`, which closes the
        // lifeline so the step's own exit code comes back, instead of killing ssh at
        // once (exit 255, the remote step stopped only after `run` returned).
        std::os::unix::process::CommandExt::process_group(&mut ssh, 0);
        Ok(ssh)
    }

    fn stdin(&self, step: &StepCommand<'_>) -> Option<Vec<u8>> {
        let mut line = step.connection_string.expose().as_bytes().to_vec();
        line.push(b'\n');
        Some(line)
    }

    fn cleanup(&mut self) {
        // The step's processes stop when the lifeline ends; the copies stay, so the next
        // run copies nothing that has not changed.
    }
}

impl Ssh {
    /// `export NAME='value'` lines for the target's variables (the host's shell needs
    /// them too: `DOCKER_HOST`, `PATH`).
    fn exports(&self) -> String {
        self.env
            .iter()
            .map(|(name, value)| format!("export {name}={}\n", quote(value)))
            .collect()
    }
}

/// Whether the host answers over SSH with these settings: `Ok(what it said)` or why not.
pub fn check(ssh: &Ssh) -> Result<String, String> {
    let mut cmd = ssh.ssh();
    cmd.arg("uname -sm");
    match succeed_within(cmd, SSH_TIMEOUT, &format!("ssh {}", ssh.place())) {
        Ok(out) => Ok(format!(
            "{} answers ({})",
            ssh.place(),
            String::from_utf8_lossy(&out.stdout).trim()
        )),
        Err(err) => Err(format!("{err:#}")),
    }
}

/// The first [`HASH_CHARS`] hex digits of the file's SHA-256.
fn file_hash(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("cannot read the agent binary {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buffer)
            .with_context(|| format!("cannot read the agent binary {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(buffer.get(..n).unwrap_or_default());
    }
    Ok(hex(&hasher.finalize(), HASH_CHARS / 2))
}

fn hex(bytes: &[u8], count: usize) -> String {
    bytes.iter().take(count).fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// An argument as one shell word. Arguments are checked to be UTF-8 before the script
/// is built ([`Ssh::command`]), so nothing is replaced here in practice.
fn quote_os(text: &std::ffi::OsStr) -> String {
    quote(&text.to_string_lossy())
}

/// The remote command: the script run by `sh`, whatever the login shell is.
fn remote_sh(script: &str) -> String {
    format!("sh -c {}", quote(script))
}

/// Runs `cmd` with `file` on its stdin, bounded.
fn pipe_file_into(
    mut cmd: Command,
    file: &Path,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<()> {
    let input =
        std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    cmd.stdin(input);
    let out = super::command::output_within_keeping_stdin(cmd, timeout, what)?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Ssh {
    /// Copies the project folder into `remote` (a tar stream over one SSH call; the
    /// files the project has are updated, others already there stay).
    fn copy_project(&self, remote: &str) -> anyhow::Result<()> {
        let mut tar = Command::new("tar");
        tar.arg("-C").arg(&self.project).arg("-cf").arg("-");
        for skip in NOT_COPIED {
            tar.arg(format!("--exclude={skip}"));
        }
        tar.arg(".")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut tar = tar
            .spawn()
            .context("could not start tar to copy the project")?;
        let stream = tar.stdout.take().expect("tar's stdout was piped");
        let mut cmd = self.ssh();
        cmd.arg(remote_sh(&format!(
            "set -e; cd {}; tar -xf -",
            quote(remote)
        )));
        cmd.stdin(stream);
        let copied =
            super::command::output_within_keeping_stdin(cmd, COPY_TIMEOUT, "copying the project");
        let _ = tar.kill();
        let tar_status = tar.wait();
        let out = copied?;
        anyhow::ensure!(
            out.status.success(),
            "copying the project to {}:{remote} failed ({}): {}",
            self.place(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if let Ok(status) = tar_status
            && !status.success()
            && status.code().is_some()
        {
            tracing::warn!("tar reported a problem reading the project ({status})");
        }
        say!(
            "amlx-agent run: copied {} to {}:{remote}",
            self.project.display(),
            self.place()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(host: &str) -> crate::config::TargetSpec {
        super::super::choose(&format!("ssh://{host}"), None, &Default::default()).expect("ssh spec")
    }

    #[test]
    fn shell_words_survive_quotes_and_the_remote_dir_keeps_home() {
        assert_eq!(quote("it's"), "'it'\\''s'");
        let spec = crate::config::TargetSpec {
            user: Some("me".into()),
            port: Some(2222),
            ..spec("vm")
        };
        let ssh = Ssh::from_spec(
            &spec,
            "/home/me/my project".into(),
            "/bin/true".into(),
            None,
        )
        .expect("ssh target");
        assert_eq!(ssh.remote_base(), "\"$HOME\"/'.cache/amlx'");
        assert!(
            ssh.project_name().starts_with("my_project-"),
            "{}",
            ssh.project_name()
        );
        assert_eq!(ssh.place(), "me@vm:2222");
        assert!(FORWARD_PORTS.contains(&ssh.forward_port));
        let args: Vec<String> = ssh
            .ssh()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args.last().map(String::as_str), Some("vm"));
        assert!(args.join(" ").contains("-o BatchMode=yes"));
    }

    #[test]
    fn the_secret_goes_on_stdin_not_in_the_remote_command() {
        use crate::config::Secret;
        use crate::ports::PortRange;
        let spec = crate::config::TargetSpec {
            remote_dir: Some("/srv/amlx".into()),
            env: [("EPOCHS".to_owned(), "2".to_owned())].into(),
            ..spec("vm")
        };
        let mut ssh =
            Ssh::from_spec(&spec, "/p".into(), "/bin/true".into(), None).expect("ssh target");
        ssh.remote = Some(Remote {
            project: "/srv/amlx/projects/p-1".into(),
            agent: "/srv/amlx/agent-1".into(),
        });
        let secret =
            Secret::new("Endpoint=sb://127.0.0.1:1/;SharedAccessKeyName=k;SharedAccessKey=hunter2");
        let command = vec![
            std::ffi::OsString::from("python3"),
            std::ffi::OsString::from("it's.py"),
        ];
        let launch = Launch::Single;
        let step = StepCommand {
            agent: Path::new("/srv/amlx/agent-1"),
            launch: &launch,
            command: &command,
            ranks: "0",
            attach_timeout: Duration::from_secs(60),
            port_range: PortRange {
                start: 20000,
                end: 20000,
            },
            config: None,
            connection_string: &secret,
            hc: "amlx-run-1",
            insecure_ws: true,
            ca_file: None,
            state_dir: None,
            post_mortem: false,
            log_args: &[],
        };
        let cmd = ssh
            .command(&step, Some(SocketAddr::from(([127, 0, 0, 1], 4242))))
            .expect("command");
        let line: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = line.join(" ");
        assert!(
            line.contains(&format!(
                "-R 127.0.0.1:{}:127.0.0.1:4242 vm sh -c",
                ssh.forward_port
            )),
            "{line}"
        );
        assert!(line.contains("export EPOCHS="), "{line}");
        assert!(!line.contains("hunter2"), "{line}");
        let non_utf8: Vec<std::ffi::OsString> = vec![std::os::unix::ffi::OsStringExt::from_vec(
            b"caf\xe9".to_vec(),
        )];
        let refused = StepCommand {
            command: &non_utf8,
            ..step
        };
        let err = ssh.command(&refused, None).expect_err("non-UTF-8 refused");
        assert!(err.to_string().contains("is not UTF-8"), "{err}");
        let stdin = ssh.stdin(&step).expect("stdin");
        assert!(String::from_utf8_lossy(&stdin).contains("hunter2"));
    }
}
