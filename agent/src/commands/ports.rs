//! `amlx-agent ports list`: this node's live reservations and stale lock files.

use crate::cli::{Cli, PortsListArgs};

pub fn list(cli: &Cli, args: &PortsListArgs) -> anyhow::Result<i32> {
    let _ = (cli, args);
    Ok(0)
}
