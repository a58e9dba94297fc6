//! `amlx-agent status`: this node's debug sessions from their status records.
//!
//! A record whose process is gone (PID dead, or reused by a process that started at
//! another time) is shown as `ended`, never as live. The state directory comes from the
//! same layered settings as `exec`'s (`--state-dir` > `AMLX_STATE_DIR` > `[node]
//! state_dir`); without one, every place a step of any user can record itself is read.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cli::StatusArgs;
use crate::config::Settings;
use crate::logging::loggable;
use crate::publish::status_file::{
    self, SESSIONS_DIR, SYSTEM_STATE_DIR, Unreadable, rfc3339, unix_now,
};
use crate::publish::{Holder, Listing, SessionEntry, SessionState};
use crate::role::ProcessEnv;
use crate::session::DebugMode;

pub fn run(args: &StatusArgs, settings: &Settings) -> anyhow::Result<i32> {
    // `--state-dir` is already layered into the settings.
    let explicit = settings.state_dir.as_deref();
    let dirs = status_file::record_dirs(explicit, &ProcessEnv);
    let Listing {
        sessions,
        unreadable,
    } = match explicit {
        Some(dir) => status_file::list_sessions(dir)?,
        None => status_file::list_sessions_in(&dirs),
    };
    for file in &unreadable {
        // Anyone may name a file in a shared sessions directory: escaped, so a newline
        // in a name cannot print a forged log line.
        tracing::warn!(
            "skipping {}: {}",
            loggable(&file.path.display().to_string()),
            loggable(&file.error)
        );
    }
    let now = unix_now();
    if args.json {
        let report = Report {
            state_dir: explicit.unwrap_or(Path::new(SYSTEM_STATE_DIR)),
            searched: &dirs,
            sessions: sessions.iter().map(|e| SessionView::of(e, now)).collect(),
            unreadable: &unreadable,
        };
        // Paths go out lossily and every other field is text or a number: it serializes.
        let text = serde_json::to_string_pretty(&report).expect("the report always serializes");
        super::print_out(&format!("{text}\n"))?;
    } else if sessions.is_empty() {
        let looked: Vec<String> = dirs
            .iter()
            .map(|dir| dir.join(SESSIONS_DIR).display().to_string())
            .collect();
        let looked = if looked.is_empty() {
            format!("none of {SYSTEM_STATE_DIR} or the per-user directories exists")
        } else {
            looked.join(", ")
        };
        super::print_out(&format!("no debug sessions on this node ({looked})\n"))?;
    } else {
        super::print_out(&table(&sessions, now))?;
    }
    Ok(0)
}

/// `status --json`.
#[derive(Debug, Serialize)]
struct Report<'a> {
    /// The configured state directory, else the node-wide default.
    #[serde(serialize_with = "crate::ports::listing::lossy_path")]
    state_dir: &'a Path,
    /// Every state directory read (only the configured one when there is one).
    #[serde(serialize_with = "crate::ports::listing::lossy_paths")]
    searched: &'a [PathBuf],
    sessions: Vec<SessionView>,
    unreadable: &'a [Unreadable],
}

/// One session as `status --json` shows it.
#[derive(Debug, Serialize)]
struct SessionView {
    pid: u32,
    start_time: Option<u64>,
    rank: Option<u32>,
    local_rank: Option<u32>,
    port: u16,
    mode: DebugMode,
    endpoint: String,
    /// `ended` when the holder is dead; otherwise what was recorded.
    state: SessionState,
    /// What the holder last wrote.
    recorded_state: SessionState,
    holder: Holder,
    reason: Option<String>,
    since: String,
    started: String,
    updated: String,
    /// Seconds in the current state.
    age_seconds: u64,
    /// The session's sidecar and the keeper that reaps it (`kill -9` targets for tests).
    sidecar_pid: Option<u32>,
    keeper_pid: Option<u32>,
    warning: Option<String>,
}

impl SessionView {
    fn of(entry: &SessionEntry, now: u64) -> Self {
        let r = &entry.record;
        SessionView {
            pid: r.pid,
            start_time: r.start_time,
            rank: r.rank,
            local_rank: r.local_rank,
            port: r.port,
            mode: r.mode,
            endpoint: r.endpoint.clone(),
            state: entry.state(),
            recorded_state: r.state,
            holder: entry.holder,
            reason: entry.reason(),
            since: rfc3339(r.since),
            started: rfc3339(r.started),
            updated: rfc3339(r.updated),
            age_seconds: now.saturating_sub(r.since),
            sidecar_pid: r.sidecar_pid,
            keeper_pid: r.keeper_pid,
            warning: r.warning.clone(),
        }
    }
}

/// A compact age without spaces, so columns stay awk-friendly: 45s, 2m05s, 3h04m, 2d03h.
fn human_age(seconds: u64) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    match seconds {
        s if s < MINUTE => format!("{s}s"),
        s if s < HOUR => format!("{}m{:02}s", s / MINUTE, s % MINUTE),
        s if s < DAY => format!("{}h{:02}m", s / HOUR, s % HOUR / MINUTE),
        s => format!("{}d{:02}h", s / DAY, s % DAY / HOUR),
    }
}

const HEADERS: [&str; 9] = [
    "PID", "RANK", "LOCAL", "PORT", "MODE", "STATE", "SINCE", "ENDPOINT", "REASON",
];

/// The text table: one row per session, columns padded to their widest cell.
fn table(sessions: &[SessionEntry], now: u64) -> String {
    let known = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let rows: Vec<[String; 9]> = sessions
        .iter()
        .map(|e| {
            let r = &e.record;
            let state = match e.holder {
                Holder::Unknown => format!("{}?", e.state()),
                Holder::Live | Holder::Dead => e.state().to_string(),
            };
            [
                r.pid.to_string(),
                known(r.rank),
                known(r.local_rank),
                r.port.to_string(),
                r.mode.to_string(),
                state,
                human_age(now.saturating_sub(r.since)),
                // Records are files anyone may write: no terminal escapes or forged lines.
                loggable(&r.endpoint).into_owned(),
                e.reason()
                    .map_or_else(|| "-".to_owned(), |why| loggable(&why).into_owned()),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADERS.map(str::to_owned);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if sessions.iter().any(|e| e.holder == Holder::Unknown) {
        out.push_str("?: recorded by another PID namespace (container); liveness not checked\n");
    }
    // Once per distinct warning, however many sessions share it.
    let mut warned: Vec<&str> = Vec::new();
    for warning in sessions.iter().filter_map(|e| e.record.warning.as_deref()) {
        if !warned.contains(&warning) {
            warned.push(warning);
            out.push_str(&format!("warning: {}\n", loggable(warning)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_compact() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (60, "1m00s"),
            (125, "2m05s"),
            (3_599, "59m59s"),
            (3_600, "1h00m"),
            (3_725, "1h02m"),
            (86_399, "23h59m"),
            (86_400, "1d00h"),
            (3 * 86_400 + 5 * 3_600 + 59, "3d05h"),
        ];
        for (seconds, want) in cases {
            assert_eq!(human_age(seconds), want, "{seconds}");
        }
    }

    #[test]
    fn rfc3339_is_utc_seconds_whatever_a_record_says() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        // Past what the format can hold: shown as the number (these had panicked).
        assert_eq!(rfc3339(253_402_300_800), "@253402300800");
        assert_eq!(rfc3339(u64::MAX), format!("@{}", u64::MAX));
    }
}
