//! The `docker` target: the step runs in a container of the given image, on the local
//! Docker engine (or wherever `DOCKER_HOST` points), with the agent binary bind-mounted
//! read-only as its entrypoint (no image rebuild), the project folder mounted as the
//! working directory, the host's network (the in-process relay is on its loopback), and
//! the relay's credentials passed by variable name (never on docker's command line).
//!
//! The agent is PID 1 in the container (supervise mode: signals forwarded, zombies
//! reaped). Ctrl-C reaches the container through `docker run`'s signal proxy; whatever
//! happens, cleanup removes the container by its unique name, bounded.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use super::command::{output_within, succeed_within};
use super::{StateDirs, Target};
use crate::run::step::{ENV_REMOVED, Launch, StepCommand};

/// Where the agent binary is mounted in the container.
pub(super) const AGENT_IN_CONTAINER: &str = "/amlx/amlx-agent";
/// Where the project folder is mounted (the step's working directory).
pub(super) const PROJECT_IN_CONTAINER: &str = "/workspace";
/// Where the run's status-record directory is mounted.
const STATE_IN_CONTAINER: &str = "/amlx/state";
/// Longest a quick engine call (`docker version`, `docker rm`) may take.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `--build` may take: a first build of a training image takes minutes.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Random hex characters in the container's name.
const NAME_ID_CHARS: usize = 12;

/// A container of `image` on the Docker engine.
#[derive(Debug)]
pub struct Docker {
    /// The `docker` client program.
    pub client: PathBuf,
    pub image: String,
    /// The project folder on this machine.
    pub project: PathBuf,
    /// The agent binary to mount (a static build runs in any image).
    pub agent: PathBuf,
    /// A Dockerfile to build `image` from (in the project folder's context) first.
    pub build: Option<PathBuf>,
    /// Extra variables for the step.
    pub env: Vec<(String, String)>,
    /// The container's name: unique per run, so cleanup removes exactly it.
    name: String,
    /// The run's status-record directory, mounted into the container.
    state: Option<PathBuf>,
    /// Whether the container's `docker run` was made: without it there is no container
    /// to remove (a stop during the preparation), and asking an engine that does not
    /// answer would hold the stop for the engine's timeout.
    command_made: std::cell::Cell<bool>,
}

impl Docker {
    pub fn new(
        client: PathBuf,
        image: String,
        project: PathBuf,
        agent: PathBuf,
        build: Option<PathBuf>,
        env: Vec<(String, String)>,
    ) -> Docker {
        let name = container_name();
        Docker {
            client,
            image,
            project,
            agent,
            build,
            env,
            name,
            state: None,
            command_made: std::cell::Cell::new(false),
        }
    }

    fn docker(&self) -> Command {
        Command::new(&self.client)
    }

    /// The container's `--user`: the developer's own, so files the step writes into the
    /// project folder are theirs.
    fn user() -> String {
        format!("{}:{}", nix::unistd::getuid(), nix::unistd::getgid())
    }
}

impl Target for Docker {
    fn describe(&self) -> String {
        format!("Docker container {} of {}", self.name, self.image)
    }

    fn remote_root(&self) -> String {
        PROJECT_IN_CONTAINER.to_owned()
    }

    fn agent_path(&self) -> anyhow::Result<PathBuf> {
        Ok(PathBuf::from(AGENT_IN_CONTAINER))
    }

    fn relay_address(&self, local: SocketAddr) -> String {
        // The container shares the host's network: loopback is this machine's.
        local.to_string()
    }

    fn shares_this_network(&self) -> bool {
        true
    }

    fn passes_config(&self) -> bool {
        false
    }

    fn state_dir(&self, _local: &Path) -> Option<StateDirs> {
        self.state.as_ref().map(|dir| StateDirs {
            here: dir.clone(),
            on_target: PathBuf::from(STATE_IN_CONTAINER),
        })
    }

    fn launch(&self, count: u32) -> Launch {
        Launch::on_target_path(count)
    }

    fn prepare(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.agent.is_file(),
            "the agent binary {} to mount into the container does not exist",
            self.agent.display()
        );
        if is_dynamic_elf(&self.agent) {
            say!(
                "amlx-agent run: {} is dynamically linked, so it runs in the container only if \
                 {} has a compatible C library; --agent-binary takes the static build \
                 (docker/build-static.sh)",
                self.agent.display(),
                self.image
            );
        }
        let mut version = self.docker();
        version.args(["version", "--format", "{{.Server.Version}}"]);
        succeed_within(version, ENGINE_TIMEOUT, "docker version")
            .context("cannot reach the Docker engine: start it, or point DOCKER_HOST at it")?;
        if let Some(dockerfile) = &self.build {
            say!(
                "amlx-agent run: building {} from {}",
                self.image,
                dockerfile.display()
            );
            let mut build = self.docker();
            build
                .args(["build", "--tag", &self.image, "--file"])
                .arg(dockerfile)
                .arg(&self.project);
            succeed_within(build, BUILD_TIMEOUT, "docker build")?;
        }
        // Named after the container; the container runs as the developer's user, so the
        // directory and what the step's agent writes into it stay theirs to remove.
        let state = std::env::temp_dir().join(format!("{}-state", self.name));
        std::fs::create_dir(&state)
            .with_context(|| format!("could not create {}", state.display()))?;
        self.state = Some(state);
        Ok(())
    }

    fn command(
        &self,
        step: &StepCommand<'_>,
        _relay: Option<SocketAddr>,
    ) -> anyhow::Result<Command> {
        let mut cmd = self.docker();
        let mounts = Mounts {
            agent: self.agent.as_os_str(),
            project: self.project.as_os_str(),
            state: self.state.as_deref().map(Path::as_os_str),
        };
        let user = Self::user();
        cmd.args(run_args(
            &self.name,
            &self.image,
            Some(&user),
            &mounts,
            &self.env,
            step,
        ));
        // By name only in the arguments: docker takes each value from its environment.
        cmd.envs(step.env());
        for name in ENV_REMOVED {
            cmd.env_remove(name);
        }
        cmd.stdin(std::process::Stdio::null());
        self.command_made.set(true);
        Ok(cmd)
    }

    fn cleanup(&mut self) {
        // `--rm` removes a container that exited; this catches one that did not (Ctrl-C
        // before it started, a killed client). "No such container" is the usual answer.
        if self.command_made.get() {
            let mut rm = self.docker();
            rm.args(["rm", "--force", &self.name]);
            match output_within(rm, ENGINE_TIMEOUT, "docker rm") {
                Ok(out) if out.status.success() => {
                    tracing::debug!("removed container {}", self.name);
                }
                Ok(_) => {}
                Err(err) => tracing::warn!("could not remove container {}: {err:#}", self.name),
            }
        }
        if let Some(state) = self.state.take()
            && let Err(err) = std::fs::remove_dir_all(&state)
        {
            tracing::warn!("could not remove {}: {err}", state.display());
        }
    }
}

/// Whether the engine answers and has `image`: `Ok(engine version, image)` or why not.
pub fn check(client: &Path, image: &str) -> Result<String, String> {
    let mut version = Command::new(client);
    version.args(["version", "--format", "{{.Server.Version}}"]);
    let engine = succeed_within(version, ENGINE_TIMEOUT, "docker version")
        .map_err(|err| format!("the Docker engine is unreachable: {err:#}"))?;
    let engine = String::from_utf8_lossy(&engine.stdout).trim().to_owned();
    let mut inspect = Command::new(client);
    inspect.args(["image", "inspect", "--format", "{{.Id}}", image]);
    match output_within(inspect, ENGINE_TIMEOUT, "docker image inspect") {
        Ok(out) if out.status.success() => Ok(format!("Docker {engine}, image {image} present")),
        Ok(_) => Ok(format!(
            "Docker {engine}; image {image} is not here yet (docker run pulls it, or --build builds it)"
        )),
        Err(err) => Err(format!("{err:#}")),
    }
}

/// Whether the ELF file at `path` names a program interpreter (dynamically linked): such
/// a binary runs in a container only if the image has a compatible C library.
fn is_dynamic_elf(path: &Path) -> bool {
    /// ELF64 header: e_phoff at 32, e_phentsize at 54, e_phnum at 56.
    const PT_INTERP: u32 = 3;
    /// The headers sit at the start of the file; the rest is never read.
    const HEAD_BYTES: u64 = 4096;
    use std::io::Read as _;
    let mut bytes = Vec::new();
    let read =
        std::fs::File::open(path).and_then(|file| file.take(HEAD_BYTES).read_to_end(&mut bytes));
    if read.is_err() {
        return false;
    }
    let field = |at: usize, len: usize| bytes.get(at..at + len);
    let le_u64 = |at| {
        field(at, 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let le_u16 = |at| {
        field(at, 2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_le_bytes)
    };
    if field(0, 5) != Some(b"\x7fELF\x02".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(size), Some(count)) = (le_u64(32), le_u16(54), le_u16(56)) else {
        return false;
    };
    (0..usize::from(count)).any(|i| {
        usize::try_from(phoff)
            .ok()
            .and_then(|off| off.checked_add(i * usize::from(size)))
            .and_then(|at| field(at, 4))
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            == Some(PT_INTERP)
    })
}

/// What a run's container mounts, as paths of the engine's host.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mounts<'a> {
    pub agent: &'a std::ffi::OsStr,
    pub project: &'a std::ffi::OsStr,
    /// The status-record directory, when `run` follows it.
    pub state: Option<&'a std::ffi::OsStr>,
}

/// The arguments after `docker` that run `step` in a container named `name` of `image`:
/// the agent mounted read-only as the entrypoint (PID 1), the project as the working
/// directory, the host's network, the step's variables passed by name only (their
/// values come from the client's environment, never its command line), `extra_env`
/// (not secret) by value. `user` is `UID:GID`; `None` leaves it to the caller.
pub(super) fn run_args(
    name: &str,
    image: &str,
    user: Option<&str>,
    mounts: &Mounts<'_>,
    extra_env: &[(String, String)],
    step: &StepCommand<'_>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["run", "--rm", "--name", name, "--network", "host"]
        .into_iter()
        .map(OsString::from)
        .collect();
    if let Some(user) = user {
        args.extend(["--user".into(), user.into()]);
    }
    args.extend(["--entrypoint".into(), AGENT_IN_CONTAINER.into()]);
    args.extend([
        "--volume".into(),
        mount(mounts.agent, AGENT_IN_CONTAINER, true),
    ]);
    args.extend([
        "--volume".into(),
        mount(mounts.project, PROJECT_IN_CONTAINER, false),
    ]);
    args.extend(["--workdir".into(), PROJECT_IN_CONTAINER.into()]);
    if let Some(state) = mounts.state {
        args.extend(["--volume".into(), mount(state, STATE_IN_CONTAINER, false)]);
    }
    for (name, _) in step.env() {
        args.extend(["--env".into(), name.into()]);
    }
    for (name, value) in extra_env {
        args.extend(["--env".into(), format!("{name}={value}").into()]);
    }
    args.push(image.into());
    let argv = step.argv();
    match step.launch {
        // The agent is the entrypoint: drop its own path.
        Launch::Single => args.extend(argv.into_iter().skip(1)),
        // The agent as PID 1 supervises mpiexec, which starts one agent per rank.
        Launch::Mpi { .. } => {
            args.extend(["exec".into(), "--no-debug".into(), "--".into()]);
            args.extend(argv);
        }
    }
    args
}

/// A container name for a run: unique, so cleanup removes exactly it.
pub(super) fn container_name() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("amlx-run-{}", id.get(..NAME_ID_CHARS).unwrap_or(&id))
}

/// `--volume HOST:CONTAINER[:ro]`.
fn mount(host: &std::ffi::OsStr, container: &str, read_only: bool) -> OsString {
    let mut spec = host.to_owned();
    spec.push(":");
    spec.push(container);
    if read_only {
        spec.push(":ro");
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_binaries_are_told_from_static_ones() {
        let this = std::env::current_exe().expect("test binary");
        assert!(
            is_dynamic_elf(&this),
            "the test binary links glibc dynamically"
        );
        let dir = std::env::temp_dir();
        assert!(!is_dynamic_elf(&dir.join("does-not-exist")));
        let garbage = dir.join(format!("amlx-elf-{}", std::process::id()));
        std::fs::write(&garbage, b"\x7fELF\x02\x01\x01").expect("write");
        assert!(!is_dynamic_elf(&garbage));
        let _ = std::fs::remove_file(&garbage);
    }
    use crate::config::Secret;
    use crate::ports::PortRange;

    #[test]
    fn the_container_command_mounts_the_agent_and_passes_secrets_by_name_only() {
        let docker = Docker::new(
            PathBuf::from("docker"),
            "example:1".to_owned(),
            PathBuf::from("/home/me/project"),
            PathBuf::from("/opt/amlx-agent"),
            None,
            vec![("EPOCHS".to_owned(), "2".to_owned())],
        );
        let secret =
            Secret::new("Endpoint=sb://127.0.0.1:1/;SharedAccessKeyName=k;SharedAccessKey=hunter2");
        let command = vec![OsString::from("python3"), OsString::from("train.py")];
        let launch = docker.launch(1);
        let step = StepCommand {
            agent: Path::new(AGENT_IN_CONTAINER),
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
        let cmd = docker.command(&step, None).expect("command");
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = args.join(" ");
        assert!(
            line.contains("--volume /opt/amlx-agent:/amlx/amlx-agent:ro"),
            "{line}"
        );
        assert!(
            line.contains("--volume /home/me/project:/workspace --workdir /workspace"),
            "{line}"
        );
        assert!(
            line.contains("--env AMLX_RELAY_CONNECTION_STRING --env"),
            "{line}"
        );
        assert!(
            line.contains("--env EPOCHS=2 example:1 exec --debug"),
            "{line}"
        );
        assert!(line.ends_with("-- python3 train.py"), "{line}");
        assert!(!line.contains("hunter2"), "{line}");
        let mpi = docker.launch(4);
        let step = StepCommand {
            launch: &mpi,
            ranks: "all",
            ..step
        };
        let line: Vec<String> = docker
            .command(&step, None)
            .expect("command")
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            line.join(" ").contains(
                "example:1 exec --no-debug -- mpiexec -n 4 /amlx/amlx-agent exec --debug"
            ),
            "{line:?}"
        );
    }
}
