//! `amlx-agent ports list`: this node's live reservations and stale lock files.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use crate::cli::PortsListArgs;
use crate::config::Settings;
use crate::ports::listing::{self, Entry, Listing};
use crate::ports::{self, PortRange};

/// Widest command shown in the table (the JSON has it whole).
const COMMAND_COLUMN: usize = 60;

/// The whole `--json` document.
#[derive(Debug, Serialize)]
struct Report {
    /// The directory listed; `null` when none of the candidates exists.
    #[serde(serialize_with = "lossy_lock_dir")]
    lock_dir: Option<PathBuf>,
    /// Every directory considered, in order.
    #[serde(serialize_with = "crate::ports::listing::lossy_paths")]
    candidates: Vec<PathBuf>,
    /// The `--port-range` filter, when one was given.
    range: Option<String>,
    #[serde(flatten)]
    listing: Listing,
}

/// [`crate::ports::listing::lossy_path`] for the optional directory.
fn lossy_lock_dir<S: serde::Serializer>(dir: &Option<PathBuf>, out: S) -> Result<S::Ok, S::Error> {
    match dir {
        Some(dir) => crate::ports::listing::lossy_path(dir, out),
        None => out.serialize_none(),
    }
}

pub fn list(args: &PortsListArgs, settings: &Settings) -> anyhow::Result<i32> {
    let lookup = ports::find_lock_dir(settings.ports.lock_dir.as_deref());
    // The whole directory unless a range was asked for: it is node-wide, shared by jobs
    // with different ranges.
    let range = args
        .ports
        .port_range
        .is_some()
        .then_some(settings.ports.range);
    let listing = match &lookup.dir {
        Some(dir) => {
            let listing = listing::scan(dir)
                .with_context(|| format!("could not list lock directory {}", dir.display()))?;
            match range {
                Some(range) => listing.within(range),
                None => listing,
            }
        }
        None => Listing::default(),
    };
    let report = Report {
        lock_dir: lookup.dir,
        candidates: lookup.candidates,
        range: range.map(|r| r.to_string()),
        listing,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report).context("could not write JSON")?;
        writeln!(out)?;
    } else {
        write_table(&mut out, &report, range)?;
    }
    Ok(0)
}

fn write_table(
    out: &mut impl Write,
    report: &Report,
    range: Option<PortRange>,
) -> std::io::Result<()> {
    let Some(dir) = &report.lock_dir else {
        let tried: Vec<String> = report
            .candidates
            .iter()
            .map(|p| match std::fs::symlink_metadata(p) {
                // Something else by that name: say so rather than call it missing.
                Ok(meta) if !meta.is_dir() => format!(
                    "{} is {}",
                    p.display(),
                    crate::ports::lockfile::file_kind(&meta.file_type())
                ),
                _ => p.display().to_string(),
            })
            .collect();
        return writeln!(
            out,
            "no lock directory exists ({}): nothing is reserved on this node",
            tried.join(", ")
        );
    };
    let scope = range.map(|r| format!(" in {r}")).unwrap_or_default();
    writeln!(out, "lock dir {}", dir.display())?;
    let live = &report.listing.live;
    if live.is_empty() {
        writeln!(out, "no live reservations{scope}")?;
    } else {
        writeln!(out, "{} live reservation(s){scope}:", live.len())?;
        writeln!(
            out,
            "{:<6} {:<8} {:<5} {:<21} COMMAND",
            "PORT", "PID", "RANK", "SINCE"
        )?;
        for entry in live {
            writeln!(out, "{}", row(entry))?;
        }
    }
    let stale = &report.listing.stale;
    if !stale.is_empty() {
        let ports: Vec<String> = stale.iter().map(|e| e.port.to_string()).collect();
        writeln!(
            out,
            "{} stale lock file(s), free for reuse (holder gone): {}",
            stale.len(),
            ports.join(" ")
        )?;
    }
    for bad in &report.listing.unreadable {
        writeln!(out, "cannot inspect {}: {}", bad.path.display(), bad.error)?;
    }
    Ok(())
}

fn row(entry: &Entry) -> String {
    let Some(record) = &entry.record else {
        return format!(
            "{:<6} {:<8} {:<5} {:<21} (record not readable)",
            entry.port, "?", "?", "?"
        );
    };
    let rank = record
        .rank
        .map_or_else(|| "-".to_owned(), |r| r.to_string());
    let since = crate::publish::status_file::rfc3339(record.since);
    // Lock records are files anyone may write: no terminal escapes or forged rows.
    let shown = crate::logging::loggable(&record.command);
    let mut command: String = shown.chars().take(COMMAND_COLUMN).collect();
    if command.len() < shown.len() {
        command.push('…');
    }
    let note = if entry.holder_running {
        ""
    } else {
        // The step no longer holds its lock across exec: its session's keeper does, and
        // lets go when the session ends (a moment after the step; later only when the
        // keeper is stopped or stuck).
        "  (pid gone, the lock still held: most likely by its debug session's keeper)"
    };
    format!(
        "{:<6} {:<8} {:<5} {:<21} {command}{note}",
        entry.port, record.pid, rank, since
    )
}
