//! `amlx-agent exec`: decide, reserve, announce, then become (or supervise) the step.
//!
//! Non-targets take the shortest path: config, role, decision, then `execve`. No async
//! runtime, no network, no lock.

use std::ffi::OsString;

use crate::cli::{Cli, ExecArgs};
use crate::config::{self, Flags, Settings};
use crate::policy::{self, Decision, Verdict};
use crate::process::{self, ProcessMode, Step};
use crate::role::{self, Detection, Overrides, ProcessEnv};

pub fn run(cli: &Cli, args: &ExecArgs) -> i32 {
    let env = ProcessEnv;
    let flags = Flags {
        config: cli.config.as_deref(),
        log_format: cli.log_format,
        policy: Some(&args.policy),
        ports: Some(&args.ports),
        node: Some(&args.node),
        session: Some(&args.session),
    };
    // A bad config must not stop training: the step runs undebugged and the log says why.
    let settings = match config::load(&flags, &env) {
        Ok(settings) => Some(settings),
        Err(err) => {
            tracing::error!("{err}; running the step without debugging");
            None
        }
    };
    let overrides = Overrides {
        rank: args.role.rank,
        local_rank: args.role.local_rank,
        world_size: args.role.world_size,
    };
    let detection = role::detect(&env, &overrides);
    for warning in &detection.warnings {
        tracing::warn!("{warning}");
    }
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
    match (decision.verdict, settings) {
        (Verdict::NotTarget, _) | (_, None) => {
            tracing::debug!(reason = %decision.reason, "not a debug target");
            step.env.push(env_pair("AMLX_DEBUG_TARGET", "false"));
            process::run(mode, &step)
        }
        (_, Some(settings)) => run_target(&settings, &detection, &decision, mode, step),
    }
}

/// A (possible) debug target: the session module takes over from here.
fn run_target(
    settings: &Settings,
    detection: &Detection,
    decision: &Decision,
    mode: ProcessMode,
    mut step: Step,
) -> i32 {
    let _ = (settings, detection, decision);
    step.env.push(env_pair("AMLX_DEBUG_TARGET", "false"));
    process::run(mode, &step)
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

fn env_pair(key: &str, value: &str) -> (OsString, OsString) {
    (key.into(), value.into())
}
