//! The JSON record inside a lock file: who holds the port (informational; the lock is the truth).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::publish::holder::process_start_time;

/// Longest command line stored in a record; longer ones are cut (with `…`) so a record
/// stays one small write.
pub const MAX_RECORD_COMMAND: usize = 512;

/// What a lock file says about its holder (for `ports list`; the lock itself is the truth).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRecord {
    pub pid: u32,
    /// Process start time in clock ticks since boot (`/proc/<pid>/stat` field 22), so a
    /// reused PID is told apart.
    pub start_time: Option<u64>,
    pub rank: Option<u32>,
    pub command: String,
    /// Unix seconds when the reservation was taken.
    pub since: u64,
}

impl HolderRecord {
    /// A record for this process (pid, start time, now) holding a port for `command`.
    ///
    /// In replace mode the pid stays right after `execve`: the step keeps the agent's pid.
    pub fn for_current_process(rank: Option<u32>, command: &str) -> Self {
        let pid = std::process::id();
        HolderRecord {
            pid,
            start_time: process_start_time(pid),
            rank,
            command: truncate_command(command),
            since: unix_now(),
        }
    }

    /// The record as written into a lock file (one line of JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(self).expect("a HolderRecord always serialises");
        bytes.push(b'\n');
        bytes
    }

    /// Parses a lock file's content; `None` for an empty or unreadable record (a reader
    /// can race the holder's truncate-then-write).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// Whether the process named by this record still runs: the pid exists and, when both
    /// start times are known, it is the same process (not a reused pid).
    pub fn holder_running(&self) -> bool {
        match (process_start_time(self.pid), self.start_time) {
            (None, _) => false,
            (Some(now), Some(recorded)) => now == recorded,
            (Some(_), None) => true,
        }
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn truncate_command(command: &str) -> String {
    if command.len() <= MAX_RECORD_COMMAND {
        return command.to_owned();
    }
    let mut cut = MAX_RECORD_COMMAND;
    while !command.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &command[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let records = [
            HolderRecord {
                pid: 42,
                start_time: Some(123_456),
                rank: Some(3),
                command: "python step.py --lr 0.1 \"quoted\" ünïcode".into(),
                since: 1_700_000_000,
            },
            HolderRecord {
                pid: 1,
                start_time: None,
                rank: None,
                command: String::new(),
                since: 0,
            },
        ];
        for record in records {
            let bytes = record.to_bytes();
            assert_eq!(bytes.last(), Some(&b'\n'));
            assert_eq!(HolderRecord::from_bytes(&bytes), Some(record));
        }
    }

    #[test]
    fn unreadable_records_are_none() {
        for bytes in [&b""[..], b"{", b"{\"pid\":1}", b"not json"] {
            assert_eq!(HolderRecord::from_bytes(bytes), None, "{bytes:?}");
        }
    }

    #[test]
    fn current_process_is_running_and_a_reused_pid_is_not() {
        let me = HolderRecord::for_current_process(Some(0), "test");
        assert!(me.start_time.is_some(), "/proc is mounted on Linux");
        assert!(me.holder_running());
        let reused = HolderRecord {
            start_time: me.start_time.map(|t| t + 1),
            ..me.clone()
        };
        assert!(!reused.holder_running());
        let gone = HolderRecord {
            pid: u32::MAX,
            ..me
        };
        assert!(!gone.holder_running());
    }

    #[test]
    fn long_commands_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_RECORD_COMMAND);
        let cut = truncate_command(&long);
        assert!(cut.len() <= MAX_RECORD_COMMAND + '…'.len_utf8());
        assert!(cut.ends_with('…'));
        assert_eq!(truncate_command("short"), "short");
    }
}
