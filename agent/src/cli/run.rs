//! Arguments of `run` (a step on a compute target, VS Code attached) and `targets`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `run`: where the step runs, how many processes, which ranks wait for VS Code.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Where the step runs: local, docker, ssh://[USER@]HOST[:PORT], or a name from
    /// .amlx/targets.toml or the config's [targets.NAME]
    #[arg(short = 't', long, value_name = "TARGET", default_value = "local")]
    pub target: String,

    /// The image the step runs in (docker; ssh: run in Docker on the host)
    /// [default: the named target's; for docker: amlx-example]
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,

    /// Build --image from this Dockerfile first (context: the project folder); Docker's
    /// cache makes later builds quick
    #[arg(long, value_name = "DOCKERFILE", requires = "image")]
    pub build: Option<PathBuf>,

    /// The agent binary mounted into containers and copied to hosts; a static build runs
    /// in any image [env: AMLX_AGENT_BINARY] [default: this one]
    #[arg(long, value_name = "FILE")]
    pub agent_binary: Option<PathBuf>,

    /// Processes to start (1 to 64), under `mpiexec -n N` when more than one [default: the
    /// named target's, else 1]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::config::MAX_RANKS_COUNT)))]
    pub ranks_count: Option<u32>,

    /// Ranks that wait for VS Code: all, or a list like 0 or 0,2 or 1-3; each gets its own
    /// VS Code port and launch configuration [default: the named target's, else 0]
    #[arg(long, value_name = "SPEC")]
    pub ranks: Option<String>,

    /// How long the step waits for VS Code before running on without a debugger.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = crate::config::parse_duration)]
    pub attach_timeout: std::time::Duration,

    /// The project folder: the step's working directory (mounted or copied on the
    /// target) and where .vscode/launch.json is written [default: the current folder]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// The first port VS Code listens on; rank by rank from there. Ports another run
    /// holds are skipped.
    #[arg(long, value_name = "PORT", default_value_t = crate::launch_json::DEFAULT_PORT_BASE, value_parser = crate::cli::vscode_port)]
    pub vscode_port: u16,

    /// Debug ports the step's agents reserve on the target; rank R takes START + R
    /// [default: a free block]
    #[arg(long, value_name = "START-END")]
    pub port_range: Option<crate::ports::PortRange>,

    /// Use the relay of your settings (Azure Relay, or a `relay serve` elsewhere) instead
    /// of one inside this process, for targets that reach it but not this machine. Its
    /// credentials come from AMLX_RELAY_CONNECTION_STRING, --connection-string-file or the
    /// config, as for `exec`; the key needs Listen and Send rights (both ends use it).
    #[arg(long, help_heading = "Relay")]
    pub external_relay: bool,

    /// Also debug the rank that crashes: every other rank is hooked, and one that raises
    /// an unhandled exception waits (up to --attach-timeout) for VS Code on one more port,
    /// "amlx: post-mortem (any rank)" in launch.json, stopped where it raised
    #[arg(long)]
    pub post_mortem: bool,

    #[command(flatten, next_help_heading = "Relay")]
    pub relay: crate::cli::RelayClientArgs,

    /// The step's command and its arguments (after --).
    #[arg(
        required = true,
        trailing_var_arg = true,
        value_name = "CMD",
        help_heading = "Arguments"
    )]
    pub command: Vec<OsString>,
}

/// `targets`: the named run targets.
#[derive(Debug, Subcommand)]
pub enum TargetsCommand {
    /// List the named targets (project file and config) and check each is reachable.
    List(TargetsListArgs),
}

/// `targets list`: which project, and whether to check.
#[derive(Debug, Args)]
pub struct TargetsListArgs {
    /// The project folder whose .amlx/targets.toml is read [default: the current folder]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Only list; do not check reachability.
    #[arg(long)]
    pub no_check: bool,
}
