//! `amlx-agent detect`: what the agent sees and what the policy decides.

use crate::cli::{Cli, DetectArgs};

pub fn run(cli: &Cli, args: &DetectArgs) -> anyhow::Result<i32> {
    let _ = (cli, args);
    Ok(0)
}
