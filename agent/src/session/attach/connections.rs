//! The developer connections of one listening session and what they share: reaching
//! debugpy (after the step's bootstrap said it started, within one bound), serving each
//! through the DAP gate, the connection held for the next developer, the handover from
//! a configured debugger that dropped, and the release at the attach deadline. The
//! parent module's doc says why each exists.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{Mutex, Notify, RwLock, mpsc};
use tokio_util::sync::CancellationToken;

use super::{BootstrapWord, DEBUGPY_DID_NOT_START, Developer, Event};
use crate::inject::bootstrap::Report;
use crate::relay::client::backoff;
use crate::session::gate::{self, GateState, PumpEnd};
use crate::session::step_end::StepEnd;
use crate::session::{Refusal, release_listening_debuggee};

/// How long a developer who arrived before the step's bootstrap said how debugpy's start
/// went waits for it: an interpreter that starts slowly (a large environment on a network
/// file system) turned developers away with "debugpy is not listening" after ~10 s. Less
/// than `relay connect` waits for the preamble's answer (60 s), so the developer hears why.
const BOOTSTRAP_WORD_WAIT: Duration = Duration::from_secs(45);

/// The whole of a developer's wait for debugpy: the bootstrap's word
/// ([`BOOTSTRAP_WORD_WAIT`]), a release under way (up to [`crate::session::RELEASE_GRACE`] and its
/// settling), the connection tries. Each has a bound of its own, and together they could
/// pass the 60 s `relay connect` waits for the answer to its preamble
/// ([`crate::relay::bridge::PREAMBLE_TIMEOUT`]), so the developer's side gave up without
/// hearing why. This one bound is under it.
const DEVELOPER_WAIT: Duration = Duration::from_secs(55);
const _: () = assert!(
    BOOTSTRAP_WORD_WAIT.as_secs() < DEVELOPER_WAIT.as_secs()
        && DEVELOPER_WAIT.as_secs() < crate::relay::bridge::PREAMBLE_TIMEOUT.as_secs()
);

/// What every developer connection of one session shares with its owner.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Where debugpy listens (port 0: where the step's bootstrap says; see
    /// [`Shared::debugpy_now`]).
    pub debugpy: SocketAddr,
    pub events: mpsc::UnboundedSender<Event>,
    /// Cancelled at the attach deadline: connections still in their setup *then* are
    /// cut. Replaced by a fresh one when cancelled, so a developer who comes later may
    /// still attach (each connection takes the token current when it arrives).
    setup_cutoff: Arc<std::sync::Mutex<CancellationToken>>,
    /// The adapter connection of the last developer who left during its setup.
    held: Arc<Mutex<Option<Held>>>,
    /// Developer connections being served, and a signal when one finishes, so the
    /// deadline's owner can wait (bounded) for cut connections to be held.
    serving: Arc<AtomicUsize>,
    served: Arc<Notify>,
    /// The `configured` flags of the connections being served: a debugger that has
    /// configured the debuggee owns the step, and the attach deadline is not for it
    /// (its [`Event::Configured`] comes only when it leaves).
    live: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>>,
    /// A debugger configured the debuggee and has left (its events may still be on
    /// their way to the deadline's owner).
    was_configured: Arc<AtomicBool>,
    /// Announced when the step has ended: relayed connections end in order.
    step_end: StepEnd,
    /// Whether debugpy started, as the step's bootstrap said.
    bootstrap: BootstrapWord,
    /// Taken for writing while the step is released: the release is a debugger session
    /// of its own, and debugpy's adapter refuses another debugger until it has ended
    /// ("already being debugged"), so a developer who comes meanwhile waits for it.
    releasing: Arc<RwLock<()>>,
    /// Held while a developer's connection to debugpy is being opened (see
    /// [`Shared::connect_debugpy`]).
    connecting: Arc<Mutex<()>>,
}

/// An adapter connection kept open after its developer left during the setup.
#[derive(Debug)]
struct Held {
    debugpy: TcpStream,
    state: GateState,
}

/// How long a developer waits for a configured debugger's connection to end before its
/// own requests go to debugpy ([`Shared::handover`]): the end of a dropped one takes
/// debugpy's answer to a `disconnect` (well under a second), and the gate passes
/// debugpy's last answers on for at most 5 s.
const HANDOVER: Duration = Duration::from_secs(5);

/// How long the deadline's owner waits for cut connections to come back as held ones.
const CUTOFF_SETTLE: Duration = Duration::from_secs(1);

impl Shared {
    pub fn new(
        debugpy: SocketAddr,
        step_end: StepEnd,
        bootstrap: BootstrapWord,
    ) -> (Shared, mpsc::UnboundedReceiver<Event>) {
        let (events, receiver) = mpsc::unbounded_channel();
        let shared = Shared {
            debugpy,
            events,
            setup_cutoff: Arc::default(),
            held: Arc::new(Mutex::new(None)),
            serving: Arc::new(AtomicUsize::new(0)),
            served: Arc::new(Notify::new()),
            live: Arc::default(),
            was_configured: Arc::default(),
            step_end,
            bootstrap,
            releasing: Arc::default(),
            connecting: Arc::default(),
        };
        (shared, receiver)
    }

    /// Cuts the connections that are in their setup now; later ones are not.
    pub fn cut_setups(&self) {
        let fresh = CancellationToken::new();
        let mut current = self
            .setup_cutoff
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::replace(&mut *current, fresh).cancel();
    }

    fn current_cutoff(&self) -> CancellationToken {
        self.setup_cutoff
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Whether a debugger has configured the debuggee: one being served right now, or
    /// one that has left (the step is no longer held by the attach phase).
    pub fn owned(&self) -> bool {
        self.was_configured.load(Ordering::Acquire) || self.attached_now()
    }

    /// Whether a debugger being served right now has configured the debuggee.
    pub fn attached_now(&self) -> bool {
        self.live_flags()
            .iter()
            .any(|configured| configured.load(Ordering::Acquire))
    }

    fn live_flags(&self) -> std::sync::MutexGuard<'_, Vec<Arc<AtomicBool>>> {
        // A poisoned list is still a list of flags.
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A developer's connection reached debugpy (the session is `attached`).
    pub fn arrived(&self) {
        let _ = self.events.send(Event::Connected);
    }

    /// Counts a developer connection that waits for debugpy as carried, so that the step's
    /// end waits (bounded) for it to be told why it is not served.
    pub fn waiting(&self) -> crate::session::step_end::CarryGuard {
        self.step_end.carrying()
    }

    /// Where debugpy listens: the session's address, with the port the step's bootstrap
    /// reported when it reported one (direct mode lets debugpy's adapter pick its port:
    /// until the report, the address has port 0 and nothing is reached there).
    fn debugpy_now(&self) -> SocketAddr {
        match &*self.bootstrap.borrow() {
            Some(Report::Started(Some(port))) => SocketAddr::new(self.debugpy.ip(), *port),
            _ => self.debugpy,
        }
    }

    /// Connects to debugpy once the step's bootstrap said it started (bounded by
    /// [`BOOTSTRAP_WORD_WAIT`]), then with bounded retries; `Err` says why not, for the
    /// developer.
    pub async fn connect_debugpy(&self) -> Result<TcpStream, String> {
        let reached = async {
            tokio::time::timeout(DEVELOPER_WAIT, self.reach_debugpy())
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "debugpy could not be reached within {}s (a release of the step was \
                         under way, or debugpy did not accept); try again",
                        DEVELOPER_WAIT.as_secs()
                    ))
                })
        };
        tokio::select! {
            // Biased: a word already there decides, not the end announced after it.
            biased;
            reached = reached => reached,
            () = self.step_end.announced() => Err(match &*self.bootstrap.borrow() {
                // The sidecar announces the end to its connections when debugpy is missing.
                Some(Report::Missing(why)) => format!("{DEBUGPY_DID_NOT_START}{why}"),
                _ => "the step ended before debugpy was reached".to_owned(),
            }),
        }
    }

    /// A connection turned out not to be a debugger before it reached debugpy (what it
    /// sent, in words).
    pub fn not_a_debugger(&self, what: String) {
        let _ = self.events.send(Event::NotDap(what));
    }

    /// A developer left while debugpy was awaited, after sending `sent` (which never
    /// reached debugpy): the deadline's owner hears it as a setup left unfinished.
    pub fn left_while_waiting(&self, sent: &[u8]) {
        let progress = GateState::progress_of(sent);
        let _ = self.events.send(Event::LeftDuringSetup(progress));
    }

    /// [`Shared::connect_debugpy`], whatever becomes of the step meanwhile.
    async fn reach_debugpy(&self) -> Result<TcpStream, String> {
        let mut word = self.bootstrap.clone();
        let heard = tokio::time::timeout(BOOTSTRAP_WORD_WAIT, word.wait_for(Option::is_some))
            .await
            // Owned at once: the channel's guard must not live across an await.
            .map(|said| said.map(|said| said.clone()));
        match heard {
            Ok(Ok(Some(Report::Missing(why)))) => {
                return Err(format!("{DEBUGPY_DID_NOT_START}{why}"));
            }
            Ok(Ok(_)) => {}
            // The session is ending (the sender is gone): the tries below are bounded.
            Ok(Err(_)) => {}
            Err(_) => {
                return Err(format!(
                    "the step has not started debugpy within {}s (its interpreter is still \
                     starting, or it hangs before its first line); try again later",
                    BOOTSTRAP_WORD_WAIT.as_secs()
                ));
            }
        }
        // A release under way ends first (bounded by its own bounds).
        drop(self.releasing.read().await);
        // One connection to debugpy's adapter opened at a time, and an older held one
        // ended (in order) before: debugpy 1.8.22's adapter took no connection at all
        // after connections that overlapped like this closed.
        let _connecting = self.connecting.lock().await;
        let older = self.held.lock().await.take();
        if let Some(mut older) = older {
            self.end_session(&mut older.state, &mut older.debugpy).await;
        }
        let debugpy = self.debugpy_now();
        for attempt in 0..DEBUGPY_CONNECT_ATTEMPTS {
            let connect = TcpStream::connect(debugpy);
            match tokio::time::timeout(DEBUGPY_CONNECT_TIMEOUT, connect).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(err)) if attempt + 1 == DEBUGPY_CONNECT_ATTEMPTS => {
                    tracing::warn!("debugpy does not listen on {debugpy}: {err}");
                }
                Err(_) if attempt + 1 == DEBUGPY_CONNECT_ATTEMPTS => {
                    tracing::warn!("debugpy on {debugpy} does not accept");
                }
                _ => tokio::time::sleep(backoff::reconnect_delay(1)).await,
            }
        }
        Err("debugpy is not listening on the target".to_owned())
    }

    /// Serves one developer connection through the gate to `debugpy`; reports how it
    /// went. Cut, and kept as the held connection, when the deadline passes while this
    /// developer has not finished its setup.
    pub async fn serve(&self, developer: Developer, mut debugpy: TcpStream) {
        self.serving.fetch_add(1, Ordering::AcqRel);
        self.handover().await;
        // A session being ended (a refused one) ends first (bounded by its own bound).
        drop(self.releasing.read().await);
        let mut state = GateState::default();
        state.end_sessions_in_order(Arc::clone(&self.releasing));
        let configured = state.configured_flag();
        self.live_flags().push(Arc::clone(&configured));
        let setup_cutoff = self.current_cutoff();
        let cutoff = async {
            setup_cutoff.cancelled().await;
            if configured.load(Ordering::Acquire) {
                // This developer owns the step now: the deadline is not for them.
                std::future::pending::<()>().await;
            }
        };
        let pumping = async {
            match developer {
                Developer::Relayed(tunnel) => {
                    gate::carry(tunnel, &mut state, &mut debugpy, &self.step_end).await
                }
                Developer::Direct { tcp, sent } => {
                    // What it sent first, then the rest as it comes.
                    state.developer_sent_first(sent);
                    gate::pump(&mut state, &mut debugpy, tcp).await
                }
            }
        };
        let end = tokio::select! {
            end = pumping => Some(end),
            () = cutoff => None,
        };
        let detached = |state: &GateState| {
            if state.configured() {
                Event::Detached {
                    ends_debuggee: state.ends_debuggee(),
                }
            } else {
                Event::DebuggeeLeftSetup(state.progress())
            }
        };
        let step_ended = matches!(end, Some(PumpEnd::StepEnded));
        let event = match end {
            Some(PumpEnd::Finished | PumpEnd::DebuggeeClosed) => Some(detached(&state)),
            Some(PumpEnd::DebuggeeBroken(err)) => {
                tracing::warn!("the connection to debugpy broke: {err}");
                Some(detached(&state))
            }
            Some(PumpEnd::LeftDuringSetup) => Some(Event::LeftDuringSetup(state.progress())),
            Some(PumpEnd::NotDap(not_dap)) => Some(Event::NotDap(not_dap.to_string())),
            Some(PumpEnd::AttachRefused(said)) => Some(Event::AttachRefused(said)),
            // Cut at the deadline: news only if the developer was reading debugpy's refusal.
            None => state
                .attach_refusal()
                .map(|said| Event::AttachRefused(said.to_owned())),
            // The step's end: the session is over, nothing to report (or hold, below).
            Some(PumpEnd::StepEnded) => None,
        };
        let refused =
            state.attach_refusal().is_some() || matches!(event, Some(Event::AttachRefused(_)));
        if refused {
            self.end_session(&mut state, &mut debugpy).await;
        }
        let keep = !step_ended
            && !state.configured()
            && !refused
            && matches!(
                &event,
                None | Some(Event::LeftDuringSetup(_) | Event::NotDap(_))
            );
        if state.configured() {
            // Before the flag leaves the list, so `owned` never misses it.
            self.was_configured.store(true, Ordering::Release);
            let _ = self.events.send(Event::Configured);
        }
        self.live_flags()
            .retain(|flag| !Arc::ptr_eq(flag, &configured));
        let unheld = if keep {
            *self.held.lock().await = Some(Held { debugpy, state });
            None
        } else {
            Some(debugpy)
        };
        if let Some(event) = event {
            let _ = self.events.send(event);
        }
        self.serving.fetch_sub(1, Ordering::AcqRel);
        self.served.notify_waiters();
        // Never a reset (see gate::close_gracefully); a refused one is closed already.
        if let Some(mut debugpy) = unheld
            && !refused
        {
            gate::close_gracefully(&mut debugpy).await;
        }
    }

    /// Waits, bounded by [`HANDOVER`], while a configured debugger's connection is live: one
    /// whose connection just dropped is still being ended (its gate ends its adapter
    /// session in order, and the adapter refused an `attach` that came meanwhile, then took
    /// no connection at all). A debugger that really is attached keeps the step; the new
    /// one goes on after the bound and is refused by debugpy ("already being debugged").
    async fn handover(&self) {
        let _ = tokio::time::timeout(HANDOVER, async {
            loop {
                let served = self.served.notified();
                if !self.attached_now() {
                    return;
                }
                served.await;
            }
        })
        .await;
    }

    /// Ends a session with debugpy's adapter in order ([`gate::end_session`]); developers
    /// who come meanwhile wait for it, as for a release (unless one is under way: it waits
    /// for this connection, bounded, before it goes on).
    async fn end_session(&self, state: &mut GateState, debugpy: &mut TcpStream) {
        let _ending = self.releasing.try_write();
        gate::end_session(state, debugpy, gate::SESSION_END_TIMEOUT).await;
    }

    /// Cuts the connections still in their setup and releases the step: over the held
    /// connection when there is one, else over fresh ones; bounded by RELEASE_GRACE
    /// (plus [`CUTOFF_SETTLE`] for cut connections to come back).
    pub async fn release(&self) {
        let _releasing = self.releasing.write().await;
        self.cut_setups();
        let _ = tokio::time::timeout(CUTOFF_SETTLE, async {
            while self.serving.load(Ordering::Acquire) > 0 {
                let served = self.served.notified();
                if self.serving.load(Ordering::Acquire) == 0 {
                    break;
                }
                served.await;
            }
        })
        .await;
        let held = self.held.lock().await.take();
        if let Some(Held {
            mut debugpy,
            mut state,
        }) = held
        {
            match crate::session::release_on(&mut state, &mut debugpy, Refusal::GiveUp).await {
                Ok(()) => {
                    tracing::info!("released the step over the connection a developer left");
                    return;
                }
                Err(err) => {
                    tracing::info!(
                        "the held connection to debugpy could not release the step ({err}); \
                         trying fresh connections"
                    );
                    gate::end_session(
                        &mut state,
                        &mut debugpy,
                        crate::session::dap::RELEASE_DRAIN_TIMEOUT,
                    )
                    .await;
                }
            }
        }
        release_listening_debuggee(|| self.debugpy_now()).await;
    }
}

/// Tries to reach debugpy this many times per developer connection.
const DEBUGPY_CONNECT_ATTEMPTS: usize = 10;

/// How long one connection attempt to debugpy (on this node) may take.
const DEBUGPY_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use tokio::sync::watch;

    use super::*;

    /// A developer's wait for debugpy has one bound, under `relay connect`'s wait for the
    /// answer to its preamble, whatever holds it (here a release that never ends, after a
    /// bootstrap that spoke late): the developer's side hears why instead of giving up.
    #[tokio::test(start_paused = true)]
    async fn a_developer_waits_for_debugpy_within_one_bound() {
        let (word, bootstrap) = watch::channel(None);
        let unused: SocketAddr = "127.0.0.1:9".parse().expect("an address");
        let (shared, _events) = Shared::new(unused, StepEnd::default(), bootstrap);
        let _release = shared.releasing.write().await;
        let started = tokio::time::Instant::now();
        let speaks_late = async {
            tokio::time::sleep(BOOTSTRAP_WORD_WAIT - Duration::from_secs(1)).await;
            let _ = word.send(Some(Report::Started(None)));
            std::future::pending::<()>().await;
        };
        let waited = async {
            tokio::select! {
                outcome = shared.connect_debugpy() => outcome,
                () = speaks_late => unreachable!("pends"),
            }
        };
        let outcome = tokio::time::timeout(crate::relay::bridge::PREAMBLE_TIMEOUT, waited)
            .await
            .expect("the developer's wait outlasted relay connect's");
        let Err(why) = outcome else {
            panic!("reached debugpy at an unused address");
        };
        assert!(why.contains("within 55s"), "{why}");
        assert_eq!(started.elapsed(), DEVELOPER_WAIT);
    }
}
