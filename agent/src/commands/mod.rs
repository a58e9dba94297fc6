//! One function per subcommand: glue between the CLI and the domain modules.

mod detect;
mod exec;
mod ports;
mod relay;
mod status;

use crate::cli::{Cli, Command, LogFormat, PortsCommand};
use crate::logging;

/// Exit code for errors in the agent itself (bad config, I/O), as opposed to the step's.
pub const EXIT_AGENT_ERROR: i32 = 1;

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let verbosity = i8::try_from(i16::from(cli.verbose) - i16::from(cli.quiet)).unwrap_or(0);
    logging::init(cli.log_format.unwrap_or(LogFormat::Text), verbosity);
    let result = match &cli.command {
        Command::Exec(args) => return exec::run(&cli, args),
        Command::Detect(args) => detect::run(&cli, args),
        Command::Ports(PortsCommand::List(args)) => ports::list(&cli, args),
        Command::Relay(args) => relay::run(&cli, args),
        Command::Status(args) => status::run(&cli, args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("amlx-agent: error: {err:#}");
            EXIT_AGENT_ERROR
        }
    }
}
