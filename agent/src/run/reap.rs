//! Waiting for the run's step, stopping it on Ctrl-C/SIGTERM, and collecting the
//! processes it leaves behind (`run` is their subreaper), all bounded.

use std::process::{Child, ChildStdin, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Between two looks for exited leftovers.
const REAP_POLL: Duration = Duration::from_millis(20);
/// After SIGKILL, how long the step and leftovers get to be reaped before they are given
/// up on. SIGKILL ends a process at once unless the kernel holds it: uninterruptible sleep
/// (a hung network filesystem or GPU driver) or a tracer that does not let its exit be
/// reported. Without this bound a second Ctrl-C left `run` waiting for ever.
const AFTER_KILL: Duration = Duration::from_secs(2);

/// How the step ended.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    /// `None`: the step had not ended [`AFTER_KILL`] after SIGKILL and was left behind.
    pub status: Option<ExitStatus>,
    /// The step's PID.
    pub pid: Pid,
    /// The signal that asked this process to stop (Ctrl-C, SIGTERM, SIGHUP), after
    /// which it stopped the step.
    pub interrupted: Option<Signal>,
}

/// The signals that ask `run` to stop: SIGINT (Ctrl-C), SIGTERM, SIGHUP (the
/// terminal closed, or a supervisor that signals only this process) and SIGQUIT
/// (Ctrl-\\). Caught from the run's start: watched only while the step ran, one that
/// came while the target was prepared (a docker build, an ssh copy) ended `run` at once
/// and left its children running; SIGHUP and SIGQUIT always did, leaving the step and
/// its agents orphaned (and the demo's folder behind).
#[derive(Debug)]
pub struct Stops {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Stops {
    /// Catches the three signals from now on (needs a runtime's context); `None`, with a
    /// warning, when that cannot be done: they then keep their default action.
    pub fn catch() -> Option<Stops> {
        use tokio::signal::unix::{SignalKind, signal};
        let caught = (|| {
            Ok::<_, std::io::Error>(Stops {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
                hangup: signal(SignalKind::hangup())?,
                quit: signal(SignalKind::quit())?,
            })
        })();
        caught
            .map_err(|err| {
                tracing::warn!(
                    "cannot catch SIGINT/SIGTERM/SIGHUP/SIGQUIT ({err}); they end `run` at once"
                );
            })
            .ok()
    }

    /// Resolves with the next stop signal (one that came since the catch counts). Pending
    /// for ever without `stops`. Cancel-safe: signal streams keep their state.
    pub async fn asked(stops: Option<&mut Stops>) -> Signal {
        let Some(stops) = stops else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = stops.interrupt.recv() => Signal::SIGINT,
            _ = stops.terminate.recv() => Signal::SIGTERM,
            _ = stops.hangup.recv() => Signal::SIGHUP,
            _ = stops.quit.recv() => Signal::SIGQUIT,
        }
    }
}

/// Waits for the step; on a stop signal (see [`Stops`]), asks the step to stop — by
/// closing its `lifeline` when it has one (a remote host stops the step when its input
/// ends), else by SIGTERM (a container's client passes it on) — and gives it `grace`
/// before SIGKILL, which a second stop signal sends at once. `label` starts the lines
/// that say so.
pub async fn wait_step(
    child: Child,
    lifeline: Option<ChildStdin>,
    mut stops: Option<&mut Stops>,
    grace: Duration,
    label: &str,
) -> anyhow::Result<Ended> {
    let pid = pid_of(&child);
    let mut child = child;
    // A thread of its own, not the runtime's blocking pool: a step the kernel holds after
    // SIGKILL is left behind with its waiter, and the runtime's shutdown would otherwise
    // wait out its whole bound for that thread.
    let (reaped, waiter) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("step-waiter".to_owned())
        .spawn(move || {
            let _ = reaped.send(child.wait());
        })
        .context("could not start a thread to wait for the step")?;
    tokio::pin!(waiter);
    // Both branches are cancel-safe: a oneshot receiver and signal streams keep their state.
    let signal = tokio::select! {
        biased;
        status = &mut waiter => {
            return joined(status).map(|status| Ended {
                status: Some(status),
                pid,
                interrupted: None,
            });
        }
        signal = Stops::asked(stops.as_deref_mut()) => signal,
    };
    // `say!`, never println!: with stdout a closed pipe (`run … | head`) a panic here
    // would skip stopping the step, and `run` would end with the step still running.
    say!(
        "{label}: stopping the step (killed in {}s if it has not stopped; again to kill it now)",
        grace.as_secs()
    );
    match lifeline {
        Some(lifeline) => drop(lifeline),
        // The waiter has not reaped the step yet (it would have returned): the PID is its.
        None => {
            let _ = kill(pid, Signal::SIGTERM);
        }
    }
    let grace_over = tokio::time::sleep(grace);
    tokio::pin!(grace_over);
    // Cancel-safe as above. Biased, waiter first: a step already reaped is never
    // signalled (its PID may be another process's by then).
    let status = loop {
        tokio::select! {
            biased;
            status = &mut waiter => break joined(status).map(Some),
            () = &mut grace_over => {
                let _ = kill(pid, Signal::SIGKILL);
                break reaped_after_kill(waiter, pid, label).await;
            }
            again = Stops::asked(stops.as_deref_mut()) => {
                // A closing terminal sends SIGHUP twice (the kernel, then the shell to
                // its jobs): that is no second request.
                if again == Signal::SIGHUP {
                    continue;
                }
                say!("{label}: {again} again: killing the step now");
                let _ = kill(pid, Signal::SIGKILL);
                break reaped_after_kill(waiter, pid, label).await;
            }
        }
    };
    status.map(|status| Ended {
        status,
        pid,
        interrupted: Some(signal),
    })
}

/// The step's status once SIGKILL has been sent, or `None` when it has not ended within
/// [`AFTER_KILL`]: it is left behind, and its waiter thread with it.
async fn reaped_after_kill(
    waiter: std::pin::Pin<&mut tokio::sync::oneshot::Receiver<std::io::Result<ExitStatus>>>,
    pid: Pid,
    label: &str,
) -> anyhow::Result<Option<ExitStatus>> {
    match tokio::time::timeout(AFTER_KILL, waiter).await {
        Ok(status) => joined(status).map(Some),
        Err(_) => {
            say!(
                "{label}: the step (PID {pid}) has not ended {}s after SIGKILL: the kernel \
                 holds it (uninterruptible sleep, such as a hung filesystem or device, or a \
                 tracer); leaving it",
                AFTER_KILL.as_secs()
            );
            Ok(None)
        }
    }
}

fn joined(
    status: Result<std::io::Result<ExitStatus>, tokio::sync::oneshot::error::RecvError>,
) -> anyhow::Result<ExitStatus> {
    status
        .context("the step's waiter failed")?
        .context("could not wait for the step")
}

fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).expect("PIDs fit in i32"))
}

/// Reaps every remaining child (processes the step left behind and the kernel handed to
/// this process as subreaper) until none is left; kills what remains after `timeout`.
/// `left_behind`: a step the kernel still holds after SIGKILL, which is neither waited
/// for nor killed again.
pub fn leftovers(timeout: Duration, left_behind: Option<Pid>) {
    let mut deadline = Instant::now() + timeout;
    let mut killed = false;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::ECHILD) => return,
            Err(Errno::EINTR) => {}
            Err(err) => {
                tracing::warn!("could not wait for the step's leftover processes: {err}");
                return;
            }
            Ok(WaitStatus::StillAlive) => {
                if left_behind.is_some() && children().iter().all(|&pid| Some(pid) == left_behind) {
                    return;
                }
                if Instant::now() >= deadline {
                    if killed {
                        tracing::warn!("leftover processes survived SIGKILL; leaving them");
                        return;
                    }
                    kill_children(left_behind);
                    killed = true;
                    // SIGKILL takes effect at once, but the kernel needs a moment.
                    deadline = Instant::now() + AFTER_KILL;
                } else {
                    std::thread::sleep(REAP_POLL);
                }
            }
            // One reaped; look again at once.
            Ok(_) => {}
        }
    }
}

/// SIGKILLs every child of this process (found through /proc) but `spared`.
fn kill_children(spared: Option<Pid>) {
    for pid in children().into_iter().filter(|&pid| Some(pid) != spared) {
        tracing::warn!("process {pid} outlived the step; killing it");
        let _ = kill(pid, Signal::SIGKILL);
    }
}

/// This process's children (from /proc).
fn children() -> Vec<Pid> {
    let me = std::process::id();
    crate::publish::holder::pids()
        .filter(|&pid| crate::publish::holder::read_stat(pid).map(|stat| stat.parent) == Some(me))
        .filter_map(|pid| i32::try_from(pid).ok().map(Pid::from_raw))
        .collect()
}

/// Sends `signal` to every child of this process: the commands a target's preparation
/// waits on, when a stop signal comes meanwhile.
pub fn stop_children(signal: Signal) {
    for pid in children() {
        let _ = kill(pid, signal);
    }
}
