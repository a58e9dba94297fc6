//! `relay listen` / `relay connect`: credentials from a file, the environment or the
//! config (never argv), then the forwarders in `relay::client::forward`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use crate::cli::{ConnectArgs, ListenArgs, RelayClientArgs};
use crate::config::{Secret, Settings};
use crate::relay::bridge::{Forward, Forwards};
use crate::relay::client::Endpoint;
use crate::relay::client::forward::{self, IpNet, RemoteForwarder};
use crate::relay::client::listener;
use crate::relay::connection_string::{ConnectionString, Transport};

pub fn listen(args: &ListenArgs, settings: &Settings) -> anyhow::Result<i32> {
    let mut forwards = Forwards::from_ports(&args.ports);
    for spec in &args.forward {
        let f: Forward = spec.parse().map_err(|e| anyhow::anyhow!("--forward {e}"))?;
        forwards.0.push(f);
    }
    anyhow::ensure!(
        !forwards.0.is_empty(),
        "nothing to forward: pass --ports 5678[,5679] or --forward NAME=HOST:PORT"
    );
    let allow = args
        .allow_remote
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .map_err(|e| anyhow::anyhow!("--allow-remote {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let endpoint = Arc::new(endpoint(&args.relay, settings)?);
    for f in &forwards.0 {
        tracing::info!("forwarding port name {f}");
    }
    let handler = Arc::new(RemoteForwarder { forwards, allow });
    super::runtime()?.block_on(async move {
        let shutdown = super::shutdown_on_signal();
        listener::run(endpoint, handler, shutdown).await?;
        Ok(0)
    })
}

pub fn connect(args: &ConnectArgs, settings: &Settings) -> anyhow::Result<i32> {
    let port_name = match &args.port_name {
        Some(name) => name.clone(),
        None if args.bind.port() != 0 => args.bind.port().to_string(),
        None => anyhow::bail!(
            "--bind with port 0 needs --port-name (the port name the listener forwards)"
        ),
    };
    crate::relay::bridge::encode_request(&port_name)?;
    let endpoint = Arc::new(endpoint(&args.relay, settings)?);
    super::runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.bind)
            .await
            .with_context(|| format!("could not bind {}", args.bind))?;
        let bound = listener
            .local_addr()
            .context("bound socket has no address")?;
        // A stable line for scripts and tests (port 0 picks the port).
        eprintln!(
            "amlx-agent relay connect: listening on {bound} (port name {port_name}, hc {})",
            endpoint.entity
        );
        let shutdown = super::shutdown_on_signal();
        forward::serve_local(listener, endpoint, port_name, shutdown).await;
        Ok(0)
    })
}

/// The relay endpoint from flags, environment and config, credentials never from argv.
fn endpoint(args: &RelayClientArgs, settings: &Settings) -> anyhow::Result<Endpoint> {
    let text = match &args.connection_string_file {
        Some(path) => read_secret_file(path)?,
        // `config` layered AMLX_RELAY_CONNECTION_STRING over `[relay] connection_string`.
        None => settings.relay.connection_string.clone().context(
            "no relay credentials: set AMLX_RELAY_CONNECTION_STRING, pass --connection-string-file FILE, or set [relay] connection_string in the config file",
        )?,
    };
    let connection: ConnectionString = text.expose().parse()?;
    let hc = args
        .hc
        .as_deref()
        .or(settings.relay.hybrid_connection.as_deref());
    let ca_file = args.ca_file.clone().or(settings.relay.ca_file.clone());
    let transport = if args.insecure_ws || settings.relay.insecure_ws {
        Transport::InsecureWs
    } else {
        Transport::Tls
    };
    let mut endpoint = Endpoint::new(connection, hc, transport, ca_file.as_deref())?;
    if let Some(ttl) = args.token_ttl {
        anyhow::ensure!(ttl.as_secs() >= 1, "--token-ttl must be at least 1s");
        endpoint.token_ttl = ttl;
    }
    Ok(endpoint)
}

/// Reads a connection string file, warning when others may read it.
fn read_secret_file(path: &Path) -> anyhow::Result<Secret> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("could not read connection string file {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "connection string file {} is readable by group or others; chmod 600 it",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read connection string file {}", path.display()))?;
    let text = text.trim();
    anyhow::ensure!(
        !text.is_empty(),
        "connection string file {} is empty",
        path.display()
    );
    Ok(Secret::new(text))
}
