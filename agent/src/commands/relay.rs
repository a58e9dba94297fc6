//! `amlx-agent relay ...`: the self-hosted server and the laptop-side forwarders.

use crate::cli::RelayArgs;
use crate::config::Settings;

pub fn run(args: &RelayArgs, settings: &Settings) -> anyhow::Result<i32> {
    let _ = (args, settings);
    anyhow::bail!("relay: not built yet")
}
