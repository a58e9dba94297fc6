//! The VS Code ports of one run, held in the node's ports lock directory for as long as
//! the run lives: two runs on one machine never hand their debuggers to the same VS Code
//! port, and `amlx-agent ports list` shows who holds them.
//!
//! Only the lock is taken, never a bind probe: VS Code may already be listening on the
//! port from an earlier start of the same configuration, which is what the user wants.

use std::fs::{File, TryLockError};
use std::path::Path;

use anyhow::Context as _;

use crate::ports::{HolderRecord, lockfile};

/// Blocks tried (each shifted past the previous one) before giving up.
const BLOCKS_TRIED: usize = 64;
/// What `ports list` shows as the holder's command.
const HOLDER_COMMAND: &str = "amlx-agent run (VS Code port)";

/// The held ports; dropping this releases them.
#[derive(Debug)]
pub struct VsCodePorts {
    first: u16,
    count: u16,
    /// The locked files: the locks live as long as these descriptors.
    _locks: Vec<File>,
}

impl VsCodePorts {
    /// The ports, first to last.
    pub fn ports(&self) -> impl Iterator<Item = u16> + use<> {
        // Inclusive of the last port: a block may end at 65535, whose exclusive end
        // would not fit in a u16.
        let first = self.first;
        (0..self.count).map(move |i| first + i)
    }
}

/// Locks `count` consecutive ports from `first` up; a port another run holds moves the
/// whole block past it. Without a usable lock directory the ports are used unlocked.
pub fn reserve(lock_dir: Option<&Path>, first: u16, count: usize) -> anyhow::Result<VsCodePorts> {
    let count = u16::try_from(count).context("too many VS Code ports")?;
    anyhow::ensure!(
        first != 0,
        "--vscode-port 0 is not a port VS Code can listen on; pick one like 5678"
    );
    // Checked here too, for a run without a lock directory.
    first
        .checked_add(count.saturating_sub(1))
        .with_context(|| {
            format!("no {count} VS Code port(s) from {first} up to 65535; pick a --vscode-port")
        })?;
    let unlocked = VsCodePorts {
        first,
        count,
        _locks: Vec::new(),
    };
    let Some(lock_dir) = lock_dir else {
        return Ok(unlocked);
    };
    let mut start = first;
    for _ in 0..BLOCKS_TRIED {
        let last = start.checked_add(count - 1).with_context(|| {
            format!(
                "no {count} free VS Code port(s) from {first} up to 65535; pick a --vscode-port"
            )
        })?;
        match lock_block(lock_dir, start, last) {
            Ok(Some(locks)) => {
                if start != first {
                    say!(
                        "amlx-agent run: VS Code port {first} is taken by another run; using {start}"
                    );
                }
                return Ok(VsCodePorts {
                    first: start,
                    count,
                    _locks: locks,
                });
            }
            Ok(None) => {}
            Err(err) => {
                tracing::debug!(
                    "VS Code ports are not reserved ({err}); another run could pick the same"
                );
                return Ok(unlocked);
            }
        }
        start = last.checked_add(1).with_context(|| {
            format!(
                "no {count} free VS Code port(s) from {first} up to 65535; pick a --vscode-port"
            )
        })?;
    }
    anyhow::bail!(
        "other runs hold every VS Code port block tried from {first} to {start} (lock dir {}); \
         pick a --vscode-port",
        lock_dir.display()
    )
}

/// Locks every port of `start..=last`; `None` when another holder has one of them.
fn lock_block(lock_dir: &Path, start: u16, last: u16) -> std::io::Result<Option<Vec<File>>> {
    let record = HolderRecord::for_current_process(None, HOLDER_COMMAND).to_bytes();
    let mut locks = Vec::new();
    for port in start..=last {
        let lock = lockfile::open_lock_file(&lockfile::lock_path(lock_dir, port))?;
        match lock.file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(err)) => return Err(err),
        }
        if lock.writable {
            // The lock is the reservation; the record only feeds `ports list`.
            let _ = lockfile::write_record(&lock.file, &record);
        }
        locks.push(lock.file);
    }
    Ok(Some(locks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_gets_the_next_free_block_and_a_released_block_is_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = reserve(Some(dir.path()), 40000, 2).expect("first run");
        assert_eq!(first.ports().collect::<Vec<_>>(), [40000, 40001]);
        let second = reserve(Some(dir.path()), 40000, 2).expect("second run");
        assert_eq!(second.ports().collect::<Vec<_>>(), [40002, 40003]);
        drop(first);
        let third = reserve(Some(dir.path()), 40000, 2).expect("third run");
        assert_eq!(third.ports().collect::<Vec<_>>(), [40000, 40001]);
    }

    #[test]
    fn blocks_never_pass_port_65535_and_a_missing_lock_dir_does_not_stop_a_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = reserve(Some(dir.path()), 65535, 2).expect_err("past 65535");
        assert!(
            format!("{err:#}").contains("pick a --vscode-port"),
            "{err:#}"
        );
        let unlocked = reserve(Some(&dir.path().join("missing")), 5678, 1).expect("unlocked");
        assert_eq!(unlocked.ports().collect::<Vec<_>>(), [5678]);
    }

    #[test]
    fn a_block_ending_at_65535_lists_its_ports_and_one_past_it_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        // `run --vscode-port 65534 --ranks-count 2 --ranks all` panicked here
        // (65534 + 2 overflowed u16 in `ports`).
        let top = reserve(Some(dir.path()), 65534, 2).expect("65534-65535");
        assert_eq!(top.ports().collect::<Vec<_>>(), [65534, 65535]);
        let unlocked = reserve(None, 65535, 1).expect("65535 alone");
        assert_eq!(unlocked.ports().collect::<Vec<_>>(), [65535]);
        for lock_dir in [None, Some(dir.path())] {
            let err = reserve(lock_dir, 65535, 4).expect_err("past 65535");
            assert!(
                format!("{err:#}").contains("pick a --vscode-port"),
                "{err:#}"
            );
            let err = reserve(lock_dir, 0, 1).expect_err("port 0");
            assert!(format!("{err:#}").contains("--vscode-port 0"), "{err:#}");
        }
    }
}
