//! Who this process is in the job: launcher, global/local rank, world size, node master.
//!
//! One detector per launcher family, applied innermost launcher first (see
//! `docs/launchers.md`): explicit overrides, torchrun, Open MPI, MVAPICH2,
//! PMI (MPICH Hydra / Intel MPI / Cray PALS), PMIx, Horovod, bare `RANK`
//! (DeepSpeed, Azure ML PyTorch, Kubeflow PyTorchJob), Kubeflow MPIJob pods,
//! Slurm, then the node-level Azure Batch / Azure ML variables. Bad values are
//! "unknown" plus exactly one warning naming the variable, never a crash.

mod cluster;
mod frameworks;
mod mpi;
#[cfg(test)]
mod tests;
mod values;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use values::{Value, Vars};

/// Where environment variables come from: the process, or a table in tests.
pub trait Env {
    /// The variable's value, `None` when unset (or not valid Unicode).
    fn var(&self, name: &str) -> Option<String>;

    /// As [`Env::var`] in one lookup, but a value that is not valid Unicode is `Err`, not
    /// unset: readers say so instead of ignoring it silently.
    fn lookup(&self, name: &str) -> Result<Option<String>, NotUnicode> {
        Ok(self.var(name))
    }
}

/// A variable set to bytes that are not valid Unicode (see [`Env::lookup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotUnicode;

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn lookup(&self, name: &str) -> Result<Option<String>, NotUnicode> {
        match std::env::var(name) {
            Ok(value) => Ok(Some(value)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(NotUnicode),
        }
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// This node, as far as detection needs it: only asked when a launcher names its
/// master node by host name or address (Slurm's step node list, Azure Batch).
pub trait Host {
    /// This node's host name, `None` when unavailable.
    fn hostname(&self) -> Option<String>;
    /// Whether `addr` is one of this node's interface addresses.
    fn has_addr(&self, addr: IpAddr) -> bool;
}

/// The machine this process runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalHost;

impl Host for LocalHost {
    fn hostname(&self) -> Option<String> {
        nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok())
    }

    fn has_addr(&self, addr: IpAddr) -> bool {
        local_ip_address::list_afinet_netifas()
            .map(|ifaces| ifaces.iter().any(|(_, ip)| *ip == addr))
            .unwrap_or(false)
    }
}

/// The launcher family whose variables decided the role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Launcher {
    /// `--rank` / `AMLX_RANK`.
    Override,
    /// torchrun / `torch.distributed.run` (`TORCHELASTIC_RUN_ID`, `GROUP_RANK`).
    Torchrun,
    /// Open MPI `mpirun` (`OMPI_COMM_WORLD_*`), also under Kubeflow MPIJob and Azure ML MPI.
    OpenMpi,
    /// MVAPICH2 (`MV2_COMM_WORLD_*`).
    Mvapich2,
    /// MPICH Hydra `mpiexec`, Intel MPI, other PMI-1/2 process managers (`PMI_RANK`).
    Mpich,
    /// Cray PALS (`PMI_RANK` with `PMI_LOCAL_RANK`, `PALS_*`).
    CrayPals,
    /// A PMIx server (`PMIX_RANK`): prterun, `srun --mpi=pmix`.
    Pmix,
    /// Horovod's gloo launcher (`HOROVOD_*`).
    Horovod,
    /// DeepSpeed's launcher (`RANK` with `CROSS_RANK` / `LOCAL_SIZE`).
    #[serde(rename = "deepspeed")]
    DeepSpeed,
    /// Bare `RANK`/`WORLD_SIZE` (Azure ML PyTorch distribution, `torch.distributed.launch`).
    Rank,
    /// A Kubeflow PyTorchJob pod: `RANK` is the pod (node) index, not a process rank.
    KubeflowPytorch,
    /// A Kubeflow MPIJob pod process that mpirun did not start (`K_MPI_JOB_ROLE`).
    KubeflowMpi,
    /// Slurm (`SLURM_*`): an `srun` step, or an allocation / batch script outside one.
    Slurm,
    /// Node-level Azure Batch / Azure ML variables only (ParallelRunStep workers).
    AzureBatch,
    /// Nothing recognised: a plain single process.
    #[default]
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
    /// Whether this node is the job's master node: as a launcher says, else node rank 0.
    pub node_master: Option<bool>,
    /// The launcher starts several processes (so an unknown rank is not "alone").
    pub multi_process: bool,
}

impl Role {
    /// A role started by `launcher` with nothing else known: no ranks, no sizes, no
    /// node, and not known to be one of several processes.
    pub fn unknown(launcher: Launcher) -> Self {
        Role {
            launcher,
            rank: None,
            local_rank: None,
            world_size: None,
            local_world_size: None,
            node_rank: None,
            node_master: None,
            multi_process: false,
        }
    }

    /// Whether this process is the only one of its job: a world of one, or no world
    /// size and no launcher that starts several processes.
    pub fn alone(&self) -> bool {
        self.world_size == Some(1) || (self.world_size.is_none() && !self.multi_process)
    }
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

/// Set by `exec` in every step's environment, with `AMLX_RANK` and friends.
const AGENT_ACTIVE_VAR: &str = "AMLX_AGENT_ACTIVE";

/// Whether `role` is exactly what an agent above exported to its step (`AMLX_RANK`,
/// `AMLX_LOCAL_RANK`, `AMLX_WORLD_SIZE`; empty for unknown): then this process inherited
/// its launcher's variables rather than getting its own from a launcher in between.
pub fn matches_exported(env: &dyn Env, role: &Role) -> bool {
    let same = |var: &str, value: Option<u32>| {
        let exported = env.var(var).unwrap_or_default();
        let exported = exported.trim();
        match value {
            Some(n) => exported.parse::<u32>().ok() == Some(n),
            None => exported.is_empty(),
        }
    };
    env.var(AGENT_ACTIVE_VAR).is_some()
        && same("AMLX_RANK", role.rank)
        && same("AMLX_LOCAL_RANK", role.local_rank)
        && same("AMLX_WORLD_SIZE", role.world_size)
}

/// Detects the role from `env` on this machine, with `overrides` winning.
pub fn detect(env: &dyn Env, overrides: &Overrides) -> Detection {
    detect_on(env, overrides, &LocalHost)
}

/// [`detect`] with the node given (tests use a fake one).
pub fn detect_on(env: &dyn Env, overrides: &Overrides, host: &dyn Host) -> Detection {
    let mut vars = Vars::new(env, host);
    let mut found = DETECTORS
        .iter()
        .find(|detector| detector.applies(&vars))
        .map(|detector| detector.read(&mut vars))
        .unwrap_or_else(|| Found::new(Launcher::None));
    // The Azure Batch master flag is a fact about the node, whatever started the process
    // (Azure ML MPI jobs: ranks from OMPI_*, master from AZ_BATCH*).
    if found.node_master.is_none() && found.launcher != Launcher::AzureBatch {
        found.node_master = cluster::azure_node_master(&mut vars);
    }
    apply_overrides(&mut found, overrides, &mut vars);
    let role = found.finish(&mut vars);
    Detection {
        role,
        warnings: vars.into_warnings(),
    }
}

/// One launcher family: whether its variables are present, and what they say.
trait Detector: Sync {
    /// Whether this launcher's marker variables are set (values are not checked here).
    fn applies(&self, vars: &Vars<'_>) -> bool;
    /// Reads the role; bad values become unknown with a warning in `vars`.
    fn read(&self, vars: &mut Vars<'_>) -> Found;
}

/// Innermost launcher first: the first detector that applies decides the role.
static DETECTORS: &[&dyn Detector] = &[
    &frameworks::Torchrun,
    &mpi::OpenMpi,
    &mpi::Mvapich2,
    &mpi::Pmi,
    &mpi::Pmix,
    &frameworks::Horovod,
    &frameworks::BareRank,
    &frameworks::KubeflowMpi,
    &cluster::Slurm,
    &cluster::AzureBatch,
];

/// A detector's raw result: numbers keep their source so consistency warnings can name it.
/// The default knows nothing, like [`Role::unknown`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Found {
    launcher: Launcher,
    rank: Option<Value>,
    local_rank: Option<Value>,
    world_size: Option<Value>,
    local_world_size: Option<Value>,
    node_rank: Option<u32>,
    node_master: Option<bool>,
    multi_process: bool,
}

impl Found {
    /// `launcher` with nothing else known yet.
    fn new(launcher: Launcher) -> Self {
        Found {
            launcher,
            ..Found::default()
        }
    }

    /// Checks ranks against sizes and derives the master node from the node rank when
    /// no launcher named it.
    fn finish(self, vars: &mut Vars<'_>) -> Role {
        Role {
            launcher: self.launcher,
            rank: below(self.rank, self.world_size, "rank", vars),
            local_rank: below(self.local_rank, self.local_world_size, "local rank", vars),
            world_size: self.world_size.map(|v| v.n),
            local_world_size: self.local_world_size.map(|v| v.n),
            node_rank: self.node_rank,
            node_master: self.node_master.or(self.node_rank.map(|n| n == 0)),
            multi_process: self.multi_process,
        }
    }
}

/// `rank` unless it is not below `size`: then unknown, with a warning naming both.
fn below(rank: Option<Value>, size: Option<Value>, what: &str, vars: &mut Vars<'_>) -> Option<u32> {
    match (rank, size) {
        (Some(rank), Some(size)) if rank.n >= size.n => {
            vars.warn(
                rank.from,
                format!(
                    "ignoring {}={:?}: not below {}={}; treating the {what} as unknown",
                    rank.from,
                    rank.n.to_string(),
                    size.from,
                    size.n
                ),
            );
            None
        }
        (rank, _) => rank.map(|v| v.n),
    }
}

/// Flags win, then `AMLX_RANK`, `AMLX_LOCAL_RANK`, `AMLX_WORLD_SIZE`.
///
/// Inside a step started by `exec` (`AMLX_AGENT_ACTIVE` set) those variables are the
/// outer agent's exports, which may describe an outer launcher (an `srun` task running
/// `mpiexec`): they are not overrides there. Empty means unset: `exec` exports unknown
/// values as empty strings.
fn apply_overrides(found: &mut Found, overrides: &Overrides, vars: &mut Vars<'_>) {
    let from_env = !vars.is_set(AGENT_ACTIVE_VAR);
    let mut pick = |flag: Option<u32>, flag_name: &'static str, var: &'static str, count: bool| {
        if let Some(n) = flag {
            if count && n == 0 {
                vars.reject(flag_name, "0", "zero is not a size");
                return None;
            }
            return Some(Value { n, from: flag_name });
        }
        if !from_env || !vars.has_value(var) {
            return None;
        }
        if count {
            vars.count(var)
        } else {
            vars.index(var)
        }
    };
    let rank = pick(overrides.rank, "--rank", "AMLX_RANK", false);
    let local_rank = pick(
        overrides.local_rank,
        "--local-rank",
        "AMLX_LOCAL_RANK",
        false,
    );
    let world_size = pick(
        overrides.world_size,
        "--world-size",
        "AMLX_WORLD_SIZE",
        true,
    );
    if rank.is_some() {
        found.launcher = Launcher::Override;
        found.rank = rank;
    }
    if local_rank.is_some() {
        found.local_rank = local_rank;
    }
    if world_size.is_some() {
        found.world_size = world_size;
    }
}
