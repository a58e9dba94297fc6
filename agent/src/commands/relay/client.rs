//! `relay listen` / `relay connect`: credentials from a file, the environment or the
//! config (never argv), then the forwarders in `relay::client::forward`.

use std::sync::Arc;

use anyhow::Context as _;

use crate::cli::{ConnectArgs, ListenArgs, RelayClientArgs};
use crate::config::{Secret, Settings};
use crate::relay::bridge::{Forward, Forwards};
use crate::relay::client::forward::{self, IpNet, RemoteForwarder};
use crate::relay::client::listener;
use crate::relay::client::{Endpoint, credentials};
use crate::relay::open_files;

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
    // A second target for a name would never be reached: the first one wins.
    for (i, f) in forwards.0.iter().enumerate() {
        if let Some(earlier) = forwards.0.iter().take(i).find(|e| e.name == f.name) {
            anyhow::bail!(
                "port name {:?} is forwarded twice ({earlier} and {f}); give each target its own \
                 name (--forward NAME=HOST:PORT) or drop one",
                f.name
            );
        }
    }
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
    let handler = Arc::new(RemoteForwarder {
        entity: endpoint.entity.clone(),
        forwards,
        allow,
    });
    let max_tunnels = settings.relay.max_tunnels;
    super::forwarder_runtime()?.block_on(async move {
        // Each tunnel is the rendezvous WebSocket and the local connection; a reject
        // rendezvous is one more.
        let needed = (max_tunnels as u64)
            .saturating_mul(2)
            .saturating_add(listener::MAX_PENDING_REJECTS as u64);
        let cap = format!(
            "max_tunnels {max_tunnels} (2 each) + {} rejects",
            listener::MAX_PENDING_REJECTS
        );
        open_files::raise("relay listen", needed, &cap);
        let shutdown = super::shutdown_on_signal(false).drain;
        listener::run_with_cap(endpoint, handler, shutdown, max_tunnels).await?;
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
    let max_tunnels = settings.relay.max_tunnels;
    super::forwarder_runtime()?.block_on(async move {
        // Each tunnel is the local connection and its WebSocket to the relay; a spare is
        // a WebSocket.
        let spares = settings.relay.spare_tunnels;
        let needed = (max_tunnels as u64)
            .saturating_mul(2)
            .saturating_add(u64::from(spares));
        let cap = format!("max_tunnels {max_tunnels} (2 each) + {spares} spare tunnels");
        open_files::raise("relay connect", needed, &cap);
        let listener = crate::relay::listen_socket(args.bind)
            .with_context(|| format!("could not bind {}", args.bind))?;
        let bound = listener
            .local_addr()
            .context("bound socket has no address")?;
        // Signals are watched before the line announces the port, so a stop right after
        // it drains.
        let shutdown = super::shutdown_on_signal(false).drain;
        // A stable line for scripts and tests (port 0 picks the port).
        crate::logging::stderr::say(&format!(
            "amlx-agent relay connect: listening on {bound} (port name {port_name}, hc {})",
            endpoint.entity
        ));
        let limits = forward::LocalLimits {
            max_tunnels,
            spares,
        };
        forward::serve_local(listener, endpoint, port_name, limits, shutdown).await;
        Ok(0)
    })
}

/// The relay endpoint from flags, environment and config, credentials never from argv.
fn endpoint(args: &RelayClientArgs, settings: &Settings) -> anyhow::Result<Endpoint> {
    endpoint_and_secret(args, settings).map(|(endpoint, _)| endpoint)
}

/// [`endpoint`] and the connection string it was made from (read once).
pub(crate) fn endpoint_and_secret(
    args: &RelayClientArgs,
    settings: &Settings,
) -> anyhow::Result<(Endpoint, Secret)> {
    let overrides = credentials::Overrides {
        // `[relay] connection_string_file` from the config counts too (layered in settings).
        connection_string_file: args
            .connection_string_file
            .as_deref()
            .or(settings.relay.connection_string_file.as_deref()),
        hybrid_connection: args.hc.as_deref(),
        ca_file: args.ca_file.as_deref(),
        insecure_ws: args.insecure_ws,
    };
    let (mut endpoint, secret) = credentials::endpoint_and_secret(&settings.relay, overrides)?;
    if let Some(ttl) = args.token_ttl {
        endpoint.token_ttl = ttl;
    }
    Ok((endpoint, secret))
}
