//! `amlx-agent exec`: decide, reserve, announce, then become (or supervise) the step.

use crate::cli::{Cli, ExecArgs};

pub fn run(cli: &Cli, args: &ExecArgs) -> i32 {
    let _ = (cli, args);
    0
}
