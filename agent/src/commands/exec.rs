//! `amlx-agent exec`: decide, reserve, announce, then become (or supervise) the step.
//!
//! Non-targets take the shortest path: config, role, decision, then `execve`. No async
//! runtime, no network, no lock.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use super::EXIT_AGENT_ERROR;
use crate::cli::ExecArgs;
use crate::config::{ConfigError, Settings};
use crate::netinfo::{self, NodeInfo};
use crate::policy::{self, Decision, Verdict};
use crate::ports::{self, HolderRecord, Reservation, ReserveRequest};
use crate::process::{self, ProcessMode, Step};
use crate::role::{self, Detection, Overrides, ProcessEnv};
use crate::session::{DebugMode, FailurePolicy};

pub fn run(args: &ExecArgs, settings: Result<Settings, ConfigError>) -> i32 {
    let env = ProcessEnv;
    // A bad config must not stop training: the step runs undebugged and the log says why.
    let settings = match settings {
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

/// A (possible) debug target: reserve a port, announce it, and run the step holding it.
fn run_target(
    settings: &Settings,
    detection: &Detection,
    decision: &Decision,
    mode: ProcessMode,
    mut step: Step,
) -> i32 {
    let node = netinfo::discover(settings.node_ip);
    if let Some(ip) = node.ip {
        step.env.push(env_pair("AMLX_NODE_IP", &ip.to_string()));
    }
    let reservation = match reserve_port(settings, detection, decision, &node, &step) {
        Ok(Some(reservation)) => reservation,
        Ok(None) => {
            step.env.push(env_pair("AMLX_DEBUG_TARGET", "false"));
            return process::run(mode, &step);
        }
        Err(err) => return debug_failed(settings, &format!("{err:#}"), mode, step),
    };
    announce(detection, &node, reservation.port);
    if mode == ProcessMode::Replace {
        // The step itself must hold the lock after execve, for exactly its lifetime.
        if let Err(err) = reservation.keep_across_exec() {
            return debug_failed(
                settings,
                &format!("could not keep the port lock across exec: {err}"),
                mode,
                step,
            );
        }
        step.keep_fds.push(reservation.file().as_raw_fd());
    }
    step.env.push(env_pair("AMLX_DEBUG_TARGET", "true"));
    step.env
        .push(env_pair("AMLX_DEBUG_PORT", &reservation.port.to_string()));
    step.env.push(env_pair(
        "AMLX_DEBUG_MODE",
        &settings.session.mode.to_string(),
    ));
    let code = process::run(mode, &step);
    // Supervise mode: the reservation is released only now that the step has exited.
    drop(reservation);
    code
}

/// Takes this node's port reservation. `Ok(None)`: a candidate that lost the node slot.
fn reserve_port(
    settings: &Settings,
    detection: &Detection,
    decision: &Decision,
    node: &NodeInfo,
    step: &Step,
) -> anyhow::Result<Option<Reservation>> {
    let lock_dir = ports::lock_dir(settings.ports.lock_dir.as_deref())?;
    let range = settings.ports.range;
    let request = ReserveRequest {
        range,
        preferred: range.preferred_for_rank(detection.role.rank),
        lock_dir: &lock_dir,
        slot_limit: decision.slot_limit,
        bind_ip: debugger_bind_ip(settings, node),
        record: HolderRecord::for_current_process(detection.role.rank, &command_line(&step.argv)),
    };
    match ports::reserve(&request) {
        Ok(reservation) => Ok(Some(reservation)),
        Err(err) if decision.verdict == Verdict::Candidate && err.is_slots_full() => {
            tracing::info!("not a debug target: {err}");
            Ok(None)
        }
        Err(err) => Err(err.into()),
    }
}

/// Where the debugger will listen: the node IP in direct mode, loopback otherwise.
fn debugger_bind_ip(settings: &Settings, node: &NodeInfo) -> IpAddr {
    match (settings.session.mode, node.ip) {
        (DebugMode::Direct, Some(ip)) => ip,
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

/// The startup line for a debug target: everything a developer greps the logs for.
fn announce(detection: &Detection, node: &NodeInfo, port: u16) {
    let role = &detection.role;
    let show = |v: Option<u32>| v.map_or_else(|| "?".to_owned(), |n| n.to_string());
    let ip = node
        .ip
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    tracing::info!(
        rank = role.rank,
        world_size = role.world_size,
        launcher = %role.launcher,
        host = %node.hostname,
        ip = %ip,
        port,
        "amlx-agent: rank {}/{} ({}) host {} ip {} debug port {}",
        show(role.rank),
        show(role.world_size),
        role.launcher,
        node.hostname,
        ip,
        port
    );
}

/// Debugging could not be set up: by default the step runs anyway, and the log says why.
fn debug_failed(settings: &Settings, why: &str, mode: ProcessMode, mut step: Step) -> i32 {
    match settings.session.on_failure {
        FailurePolicy::Continue => {
            tracing::error!(
                "debugging disabled for this run: {why}; running the step without a debugger"
            );
            step.env.push(env_pair("AMLX_DEBUG_TARGET", "false"));
            process::run(mode, &step)
        }
        FailurePolicy::Fail => {
            tracing::error!("{why}; not running the step (--on-debug-failure fail)");
            EXIT_AGENT_ERROR
        }
    }
}

fn command_line(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
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
