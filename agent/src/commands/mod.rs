//! One function per subcommand: glue between the CLI and the domain modules.

mod demo;
mod detect;
mod exec;
mod launch_json;
mod ports;
mod relay;
mod status;

use crate::cli::{Cli, Command, LogFormat, PortsCommand, RoleArgs};
use crate::config::{self, Flags};
use crate::logging;
use crate::role::{self, Detection, Overrides, ProcessEnv};

/// Exit code for errors in the agent itself (bad config, I/O), as opposed to the step's.
pub const EXIT_AGENT_ERROR: i32 = 1;

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let verbosity = i8::try_from(i16::from(cli.verbose) - i16::from(cli.quiet)).unwrap_or(0);
    // Settings first, so `[log] format` from the file counts; the outcome is reported
    // once logging is up.
    let settings = config::load(&flags_for(&cli), &ProcessEnv);
    let format = match &settings {
        Ok(settings) => settings.log_format,
        Err(_) => cli.log_format,
    };
    logging::init(format.unwrap_or(LogFormat::Text), verbosity);
    if let Ok(settings) = &settings {
        tracing::debug!(?settings, "configuration loaded");
    }
    let result = match &cli.command {
        Command::Exec(args) => return exec::run(args, settings),
        Command::Detect(args) => settings
            .map_err(Into::into)
            .and_then(|s| detect::run(args, &s)),
        Command::Ports(PortsCommand::List(args)) => settings
            .map_err(Into::into)
            .and_then(|s| ports::list(args, &s)),
        Command::Relay(args) => settings
            .map_err(Into::into)
            .and_then(|s| relay::run(args, &s)),
        Command::LaunchJson(args) => launch_json::run(args),
        Command::Status(args) => status::run(args),
        Command::Demo(args) => settings
            .map_err(Into::into)
            .and_then(|s| demo::run(args, &s, cli.config.as_deref())),
    };
    report(result)
}

/// Which command-line values take part in config layering, per subcommand.
fn flags_for(cli: &Cli) -> Flags<'_> {
    let base = Flags {
        config: cli.config.as_deref(),
        log_format: cli.log_format,
        ..Flags::default()
    };
    match &cli.command {
        Command::Exec(args) => Flags {
            policy: Some(&args.policy),
            ports: Some(&args.ports),
            node: Some(&args.node),
            session: Some(&args.session),
            ..base
        },
        Command::Detect(args) => Flags {
            policy: Some(&args.policy),
            node: Some(&args.node),
            ..base
        },
        Command::Ports(PortsCommand::List(args)) => Flags {
            ports: Some(&args.ports),
            ..base
        },
        Command::Relay(_) | Command::LaunchJson(_) | Command::Status(_) | Command::Demo(_) => base,
    }
}

/// Maps a command's outcome to the exit code, printing the whole error chain once.
fn report(result: anyhow::Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("amlx-agent: error: {err:#}");
            EXIT_AGENT_ERROR
        }
    }
}

/// This process's role, the `--rank`-style flags winning; each ignored value is logged.
fn detect_role(args: &RoleArgs) -> Detection {
    let overrides = Overrides {
        rank: args.rank,
        local_rank: args.local_rank,
        world_size: args.world_size,
    };
    let detection = role::detect(&ProcessEnv, &overrides);
    for warning in &detection.warnings {
        tracing::warn!("{warning}");
    }
    detection
}
