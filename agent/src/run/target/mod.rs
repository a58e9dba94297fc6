//! Where a step runs, behind one small trait: prepare the target, give the local command
//! that runs the step there (its output is the step's), clean up. One module per kind.

mod choose;
pub mod command;
mod docker;
mod local;
mod ssh;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use choose::{SshAddress, choose, parse_ssh_address};
pub use command::output_within;
pub use docker::Docker;
pub use local::Local;
pub use ssh::Ssh;

use super::step::{Launch, StepCommand};

/// A status-record directory as this machine and as the target see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDirs {
    pub here: PathBuf,
    pub on_target: PathBuf,
}

/// A place a step runs: this machine, a container, a remote host.
pub trait Target: std::fmt::Debug + Send {
    /// For messages: `this machine`, `Docker container NAME of IMAGE`.
    fn describe(&self) -> String;

    /// The project folder as the step sees it (launch.json's `remoteRoot`).
    fn remote_root(&self) -> String;

    /// The agent binary as the step's command names it.
    fn agent_path(&self) -> anyhow::Result<PathBuf>;

    /// `host:port` of the in-process relay (at `local`) as the step reaches it.
    fn relay_address(&self, local: SocketAddr) -> String;

    /// Whether the step's ports are this machine's (its debug ports and VS Code's
    /// must then not overlap, and free ones are found by probing here).
    fn shares_this_network(&self) -> bool;

    /// Whether a config file path of this machine means the same file to the step.
    fn passes_config(&self) -> bool;

    /// Where the step's status records go, when they are readable here (`run` follows
    /// them to say what happened); `local` is where a local step would keep them.
    fn state_dir(&self, local: &Path) -> Option<StateDirs>;

    /// How `count` processes start there.
    fn launch(&self, count: u32) -> Launch;

    /// Gets the target ready; everything it does is bounded.
    fn prepare(&mut self) -> anyhow::Result<()>;

    /// The local command that runs `step` on the target, with the in-process relay at
    /// `relay` on this machine (`None`: the step uses a relay of the settings directly).
    fn command(&self, step: &StepCommand<'_>, relay: Option<SocketAddr>)
    -> anyhow::Result<Command>;

    /// Bytes for the command's stdin, which then stays open as the step's lifeline:
    /// closing it (Ctrl-C, or this process dying) stops the step on the target. `None`:
    /// the command's stdin is /dev/null and the step is stopped by signal.
    fn stdin(&self, _step: &StepCommand<'_>) -> Option<Vec<u8>> {
        None
    }

    /// Removes whatever `prepare` and the step left behind; bounded, never fails.
    fn cleanup(&mut self);
}

/// The image a docker target runs without `--image` or `image =`: the example training
/// image of docker/ (its README says how to build it).
pub const DEFAULT_IMAGE: &str = "amlx-example";
/// The Docker client program (it honours `DOCKER_HOST` itself).
const DOCKER_CLIENT: &str = "docker";

/// What the command line sets over a named target.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub image: Option<String>,
    pub build: Option<PathBuf>,
    /// The agent binary to mount or copy; `None`: this one.
    pub agent_binary: Option<PathBuf>,
}

/// The target `spec` describes, with the command line's overrides, for `project`.
pub fn open(
    spec: &crate::config::TargetSpec,
    overrides: &Overrides,
    project: &Path,
) -> anyhow::Result<Box<dyn Target>> {
    use crate::config::TargetKind;
    use anyhow::Context as _;
    let image = overrides.image.clone().or_else(|| spec.image.clone());
    if let Some(image) = &image {
        anyhow::ensure!(
            crate::config::valid_image(image),
            "image {image:?}: {}",
            crate::config::IMAGE_RULE
        );
    }
    let spec = &in_project(spec, project);
    let agent = match &overrides.agent_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("could not locate the amlx-agent binary")?,
    };
    match spec.kind {
        TargetKind::Local => {
            anyhow::ensure!(
                image.is_none(),
                "--image is for docker and ssh targets; {} runs on this machine",
                spec.name
            );
            Ok(Box::new(Local {
                project: project.to_path_buf(),
            }))
        }
        TargetKind::Docker => {
            let build = overrides
                .build
                .clone()
                .or_else(|| spec.build.clone())
                .map(|file| project.join(file));
            Ok(Box::new(Docker::new(
                PathBuf::from(DOCKER_CLIENT),
                image.unwrap_or_else(|| DEFAULT_IMAGE.to_owned()),
                project.to_path_buf(),
                agent,
                build,
                spec.env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )))
        }
        TargetKind::Ssh => Ok(Box::new(Ssh::from_spec(
            spec,
            project.to_path_buf(),
            agent,
            image,
        )?)),
    }
}

/// `spec` with its relative paths made the project's: a targets file means the
/// project's files wherever `run` is started from (as `build` does); `~/…` is left to
/// ssh, which expands it.
fn in_project(spec: &crate::config::TargetSpec, project: &Path) -> crate::config::TargetSpec {
    let mut spec = spec.clone();
    for path in [&mut spec.identity_file, &mut spec.ssh_config]
        .into_iter()
        .flatten()
    {
        if path.is_relative() && !path.starts_with("~") {
            *path = project.join(&*path);
        }
    }
    spec
}

/// Whether the target `spec` names can be used from here (for `project`): `Ok(what was
/// seen)` or `Err(why not)`, each one line. Bounded.
pub fn check(spec: &crate::config::TargetSpec, project: &Path) -> Result<String, String> {
    use crate::config::TargetKind;
    let spec = &in_project(spec, project);
    match spec.kind {
        TargetKind::Local => Ok("this machine".to_owned()),
        TargetKind::Docker => docker::check(
            Path::new(DOCKER_CLIENT),
            spec.image.as_deref().unwrap_or(DEFAULT_IMAGE),
        ),
        TargetKind::Ssh => Ssh::from_spec(spec, PathBuf::new(), PathBuf::new(), None)
            .map_err(|err| format!("{err:#}"))
            .and_then(|target| ssh::check(&target)),
    }
}
