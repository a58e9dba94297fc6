//! The debug-target path of `exec`: reserve a port, prepare the debugger and the relay,
//! start the sidecar, announce, then run the step holding all of it.
//!
//! Any failure here is a debug failure: by default the step still runs, without a
//! debugger, and the log says why (`--on-debug-failure fail` stops instead).

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use super::{env_pair, mark_undebugged};
use crate::commands::EXIT_AGENT_ERROR;
use crate::config::{DEFAULT_ATTACH_TIMEOUT, Settings};
use crate::inject::{self, DebugpyOptions, Injected, Plan, Skip};
use crate::netinfo::{self, NodeInfo};
use crate::policy::{self, Decision, StepFacts, Verdict};
use crate::ports::{self, HolderRecord, Reservation, ReserveRequest};
use crate::process::lineage::{self, StepKind};
use crate::process::{self, ProcessMode, Step};
use crate::publish::{SessionState, StatusFile, StatusRecord};
use crate::relay::client::credentials;
use crate::role::{Detection, ProcessEnv};
use crate::session::keeper;
use crate::session::sidecar::{self, Readiness};
use crate::session::{self, DebugMode, FailurePolicy, SessionSpec};

pub fn run(
    settings: &Settings,
    detection: &Detection,
    decision: &Decision,
    facts: &StepFacts,
    mode: ProcessMode,
    mut step: Step,
    token_ttl: Option<std::time::Duration>,
) -> i32 {
    if mode == ProcessMode::Supervise {
        // Before the setup (up to the readiness bound): as PID 1 with default handlers, a
        // SIGTERM meanwhile (`docker stop`) was discarded by the kernel and the step ran to
        // its end; blocked, it waits and reaches the step once it starts. Failing here is
        // left to the supervisor's own block, as before.
        let _ = crate::process::SignalMask::block();
    }
    if !process::findable(&step) {
        // No port, sidecar or announcement for a step that cannot start: its 127 or 126
        // and the reason come from running it.
        return process::run(mode, &step);
    }
    let node = netinfo::discover(settings.node_ip);
    if let Some(ip) = node.ip {
        step.env.push(env_pair("AMLX_NODE_IP", &ip.to_string()));
    }
    let reservation = match reserve_port(settings, detection, decision, &node, &step) {
        Ok(Some(reservation)) => reservation,
        Ok(None) => {
            mark_undebugged(&mut step, facts.undebugged_kind());
            return process::run(mode, &step);
        }
        Err(err) => return debug_failed(settings, &format!("{err:#}"), mode, step),
    };
    let port = reservation.port;
    let warning = policy::parallel_worker_warning(&detection.role, facts);
    // A ParallelRunStep worker has a shorter attach timeout by default: the session and
    // the step's bootstrap (its own last resort) both count from it, or the bootstrap
    // would hold the worker long after the session let it go.
    let adjusted;
    let settings = match &warning {
        Some(_) => {
            adjusted = Settings {
                session: crate::config::SessionSettings {
                    attach_timeout: policy::parallel_worker_attach_timeout(
                        settings.session.attach_timeout,
                        DEFAULT_ATTACH_TIMEOUT,
                    ),
                    ..settings.session.clone()
                },
                ..settings.clone()
            };
            &adjusted
        }
        None => settings,
    };
    // The bootstrap's report pipe (see `inject::bootstrap`): the step writes whether it
    // could import debugpy, the sidecar reads. Without it the session just never hears.
    let report = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .inspect_err(|err| tracing::debug!("no bootstrap report pipe: {err}"))
        .ok();
    let report_fd = report.as_ref().map(|(_, write)| write.as_raw_fd());
    let prepared = prepare(
        settings, detection, &node, port, &step.argv, token_ttl, report_fd,
    );
    let (spec, injected) = match prepared {
        Ok((spec, injected)) => (
            SessionSpec {
                warning: warning.clone(),
                step_holds_lifeline: mode == ProcessMode::Replace,
                ..spec
            },
            injected,
        ),
        Err(err) => {
            let why = format!("{err:#}");
            record_undebugged(settings, detection, &node, port, &why);
            return debug_failed(settings, &why, mode, step);
        }
    };
    // Only an injected step has a bootstrap to report.
    let (report_read, report_write) = match report {
        Some((read, write)) if injected.is_some() => (Some(read), Some(write)),
        _ => (None, None),
    };
    let lock_fd = reservation.file().as_raw_fd();
    let mut close_in_sidecar = vec![lock_fd];
    close_in_sidecar.extend(report_write.as_ref().map(AsRawFd::as_raw_fd));
    let duties = keeper::Duties::of(&spec);
    // Replace mode: the keeper holds the port lock for the step, for exactly the step's
    // life. A copy kept across execve by the step would be inherited by every child the
    // step forks, and one the step leaves running would hold the port after it.
    let keeper_lock = match mode {
        ProcessMode::Replace => match reservation.file().try_clone() {
            Ok(copy) => Some(OwnedFd::from(copy)),
            Err(err) => {
                let why = format!("could not hand the port lock to the session's keeper: {err}");
                record_undebugged(settings, detection, &node, port, &why);
                return debug_failed(settings, &why, mode, step);
            }
        },
        ProcessMode::Supervise => None,
    };
    // The closure owns the report's read end: the sidecar runs it; here it is dropped
    // (closed) when `spawn` returns.
    // The keeper's own copy of the report's read end: after a sidecar death it reads
    // what the sidecar did not (direct mode's debugpy port).
    let keeper_report = report_read.as_ref().and_then(|fd| {
        fd.try_clone()
            .inspect_err(|err| tracing::debug!("{err}"))
            .ok()
    });
    let spawned = sidecar::spawn(
        &close_in_sidecar,
        keeper_lock,
        keeper_report,
        duties,
        move |ready, lifeline| session::run_sidecar(spec, ready, lifeline, report_read),
    );
    let sidecar = match spawned {
        Ok((sidecar, Readiness::Ready)) => sidecar,
        Ok((sidecar, Readiness::Failed(why))) => {
            // The sidecar recorded this failure itself.
            sidecar.terminate();
            return debug_failed(settings, &why, mode, step);
        }
        Err(err) => {
            let why = format!("{err:#}");
            record_undebugged(settings, detection, &node, port, &why);
            return debug_failed(settings, &why, mode, step);
        }
    };
    announce(detection, &node, port, settings.session.mode);
    if let Some(warning) = &warning {
        tracing::warn!("{warning}");
    }
    if mode == ProcessMode::Replace {
        // The step itself holds the sidecar's lifeline after execve (the keeper holds the
        // port lock). Arranged before the command is rewritten, so a failure here runs
        // the step exactly as given.
        let kept = sidecar
            .keep_across_exec()
            .map_err(|err| format!("could not keep the sidecar's lifeline across exec: {err}"));
        match kept {
            Ok(fd) => step.keep_fds.push(fd),
            Err(why) => {
                sidecar.terminate();
                return debug_failed(settings, &why, mode, step);
            }
        }
    }
    let kind = if injected.is_some() {
        StepKind::DebuggedTarget
    } else {
        StepKind::Other
    };
    // The step as given, with the session's lifeline: what runs if the kernel refuses the
    // injected command line as too long.
    let plain = injected.is_some().then(|| step.clone());
    if let Some(injected) = injected {
        step.argv = injected.argv;
        step.env.extend(injected.env);
        // Its bootstrap writes to the report pipe (set only for an injected step).
        step.keep_fds
            .extend(report_write.as_ref().map(AsRawFd::as_raw_fd));
    }
    step.env.push(env_pair("AMLX_DEBUG_TARGET", "true"));
    step.env
        .push(env_pair(lineage::STEP_KIND_VAR, kind.as_str()));
    step.env
        .push(env_pair("AMLX_DEBUG_PORT", &port.to_string()));
    step.env.push(env_pair(
        "AMLX_DEBUG_MODE",
        &settings.session.mode.to_string(),
    ));
    let code = process::run_or(mode, &step, plain.as_ref());
    drop(report_write);
    // Supervise mode (or a failed execve): the session ends with the step.
    sidecar.terminate();
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
        record: HolderRecord::for_current_process(
            detection.role.rank,
            &crate::inject::python_argv::command_summary(&step.argv),
        ),
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

/// The session for the sidecar and the rewritten command line, or why debugging is off.
fn prepare(
    settings: &Settings,
    detection: &Detection,
    node: &NodeInfo,
    port: u16,
    argv: &[OsString],
    token_ttl: Option<std::time::Duration>,
    report_fd: Option<std::os::fd::RawFd>,
) -> anyhow::Result<(SessionSpec, Option<Injected>)> {
    let mode = settings.session.mode;
    let relay = match mode {
        DebugMode::Connect | DebugMode::Listen => Some(relay_endpoint(settings, token_ttl)?),
        DebugMode::Direct => None,
    };
    let mut proxy_port = None;
    let injected = match inject::plan(settings.session.inject, argv, &ProcessEnv)? {
        Plan::Debugpy(python) => {
            // Whether the step's interpreter has debugpy is found out by the step itself,
            // at its start (`inject::bootstrap`), which tells the sidecar.
            let endpoint = match mode {
                // debugpy listens on a loopback port of its own; the sidecar owns the
                // published port and gates every developer (session::direct). Port 0:
                // debugpy's adapter picks it when it binds and the step's bootstrap
                // reports it, so no other process can take it in between (a port
                // chosen here and bound later was, on a busy node).
                DebugMode::Direct => {
                    proxy_port = Some(0);
                    inject::Endpoint {
                        mode: DebugMode::Listen,
                        port: 0,
                        node_ip: node.ip,
                    }
                }
                DebugMode::Connect | DebugMode::Listen => inject::Endpoint {
                    mode,
                    port,
                    node_ip: node.ip,
                },
            };
            let options = DebugpyOptions {
                wait_for_client: settings.session.wait_for_client,
                sub_process: false,
                report_fd,
                fail_without_debugpy: settings.session.on_failure == FailurePolicy::Fail,
                // The sidecar releases a waiting step at the attach deadline, retrying for
                // RELEASE_GRACE; past that the step lets itself go. Every mode: a
                // connect-mode step waits in debugpy's --connect, and a step's own
                // `wait_for_client()` (prior-art code) waits in any mode.
                release_after: Some(
                    settings
                        .session
                        .attach_timeout
                        .saturating_add(crate::session::RELEASE_GRACE),
                ),
            };
            Some(inject::rewrite(&python, &endpoint, &options)?)
        }
        Plan::Unchanged(skip) => {
            match &skip {
                Skip::Disabled => tracing::debug!("{skip}"),
                Skip::NotInjectable(_) => tracing::info!("{skip}"),
                Skip::AlreadyDebugged => tracing::warn!("{skip}"),
            }
            None
        }
    };
    let spec = SessionSpec {
        mode,
        port,
        proxy_port,
        rank: detection.role.rank,
        local_rank: detection.role.local_rank,
        hostname: node.hostname.clone(),
        node_ip: node.ip,
        holder_pid: std::process::id(),
        step_holds_lifeline: false,
        attach_timeout: settings.session.attach_timeout,
        wait_for_client: settings.session.wait_for_client,
        relay,
        state_dir: settings.state_dir.clone(),
        on_failure: settings.session.on_failure,
        warning: None,
        post_mortem: None,
    };
    Ok((spec, injected))
}

/// A loopback port free right now, for a post-mortem session's debugpy behind the
/// direct-mode gate. Another process may take it between this probe and debugpy's bind
/// (a debug step's own direct mode lets debugpy pick its port instead); then debugpy
/// cannot listen and the crashed process exits as it would have without the agent.
pub(in crate::commands) fn free_loopback_port() -> anyhow::Result<u16> {
    let probe = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|err| anyhow::anyhow!("could not find a loopback port for debugpy: {err}"))?;
    Ok(probe.local_addr()?.port())
}

/// The relay endpoint from the layered settings (flags, `AMLX_RELAY_*`, `[relay]`).
///
/// Only a target reaches this, so only a target reads the connection string file.
pub(in crate::commands) fn relay_endpoint(
    settings: &Settings,
    token_ttl: Option<std::time::Duration>,
) -> anyhow::Result<crate::relay::client::Endpoint> {
    // Layering left at most one credential form; `credentials` reads the file if that
    // is the one.
    let overrides = credentials::Overrides {
        connection_string_file: settings.relay.connection_string_file.as_deref(),
        ..credentials::Overrides::default()
    };
    let mut endpoint = credentials::endpoint(&settings.relay, overrides).map_err(|err| {
        anyhow::anyhow!("{err:#} (or use --mode direct when the node is reachable)")
    })?;
    if let Some(ttl) = token_ttl {
        endpoint.token_ttl = ttl;
    }
    Ok(endpoint)
}

/// Where the debugger will listen: the node IP in direct mode, loopback otherwise.
pub(in crate::commands) fn debugger_bind_ip(settings: &Settings, node: &NodeInfo) -> IpAddr {
    match (settings.session.mode, node.ip) {
        (DebugMode::Direct, Some(ip)) => ip,
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

/// The startup line for a debug target: everything a developer greps the logs for.
fn announce(detection: &Detection, node: &NodeInfo, port: u16, mode: DebugMode) {
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
        mode = %mode,
        "amlx-agent: rank {}/{} ({}) host {} ip {} debug port {} mode {}",
        show(role.rank),
        show(role.world_size),
        role.launcher,
        node.hostname,
        ip,
        port,
        mode
    );
    // Which timeout ends the job while this rank is held, and how to raise it.
    if let Some(advice) = crate::session::peers::timeout_advice(&ProcessEnv, role.world_size) {
        tracing::info!("{advice}");
    }
}

/// A target whose session could not start still shows in `amlx-agent status`, as
/// `running-undebugged` with the reason, for as long as the step runs (its holder is
/// this process, which becomes or supervises the step). Best effort.
fn record_undebugged(
    settings: &Settings,
    detection: &Detection,
    node: &NodeInfo,
    port: u16,
    why: &str,
) {
    if settings.session.on_failure != FailurePolicy::Continue {
        return;
    }
    let Ok(dir) = crate::publish::state_dir(settings.state_dir.as_deref(), &ProcessEnv) else {
        return;
    };
    let endpoint = match node.ip {
        Some(ip) => std::net::SocketAddr::new(ip, port).to_string(),
        None => format!("port {port}"),
    };
    let mut record = StatusRecord::new(std::process::id(), port, settings.session.mode, endpoint);
    record.rank = detection.role.rank;
    record.local_rank = detection.role.local_rank;
    match StatusFile::create(&dir, record) {
        Ok(mut status) => {
            let _ = status.set_state(SessionState::RunningUndebugged, Some(why));
            // Dropping it would remove the record; readers judge it by its holder.
            std::mem::forget(status);
        }
        Err(err) => tracing::debug!("no status record for this failed session: {err:#}"),
    }
}

/// Debugging could not be set up: by default the step runs anyway, and the log says why.
fn debug_failed(settings: &Settings, why: &str, mode: ProcessMode, mut step: Step) -> i32 {
    match settings.session.on_failure {
        FailurePolicy::Continue => {
            tracing::error!(
                "debugging disabled for this run: {why}; running the step without a debugger"
            );
            mark_undebugged(&mut step, StepKind::Other);
            process::run(mode, &step)
        }
        FailurePolicy::Fail => {
            tracing::error!("{why}; not running the step (--on-debug-failure fail)");
            EXIT_AGENT_ERROR
        }
    }
}
