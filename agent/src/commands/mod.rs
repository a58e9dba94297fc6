//! One function per subcommand: glue between the CLI and the domain modules.

mod demo;
mod detect;
mod exec;
mod launch_json;
mod ports;
mod post_mortem;
mod relay;
mod run;
mod status;

use crate::cli::{
    Cli, Command, ConnectArgs, ListenArgs, LogFormat, PortsCommand, RelayArgs, RelayCommand,
    RoleArgs, TargetsCommand,
};
use crate::config::{self, Flags, StepHints};
use crate::inject::prior_art::{self, PriorArt};
use crate::logging;
use crate::role::{self, Detection, Overrides, ProcessEnv};

/// Exit code for errors in the agent itself (bad config, I/O), as opposed to the step's.
pub const EXIT_AGENT_ERROR: i32 = 1;

/// Writes `text` to stdout. A reader that went away (`| head -1`) is an error the caller
/// returns, not a panic as `println!` makes it.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|err| anyhow::anyhow!("could not write to stdout: {err}"))
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let verbosity =
        i8::try_from(i16::from(cli.global.verbose) - i16::from(cli.global.quiet)).unwrap_or(0);
    // A step written for the prior art carries its own debug arguments: a settings layer.
    let prior_art = match &cli.command {
        Command::Exec(args) => Some(prior_art::read(&args.command)),
        _ => None,
    };
    let hints = prior_art.as_ref().map(step_hints);
    // Settings first, so `[log] format` from the file counts; the outcome is reported
    // once logging is up.
    let settings = config::load(&flags_for(&cli, hints.as_ref()), &ProcessEnv);
    let format = match &settings {
        Ok(settings) => settings.log_format,
        Err(_) => cli.global.log_format,
    };
    logging::init(format.unwrap_or(LogFormat::Text), verbosity);
    for warning in prior_art.iter().flat_map(|p| &p.warnings) {
        tracing::warn!("{warning}");
    }
    if let Ok(settings) = &settings {
        tracing::debug!(?settings, "configuration loaded");
        for note in &settings.notes {
            tracing::info!("{note}");
        }
    }
    let result = match &cli.command {
        Command::Exec(args) => return exec::run(args, settings),
        Command::PostMortem(args) => return post_mortem::run(args, settings),
        Command::Detect(args) => settings
            .map_err(Into::into)
            .and_then(|s| detect::run(args, &s)),
        Command::Ports(PortsCommand::List(args)) => settings
            .map_err(Into::into)
            .and_then(|s| ports::list(args, &s)),
        Command::Relay(args) => settings
            .map_err(Into::into)
            .and_then(|s| relay::run(args, &s)),
        Command::LaunchJson(args) => settings
            .map_err(Into::into)
            .and_then(|s| launch_json::run(args, &s)),
        Command::Status(args) => settings
            .map_err(Into::into)
            .and_then(|s| status::run(args, &s)),
        Command::Demo(args) => settings
            .map_err(Into::into)
            .and_then(|s| demo::run(args, &s, &cli.global)),
        Command::Run(args) => settings
            .map_err(Into::into)
            .and_then(|s| run::run(args, &s, &cli.global)),
        Command::Targets(TargetsCommand::List(args)) => settings
            .map_err(Into::into)
            .and_then(|s| run::list_targets(args, &s)),
    };
    report(result)
}

/// The prior-art arguments as a settings layer.
fn step_hints(prior: &PriorArt) -> StepHints {
    StepHints {
        debug: prior.is_debug,
        debug_port: prior.debug_port,
        hybrid_connection: prior.relay_connection_name.clone(),
    }
}

/// Which command-line values take part in config layering, per subcommand.
fn flags_for<'a>(cli: &'a Cli, step: Option<&'a StepHints>) -> Flags<'a> {
    let base = Flags {
        config: cli.global.config.as_deref(),
        log_format: cli.global.log_format,
        ..Flags::default()
    };
    match &cli.command {
        Command::Exec(args) => Flags {
            policy: Some(&args.policy),
            ports: Some(&args.ports),
            node: Some(&args.node),
            session: Some(&args.session),
            relay: Some(&args.relay),
            step,
            ..base
        },
        Command::PostMortem(args) => Flags {
            policy: Some(&args.policy),
            ports: Some(&args.ports),
            node: Some(&args.node),
            session: Some(&args.session),
            relay: Some(&args.relay),
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
        Command::Relay(RelayArgs {
            command:
                RelayCommand::Listen(ListenArgs {
                    relay, max_tunnels, ..
                }),
        }) => Flags {
            relay: Some(relay),
            max_tunnels: max_tunnels.as_ref(),
            ..base
        },
        Command::Relay(RelayArgs {
            command:
                RelayCommand::Connect(ConnectArgs {
                    relay,
                    max_tunnels,
                    spare_tunnels,
                    ..
                }),
        }) => Flags {
            relay: Some(relay),
            max_tunnels: max_tunnels.as_ref(),
            spare_tunnels: spare_tunnels.as_ref(),
            ..base
        },
        Command::Status(args) => Flags {
            state_dir: args.state_dir.as_deref(),
            ..base
        },
        Command::Run(args) => Flags {
            relay: Some(&args.relay),
            ..base
        },
        Command::Relay(_) | Command::LaunchJson(_) | Command::Demo(_) | Command::Targets(_) => base,
    }
}

/// Maps a command's outcome to the exit code, printing the whole error chain once.
fn report(result: anyhow::Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(err) => {
            crate::logging::stderr::say(&format!("amlx-agent: error: {err:#}"));
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

/// The logging flags `run` and `demo` were given, for the step's agents: their lines are
/// in the same format and at the same level as the command's own (`-qq` and
/// `--log-format json` did not reach them). `format` is the settings' (flag, variable or
/// config file).
fn step_log_args(
    global: &crate::cli::GlobalArgs,
    format: Option<crate::cli::LogFormat>,
) -> Vec<std::ffi::OsString> {
    let mut args = Vec::new();
    if format == Some(crate::cli::LogFormat::Json) {
        args.extend(["--log-format".into(), "json".into()]);
    }
    args.extend((0..global.verbose).map(|_| "-v".into()));
    args.extend((0..global.quiet).map(|_| "-q".into()));
    args
}

#[cfg(test)]
mod step_log_args_tests {
    use super::*;
    use crate::cli::{GlobalArgs, LogFormat};

    #[test]
    fn the_steps_agents_log_as_the_command_does() {
        let global = |verbose, quiet| GlobalArgs {
            verbose,
            quiet,
            ..GlobalArgs::default()
        };
        let cases: [(GlobalArgs, Option<LogFormat>, &[&str]); 4] = [
            (global(0, 0), None, &[]),
            (global(0, 0), Some(LogFormat::Text), &[]),
            (
                global(0, 2),
                Some(LogFormat::Json),
                &["--log-format", "json", "-q", "-q"],
            ),
            (global(1, 0), None, &["-v"]),
        ];
        for (global, format, want) in cases {
            let got = step_log_args(&global, format);
            assert_eq!(
                got,
                want.iter()
                    .map(std::ffi::OsString::from)
                    .collect::<Vec<_>>()
            );
        }
    }
}
