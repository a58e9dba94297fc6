//! Arguments of `exec` (and the flag groups `post-mortem`, `detect` and `launch-json`
//! share with it): role overrides, debug policy, ports, node, debug session.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;

use super::RelayClientArgs;

/// `exec`: everything that decides and sets up a debug session, then the command.
#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub role: RoleArgs,

    #[command(flatten)]
    pub policy: PolicyArgs,

    #[command(flatten)]
    pub ports: PortArgs,

    #[command(flatten)]
    pub node: NodeArgs,

    #[command(flatten)]
    pub session: SessionArgs,

    #[command(flatten)]
    pub relay: RelayClientArgs,

    /// Become the command with execve (same PID). Default unless running as PID 1.
    #[arg(long, conflicts_with = "supervise", help_heading = "Process")]
    pub replace: bool,

    /// Stay as the parent like tini: forward signals, reap zombies, pass the exit code
    /// through. Default when running as PID 1 (container ENTRYPOINT).
    #[arg(long, help_heading = "Process")]
    pub supervise: bool,

    /// The command to run and its arguments (after `--`, or from the first word that is
    /// not an option). An unknown option before the command is a usage error; options
    /// after the command are the command's own.
    // No `allow_hyphen_values`: with it, a mistyped `--debgu` would become the command.
    // `trailing_var_arg` still hands every word after the first one to the step.
    #[arg(
        required = true,
        trailing_var_arg = true,
        value_name = "CMD",
        help_heading = "Arguments"
    )]
    pub command: Vec<OsString>,
}

/// Explicit role overrides; they beat every launcher variable.
#[derive(Debug, Args, Default, Clone)]
#[command(next_help_heading = "Role overrides (win over launcher variables)")]
pub struct RoleArgs {
    /// Global rank of this process [env: AMLX_RANK]
    #[arg(long, value_name = "N")]
    pub rank: Option<u32>,

    /// Rank of this process on its node [env: AMLX_LOCAL_RANK]
    #[arg(long, value_name = "N")]
    pub local_rank: Option<u32>,

    /// Number of processes in the job [env: AMLX_WORLD_SIZE]
    #[arg(long, value_name = "N")]
    pub world_size: Option<u32>,
}

/// Which processes become debug targets.
#[derive(Debug, Args, Default, Clone)]
#[command(next_help_heading = "Debug policy")]
pub struct PolicyArgs {
    /// Make selected processes debuggable [env: AMLX_DEBUG] [default: off]
    #[arg(long, overrides_with = "no_debug")]
    pub debug: bool,

    /// Never debug, whatever the environment or config says.
    #[arg(long)]
    pub no_debug: bool,

    /// Which ranks are targets: 0 | all | master | local0 | a list like 0,3,5-7
    /// [env: AMLX_RANKS] [default: 0]
    #[arg(long, value_name = "SPEC")]
    pub ranks: Option<String>,

    /// At most this many debug targets on one node [env: AMLX_MAX_TARGETS_PER_NODE]
    #[arg(long, value_name = "N")]
    pub max_targets_per_node: Option<String>,
}

impl PolicyArgs {
    /// `Some(true)` for `--debug`, `Some(false)` for `--no-debug`, `None` when neither was given.
    pub fn debug_flag(&self) -> Option<bool> {
        match (self.debug, self.no_debug) {
            (_, true) => Some(false),
            (true, false) => Some(true),
            (false, false) => None,
        }
    }
}

/// Where debug ports come from.
#[derive(Debug, Args, Default, Clone)]
#[command(next_help_heading = "Ports")]
pub struct PortArgs {
    /// Inclusive range of debug ports, START-END [env: AMLX_PORT_RANGE] [default: 5678-5777]
    #[arg(long, value_name = "START-END")]
    pub port_range: Option<String>,

    /// Node-wide lock directory shared by every process (and container) on the node
    /// [env: AMLX_LOCK_DIR] [default: /run/amlx/ports, then $XDG_RUNTIME_DIR/amlx/ports,
    /// then /tmp/amlx-UID/ports]
    #[arg(long, value_name = "DIR", value_parser = crate::cli::directory)]
    pub lock_dir: Option<PathBuf>,
}

/// How this node is announced.
#[derive(Debug, Args, Default, Clone)]
#[command(next_help_heading = "Node")]
pub struct NodeArgs {
    /// IP address to publish for this node instead of the detected one [env: AMLX_NODE_IP]
    #[arg(long, value_name = "IP", value_parser = crate::config::parse_node_ip)]
    pub node_ip: Option<IpAddr>,
}

/// How a debug session behaves once this process is a target.
#[derive(Debug, Args, Default, Clone)]
#[command(next_help_heading = "Debug session")]
pub struct SessionArgs {
    /// connect: debugpy connects out through the relay (default); listen: the node
    /// listens through the relay; direct: debugpy listens on the node IP [env: AMLX_DEBUG_MODE]
    #[arg(long, value_name = "MODE")]
    pub mode: Option<String>,

    /// What to do when debugging cannot be set up: continue (run the step without a
    /// debugger, the default) or fail [env: AMLX_ON_DEBUG_FAILURE]
    #[arg(long, value_name = "POLICY")]
    pub on_debug_failure: Option<String>,

    /// How long to wait for a debugger before running on, e.g. 30s, 10m
    /// [env: AMLX_ATTACH_TIMEOUT] [default: 10m]
    #[arg(long, value_name = "DURATION")]
    pub attach_timeout: Option<String>,

    /// auto | debugpy | none [env: AMLX_INJECT] [default: auto]
    #[arg(long, value_name = "HOW")]
    pub inject: Option<String>,

    /// Hold the step at startup until a debugger attaches (bounded by --attach-timeout)
    /// [env: AMLX_WAIT_FOR_CLIENT]
    #[arg(long)]
    pub wait_for_client: bool,

    /// Debug the process that crashes: every Python process (target or not) hooks
    /// unhandled exceptions; the one that raises gets a session stopped at the raising
    /// frame, then exits exactly as it would have [env: AMLX_POST_MORTEM]
    #[arg(long)]
    pub post_mortem: bool,

    /// How long a crashed process waits for a debugger, e.g. 30s, 10m
    /// [env: AMLX_POST_MORTEM_TIMEOUT] [default: 10m]
    #[arg(long, value_name = "DURATION")]
    pub post_mortem_timeout: Option<String>,

    /// How many crashed processes per node get a session at once (the first to crash;
    /// the rest exit as they would have) [env: AMLX_POST_MORTEM_MAX] [default: 1]
    #[arg(long, value_name = "N")]
    pub post_mortem_max: Option<String>,
}
