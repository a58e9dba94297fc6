//! `relay serve`: `[relay.server]` from the config file under the flags, bind, print the
//! address, run until SIGTERM/SIGINT.

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::cli::ServeArgs;
use crate::config::{self, ServerSettings, Settings};
use crate::relay::server::{self, Limits, Right, ServerConfig, ServerKey};

pub fn run(args: &ServeArgs, settings: &Settings) -> anyhow::Result<i32> {
    let config = server_config(&settings.relay.server, args);
    let server_settings = server::Settings::from_config(&config)?;
    super::runtime()?.block_on(async move {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("relay serve: could not bind {}", config.listen))?;
        let bound = listener
            .local_addr()
            .context("relay serve: bound address")?;
        // A stable line for scripts and tests (port 0 picks the port).
        eprintln!(
            "relay serve: listening on {}://{bound}",
            server_settings.scheme()
        );
        let shutdown = super::shutdown_on_signal();
        server::run(listener, server_settings, shutdown).await
    })?;
    Ok(0)
}

/// Flags over `[relay.server]` (already layered over the defaults by `config`).
fn server_config(file: &ServerSettings, args: &ServeArgs) -> ServerConfig {
    let from_flags = args.tls_cert.is_some() || args.insecure_ws;
    let (tls_cert, tls_key, insecure_ws) = if from_flags {
        // TLS from flags replaces TLS (and insecure_ws) from the file, and vice versa.
        (
            args.tls_cert.clone(),
            args.tls_key.clone(),
            args.insecure_ws,
        )
    } else {
        (
            file.tls.as_ref().map(|tls| tls.cert.clone()),
            file.tls.as_ref().map(|tls| tls.key.clone()),
            file.insecure_ws,
        )
    };
    ServerConfig {
        listen: args.listen.unwrap_or(file.listen),
        tls_cert,
        tls_key,
        insecure_ws,
        allow_insecure_remote: args.allow_insecure_remote || file.allow_insecure_remote,
        limits: Limits {
            max_listeners_per_path: file.max_listeners_per_path,
            max_connections: file.max_connections,
            handshake_timeout: file.handshake_timeout,
            rendezvous_timeout: file.rendezvous_timeout,
            max_control_message: file.max_control_message,
            shutdown_grace: file.shutdown_grace,
        },
        keys: file
            .keys
            .iter()
            .map(|key| ServerKey {
                name: key.name.clone(),
                key: key.key.clone(),
                rights: key
                    .rights
                    .iter()
                    .map(|right| match right {
                        config::Right::Listen => Right::Listen,
                        config::Right::Send => Right::Send,
                    })
                    .collect(),
                paths: key.paths.clone(),
            })
            .collect(),
    }
}
