//! `amlx-agent post-mortem`: the helper a crashed Python process starts (see
//! `post_mortem`). Its stdin is the hook's (the crash line, then the lifeline: EOF when
//! the hook is done or the process is gone); its stdout answers the hook: `debugpy MODE
//! HOST PORT` then `ready` (or `error WHY`), or `none WHY`, and EOF ends the session.
//! Its log goes to stderr, which the hook points at the process's stdout.

use std::fs::File;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd as _, OwnedFd};
use std::time::Duration;

use crate::cli::PostMortemArgs;
use crate::config::{ConfigError, Settings};
use crate::netinfo::{self, NodeInfo};
use crate::policy::{self, ProcessKind, StepFacts};
use crate::ports::record::unix_now;
use crate::ports::{self, HolderRecord, ReserveRequest};
use crate::post_mortem::crash::{self, Crash};
use crate::post_mortem::slots::{self, Claim, SlotRecord};
use crate::role::{Detection, ProcessEnv};
use crate::session::lifeline::Lifeline;
use crate::session::sidecar::{self, ReadySignal};
use crate::session::{self, DebugMode, FailurePolicy, PostMortem, SessionSpec};

use super::exec::target::{debugger_bind_ip, free_loopback_port, relay_endpoint};

/// How long the hook may take to send its crash line (it writes it right after
/// starting the helper).
const CRASH_LINE_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(args: &PostMortemArgs, settings: Result<Settings, ConfigError>) -> i32 {
    // The log goes to the crashed process's stdout: when that is a pipe nobody empties,
    // a log line must be lost rather than hold the session (its deadline included).
    crate::logging::stderr::never_wait();
    let Some(mut reply) = stdout_file() else {
        return 1;
    };
    let crash = match read_crash_line() {
        Ok(crash) => crash,
        Err(why) => {
            tracing::warn!("no post-mortem session: {why}");
            let _ = writeln!(reply, "none {why}");
            return 1;
        }
    };
    let settings = match settings {
        Ok(settings) => settings,
        Err(err) => {
            tracing::error!("no post-mortem session for {}: {err}", crash.summary());
            let _ = writeln!(reply, "none configuration error");
            return 1;
        }
    };
    let detection = super::detect_role(&args.role);
    match serve(&settings, &detection, crash, &mut reply) {
        Ok(()) => 0,
        Err(why) => {
            tracing::error!("no post-mortem session: {why:#}; the process exits as it would have");
            let _ = writeln!(reply, "none {}", format!("{why:#}").replace('\n', " "));
            0
        }
    }
}

/// Claims a slot, reserves a port and runs the session until its end.
fn serve(
    settings: &Settings,
    detection: &Detection,
    crash: Crash,
    reply: &mut File,
) -> anyhow::Result<()> {
    let role = &detection.role;
    let crashed = nix::unistd::getppid();
    let node = netinfo::discover(settings.node_ip);
    let lock_dir = ports::lock_dir(settings.ports.lock_dir.as_deref())?;
    let slot_record = SlotRecord {
        pid: u32::try_from(crashed.as_raw()).unwrap_or_default(),
        rank: role.rank,
        exception: crash.summary(),
        since: unix_now(),
    };
    let max = settings.session.post_mortem_max;
    let (slot, first) = match slots::claim(&lock_dir, max, &slot_record)? {
        Claim::Won { slot, first } => (slot, first),
        Claim::Full { holders } => {
            let held_by = holders
                .iter()
                .map(|h| format!("rank {} (pid {}, {})", show(h.rank), h.pid, h.exception))
                .collect::<Vec<_>>()
                .join(", ");
            tracing::info!(
                "rank {} crashed too ({}); this node's {max} post-mortem session(s) are held by \
                 {held_by}: it exits as it would have (--post-mortem-max raises the limit)",
                show(role.rank),
                crash.summary(),
            );
            let _ = writeln!(reply, "none every post-mortem slot is held");
            return Ok(());
        }
    };
    let range = settings.ports.range;
    let record = HolderRecord {
        pid: slot_record.pid,
        ..HolderRecord::for_current_process(role.rank, &format!("post-mortem: {}", crash.summary()))
    };
    let reservation = ports::reserve(&ReserveRequest {
        range,
        preferred: range.preferred_for_rank(role.rank),
        lock_dir: &lock_dir,
        slot_limit: None,
        bind_ip: debugger_bind_ip(settings, &node),
        record,
    })?;
    let port = reservation.port;
    let mode = settings.session.mode;
    let relay = match mode {
        DebugMode::Connect | DebugMode::Listen => Some(relay_endpoint(settings, None)?),
        DebugMode::Direct => None,
    };
    let proxy_port = match mode {
        DebugMode::Direct => Some(free_loopback_port()?),
        DebugMode::Connect | DebugMode::Listen => None,
    };
    // A ParallelRunStep worker held too long makes its driver give up on it.
    let facts = StepFacts {
        kind: if crash.spawn_worker {
            ProcessKind::SpawnWorker
        } else {
            ProcessKind::Step
        },
        same_role_ancestor: None,
    };
    let warning = policy::parallel_worker_warning(role, &facts);
    let post_mortem = PostMortem { crash, first };
    let spec = SessionSpec {
        mode,
        port,
        proxy_port,
        rank: role.rank,
        local_rank: role.local_rank,
        hostname: node.hostname.clone(),
        node_ip: node.ip,
        holder_pid: slot_record.pid,
        step_holds_lifeline: false,
        attach_timeout: settings.session.post_mortem_timeout,
        wait_for_client: true,
        relay,
        state_dir: settings.state_dir.clone(),
        on_failure: FailurePolicy::Continue,
        warning: warning.clone(),
        post_mortem: Some(post_mortem.clone()),
    };
    announce(detection, &node, &spec, &post_mortem);
    if let Some(warning) = &warning {
        tracing::warn!("{warning}");
    }
    let debugpy = spec.debugpy_address();
    let debugpy_mode = match mode {
        DebugMode::Connect => "connect",
        DebugMode::Listen | DebugMode::Direct => "listen",
    };
    // The attach deadline goes along: should this helper ever hang (a log write into a
    // full pipe), the hook stops waiting a grace after it on its own.
    writeln!(
        reply,
        "debugpy {debugpy_mode} {} {} {}",
        debugpy.ip(),
        debugpy.port(),
        spec.attach_timeout
            .min(session::LONGEST_WAIT)
            .as_secs()
            .saturating_add(1)
    )?;
    let lifeline = Lifeline::new(stdin_fd()?, sidecar::pidfd_open(crashed)?);
    let ready = ReadySignal::new(reply.try_clone()?);
    session::run_sidecar(spec, ready, lifeline, None);
    drop(reservation);
    drop(slot);
    Ok(())
}

/// The log lines a developer greps for: who crashed, where to attach, until when, and
/// what the other ranks run into meanwhile.
fn announce(detection: &Detection, node: &NodeInfo, spec: &SessionSpec, post_mortem: &PostMortem) {
    let role = &detection.role;
    let ip = node
        .ip
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .to_string();
    tracing::warn!(
        rank = role.rank,
        port = spec.port,
        "amlx-agent: rank {}/{} ({}) crashed: {}; post-mortem session on host {} ip {} debug \
         port {} mode {}; attach within {}",
        show(role.rank),
        show(role.world_size),
        role.launcher,
        post_mortem.describe(),
        node.hostname,
        ip,
        spec.port,
        spec.mode,
        humantime::format_duration(spec.attach_timeout),
    );
    if let Some(advice) = session::peers::timeout_advice(&ProcessEnv, role.world_size) {
        tracing::warn!("{advice}");
    }
}

fn show(value: Option<u32>) -> String {
    value.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

/// The hook's crash line from stdin, bounded in size and time.
fn read_crash_line() -> Result<Crash, String> {
    use crate::poll_deadline::poll_timeout;
    use nix::poll::{PollFd, PollFlags, poll};
    let stdin = std::io::stdin();
    let mut bytes = Vec::new();
    let deadline = std::time::Instant::now() + CRASH_LINE_TIMEOUT;
    let mut chunk = [0u8; 4096];
    while !bytes.contains(&b'\n') && bytes.len() < crash::MAX_LINE_BYTES {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout(left)) {
            Ok(0) => return Err("the hook did not say what raised in time".to_owned()),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => return Err(format!("reading the hook's crash line: {err}")),
        }
        // One read per readable poll, unbuffered (whatever follows the line is the
        // lifeline's): never blocks.
        let n = match nix::unistd::read(stdin.as_fd(), &mut chunk) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => return Err(format!("reading the hook's crash line: {err}")),
        };
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    Crash::parse(&bytes).ok_or_else(|| "the hook's crash line is unreadable".to_owned())
}

/// This process's stdout as a file (unbuffered: each line reaches the hook at once).
fn stdout_file() -> Option<File> {
    std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(File::from)
}

fn stdin_fd() -> std::io::Result<OwnedFd> {
    std::io::stdin().as_fd().try_clone_to_owned()
}
