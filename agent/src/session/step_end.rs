//! The step's end as the sidecar's carried developer connections see it.
//!
//! When the step exits, its lifeline and debugpy's connection close at the same moment.
//! A sidecar that stopped at the lifeline dropped the developer's relayed connection with
//! debugpy's last messages still unread (the `terminated` event, say), and the
//! developer's side turned the unfinished connection into a reset of VS Code's socket.
//! Instead the sidecar announces the end: each carried connection then passes on what
//! debugpy still sends for at most [`DRAIN`] and ends in order (Close 1000), and the
//! sidecar waits for that, bounded by [`BOUND`], only while such a connection exists.
//! The sidecar announces it too when the step's bootstrap reports that debugpy does not
//! run (a connection made before then reached whatever holds the debug port).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long a carried connection may go on passing debugpy's bytes after the step's end
/// before it is ended in order anyway (debugpy's adapter in listen mode may outlive the
/// step, holding its connection open for a debugger's `disconnect`).
pub const DRAIN: Duration = Duration::from_millis(200);

/// Everything the sidecar spends on its carried connections after the step's end: the
/// drain, then the Close written. Part of the sidecar's last moments, which with the
/// final state's publishing stay under the keeper's grace for the sidecar
/// ([`super::keeper::SIDECAR_EXIT_GRACE`]).
pub const BOUND: Duration = Duration::from_millis(300);

const _: () = assert!(DRAIN.as_millis() < BOUND.as_millis());

/// Shared by the sidecar and every carried connection of its session.
#[derive(Debug, Clone, Default)]
pub struct StepEnd {
    ended: CancellationToken,
    carrying: Arc<Carrying>,
}

#[derive(Debug, Default)]
struct Carrying {
    count: AtomicUsize,
    idle: Notify,
}

/// Held by a carried connection for its life; counts it as one the sidecar waits for.
#[derive(Debug)]
pub struct CarryGuard(Arc<Carrying>);

impl Drop for CarryGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl StepEnd {
    /// Says the step has ended; every carried connection starts its drain.
    pub fn announce(&self) {
        self.ended.cancel();
    }

    /// Resolves once the step's end is announced (at once if it already was).
    pub async fn announced(&self) {
        self.ended.cancelled().await;
    }

    /// Whether the step's end has been announced.
    pub fn is_announced(&self) -> bool {
        self.ended.is_cancelled()
    }

    /// Counts a carried connection until the guard is dropped.
    pub fn carrying(&self) -> CarryGuard {
        self.carrying.count.fetch_add(1, Ordering::AcqRel);
        CarryGuard(Arc::clone(&self.carrying))
    }

    /// Resolves when no carried connection is left (at once if none is).
    pub async fn idle(&self) {
        loop {
            let notified = self.carrying.idle.notified();
            tokio::pin!(notified);
            // Registered before the count is read, so a guard dropped in between wakes it.
            notified.as_mut().enable();
            if self.carrying.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_at_once_without_carried_connections() {
        let end = StepEnd::default();
        tokio::time::timeout(Duration::from_secs(5), end.idle())
            .await
            .expect("idle with nothing carried");
    }

    #[tokio::test]
    async fn idle_when_the_last_guard_goes() {
        let end = StepEnd::default();
        let first = end.carrying();
        let second = end.carrying();
        let waiter = {
            let end = end.clone();
            tokio::spawn(async move { end.idle().await })
        };
        tokio::task::yield_now().await;
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one connection is still carried");
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("idle once both guards are gone")
            .expect("the waiter task");
    }

    #[tokio::test]
    async fn announced_resolves_for_waiters_before_and_after() {
        let end = StepEnd::default();
        let before = {
            let end = end.clone();
            tokio::spawn(async move { end.announced().await })
        };
        end.announce();
        tokio::time::timeout(Duration::from_secs(5), before)
            .await
            .expect("a waiter from before")
            .expect("the waiter task");
        tokio::time::timeout(Duration::from_secs(5), end.announced())
            .await
            .expect("a waiter from after");
    }
}
