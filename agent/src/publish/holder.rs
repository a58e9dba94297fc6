//! Is a status record's holder still alive? PID plus process start time (a reused PID
//! is a different process) plus PID namespace (another container's PIDs are not ours).

use std::path::Path;

use serde::Serialize;

/// What a reader can say about the process a status record names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Holder {
    /// The PID exists, is not a zombie, and (when recorded) has the recorded start time.
    Live,
    /// The PID is gone, a zombie, or now belongs to a process that started at another time.
    Dead,
    /// The record comes from another PID namespace (a container sharing the state
    /// directory): our `/proc` cannot judge it.
    Unknown,
}

/// The two fields of `/proc/<pid>/stat` we need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: R, S, D, Z (zombie), X (dead), ...
    pub state: char,
    /// Field 4: the parent's PID.
    pub parent: u32,
    /// Field 22: start time in clock ticks since boot.
    pub start_time: u64,
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the *last* `)`.
pub fn parse_stat(line: &str) -> Option<ProcStat> {
    let (_, rest) = line.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    // `fields` now starts at field 5; field 22 is 17 further on.
    let start_time = fields.nth(17)?.parse().ok()?;
    Some(ProcStat {
        state,
        parent,
        start_time,
    })
}

/// Most processes [`pids`] yields: a bound on any walk of `/proc`, whatever the node runs.
pub const MAX_PROCESSES: usize = 100_000;

/// The PIDs in `/proc` (this PID namespace), at most [`MAX_PROCESSES`] of them; none when
/// `/proc` cannot be read.
pub fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .take(MAX_PROCESSES)
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// Reads `/proc/<pid>/stat`; `None` when the process does not exist (or `/proc` is absent).
pub fn read_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Start time of `pid` in clock ticks since boot, to tell a reused PID apart.
pub fn process_start_time(pid: u32) -> Option<u64> {
    read_stat(pid).map(|stat| stat.start_time)
}

/// Parses the target of a `/proc/<pid>/ns/pid` link, `pid:[4026531836]`.
pub fn parse_namespace_link(link: &str) -> Option<u64> {
    link.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// This process's PID namespace id (what every PID we see is relative to).
pub fn pid_namespace() -> Option<u64> {
    let link = std::fs::read_link(Path::new("/proc/self/ns/pid")).ok()?;
    parse_namespace_link(link.to_str()?)
}

/// Judges a holder from what was recorded and what `/proc` says now.
///
/// `recorded_ns` / `our_ns`: PID namespaces (unknown on either side means "assume ours").
/// `recorded_start`: the start time written with the record (`None`: the PID alone decides).
/// `now`: the holder PID's current stat, `None` when it does not exist.
pub fn judge(
    recorded_ns: Option<u64>,
    our_ns: Option<u64>,
    recorded_start: Option<u64>,
    now: Option<ProcStat>,
) -> Holder {
    if let (Some(theirs), Some(ours)) = (recorded_ns, our_ns)
        && theirs != ours
    {
        return Holder::Unknown;
    }
    match now {
        None => Holder::Dead,
        Some(stat) if matches!(stat.state, 'Z' | 'X' | 'x') => Holder::Dead,
        Some(stat) if recorded_start.is_some_and(|t| t != stat.start_time) => Holder::Dead,
        Some(_) => Holder::Live,
    }
}

/// Judges the holder `pid` against `/proc` as seen from this process.
pub fn holder_of(pid: u32, recorded_start: Option<u64>, recorded_ns: Option<u64>) -> Holder {
    judge(recorded_ns, pid_namespace(), recorded_start, read_stat(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_SLEEP: &str = "4242 (sleep) S 1 4242 4242 0 -1 4194560 97 0 0 0 0 0 0 0 20 0 1 0 987654 8626176 131 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
    const STAT_ODD_NAME: &str = "77 (a) b (c) ) Z 1 77 77 0 -1 4194560 97 0 0 0 0 0 0 0 20 0 1 0 5 8626176 131 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn parses_state_and_start_time() {
        // Fields 3..=30 hold their own numbers: field 22 is 22, whatever the name holds.
        let numbered = (3..=30)
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let plain = format!("1234 (python) {numbered}");
        let nested = format!("1234 (a b) c)) {numbered}");
        let cases = [
            (plain.as_str(), Some(('3', 22))),
            (nested.as_str(), Some(('3', 22))),
            ("garbage", None),
            (STAT_SLEEP, Some(('S', 987_654))),
            (STAT_ODD_NAME, Some(('Z', 5))),
            ("", None),
            ("12 (x) S 1 2", None),
            (
                "12 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 nope",
                None,
            ),
        ];
        for (line, want) in cases {
            let got = parse_stat(line).map(|s| (s.state, s.start_time));
            assert_eq!(got, want, "{line:?}");
        }
        // The parent, after a name with spaces and parentheses too.
        for (line, parent) in [
            (plain.as_str(), 4),
            (nested.as_str(), 4),
            (STAT_SLEEP, 1),
            (STAT_ODD_NAME, 1),
        ] {
            assert_eq!(parse_stat(line).map(|s| s.parent), Some(parent), "{line:?}");
        }
    }

    #[test]
    fn pids_include_this_process() {
        assert!(pids().any(|pid| pid == std::process::id()));
    }

    #[test]
    fn parses_namespace_links() {
        let cases = [
            ("pid:[4026531836]", Some(4_026_531_836)),
            ("pid:[]", None),
            ("net:[4026531836]", None),
            ("pid:[12", None),
        ];
        for (link, want) in cases {
            assert_eq!(parse_namespace_link(link), want, "{link:?}");
        }
    }

    #[test]
    fn judges_holders() {
        let running = |start| {
            Some(ProcStat {
                state: 'S',
                parent: 1,
                start_time: start,
            })
        };
        let zombie = Some(ProcStat {
            state: 'Z',
            parent: 1,
            start_time: 10,
        });
        let cases = [
            // (recorded ns, our ns, recorded start, now, verdict)
            (None, None, Some(10), running(10), Holder::Live),
            (Some(1), Some(1), Some(10), running(10), Holder::Live),
            (None, Some(1), None, running(99), Holder::Live),
            (Some(1), Some(1), Some(10), running(11), Holder::Dead),
            (Some(1), Some(1), Some(10), None, Holder::Dead),
            (None, None, Some(10), zombie, Holder::Dead),
            (Some(2), Some(1), Some(10), running(10), Holder::Unknown),
            (Some(2), Some(1), Some(10), None, Holder::Unknown),
        ];
        for (theirs, ours, start, now, want) in cases {
            assert_eq!(
                judge(theirs, ours, start, now),
                want,
                "{theirs:?} {ours:?} {start:?} {now:?}"
            );
        }
    }

    #[test]
    fn this_process_is_live_and_has_a_start_time() {
        let pid = std::process::id();
        let start = process_start_time(pid).expect("/proc/self/stat is readable on Linux");
        assert_eq!(holder_of(pid, Some(start), pid_namespace()), Holder::Live);
        assert_eq!(holder_of(pid, Some(start + 1), None), Holder::Dead);
    }
}
