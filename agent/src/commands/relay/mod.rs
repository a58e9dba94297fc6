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

/// A token cancelled at the first SIGINT or SIGTERM (must run inside a runtime).
fn shutdown_on_signal() -> tokio_util::sync::CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    // Registered now, not in the task: the caller prints its "listening" line next, and a
    // SIGTERM right after it (systemd stopping a unit it just started) must drain, not
    // kill the process with the default disposition before the task first runs.
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    tokio::spawn(async move {
        match (term, interrupt) {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = interrupt.recv() => tracing::info!("SIGINT received; shutting down"),
                    _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
                }
            }
            (Err(err), Ok(mut interrupt)) => {
                tracing::warn!("cannot watch SIGTERM ({err}); stop with SIGINT");
                interrupt.recv().await;
            }
            (Ok(mut term), Err(err)) => {
                tracing::warn!("cannot watch SIGINT ({err}); stop with SIGTERM");
                term.recv().await;
            }
            (Err(err), Err(_)) => tracing::warn!("cannot watch SIGTERM or SIGINT ({err})"),
        }
        cancel.cancel();
    });
    token
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
