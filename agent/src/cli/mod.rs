//! Command-line definitions only: clap derive structs whose `///` comments are the help text.
//!
//! Values that also come from the environment or the config file are kept as raw
//! `Option`s here; `config` layers them (flag > `AMLX_*` > file > default) and
//! validates them with one error style.

// The help text uses clap's own `[env: X] [default: Y]` notation, which rustdoc would
// otherwise read as intra-doc links.
#![allow(rustdoc::broken_intra_doc_links)]

mod exec;
mod relay;
mod run;
mod sessions;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, FromArgMatches as _, Parser, Subcommand, ValueEnum};

pub use exec::{ExecArgs, NodeArgs, PolicyArgs, PortArgs, RoleArgs, SessionArgs};
pub use relay::{ConnectArgs, ListenArgs, RelayClientArgs};
pub use relay::{RelayArgs, RelayCommand, ServeArgs};
pub use run::{RunArgs, TargetsCommand, TargetsListArgs};
pub use sessions::{DemoArgs, LaunchJsonArgs, StatusArgs};

/// Makes exactly the right processes of a distributed training job remotely debuggable.
///
/// Put it in front of every process of the job. Processes that are not debug targets
/// pay well under a millisecond and then *are* the command (same PID, same exit code).
/// Debug targets get a node-unique port, a published endpoint, a relay path and debugpy.
#[derive(Debug, Parser)]
#[command(
    name = "amlx-agent",
    version,
    propagate_version = true,
    after_help = "Examples:\n  \
        amlx-agent demo                          # a whole debug session on this machine\n  \
        amlx-agent run -- python train.py        # your step, VS Code attached\n  \
        amlx-agent exec -- python train.py --lr 0.1\n  \
        AMLX_DEBUG=1 mpiexec -n 4 amlx-agent exec --ranks 0 -- python train.py\n  \
        amlx-agent detect --json\n  \
        amlx-agent ports list"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// The options every subcommand takes.
#[derive(Debug, Args, Default)]
pub struct GlobalArgs {
    /// Config file (TOML). Without it: $AMLX_CONFIG, then /etc/amlx/agent.toml if present.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log format on stderr [env: AMLX_LOG_FORMAT] [default: text]
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// More log output (-v debug, -vv trace). RUST_LOG, when set, wins.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
}

impl Cli {
    /// Parses the process's arguments. `amlx-agent exec …`, which runs in front of every
    /// process of a job, takes a shortcut when it has no option of the agent's
    /// (`exec_shortcut`), else is parsed by a command tree holding only `exec`:
    /// building the whole tree was 29 % of a non-target's instructions. Anything that
    /// tree does not parse cleanly (`--help`, a mistake) goes to the whole tree, so help
    /// and errors are the same either way.
    pub fn parse_args() -> Cli {
        let args: Vec<OsString> = std::env::args_os().collect();
        Cli::exec_shortcut(&args)
            .or_else(|| Cli::exec_only(&args))
            .unwrap_or_else(|| Cli::try_parse_from(args).unwrap_or_else(|err| exit_with(&err)))
    }

    /// `amlx-agent exec -- CMD [ARGS…]` with no option of the agent's: the line every
    /// launcher runs for every process, parsed without building any command tree (what
    /// clap costs even for the `exec` tree alone was half of a non-target's
    /// instructions). No flag takes a value from the environment through clap (the
    /// `config` layer reads every `AMLX_*` variable), so such a line has no value but
    /// the command.
    fn exec_shortcut(args: &[OsString]) -> Option<Cli> {
        let [_, exec, dashes, command @ ..] = args else {
            return None;
        };
        if exec != "exec" || dashes != "--" || command.is_empty() {
            return None;
        }
        let exec = ExecArgs {
            role: RoleArgs::default(),
            policy: PolicyArgs::default(),
            ports: PortArgs::default(),
            node: NodeArgs::default(),
            session: SessionArgs::default(),
            relay: RelayClientArgs::default(),
            replace: false,
            supervise: false,
            command: command.to_vec(),
        };
        Some(Cli {
            global: GlobalArgs::default(),
            command: Command::Exec(Box::new(exec)),
        })
    }

    /// `args` parsed by a tree holding only `exec`, when they are an `exec` command line
    /// that tree parses without error.
    fn exec_only(args: &[OsString]) -> Option<Cli> {
        if args.get(1).is_none_or(|first| first != "exec") {
            return None;
        }
        GlobalArgs::augment_args(clap::Command::new("amlx-agent"))
            .subcommand(ExecArgs::augment_args(clap::Command::new("exec")))
            .try_get_matches_from(args)
            .ok()
            .and_then(|matches| Cli::from_arg_matches(&matches).ok())
    }
}

/// Prints clap's usage error (or the help or version asked for) and exits with its code.
/// An error goes through the log's bounded writer: a job whose stderr is a pipe nobody
/// empties must fail with exit 2 on a bad flag, not hang every process on the message.
fn exit_with(err: &clap::Error) -> ! {
    if err.use_stderr() {
        let text = err.render().to_string();
        crate::logging::stderr::say(text.trim_end());
    } else {
        let _ = err.print();
    }
    std::process::exit(err.exit_code());
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event, for log collectors.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command, making it debuggable when the policy selects this process.
    ///
    /// Non-targets become the command at once (no network, no lock, no runtime).
    /// Targets reserve a node-unique debug port, log "rank R/W (launcher) host H ip I
    /// debug port P", and run the step with the debugger set up.
    #[command(
        after_help = "Relay credentials (connect and listen modes): the connection string \
        (Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...[;EntityPath=HC]) comes \
        from --connection-string-file FILE (chmod 600; or AMLX_RELAY_CONNECTION_STRING_FILE), \
        AMLX_RELAY_CONNECTION_STRING, or [relay] connection_string / connection_string_file in \
        the config file; never from a command-line argument. Direct mode needs none.\n\n\
        Examples:\n  \
        amlx-agent exec -- python step.py --lr 0.1\n  \
        amlx-agent exec --debug --ranks 0,3 -- python -m trainer\n  \
        mpiexec -n 4 amlx-agent exec --debug --ranks all -- python step.py\n  \
        amlx-agent exec --supervise -- ./serve.sh     # stay as parent, forward signals\n  \
        # relay credentials from a file, a Hybrid Connection named debug:\n  \
        amlx-agent exec --debug --connection-string-file ~/.amlx/relay --hc debug -- python step.py\n  \
        # a self-hosted `relay serve` with a private CA:\n  \
        AMLX_RELAY_CONNECTION_STRING_FILE=/etc/amlx/relay.cs amlx-agent exec --debug \\\n      \
        --ca-file /etc/amlx/relay-ca.pem -- python step.py"
    )]
    Exec(Box<ExecArgs>),

    /// The helper a crashed Python process starts under `exec --post-mortem` (not for
    /// people: its stdin and stdout are the hook's pipes). Takes `exec`'s options.
    #[command(hide = true)]
    PostMortem(Box<PostMortemArgs>),

    /// Show what the agent sees here: launcher, ranks, node, and the debug decision.
    #[command(after_help = "Examples:\n  \
        amlx-agent detect\n  \
        mpiexec -n 4 amlx-agent detect --json\n  \
        RANK=3 WORLD_SIZE=8 amlx-agent detect --debug --ranks 0-3\n  \
        amlx-agent detect --debug -- python -m torch.distributed.run train.py")]
    Detect(DetectArgs),

    /// Inspect this node's debug-port reservations.
    #[command(
        subcommand,
        after_help = "Examples:\n  \
        amlx-agent ports list\n  \
        amlx-agent ports list --json --lock-dir /shared/amlx/ports"
    )]
    Ports(PortsCommand),

    /// Azure Relay Hybrid Connections: self-hosted server, listener and sender forwarders.
    ///
    /// One protocol for Azure Relay and the self-hosted `relay serve`. Credentials come
    /// from AMLX_RELAY_CONNECTION_STRING, --connection-string-file or the config file,
    /// never from an argument.
    #[command(after_help = "Examples:\n  \
        amlx-agent --config relay.toml relay serve --tls-cert cert.pem --tls-key key.pem\n  \
        amlx-agent relay listen --hc debug --ports 5678        # laptop, connect mode\n  \
        amlx-agent relay connect --hc debug --bind 127.0.0.1:5678   # laptop, listen mode")]
    Relay(RelayArgs),

    /// Write VS Code attach configurations for a job's debug ports into launch.json.
    ///
    /// One "amlx: ..." attach configuration per port plus the compound "amlx: all ranks"
    /// that starts them together. connect mode (the default) makes VS Code listen, for
    /// debugpy arriving through `relay listen`; listen and direct modes make VS Code
    /// connect. An existing launch.json (comments, trailing commas and all) keeps every
    /// entry not named "amlx: ..." and its comments; the old file is saved as
    /// launch.json.bak. Running it again with the same flags changes nothing.
    #[command(after_help = "Examples:\n  \
        amlx-agent launch-json --ranks 0-3                # ports 5678-5681, VS Code listens\n  \
        amlx-agent launch-json --ports 5678,5690 --mode listen\n  \
        amlx-agent launch-json --ranks 0 --mode direct --host 10.0.0.4 --remote-root /mnt/code\n  \
        amlx-agent launch-json --ranks 0,3 --port-base 6000 --output -   # print, do not write")]
    LaunchJson(LaunchJsonArgs),
    /// Show this node's debug sessions: rank, port, mode, state and for how long.
    ///
    /// States: waiting-for-debugger, attached, relay-unreachable, timed-out,
    /// running-undebugged, and ended (the session's process is gone).
    #[command(after_help = "Examples:\n  \
        amlx-agent status\n  \
        amlx-agent status --json\n  \
        amlx-agent status --state-dir /shared/amlx      # a state directory mounted from the host")]
    Status(StatusArgs),

    /// Run one whole debug session on this machine: a loopback relay, the laptop-side
    /// listener and an example training step as rank 0's debug target.
    ///
    /// Prints how to attach from VS Code before the step starts (the launch.json
    /// configuration, also written next to the step), waits up to --attach-timeout for
    /// VS Code, then says what happened and stops everything it started.
    #[command(after_help = "Examples:\n  \
        amlx-agent demo\n  \
        amlx-agent demo --ranks-count 1 --attach-timeout 10m   # one process, no mpiexec\n  \
        amlx-agent demo --vscode-port 5690 --dir ./amlx-demo")]
    Demo(DemoArgs),

    /// Run a step on a compute target with VS Code attached through a relay.
    ///
    /// Starts the developer side here (a loopback relay with a fresh in-memory key and
    /// the listener that hands each debugged rank to its own VS Code port), writes the
    /// project's .vscode/launch.json (one "listen" configuration per rank and a compound
    /// starting them all, with path mappings to where the code runs), prints how to
    /// attach, then runs the step on the target behind `amlx-agent exec --debug`,
    /// exactly as on a cluster node. Streams the step's output and exits with its code;
    /// Ctrl-C stops the step and removes whatever the run started, bounded.
    ///
    /// Targets: local (this machine, the project folder); docker (a container of
    /// --image on the local engine or DOCKER_HOST, the agent bind-mounted read-only as
    /// its entrypoint, the project mounted at /workspace, host network);
    /// ssh://[USER@]HOST[:PORT] (a Linux host reached with your SSH agent or key: the
    /// agent copied once, the project copied, the relay reached through an SSH reverse
    /// forward; with --image, in Docker on that host); a name from .amlx/targets.toml or
    /// the config's [targets.NAME] (see `targets list`). --external-relay uses the relay
    /// of your settings instead of the in-process one.
    #[command(after_help = "Examples:\n  \
        amlx-agent run -- python train.py --lr 0.1\n  \
        amlx-agent run --ranks-count 4 --ranks all -- python train.py   # 4 ranks under mpiexec\n  \
        amlx-agent run -t docker --image my-training:latest -- python train.py\n  \
        amlx-agent run -t docker --image my-training --build Dockerfile -- python train.py\n  \
        amlx-agent run -t ssh://azureuser@10.0.0.4 -- python train.py\n  \
        amlx-agent run -t remotevm -- python train.py              # [targets.remotevm]")]
    Run(RunArgs),

    /// Named run targets: list them and check they are reachable.
    #[command(
        subcommand,
        after_help = "Targets live in .amlx/targets.toml in the project, or in the config \
        file, as [targets.NAME] tables: kind = \"local\" | \"docker\" | \"ssh\", and host, \
        user, port, identity_file, image, build, env, ranks_count, ranks.\n\n\
        Examples:\n  \
        amlx-agent targets list\n  \
        amlx-agent targets list --dir ~/src/trainer --no-check"
    )]
    Targets(TargetsCommand),
}

/// `post-mortem`: `exec`'s options without the command (the helper resolves exactly the
/// settings of the `exec` in front of the crashed process).
#[derive(Debug, Args)]
pub struct PostMortemArgs {
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

    /// Accepted (the `exec` line had it); means nothing here.
    #[arg(long, hide = true)]
    pub replace: bool,

    /// Accepted (the `exec` line had it); means nothing here.
    #[arg(long, hide = true)]
    pub supervise: bool,
}

/// `detect`: role and policy flags, plus output shape.
#[derive(Debug, Args)]
pub struct DetectArgs {
    #[command(flatten)]
    pub role: RoleArgs,

    #[command(flatten)]
    pub policy: PolicyArgs,

    #[command(flatten)]
    pub node: NodeArgs,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,

    /// The command `exec` would run (after `--`): the decision then takes it into account
    /// as `exec` does (a launcher such as torchrun or a multiprocessing helper is never a
    /// target; a spawned worker competes for a node slot) and the agents above this process.
    #[arg(
        trailing_var_arg = true,
        value_name = "CMD",
        help_heading = "Arguments"
    )]
    pub command: Vec<OsString>,
}

#[derive(Debug, Subcommand)]
pub enum PortsCommand {
    /// List live reservations (port, pid, rank, command, since) and stale lock files.
    #[command(
        after_help = "Examples:\n  amlx-agent ports list\n  amlx-agent ports list --json --lock-dir /shared/amlx/ports"
    )]
    List(PortsListArgs),
}

#[derive(Debug, Args)]
pub struct PortsListArgs {
    #[command(flatten)]
    pub ports: PortArgs,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A port VS Code listens on: 1 to 65535. Port 0 would ask the system for any free port,
/// which VS Code's launch.json cannot name, so it is a usage error (exit 2) at parsing.
pub fn vscode_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) => Err("0 is not a port VS Code can listen on; pick one like 5678".to_owned()),
        Ok(port) => Ok(port),
        Err(e) => Err(format!("{e}: a port is a number from 1 to 65535")),
    }
}

/// A directory flag: an empty one would name the current directory.
pub fn directory(text: &str) -> Result<PathBuf, String> {
    if text.is_empty() {
        return Err("an empty path names no directory; give one".to_owned());
    }
    Ok(PathBuf::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn with_name(words: &[&str]) -> Vec<OsString> {
        std::iter::once("amlx-agent")
            .chain(words.iter().copied())
            .map(OsString::from)
            .collect()
    }

    /// No flag of any command takes its value from the environment through clap: the
    /// `config` layer reads every `AMLX_*` variable (a value that is not UTF-8 becomes a
    /// config error, after which `exec` still runs the step), while clap would refuse it
    /// and `exec` would never run the step. And no flag of `exec` has a default the
    /// shortcut would miss: a new one fails here, not in a job.
    #[test]
    fn no_flag_reads_the_environment_and_exec_has_no_default_the_shortcut_misses() {
        fn walk(command: &clap::Command, path: &str, found: &mut Vec<String>) {
            for arg in command.get_arguments() {
                if let Some(name) = arg.get_env() {
                    found.push(format!("{path} --{}: {name:?}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), found);
            }
        }
        let mut cli = Cli::command();
        cli.build();
        let mut found = Vec::new();
        walk(&cli, "amlx-agent", &mut found);
        assert!(found.is_empty(), "{found:#?}");
        let exec = cli.find_subcommand("exec").expect("exec");
        for arg in exec.get_arguments() {
            let defaults: Vec<_> = arg.get_default_values().to_vec();
            let flag_default = defaults.is_empty()
                || matches!(
                    arg.get_action(),
                    clap::ArgAction::SetTrue
                        | clap::ArgAction::Count
                        | clap::ArgAction::Help
                        | clap::ArgAction::Version
                );
            assert!(
                flag_default,
                "--{:?} has defaults {defaults:?}",
                arg.get_id()
            );
        }
    }

    /// The `exec`-only tree parses every `exec` command line as the whole tree does, and
    /// leaves help, version and mistakes to the whole tree.
    #[test]
    fn the_exec_only_tree_parses_as_the_whole_tree() {
        let parsed_alike: &[&[&str]] = &[
            &["exec", "--", "true"],
            &["exec", "true"],
            &["exec", "python3", "-u", "step.py", "--debug", "-v"],
            &[
                "exec", "-v", "--debug", "--ranks", "0,3", "--", "python", "-m", "t",
            ],
            &[
                "exec", "--config", "a.toml", "-qq", "--mode", "listen", "--", "x",
            ],
            &[
                "exec",
                "--log-format",
                "json",
                "--supervise",
                "--",
                "sh",
                "-c",
                "exit 3",
            ],
            &[
                "exec",
                "--rank",
                "2",
                "--world-size",
                "4",
                "--",
                "é",
                "--ünïcode",
            ],
            &[
                "exec",
                "--attach-timeout",
                "90s",
                "--port-range",
                "6000-6010",
                "--",
                "x",
            ],
        ];
        for words in parsed_alike {
            let args: Vec<OsString> = std::iter::once("amlx-agent")
                .chain(words.iter().copied())
                .map(OsString::from)
                .collect();
            let fast = Cli::exec_only(&args).unwrap_or_else(|| panic!("{words:?}"));
            let whole = Cli::try_parse_from(&args).expect("the whole tree parses it");
            assert_eq!(format!("{fast:?}"), format!("{whole:?}"), "{words:?}");
        }
        // The shortcut agrees with the whole tree wherever it applies (this process's
        // environment gives the flag variables their values, both ways).
        let shortcut: &[&[&str]] = &[
            &["exec", "--", "true"],
            &[
                "exec", "--", "python3", "-u", "step.py", "--debug", "-v", "--", "x",
            ],
            &["exec", "--", "--help"],
            &["exec", "--", "é", "--ünïcode"],
        ];
        for words in shortcut {
            let args = with_name(words);
            let fast = Cli::exec_shortcut(&args).unwrap_or_else(|| panic!("{words:?}"));
            let whole = Cli::try_parse_from(&args).expect("the whole tree parses it");
            assert_eq!(format!("{fast:?}"), format!("{whole:?}"), "{words:?}");
        }
        for words in [
            &["exec", "--"][..],
            &["exec", "true"],
            &["exec", "-v", "--", "x"],
        ] {
            assert!(Cli::exec_shortcut(&with_name(words)).is_none(), "{words:?}");
        }
        let left_to_the_whole_tree: &[&[&str]] = &[
            &["exec", "--help"],
            &["exec", "--version"],
            &["exec", "--debgu", "--", "x"],
            &["exec"],
            &["exec", "-v", "-q", "--", "x"],
            &["-v", "exec", "--", "x"],
            &["detect"],
            &[],
        ];
        for words in left_to_the_whole_tree {
            let args: Vec<OsString> = std::iter::once("amlx-agent")
                .chain(words.iter().copied())
                .map(OsString::from)
                .collect();
            assert!(Cli::exec_only(&args).is_none(), "{words:?}");
        }
    }
}
