//! The signal state the agent was started with, recorded before Rust's runtime changes it,
//! and the disposition helpers both modes use to hand that state on to the step.
//!
//! Rust's runtime sets SIGPIPE to "ignore" before `main` runs, and std's `Command` sets it
//! to the default in every program it starts. By `main`, whether the agent's parent had
//! SIGPIPE ignored (`trap '' PIPE; amlx-agent exec -- …`) is lost, and the step would get
//! the default either way. So the binary calls [`record_inherited_signals`] from an ELF
//! constructor, which libc runs before `main` (see `main.rs` for why a constructor and not
//! `#![no_main]`), and both modes give the step exactly the recorded SIGPIPE back.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use nix::libc;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// Set once, by the constructor, before `main`. Unset in library tests (no constructor
/// there): callers then leave SIGPIPE as std sets it.
static INHERITED: OnceLock<Inherited> = OnceLock::new();

/// The signal state of the process before any Rust code changed it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Inherited {
    /// SIGPIPE was ignored (the only other possibility after `execve` is the default).
    pub(super) sigpipe_ignored: bool,
    /// The main thread's signal mask.
    pub(super) mask: SigSet,
}

/// Records the SIGPIPE disposition and the signal mask the process was started with.
///
/// Call it before Rust's runtime initialises (the binary does, from an ELF constructor);
/// later calls change nothing. Only `sigaction` and `pthread_sigmask` queries: no
/// allocation, nothing that needs std's runtime.
pub fn record_inherited_signals() {
    let Some(sigpipe_ignored) = is_ignored(Signal::SIGPIPE) else {
        return;
    };
    let Ok(mask) = SigSet::thread_get_mask() else {
        return;
    };
    let _ = INHERITED.set(Inherited {
        sigpipe_ignored,
        mask,
    });
}

/// What [`record_inherited_signals`] recorded, if it ran.
pub(super) fn inherited() -> Option<Inherited> {
    INHERITED.get().copied()
}

/// Whether `signal` is ignored right now, read without changing it (`None`: the query
/// failed, which `sigaction` only does for an invalid signal number).
#[allow(unsafe_code)]
pub fn is_ignored(signal: Signal) -> Option<bool> {
    let mut current = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: with a null new action, sigaction only writes the current action into
    // `current`, a valid and writable `struct sigaction`.
    let rc = unsafe {
        libc::sigaction(
            signal as libc::c_int,
            std::ptr::null(),
            current.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: zero-initialised (a valid sigaction: SIG_DFL, no flags) and then filled in
    // by the successful sigaction call above.
    let current = unsafe { current.assume_init() };
    Some(current.sa_sigaction == libc::SIG_IGN)
}

/// Sets `signal` to "ignore" or to its default action. Async-signal-safe (one
/// `sigaction`, no allocation), so it may run in the forked child before `execve`.
#[allow(unsafe_code)]
pub(super) fn set_ignored(signal: Signal, ignored: bool) -> nix::Result<()> {
    let handler = if ignored {
        SigHandler::SigIgn
    } else {
        SigHandler::SigDfl
    };
    let action = SigAction::new(handler, SaFlags::empty(), SigSet::empty());
    // SAFETY: installs SIG_IGN or SIG_DFL, never a handler: no code of ours runs on
    // delivery, so nothing here can be re-entered.
    unsafe { sigaction(signal, &action) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/self/status's `SigIgn` mask as a number.
    fn proc_ignored_mask() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix("SigIgn:"))
            .expect("SigIgn line");
        u64::from_str_radix(line.trim(), 16).expect("hex mask")
    }

    #[test]
    fn is_ignored_reads_without_changing() {
        // The test harness runs under std's runtime, which ignores SIGPIPE; the kernel's
        // view must agree, and reading twice must not change it.
        let bit = 1u64 << (Signal::SIGPIPE as u32 - 1);
        for _ in 0..2 {
            assert_eq!(is_ignored(Signal::SIGPIPE), Some(true));
            assert_ne!(proc_ignored_mask() & bit, 0, "SIGPIPE still ignored");
        }
        // A signal with the default action here (SIGTERM: nothing in the harness ignores it).
        assert_eq!(is_ignored(Signal::SIGTERM), Some(false));
    }

    #[test]
    fn record_is_idempotent_and_keeps_the_first_state() {
        record_inherited_signals();
        let first = inherited().expect("recorded");
        assert!(first.sigpipe_ignored, "std ignores SIGPIPE in the harness");
        record_inherited_signals();
        let second = inherited().expect("recorded");
        assert_eq!(first.sigpipe_ignored, second.sigpipe_ignored);
        assert_eq!(first.mask, second.mask);
    }
}
