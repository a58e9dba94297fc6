//! `amlx-agent relay ...`: the self-hosted server and the laptop-side forwarders.

mod client;
mod serve;

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
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
                    _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
                }
            }
            Err(err) => {
                tracing::warn!("cannot watch SIGTERM ({err}); stop with SIGINT");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        cancel.cancel();
    });
    token
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")
}
