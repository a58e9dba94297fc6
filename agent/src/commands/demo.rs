//! `amlx-agent demo`: the command line and settings into `demo::Options`.

use std::path::Path;

use crate::cli::{DemoArgs, GlobalArgs};
use crate::config::Settings;
use crate::demo::{self, Options};
use crate::ports;
use crate::publish;
use crate::role::ProcessEnv;

pub fn run(args: &DemoArgs, settings: &Settings, global: &GlobalArgs) -> anyhow::Result<i32> {
    let config = global.config.as_deref();
    // The step's agent gets this directory explicitly, so the demo follows its record
    // wherever the settings put it.
    let state_dir = publish::state_dir(settings.state_dir.as_deref(), &ProcessEnv)?;
    let options = Options {
        vscode_port: args.vscode_port,
        attach_timeout: args.attach_timeout,
        ranks_count: args.ranks_count,
        port_range: args.port_range,
        dir: args.dir.clone(),
        python: args.python.clone(),
        config: config.map(Path::to_path_buf),
        state_dir,
        lock_dir: ports::lock_dir(settings.ports.lock_dir.as_deref()).ok(),
        post_mortem: args.post_mortem,
        log_args: super::step_log_args(global, settings.log_format),
    };
    demo::run(&options)
}
