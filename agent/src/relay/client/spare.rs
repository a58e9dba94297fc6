//! Spare tunnels: relayed connections `relay connect --spare-tunnels N` opens before any
//! local connection needs one, so a debugger attaching skips the relay's rendezvous (the
//! sender's upgrade, the accept message, the listener's own upgrade: several round trips
//! to Azure Relay, about half of a new tunnel's time on loopback).
//!
//! A spare has sent nothing, not even its preamble: the listener holds it, unconnected,
//! until the preamble comes (the query argument [`SPARE_QUERY`] tells `relay listen` not
//! to reach its target early, since a debug adapter takes one client). Each spare is kept
//! by a task of its own that answers Pings, notices the listener closing it, and replaces
//! it after [`SPARE_LIFETIME`], before the listener's bound on a preamble
//! ([`bridge::PREAMBLE_TIMEOUT`]) would close it. Spares that die before use are opened
//! again on the reconnect schedule ([`backoff`](super::backoff)), never in a tight loop;
//! the keepers share that schedule and open one spare at a time, so N spares facing a
//! relay or listener that is down cost it what one does.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::backoff::{STABLE_CONNECTION, reconnect_delay};
use super::{Endpoint, Tunnel, sender};
use crate::relay::bridge;
use crate::relay::protocol::close_code;

/// How long a spare waits for a local connection before it is replaced: under the
/// listener's 60 s bound on a preamble, with room for a slow relay.
pub const SPARE_LIFETIME: Duration = Duration::from_secs(45);
const _: () = assert!(SPARE_LIFETIME.as_secs() + 10 <= bridge::PREAMBLE_TIMEOUT.as_secs());

/// How long a keeper waits after handing its spare over before it opens the next: the
/// new tunnel's upgrade and rendezvous would otherwise compete, in all three processes,
/// with the first bytes of the connection that took the spare (they added a third to its
/// first exchange on loopback).
pub const SPARE_REPLACE_DELAY: Duration = Duration::from_millis(10);

/// How many listeners for other ports a spare's upgrade may reach before the open counts
/// as failed (and waits its step of the reconnect schedule): a local connection tries up
/// to [`sender::WRONG_LISTENER_ATTEMPTS`] times, but an idle keeper that did so for a port
/// whose owner is gone made some 20 upgrades a second, and every other listener a
/// rejection each time. With 4 listeners, 8 tries reach the owner 9 times in 10.
pub const SPARE_WRONG_LISTENER_ATTEMPTS: usize = 8;

/// How long a local connection waits for a keeper to hand its spare over: at once, unless
/// the keeper is in a Pong write (bounded by the tunnel's write timeout, 30 s); past this
/// the connection opens a tunnel of its own.
pub const SPARE_HANDOVER_TIMEOUT: Duration = Duration::from_millis(200);

/// Most spares `relay connect` keeps: each is a connection at the relay and the listener.
pub const MAX_SPARES: u8 = 8;

pub use crate::relay::protocol::SPARE_QUERY;

/// Whether a rendezvous address is a spare's (it carries [`SPARE_QUERY`]).
pub fn is_spare(address: &str) -> bool {
    crate::web_url::parse(address).is_ok_and(|url| url.query_pairs().any(|(k, _)| k == SPARE_QUERY))
}

/// A spare as its keeper hands it over.
#[derive(Debug)]
pub struct Spare {
    pub tunnel: Tunnel,
    /// When it was opened, by the wall clock: tokio's clock stops while a laptop sleeps,
    /// the relay's connections do not.
    opened: SystemTime,
}

impl Spare {
    /// Whether it is older than [`SPARE_LIFETIME`] by the wall clock (or the clock went
    /// back): after a laptop's sleep the relay has most likely closed it.
    fn stale(&self) -> bool {
        SystemTime::now()
            .duration_since(self.opened)
            .map_or(true, |age| age >= SPARE_LIFETIME)
    }
}

/// A spare's keeper hands its tunnel over through this.
type Handover = oneshot::Sender<Spare>;

/// The spares ready to be taken; shared by their keepers and the local connections.
#[derive(Debug, Default)]
pub struct Spares {
    /// One entry per spare that waits, newest last; an entry whose keeper moved on
    /// (its spare died or was replaced) is closed and skipped.
    ready: Mutex<Vec<oneshot::Sender<Handover>>>,
    /// Where the keepers stand on the reconnect schedule, together.
    schedule: Mutex<Schedule>,
    /// Held by the one keeper opening a spare: the others wait their turn, so while the
    /// relay or the listener is down one keeper tries at each step of the schedule, not
    /// all of them (8 spares made 128 upgrades in the first second against listeners that
    /// all answered 421).
    opener: tokio::sync::Mutex<()>,
    /// Wakes the keepers waiting out the schedule when an open worked (the relay and the
    /// listener are back): the spares still missing follow at once, not after the step
    /// they were waiting out.
    reopened: tokio::sync::Notify,
}

/// The keepers' shared place on the reconnect schedule for opening spares.
#[derive(Debug, Default)]
struct Schedule {
    /// Opens failed since the last one that worked.
    failures: usize,
    /// No spare is opened before this.
    not_before: Option<tokio::time::Instant>,
}

impl Schedule {
    /// Counts a failed open and puts the next one its step of the schedule away. Opens
    /// take turns, so this counts each try once.
    fn failed(&mut self) {
        self.not_before = Some(tokio::time::Instant::now() + reconnect_delay(self.failures));
        self.failures = self.failures.saturating_add(1);
    }

    /// Back to the start: an open worked.
    fn reset(&mut self) {
        *self = Schedule::default();
    }

    /// When the next open may start, if that is still ahead.
    fn wait_until(&self) -> Option<tokio::time::Instant> {
        self.not_before
            .filter(|at| *at > tokio::time::Instant::now())
    }
}

impl Spares {
    /// A spare, if one is ready: the newest whose keeper hands it over within
    /// [`SPARE_HANDOVER_TIMEOUT`] and that is not stale (older than [`SPARE_LIFETIME`] by
    /// the wall clock; those are closed, and their keepers open new ones).
    pub async fn take(&self) -> Option<Tunnel> {
        loop {
            let offer = self.ready.lock().ok()?.pop()?;
            let (handover, handed) = oneshot::channel();
            if offer.send(handover).is_err() {
                continue;
            }
            // A keeper that answers later finds nobody waiting and closes its spare.
            let Ok(Ok(spare)) = tokio::time::timeout(SPARE_HANDOVER_TIMEOUT, handed).await else {
                continue;
            };
            if spare.stale() {
                tracing::debug!(
                    "a spare tunnel outlived its lifetime (the machine slept?); closed"
                );
                tokio::spawn(spare.tunnel.finish(close_code::NORMAL, ""));
                continue;
            }
            return Some(spare.tunnel);
        }
    }

    /// Offers a spare; the keeper learns through the receiver that it was taken.
    fn offer(&self) -> oneshot::Receiver<Handover> {
        let (offer, asked) = oneshot::channel();
        if let Ok(mut ready) = self.ready.lock() {
            // Entries of replaced spares go here, so the list never grows past the spares.
            ready.retain(|entry| !entry.is_closed());
            ready.push(offer);
        }
        asked
    }

    /// The keepers' schedule (its values stay whole if a holder panicked).
    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a spare when its turn comes: not before the schedule allows (an open that
    /// works meanwhile ends the wait), and after any other keeper's open. `None` when it
    /// failed (counted on the schedule). Cancel-safe: dropped, it gives the turn back.
    async fn open(
        &self,
        endpoint: &Endpoint,
        port_name: &str,
        marker: &[(String, String)],
    ) -> Option<Tunnel> {
        loop {
            // Registered before the schedule is read, so a reset in between still wakes.
            let reopened = self.reopened.notified();
            tokio::pin!(reopened);
            reopened.as_mut().enable();
            let wait = self.schedule().wait_until();
            if let Some(at) = wait {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = reopened => {}
                }
                continue;
            }
            let _turn = self.opener.lock().await;
            // Another keeper's open failed while this one waited for its turn.
            if self.schedule().wait_until().is_some() {
                continue;
            }
            let opened = sender::connect_to_owner(
                endpoint,
                port_name,
                marker,
                SPARE_WRONG_LISTENER_ATTEMPTS,
            )
            .await;
            return match opened {
                Ok(tunnel) => {
                    self.schedule().reset();
                    self.reopened.notify_waiters();
                    Some(tunnel)
                }
                Err(e) => {
                    // A local connection that finds no spare opens its own tunnel and
                    // says why that failed; this line is for whoever looks closer.
                    tracing::debug!("could not open a spare tunnel: {e}");
                    self.schedule().failed();
                    None
                }
            };
        }
    }

    /// How many spares wait (for tests).
    pub fn waiting(&self) -> usize {
        self.ready.lock().map_or(0, |ready| {
            ready.iter().filter(|entry| !entry.is_closed()).count()
        })
    }
}

/// How long a spare, once taken, has to show it is alive (the relay's Pong to the Ping
/// sent with the preamble, or the listener's answer) before the connection moves to a new
/// tunnel: a spare whose connection died unnoticed (a changed network, a relay that
/// restarted) would otherwise hold the debugger for the listener's whole answer bound.
pub const SPARE_PROOF_TIMEOUT: Duration = Duration::from_secs(5);

/// What a taken spare turned out to be ([`prove`]).
#[derive(Debug)]
pub enum Proof {
    /// The listener answered: splice it.
    Answered(Tunnel),
    /// The preamble failed once it may have reached the listener: refused (why, naming
    /// the fix), unanswered, or the connection broke after the relay's Pong. No second
    /// tunnel then: the listener may have reached a target that takes one client.
    Failed(bridge::BridgeError),
    /// The spare is dead (why): no sign that anything got past the relay, so a new tunnel
    /// may carry the bytes.
    Dead(String),
}

/// Sends a taken spare's preamble with the client's `first` bytes and a Ping, and reads the
/// listener's answer: within [`SPARE_PROOF_TIMEOUT`] when no Pong came, else within the
/// preamble's bound ([`bridge::PREAMBLE_TIMEOUT`]).
pub async fn prove(mut tunnel: Tunnel, port_name: &str, first: &[u8]) -> Proof {
    if let Err(e) = bridge::request_with(&tunnel, port_name, first).await {
        return Proof::Dead(e.to_string());
    }
    // The relay answers a Ping itself, at once: the Pong shows the spare's own connection
    // alive while the listener may still be connecting its target. After the preamble,
    // which has the longer way to go.
    if let Err(e) = tunnel.ping(b"amlx-spare").await {
        return Proof::Dead(e.to_string());
    }
    let start = tokio::time::Instant::now();
    let answer = loop {
        let bound = if tunnel.pong_seen() {
            bridge::PREAMBLE_TIMEOUT
        } else {
            SPARE_PROOF_TIMEOUT
        };
        let read = tunnel.read_exact(bridge::REPLY_LEN);
        let answer = tokio::time::timeout_at(start + bound, read).await;
        match answer {
            // The Pong came while waiting: the rest of the preamble's bound.
            Err(_) if tunnel.pong_seen() && bound < bridge::PREAMBLE_TIMEOUT => continue,
            Err(_) if !tunnel.pong_seen() => {
                // Closed on the side: its writes may wait out their bound on a dead path.
                tokio::spawn(tunnel.finish(close_code::GOING_AWAY, ""));
                return Proof::Dead(format!("no answer within {SPARE_PROOF_TIMEOUT:?}"));
            }
            Ok(Err(e)) if !tunnel.pong_seen() => return Proof::Dead(e.to_string()),
            Ok(Err(e)) => return Proof::Failed(bridge::BridgeError::Io(e)),
            // Closed without a reason and without a Pong: the connection, not the listener.
            Ok(Ok(None)) if !tunnel.pong_seen() && tunnel.peer_close_reason().is_none() => {
                return Proof::Dead("closed before its answer".to_owned());
            }
            answer => break answer,
        }
    };
    match bridge::check_reply(answer, tunnel.peer_close_reason(), port_name) {
        Ok(()) => Proof::Answered(tunnel),
        Err(e) => {
            tunnel.finish(close_code::NORMAL, "").await;
            Proof::Failed(e)
        }
    }
}

/// What ended a spare's wait.
enum Stop {
    Taken(Result<Handover, oneshot::error::RecvError>),
    Aged,
    Shutdown,
}

/// Starts `count` keepers, each keeping one spare for `port_name` in `spares` until
/// `shutdown`.
pub fn keep(
    spares: &Arc<Spares>,
    count: u8,
    endpoint: &Arc<Endpoint>,
    port_name: &str,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) {
    for slot in 0..count {
        let keeper = keeper(
            Arc::clone(spares),
            Arc::clone(endpoint),
            port_name.to_owned(),
            shutdown.clone(),
        );
        tracker.spawn(keeper.instrument(tracing::debug_span!("spare", slot)));
    }
}

async fn keeper(
    spares: Arc<Spares>,
    endpoint: Arc<Endpoint>,
    port_name: String,
    shutdown: CancellationToken,
) {
    let marker = [(SPARE_QUERY.to_owned(), "1".to_owned())];
    // This keeper's spares that died unused before they lived [`STABLE_CONNECTION`]: a
    // listener or relay that closes each new spare at once must not see a tight loop.
    // (Spares that die together, their listener gone, each wait their own first step,
    // zero; the opens after them take turns on the shared schedule.)
    let mut early_deaths = 0;
    loop {
        let opened = tokio::select! {
            opened = spares.open(&endpoint, &port_name, &marker) => opened,
            () = shutdown.cancelled() => return,
        };
        // A failure waits its step of the schedule in the next `open`.
        let Some(tunnel) = opened else { continue };
        tracing::debug!("a spare tunnel is ready");
        let (since, opened) = (Instant::now(), SystemTime::now());
        let asked = spares.offer();
        let stop = async {
            tokio::select! {
                handover = asked => Stop::Taken(handover),
                () = tokio::time::sleep(SPARE_LIFETIME) => Stop::Aged,
                () = shutdown.cancelled() => Stop::Shutdown,
            }
        };
        match tunnel.idle_until(stop).await {
            Ok((tunnel, Stop::Taken(Ok(handover)))) => {
                early_deaths = 0;
                if let Err(unused) = handover.send(Spare { tunnel, opened }) {
                    unused.tunnel.finish(close_code::NORMAL, "").await;
                }
                tokio::select! {
                    () = tokio::time::sleep(SPARE_REPLACE_DELAY) => {}
                    () = shutdown.cancelled() => return,
                }
            }
            Ok((tunnel, Stop::Aged)) => {
                early_deaths = 0;
                tunnel.finish(close_code::NORMAL, "").await;
            }
            Ok((tunnel, Stop::Taken(Err(_)) | Stop::Shutdown)) => {
                tunnel.finish(close_code::GOING_AWAY, "").await;
                return;
            }
            Err(e) => {
                tracing::debug!("a spare tunnel ended before use: {e}");
                // One that lived a while was healthy: the schedule starts over (a relay
                // or proxy that drops idle connections early must not push it to 30 s).
                if since.elapsed() >= STABLE_CONNECTION {
                    early_deaths = 0;
                }
                if !pause(&mut early_deaths, &shutdown).await {
                    return;
                }
            }
        }
    }
}

/// Waits the reconnect schedule's step for failure number `failures` (then counts it);
/// `false` when `shutdown` came first.
async fn pause(failures: &mut usize, shutdown: &CancellationToken) -> bool {
    let delay = reconnect_delay(*failures);
    *failures = failures.saturating_add(1);
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = shutdown.cancelled() => false,
    }
}

#[cfg(test)]
#[path = "spare_tests.rs"]
mod tests;
