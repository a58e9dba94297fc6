//! The `amlx-agent` binary: parse, dispatch, exit code. Everything else is in the library.

use clap::Parser;

fn main() {
    let cli = amlx_agent::cli::Cli::parse();
    let code = amlx_agent::commands::run(cli);
    std::process::exit(code);
}
