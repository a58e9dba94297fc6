//! `relay serve`: a self-hostable Azure Relay Hybrid Connections server for the protocol
//! subset the agent, azbridge and Microsoft's own clients use (listen, connect, accept,
//! reject, renewToken; see shared/docs/hybrid-connections.md).
//!
//! [`run`] takes a bound listener and a shutdown token (mini-redis style), so tests bind
//! port 0. `GET /$status` on the same port answers a small JSON document with live counts
//! (`listeners`, `pending`, `relayed`, `relayed_total`, `connections`): numbers only, no
//! paths, no names, no authentication. On shutdown the last log line says how many
//! relayed connections drained and how many were cut at the end of the grace.
//!
//! Statuses beyond the protocol table: a sender whose listener neither accepts nor
//! rejects within `rendezvous_timeout` gets 504 (the .NET client maps it to a
//! `TimeoutException`); a sender waiting when the relay stops gets 503; a listener past
//! `max_listeners_per_path` gets 403 (quota); a malformed upgrade gets 400 or 431.

pub(crate) mod accept;
pub(crate) mod auth;
mod connection;
pub(crate) mod control;
pub(crate) mod frame;
pub(crate) mod io;
mod registry;
pub(crate) mod relay;
mod rendezvous;
mod tls;
pub(crate) mod upgrade;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

pub use tls::Tls;

use crate::config::ServerSettings;
use registry::Registry;
use rendezvous::Rendezvous;

/// After the grace, how long cut connections get to say goodbye before `run` returns.
const HARD_STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// What [`run`] needs: the certificate loaded, the validated `[relay.server]` settings.
#[derive(Debug)]
pub struct Settings {
    /// `None` serves plain ws.
    pub tls: Option<Tls>,
    /// Keys and limits (and the address and TLS files they came with).
    pub config: ServerSettings,
}

impl Settings {
    /// Checks what `config` cannot check alone, since flags may still change it (TLS or an
    /// explicit, safe `insecure_ws`; at least one key), and loads the certificate.
    pub fn from_config(config: &ServerSettings) -> anyhow::Result<Settings> {
        anyhow::ensure!(
            !config.keys.is_empty(),
            "relay serve has no keys: add [[relay.server.keys]] (name, key, rights, paths) to the config file"
        );
        let tls = match (&config.tls, config.insecure_ws) {
            (Some(_), true) => {
                anyhow::bail!("choose TLS (--tls-cert/--tls-key) or --insecure-ws, not both")
            }
            (Some(files), false) => Some(Tls::load(&files.cert, &files.key)?),
            (None, true) => {
                anyhow::ensure!(
                    !config.insecure_remote(),
                    "--insecure-ws serves tokens in clear text: bind a loopback address \
                     (e.g. --listen 127.0.0.1:9443) or add --allow-insecure-remote (not {})",
                    config.listen
                );
                None
            }
            (None, false) => anyhow::bail!(
                "relay serve needs a certificate (--tls-cert PEM --tls-key PEM), \
                 or --insecure-ws on a loopback address"
            ),
        };
        anyhow::ensure!(
            config.max_connections > 0 && config.max_listeners_per_path > 0,
            "max_connections and max_listeners_per_path must be at least 1"
        );
        Ok(Settings {
            tls,
            config: config.clone(),
        })
    }

    /// `wss` with TLS, `ws` without.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "wss" } else { "ws" }
    }
}

/// State shared by every connection.
#[derive(Debug)]
struct Server {
    settings: Settings,
    registry: Registry,
    rendezvous: Rendezvous,
    /// Caps open TCP connections; a permit lives as long as its connection.
    connections: Arc<Semaphore>,
    /// TCP connections open now (each holds a [`Slot`]).
    open: Arc<AtomicUsize>,
    /// Relayed (sender ↔ listener) connections open now.
    relayed: AtomicUsize,
    /// Relayed connections since start.
    relayed_total: AtomicU64,
    /// Stop accepting, close control channels, fail pending senders.
    shutdown: CancellationToken,
    /// The grace is over: cut relayed connections.
    hard_stop: CancellationToken,
}

impl Server {
    fn status_json(&self) -> String {
        serde_json::json!({
            "listeners": self.registry.count(),
            "pending": self.rendezvous.count(),
            "relayed": self.relayed.load(Ordering::Relaxed),
            "relayed_total": self.relayed_total.load(Ordering::Relaxed),
            "connections": self.open.load(Ordering::Relaxed),
        })
        .to_string()
    }
}

/// A connection's place under `max_connections`, counted in `/$status` while it lives.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Arc<AtomicUsize>,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Slot {
            _permit: permit,
            open,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `listener` until `shutdown` fires, then stops accepting, closes control
/// channels, lets relayed connections finish for `shutdown_grace`, cuts the rest, and
/// returns. Per-connection failures are logged, never returned.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let max = settings.config.max_connections;
    let grace = settings.config.shutdown_grace;
    let server = Arc::new(Server {
        registry: Registry::new(settings.config.max_listeners_per_path),
        rendezvous: Rendezvous::default(),
        connections: Arc::new(Semaphore::new(max)),
        open: Arc::new(AtomicUsize::new(0)),
        relayed: AtomicUsize::new(0),
        relayed_total: AtomicU64::new(0),
        shutdown: shutdown.clone(),
        hard_stop: CancellationToken::new(),
        settings,
    });
    let tracker = TaskTracker::new();
    loop {
        // Both futures are cancel-safe: an unused permit or an un-accepted socket stays put.
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = server.connections.clone().acquire_owned() => {
                permit.context("connection limit semaphore closed")?
            }
        };
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!("relay serve: accept failed: {err}");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let slot = Slot::new(permit, server.open.clone());
        let span = tracing::info_span!("conn", %peer);
        tracker.spawn(connection::handle(server.clone(), tcp, peer, slot).instrument(span));
    }
    drop(listener);
    tracker.close();
    let at_shutdown = server.relayed.load(Ordering::Relaxed);
    tracing::info!(
        "relay serve: shutting down: {at_shutdown} relayed connection(s) open, grace {}",
        humantime::format_duration(grace)
    );
    let cut = if tokio::time::timeout(grace, tracker.wait()).await.is_ok() {
        0
    } else {
        let cut = server.relayed.load(Ordering::Relaxed);
        server.hard_stop.cancel();
        if tokio::time::timeout(HARD_STOP_TIMEOUT, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("relay serve: some connections did not finish closing");
        }
        cut
    };
    tracing::info!(
        "relay serve: stopped: {} relayed connection(s) drained, {cut} cut at the end of the grace",
        at_shutdown.saturating_sub(cut)
    );
    Ok(())
}
