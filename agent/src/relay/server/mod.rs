//! `relay serve`: a self-hostable Azure Relay Hybrid Connections server for the protocol
//! subset the agent, azbridge and Microsoft's own clients use (listen, connect, accept,
//! reject, renewToken; docs/relay.md, "The wire protocol", sums it up).
//!
//! [`run`] takes a bound listener and a shutdown token (mini-redis style), so tests bind
//! port 0. `GET /$status` on the same port answers a small JSON document with live counts
//! (`listeners`, `pending`, `relayed`, `relayed_total`, `connections`, `handshakes`):
//! numbers only, no paths, no names, no authentication. On shutdown the last log line
//! says how many relayed connections drained and how many were cut at the end of the
//! grace.
//!
//! Admission (see the `admission` module): a connection holds a *handshake slot* until its request
//! head is read and its upgrade authenticated, then a *relayed slot* (`max_connections`)
//! for as long as it is a control channel, a waiting sender or a relayed leg; a sender
//! takes its tunnel's listener leg's slot along with its own, so a tunnel the relay lets
//! in is never refused halfway. Handshakes
//! have a deadline (`handshake_timeout`) and caps in total and per source address that
//! evict the oldest instead of refusing the newest, so an idle or slowloris flood never
//! keeps a real tunnel or `/$status` out. A peer the relay sent its own Close (control
//! channels) must answer within [`CLOSE_HANDSHAKE_TIMEOUT`]; the side of a relayed
//! connection that was forwarded the other side's Close may go on sending, but not stay
//! silent longer than `half_close_timeout`. A panic in one connection's task is logged
//! and ends that connection only (release builds unwind).
//!
//! Statuses beyond the protocol table: a sender whose listener neither accepts nor
//! rejects within `rendezvous_timeout` gets 504 (the .NET client maps it to a
//! `TimeoutException`); a sender waiting when the relay stops gets 503; a listener past
//! `max_listeners_per_path` gets 403 (quota); a malformed upgrade gets 400 or 431; an
//! authenticated upgrade past `max_connections` gets 503.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub(crate) mod accept;
mod admission;
pub(crate) mod auth;
mod connection;
pub(crate) mod control;
pub(crate) mod io;
pub(crate) mod registry;
pub(crate) mod relay;
mod rendezvous;
mod tls;
pub(crate) mod upgrade;

use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

pub use tls::Tls;

use crate::config::ServerSettings;
use crate::logging::Throttle;
use admission::{Admission, Overload};
use registry::Registry;
pub(crate) use rendezvous::Rendezvous;

/// After the grace, how long cut connections get to say goodbye before `run` returns.
const HARD_STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// A peer the relay sent its own Close (a control channel: token expired, renewal
/// refused, message too large, shutdown) is dropped when it has not answered within this.
pub const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

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
            config.max_connections > 0
                && config.max_listeners_per_path > 0
                && config.max_handshakes > 0
                && config.max_handshakes_per_source > 0,
            "max_connections, max_handshakes, max_handshakes_per_source and \
             max_listeners_per_path must be at least 1"
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
    /// Handshake slots: every connection until its upgrade is authenticated.
    admission: Arc<Admission>,
    /// Relayed slots (`max_connections`): a permit lives as long as an authenticated
    /// connection (control channel, waiting sender, relayed leg).
    connections: Arc<Semaphore>,
    /// The slots of each key with its own `max_connections`, and that number.
    key_slots: HashMap<String, (Arc<Semaphore>, usize)>,
    /// TCP connections open now, in any phase (each task holds an [`Open`]).
    open: Arc<AtomicUsize>,
    /// Relayed (sender ↔ listener) connections open now.
    relayed: AtomicUsize,
    /// Relayed connections since start.
    relayed_total: AtomicU64,
    /// Stop accepting, close control channels, fail pending senders.
    shutdown: CancellationToken,
    /// The grace is over: cut relayed connections.
    hard_stop: CancellationToken,
    /// Lines anyone can make us repeat: a refused (401/403) upgrade needs no credentials,
    /// and one client wrote 25,600 of them in 5 s.
    refusals_logged: Throttle,
    /// Malformed or unroutable requests (400, 404, 431): logged as refusals are, on a
    /// throttle of their own so that neither kind hides the other.
    bad_requests_logged: Throttle,
    /// A listener refused because its path has the most listeners; a client library
    /// reconnecting in a tight loop (hyco-ws does) wrote 2,000 of them in 10 s.
    full_path_logged: Throttle,
    /// Connections refused at `max_connections`: at the limit, each new one is refused
    /// with a line, as fast as anyone can connect.
    at_limit_logged: Throttle,
}

impl Server {
    fn status_json(&self) -> String {
        serde_json::json!({
            "listeners": self.registry.count(),
            "pending": self.rendezvous.count(),
            "relayed": self.relayed.load(Ordering::Relaxed),
            "relayed_total": self.relayed_total.load(Ordering::Relaxed),
            "connections": self.open.load(Ordering::Relaxed),
            "handshakes": self.admission.count(),
        })
        .to_string()
    }

    /// A relayed slot for a connection on behalf of `key`, if the relay and the key each
    /// have one free (the caller answers 503 otherwise).
    fn relayed_slot(&self, key: &str) -> Result<Slot, Full> {
        self.relayed_slots(key, 1)
    }

    /// A sender's two relayed slots, taken together: its own leg's, and the one its
    /// tunnel's listener leg will hold (the listener's leg counts for the sender's key).
    /// A sender either fits whole or is refused at once: taking one left a key one short
    /// of its limit admitting the sender, asking the listener for a rendezvous and then
    /// refusing that rendezvous with 503.
    fn tunnel_slots(&self, key: &str) -> Result<(Slot, Slot), Full> {
        let mut sender = self.relayed_slots(key, 2)?;
        // Two permits of each were taken, so one of each splits off; were it not, both
        // slots go back as the refusal drops them.
        let listener = sender.split_leg().ok_or(Full::Relay { tunnel: true })?;
        Ok((sender, listener))
    }

    /// `legs` relayed slots of the relay and of `key`, each taken in one step (two takers
    /// of the last two never get one each), held as one [`Slot`].
    fn relayed_slots(&self, key: &str, legs: u32) -> Result<Slot, Full> {
        let tunnel = legs > 1;
        let key_permit = match self.key_slots.get(key) {
            Some((slots, max)) => Some(slots.clone().try_acquire_many_owned(legs).map_err(
                |_| Full::Key {
                    name: key.to_owned(),
                    max: *max,
                    tunnel,
                },
            )?),
            None => None,
        };
        match self.connections.clone().try_acquire_many_owned(legs) {
            Ok(permit) => Ok(Slot {
                _permit: permit,
                _key_permit: key_permit,
            }),
            Err(_) => {
                self.admission.overload.note(Overload::ConnectionsFull);
                Err(Full::Relay { tunnel })
            }
        }
    }
}

/// An authenticated connection's place under `max_connections`, and under its key's.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    _key_permit: Option<OwnedSemaphorePermit>,
}

impl Slot {
    /// One leg's share of a slot taken for several (the relay's permit and the key's),
    /// now held apart; `None` when this slot holds one leg only.
    fn split_leg(&mut self) -> Option<Slot> {
        if self._permit.num_permits() < 2 {
            return None;
        }
        let key_permit = match self._key_permit.as_mut() {
            Some(permit) => Some(permit.split(1)?),
            None => None,
        };
        Some(Slot {
            _permit: self._permit.split(1)?,
            _key_permit: key_permit,
        })
    }
}

/// Why a connection found no slot.
#[derive(Debug)]
pub(crate) enum Full {
    /// Every one of the relay's `max_connections` is taken (for a `tunnel`, all but one).
    Relay { tunnel: bool },
    /// The key it is on behalf of holds its own `max_connections` (for a `tunnel`, all
    /// but one).
    Key {
        name: String,
        max: usize,
        tunnel: bool,
    },
}

/// Counts one TCP connection in `/$status` while its task lives (unwinding included).
#[derive(Debug)]
pub(crate) struct Open(Arc<AtomicUsize>);

impl Open {
    pub(crate) fn new(open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Open(open)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Raises the soft open-file limit to the hard one: every handshake and relayed slot is
/// a descriptor, and a server out of descriptors cannot even accept the connection that
/// would evict an idle one. Warns when the slots still do not fit.
fn check_fd_limit(max_connections: usize, max_handshakes: usize) {
    let slots = max_connections.saturating_add(max_handshakes) as u64;
    let cap = format!("max_connections {max_connections} + max_handshakes {max_handshakes}");
    crate::relay::open_files::raise("relay serve", slots, &cap);
}

/// Runs one connection's task so that a panic in it is logged and ends that connection
/// only: its guards (slots, registrations, counts) drop while unwinding, and the shared
/// state they touch stays consistent (poison-tolerant locks, atomics).
async fn confined(task: impl Future<Output = ()>, peer: SocketAddr, open: Open) {
    if let Err(panic) = AssertUnwindSafe(task).catch_unwind().await {
        tracing::error!(
            "relay serve: bug: the task of the connection from {peer} panicked ({}); that \
             connection was dropped, every other one goes on",
            panic_text(panic.as_ref())
        );
    }
    drop(open);
}

/// The text of a caught panic, for the log.
fn panic_text(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// Serves `listener` until `shutdown` fires, then stops accepting, closes control
/// channels, lets relayed connections finish for `shutdown_grace`, cuts the rest, and
/// returns. Per-connection failures are logged, never returned.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_until_cut(listener, settings, shutdown, CancellationToken::new()).await
}

/// [`run`], where `cut` ends the grace early (a second stop signal).
pub async fn run_until_cut(
    listener: TcpListener,
    settings: Settings,
    shutdown: CancellationToken,
    cut: CancellationToken,
) -> anyhow::Result<()> {
    let max = settings.config.max_connections;
    let grace = settings.config.shutdown_grace;
    check_fd_limit(max, settings.config.max_handshakes);
    let server = Arc::new(Server {
        registry: Registry::new(settings.config.max_listeners_per_path),
        rendezvous: Rendezvous::default(),
        admission: Arc::new(Admission::new(
            settings.config.max_handshakes,
            settings.config.max_handshakes_per_source,
        )),
        connections: Arc::new(Semaphore::new(max)),
        key_slots: settings
            .config
            .keys
            .iter()
            .filter_map(|k| {
                let max = k.max_connections?;
                Some((k.name.clone(), (Arc::new(Semaphore::new(max)), max)))
            })
            .collect(),
        open: Arc::new(AtomicUsize::new(0)),
        relayed: AtomicUsize::new(0),
        relayed_total: AtomicU64::new(0),
        shutdown: shutdown.clone(),
        hard_stop: CancellationToken::new(),
        refusals_logged: Throttle::default(),
        bad_requests_logged: Throttle::default(),
        full_path_logged: Throttle::default(),
        at_limit_logged: Throttle::default(),
        settings,
    });
    let tracker = TaskTracker::new();
    let mut overload_flush = tokio::time::interval(admission::OVERLOAD_LOG_INTERVAL);
    loop {
        // Every branch is cancel-safe: an un-accepted socket stays in the backlog and an
        // interval keeps its schedule. Accepting never waits for a slot: admission (which
        // may evict an older handshake) decides what a new connection gets.
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = overload_flush.tick() => {
                server.admission.overload.flush();
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::debug!("relay serve: accept failed: {err}");
                    server.admission.overload.note_accept_failure(err);
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let open = Open::new(server.open.clone());
        let handshake = server.admission.admit(peer.ip());
        let span = tracing::info_span!("conn", %peer);
        let task = connection::handle(server.clone(), tcp, peer, handshake);
        tracker.spawn(confined(task, peer, open).instrument(span));
    }
    drop(listener);
    tracker.close();
    let at_shutdown = server.relayed.load(Ordering::Relaxed);
    tracing::info!(
        "relay serve: shutting down: {at_shutdown} relayed connection(s) open, grace {}",
        humantime::format_duration(grace)
    );
    let drained = tokio::select! {
        waited = tokio::time::timeout(grace, tracker.wait()) => waited.is_ok(),
        () = cut.cancelled() => false,
    };
    let when = if cut.is_cancelled() {
        "at a second stop signal"
    } else {
        "at the end of the grace"
    };
    let cut = if drained {
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
        "relay serve: stopped: {} relayed connection(s) drained, {cut} cut {when}",
        at_shutdown.saturating_sub(cut)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tunnel's slot splits into two legs, each holding one permit of the relay and one
    /// of the key, given back when that leg ends; a one-leg slot does not split.
    #[test]
    fn a_tunnel_slot_splits_into_legs_that_each_give_their_permits_back() {
        let (relay, key) = (Arc::new(Semaphore::new(3)), Arc::new(Semaphore::new(2)));
        let mut sender = Slot {
            _permit: relay
                .clone()
                .try_acquire_many_owned(2)
                .expect("two of the relay"),
            _key_permit: Some(
                key.clone()
                    .try_acquire_many_owned(2)
                    .expect("two of the key"),
            ),
        };
        let listener = sender.split_leg().expect("two legs");
        assert!(sender.split_leg().is_none(), "one leg left");
        drop(listener);
        assert_eq!((relay.available_permits(), key.available_permits()), (2, 1));
        drop(sender);
        assert_eq!((relay.available_permits(), key.available_permits()), (3, 2));
    }

    #[tokio::test]
    async fn a_panicking_connection_task_is_confined_and_uncounted() {
        let open = Arc::new(AtomicUsize::new(0));
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("literal");
        let messages = [String::from("owned"), String::new()];
        for message in messages {
            let task = async move {
                if !message.is_empty() {
                    std::panic::panic_any(message);
                }
                panic!("a bug in one connection");
            };
            let guard = Open::new(open.clone());
            assert_eq!(open.load(Ordering::Relaxed), 1);
            // A spawned, panicking task ends normally: its JoinHandle sees no panic.
            let joined = tokio::spawn(confined(task, peer, guard)).await;
            assert!(joined.is_ok(), "the panic escaped: {joined:?}");
            assert_eq!(open.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn panic_texts() {
        let cases: [(Box<dyn Any + Send>, &str); 3] = [
            (Box::new("static"), "static"),
            (Box::new(String::from("owned")), "owned"),
            (Box::new(7u8), "(not a string)"),
        ];
        for (panic, want) in cases {
            assert_eq!(panic_text(panic.as_ref()), want);
        }
    }
}
