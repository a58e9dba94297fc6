//! `amlx-agent relay ...`: the self-hosted server and the laptop-side forwarders.

mod client;
mod serve;

pub(crate) use client::endpoint_and_secret;

use crate::cli::{RelayArgs, RelayCommand};
use crate::config::Settings;

pub fn run(args: &RelayArgs, settings: &Settings) -> anyhow::Result<i32> {
    match &args.command {
        RelayCommand::Serve(serve_args) => serve::run(serve_args, settings),
        RelayCommand::Listen(listen_args) => client::listen(listen_args, settings),
        RelayCommand::Connect(connect_args) => client::connect(connect_args, settings),
    }
}

/// What the stop signals ask: `drain` is cancelled at the first SIGINT, SIGTERM or SIGHUP,
/// `cut` at a SIGTERM or SIGINT after it, for an operator who will not wait out a long
/// `shutdown_grace`: before, only SIGKILL ended a drain, and with it went the Close frames
/// and the last log lines. Only `relay serve` has a drain long enough to cut.
pub(super) struct StopSignals {
    pub drain: tokio_util::sync::CancellationToken,
    pub cut: tokio_util::sync::CancellationToken,
}

/// Watches the stop signals (must run inside a runtime); see [`StopSignals`]. With `cuts`,
/// a SIGTERM or SIGINT after the first signal cancels `cut` (a caller whose drain is short
/// passes false). SIGHUP (the terminal went away) drains like the others, unless it was
/// ignored when we started (`nohup`): then it stays ignored. Before, a hang-up ended the
/// process at once, with no drain, no Close frames and no log line.
fn shutdown_on_signal(cuts: bool) -> StopSignals {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    let stop = StopSignals {
        drain: tokio_util::sync::CancellationToken::new(),
        cut: tokio_util::sync::CancellationToken::new(),
    };
    let (drain, cut) = (stop.drain.clone(), stop.cut.clone());
    // Registered now, not in the task: the caller prints its "listening" line next, and a
    // SIGTERM right after it (systemd stopping a unit it just started) must drain, not
    // kill the process with the default disposition before the task first runs.
    let hangup_ignored = crate::process::is_ignored(nix::sys::signal::Signal::SIGHUP) == Some(true);
    let mut watched: Vec<(&'static str, Signal)> = Vec::new();
    let wanted = [
        ("SIGTERM", SignalKind::terminate(), true),
        ("SIGINT", SignalKind::interrupt(), true),
        ("SIGHUP", SignalKind::hangup(), !hangup_ignored),
    ];
    for (name, kind, wanted) in wanted {
        if !wanted {
            continue;
        }
        match signal(kind) {
            Ok(watch) => watched.push((name, watch)),
            Err(err) => {
                tracing::warn!("cannot watch {name} ({err}); it stops this process without a drain")
            }
        }
    }
    tokio::spawn(async move {
        if let Some(name) = next_signal(&mut watched).await {
            tracing::info!("{name} received; shutting down");
            drain.cancel();
        }
        // Only SIGTERM or SIGINT cuts: a terminal that closes sends SIGHUP twice (the shell
        // passes one on, the kernel sends its own), and that must drain.
        watched.retain(|(name, _)| cuts && *name != "SIGHUP");
        if let Some(name) = next_signal(&mut watched).await {
            tracing::info!("{name} received during the drain; cutting what is left now");
            cut.cancel();
        }
    });
    stop
}

/// The name of the next of `watched` to arrive; `None` when none is watched (or none can
/// come any more).
async fn next_signal(
    watched: &mut [(&'static str, tokio::signal::unix::Signal)],
) -> Option<&'static str> {
    if watched.is_empty() {
        return None;
    }
    futures_util::future::select_all(
        watched
            .iter_mut()
            .map(|(name, watch)| Box::pin(async move { watch.recv().await.map(|_| *name) })),
    )
    .await
    .0
}

/// `relay serve`'s runtime: a worker per core, since one relay serves many users'
/// tunnels at once.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")
}

/// `relay listen` / `relay connect`'s runtime: one thread. They forward one developer's
/// connections, where latency counts and a core is plenty; a worker pool would wake
/// another thread (an eventfd write, a futex) for every task a connection spawns, which
/// made opening a tunnel ~10 % slower on loopback and gained no throughput on 2 cores.
fn forwarder_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")
}
