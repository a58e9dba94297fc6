//! `amlx-agent relay ...`: the self-hosted server and the laptop-side forwarders.

use crate::cli::{Cli, RelayArgs};

pub fn run(cli: &Cli, args: &RelayArgs) -> anyhow::Result<i32> {
    let _ = (cli, args);
    anyhow::bail!("relay: not built yet")
}
