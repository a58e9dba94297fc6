//! Arguments of the commands around debug sessions: `launch-json` (the developer's
//! VS Code side), `status` (the node's sessions) and `demo` (one whole session here).

use std::path::PathBuf;

use clap::Args;

/// `launch-json`: which ports, how VS Code meets debugpy, and where to write.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("targets").required(true).multiple(true).args(["ports", "ranks", "post_mortem"])))]
pub struct LaunchJsonArgs {
    /// Debug ports, comma-separated; one configuration each.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "PORT,...",
        conflicts_with = "ranks"
    )]
    pub ports: Vec<u16>,

    /// Ranks to debug, like 0-3 or 0,2,5-7; rank R gets port --port-base + R.
    #[arg(long, value_name = "SPEC")]
    pub ranks: Option<String>,

    /// The port of rank 0 (the agent's reservations prefer base + rank)
    /// [default: the start of the port range: AMLX_PORT_RANGE, [ports] range, else 5678]
    #[arg(long, value_name = "PORT")]
    pub port_base: Option<u16>,

    /// connect: VS Code listens (debugpy connects out through the relay); listen: VS Code
    /// connects to the laptop end of `relay connect`; direct: VS Code connects to the node
    /// [default: AMLX_DEBUG_MODE, [debug] mode, else connect]
    #[arg(long, value_name = "MODE")]
    pub mode: Option<crate::session::DebugMode>,

    /// Host VS Code listens on (connect mode) or connects to (listen/direct mode; for
    /// direct, the node IP the agent logged).
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Local side of the path mapping.
    #[arg(long, value_name = "DIR", default_value = "${workspaceFolder}")]
    pub local_root: String,

    /// Remote side of the path mapping (`.`: the step's working directory).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub remote_root: String,

    /// Add "amlx: post-mortem (any rank)": VS Code listens for the post-mortem session
    /// of whichever rank crashes under `exec --post-mortem` (connect mode; run
    /// `amlx-agent relay listen --forward any=127.0.0.1:PORT`, which delivers every port
    /// to it). Alone, without --ports/--ranks, it is the only configuration written.
    #[arg(long)]
    pub post_mortem: bool,

    /// The port VS Code listens on for post-mortem sessions [default: --port-base - 1]
    #[arg(long, value_name = "PORT", requires = "post_mortem", value_parser = crate::cli::vscode_port)]
    pub post_mortem_port: Option<u16>,

    /// File to create or merge into; `-` prints the configurations instead.
    #[arg(
        long,
        short,
        value_name = "FILE",
        default_value = ".vscode/launch.json"
    )]
    pub output: PathBuf,
}

/// `status`: where the session records are and how to print them.
#[derive(Debug, Args, Default, Clone)]
pub struct StatusArgs {
    /// Node-wide state directory holding one record per session [env: AMLX_STATE_DIR]
    /// [config: [node] state_dir] [default: every place a session can record itself:
    /// /run/amlx, $XDG_RUNTIME_DIR/amlx and /tmp/amlx-UID of every user]
    #[arg(long, value_name = "DIR", value_parser = crate::cli::directory)]
    pub state_dir: Option<PathBuf>,

    /// Print one JSON object (times in RFC 3339) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `demo`: where VS Code listens, how long the step waits, how many processes.
#[derive(Debug, Args, Clone)]
pub struct DemoArgs {
    /// Port VS Code listens on for debugpy (the launch.json "listen" port).
    #[arg(long, value_name = "PORT", default_value_t = crate::launch_json::DEFAULT_PORT_BASE, value_parser = crate::cli::vscode_port)]
    pub vscode_port: u16,

    /// How long the step waits for VS Code before running on without a debugger.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = crate::config::parse_duration)]
    pub attach_timeout: std::time::Duration,

    /// Processes to start (1 to 64), under `mpiexec -n N` when mpiexec is on PATH (else
    /// one); rank 0 is the debug target.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::config::MAX_RANKS_COUNT)))]
    pub ranks_count: u32,

    /// Debug ports the step's agent may reserve; must not hold --vscode-port, since
    /// both listen on this machine.
    #[arg(long, value_name = "START-END", default_value = "5700-5799")]
    pub port_range: crate::ports::PortRange,

    /// Where to write the example step and its .vscode/launch.json (kept) [default: a
    /// fresh temporary directory, removed at the end]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Python interpreter for the example step (it needs debugpy).
    #[arg(long, value_name = "PYTHON", default_value = "python3")]
    pub python: PathBuf,

    /// Hook the other ranks too: one that crashes waits for VS Code on one more port
    /// ("amlx: post-mortem (any rank)"); the example step itself does not crash.
    #[arg(long)]
    pub post_mortem: bool,
}
