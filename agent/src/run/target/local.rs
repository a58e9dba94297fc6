//! The `local` target: the step runs on this machine, in the project folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

use super::{StateDirs, Target};
use crate::run::step::{ENV_REMOVED, Launch, StepCommand};

/// This machine, with the step in `project`.
#[derive(Debug)]
pub struct Local {
    pub project: PathBuf,
}

impl Target for Local {
    fn describe(&self) -> String {
        "this machine".to_owned()
    }

    fn remote_root(&self) -> String {
        self.project.display().to_string()
    }

    fn agent_path(&self) -> anyhow::Result<PathBuf> {
        std::env::current_exe().context("could not locate the amlx-agent binary")
    }

    fn relay_address(&self, local: SocketAddr) -> String {
        local.to_string()
    }

    fn shares_this_network(&self) -> bool {
        true
    }

    fn passes_config(&self) -> bool {
        true
    }

    fn state_dir(&self, local: &Path) -> Option<StateDirs> {
        Some(StateDirs {
            here: local.to_path_buf(),
            on_target: local.to_path_buf(),
        })
    }

    fn launch(&self, count: u32) -> Launch {
        Launch::choose(count, std::env::var_os("PATH").as_deref())
    }

    fn prepare(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    fn command(
        &self,
        step: &StepCommand<'_>,
        _relay: Option<SocketAddr>,
    ) -> anyhow::Result<Command> {
        let argv = step.argv();
        let (program, args) = argv.split_first().context("an empty step command")?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(&self.project)
            .envs(step.env())
            .stdin(std::process::Stdio::null());
        for name in ENV_REMOVED {
            cmd.env_remove(name);
        }
        Ok(cmd)
    }

    fn cleanup(&mut self) {}
}
