//! `amlx-agent exec`: decide, reserve, announce, then become (or supervise) the step.
//!
//! Non-targets take the shortest path: config, role, decision, then `execve`. No async
//! runtime, no network, no lock.

mod target;

use std::ffi::OsString;

use crate::cli::ExecArgs;
use crate::config::{ConfigError, Settings};
use crate::policy::{self, Verdict};
use crate::process::{self, ProcessMode, Step};
use crate::role::Detection;

pub fn run(args: &ExecArgs, settings: Result<Settings, ConfigError>) -> i32 {
    // A bad config must not stop training: the step runs undebugged and the log says why.
    // The step's prior-art arguments (`--is-debug`, `--debug-port`, ...) are already a
    // layer of `settings`, below the environment and the flags.
    let settings = match settings {
        Ok(settings) => Some(settings),
        Err(err) => {
            tracing::error!("{err}; running the step without debugging");
            None
        }
    };
    let detection = super::detect_role(&args.role);
    let decision = match &settings {
        Some(settings) => policy::decide(&settings.policy, &detection.role),
        None => policy::decide(&policy::Policy::default(), &detection.role),
    };
    let mode = process_mode(args);
    let mut step = Step {
        argv: args.command.clone(),
        ..Step::default()
    };
    step.env = role_env(&detection);
    match (decision.verdict, &settings) {
        (Verdict::NotTarget, _) | (_, None) => {
            tracing::debug!(reason = %decision.reason, "not a debug target");
            // The shortest path discovers nothing: the node IP is exported when it was
            // given (--node-ip, AMLX_NODE_IP, [node] ip), detected only for targets.
            if let Some(ip) = settings.as_ref().and_then(|s| s.node_ip) {
                step.env.push(env_pair("AMLX_NODE_IP", &ip.to_string()));
            }
            step.env.push(env_pair("AMLX_DEBUG_TARGET", "false"));
            process::run(mode, &step)
        }
        (_, Some(settings)) => target::run(
            settings,
            &detection,
            &decision,
            mode,
            step,
            args.relay.token_ttl,
        ),
    }
}

fn process_mode(args: &ExecArgs) -> ProcessMode {
    if args.supervise {
        ProcessMode::Supervise
    } else if args.replace {
        ProcessMode::Replace
    } else {
        process::default_mode()
    }
}

/// The role variables every step gets (`AMLX_AGENT_ACTIVE` guards shims against recursion).
fn role_env(detection: &Detection) -> Vec<(OsString, OsString)> {
    let role = &detection.role;
    let known = |v: Option<u32>| v.map(|n| n.to_string()).unwrap_or_default();
    vec![
        env_pair("AMLX_AGENT_ACTIVE", "1"),
        env_pair("AMLX_RANK", &known(role.rank)),
        env_pair("AMLX_LOCAL_RANK", &known(role.local_rank)),
        env_pair("AMLX_WORLD_SIZE", &known(role.world_size)),
    ]
}

pub(super) fn env_pair(key: &str, value: &str) -> (OsString, OsString) {
    (key.into(), value.into())
}
