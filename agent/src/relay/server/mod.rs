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

mod accept;
mod auth;
mod connection;
mod control;
mod frame;
mod io;
mod registry;
mod relay;
mod rendezvous;
mod tls;
mod upgrade;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

pub use crate::relay::sas::Right;
pub use auth::ServerKey;
pub use tls::Tls;

use registry::Registry;
use rendezvous::Rendezvous;

/// Azure's cap on listeners per Hybrid Connection.
pub const DEFAULT_MAX_LISTENERS_PER_PATH: usize = 25;
/// Open TCP connections (listeners, senders, rendezvous legs, handshakes) at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// A connection must finish TLS and send its upgrade request within this.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a sender waits for the listener's accept or reject (Azure: about 30 s).
pub const DEFAULT_RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest control-channel message a listener may send (Azure: 64 kB).
pub const DEFAULT_MAX_CONTROL_MESSAGE: usize = 64 * 1024;
/// How long relayed connections may finish on their own after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default bind address: loopback, so nothing is exposed unasked.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9351";

/// After the grace, how long cut connections get to say goodbye before `run` returns.
const HARD_STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Limits that keep one misbehaving client from hurting the others.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Control channels per Hybrid Connection path; the next one gets 403.
    pub max_listeners_per_path: usize,
    /// Open TCP connections; past it, new ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// TLS plus the upgrade request must arrive within this, or the socket is dropped.
    pub handshake_timeout: Duration,
    /// A sender waits this long for accept or reject (then 504); the address expires.
    pub rendezvous_timeout: Duration,
    /// Largest control-channel message from a listener; larger closes it with 1009.
    pub max_control_message: usize,
    /// After SIGTERM, relayed connections get this long; the rest get Close 1001.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_listeners_per_path: DEFAULT_MAX_LISTENERS_PER_PATH,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            rendezvous_timeout: DEFAULT_RENDEZVOUS_TIMEOUT,
            max_control_message: DEFAULT_MAX_CONTROL_MESSAGE,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// The `[relay.server]` settings, as configured (paths, flags, keys).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address `relay serve` binds (tests pass port 0).
    pub listen: SocketAddr,
    /// PEM certificate chain for wss.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for wss.
    pub tls_key: Option<PathBuf>,
    /// Serve plain ws (no TLS); only on loopback unless `allow_insecure_remote`.
    pub insecure_ws: bool,
    /// Permit `insecure_ws` on a non-loopback address (tokens then cross the network
    /// in clear text).
    pub allow_insecure_remote: bool,
    pub limits: Limits,
    /// Keys that sign clients' tokens; at least one is required.
    pub keys: Vec<ServerKey>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("DEFAULT_LISTEN is a socket address"),
            tls_cert: None,
            tls_key: None,
            insecure_ws: false,
            allow_insecure_remote: false,
            limits: Limits::default(),
            keys: Vec::new(),
        }
    }
}

/// What [`run`] needs: TLS loaded, keys, limits.
#[derive(Debug)]
pub struct Settings {
    /// `None` serves plain ws.
    pub tls: Option<Tls>,
    pub keys: Vec<ServerKey>,
    pub limits: Limits,
}

impl Settings {
    /// Validates `config` (TLS or an explicit, safe `insecure_ws`; at least one key) and
    /// loads the certificate.
    pub fn from_config(config: &ServerConfig) -> anyhow::Result<Settings> {
        anyhow::ensure!(
            !config.keys.is_empty(),
            "relay serve has no keys: add [[relay.server.keys]] (name, key, rights, paths) to the config file"
        );
        let tls = match (&config.tls_cert, &config.tls_key, config.insecure_ws) {
            (Some(_), Some(_), true) => {
                anyhow::bail!("choose TLS (--tls-cert/--tls-key) or --insecure-ws, not both")
            }
            (Some(cert), Some(key), false) => Some(Tls::load(cert, key)?),
            (Some(_), None, _) | (None, Some(_), _) => {
                anyhow::bail!("--tls-cert and --tls-key go together")
            }
            (None, None, true) => {
                anyhow::ensure!(
                    config.listen.ip().is_loopback() || config.allow_insecure_remote,
                    "--insecure-ws serves tokens in clear text: bind a loopback address \
                     (e.g. --listen 127.0.0.1:9443) or add --allow-insecure-remote (not {})",
                    config.listen
                );
                None
            }
            (None, None, false) => anyhow::bail!(
                "relay serve needs a certificate (--tls-cert PEM --tls-key PEM), \
                 or --insecure-ws on a loopback address"
            ),
        };
        let limits = config.limits.clone();
        anyhow::ensure!(
            limits.max_connections > 0 && limits.max_listeners_per_path > 0,
            "max_connections and max_listeners_per_path must be at least 1"
        );
        Ok(Settings {
            tls,
            keys: config.keys.clone(),
            limits,
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
    let max = settings.limits.max_connections;
    let grace = settings.limits.shutdown_grace;
    let server = Arc::new(Server {
        registry: Registry::new(settings.limits.max_listeners_per_path),
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
