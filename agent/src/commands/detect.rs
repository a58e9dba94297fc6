//! `amlx-agent detect`: what the agent sees and what the policy decides.
//!
//! The output goes out in one `write(2)`: several processes under one `mpiexec` share
//! stdout, and each must print whole lines.

use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::Context as _;
use serde::Serialize;

use crate::cli::DetectArgs;
use crate::config::Settings;
use crate::netinfo::{self, NodeInfo};
use crate::policy::{self, Decision, Policy, Verdict};
use crate::process::lineage;
use crate::role::{Detection, Launcher, ProcessEnv};

pub fn run(args: &DetectArgs, settings: &Settings) -> anyhow::Result<i32> {
    let detection = super::detect_role(&args.role);
    // With a command, exactly `exec`'s decision; without one, the launcher variables'.
    let decision = if args.command.is_empty() {
        policy::decide(&settings.policy, &detection.role)
    } else {
        let lineage = lineage::current(&ProcessEnv);
        let facts = super::exec::step_facts(&args.command, lineage, &detection);
        policy::decide_step(&settings.policy, &detection.role, &facts)
    };
    let node = netinfo::discover(settings.node_ip);
    let report = Report {
        detection: &detection,
        policy: &settings.policy,
        decision: &decision,
        node: &node,
    };
    let out = if args.json {
        report.json()?
    } else {
        report.text()
    };
    write_once(out.as_bytes()).context("could not write to stdout")?;
    Ok(0)
}

/// Everything `detect` prints.
struct Report<'a> {
    detection: &'a Detection,
    policy: &'a Policy,
    decision: &'a Decision,
    node: &'a NodeInfo,
}

impl Report<'_> {
    /// One JSON object on one line; unknown values are `null`.
    fn json(&self) -> anyhow::Result<String> {
        let role = &self.detection.role;
        let out = JsonReport {
            launcher: role.launcher,
            rank: role.rank,
            local_rank: role.local_rank,
            world_size: role.world_size,
            local_world_size: role.local_world_size,
            node_rank: role.node_rank,
            node_master: role.node_master,
            hostname: self.hostname(),
            node_ip: self.node.ip,
            debug: JsonDebug {
                enabled: self.policy.enabled,
                ranks: self.policy.ranks.to_string(),
                verdict: self.decision.verdict,
                target: self.decision.verdict == Verdict::Target,
                reason: &self.decision.reason,
                slot_limit: self.decision.slot_limit,
            },
            warnings: &self.detection.warnings,
        };
        let line = serde_json::to_string(&out).context("could not encode the report as JSON")?;
        Ok(line + "\n")
    }

    /// Aligned `key: value` lines.
    fn text(&self) -> String {
        let role = &self.detection.role;
        let known = |v: Option<u32>| v.map_or_else(|| "unknown".to_owned(), |n| n.to_string());
        let yes_no = |v: Option<bool>| match v {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        };
        let verdict = match self.decision.verdict {
            Verdict::Target => "target",
            Verdict::NotTarget => "not a target",
            Verdict::Candidate => "candidate (if it wins a node slot)",
        };
        let mut lines: Vec<(&str, String)> = vec![
            ("launcher", role.launcher.to_string()),
            ("rank", known(role.rank)),
            ("local rank", known(role.local_rank)),
            ("world size", known(role.world_size)),
            ("local world size", known(role.local_world_size)),
            ("node rank", known(role.node_rank)),
            ("node master", yes_no(role.node_master).to_owned()),
            ("hostname", self.hostname().unwrap_or("unknown").to_owned()),
            (
                "node ip",
                self.node
                    .ip
                    .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string()),
            ),
            (
                "debug",
                format!(
                    "{} (--ranks {})",
                    if self.policy.enabled { "on" } else { "off" },
                    self.policy.ranks
                ),
            ),
            ("debug target", verdict.to_owned()),
            ("reason", self.decision.reason.clone()),
            (
                "node slots",
                self.decision
                    .slot_limit
                    .map_or_else(|| "unbounded".to_owned(), |n| n.to_string()),
            ),
        ];
        lines.extend(
            self.detection
                .warnings
                .iter()
                .map(|w| ("warning", w.clone())),
        );
        let width = lines.iter().map(|(key, _)| key.len()).max().unwrap_or(0) + 1;
        let mut out = String::new();
        for (key, value) in lines {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "{:<width$} {value}", format!("{key}:"));
        }
        out
    }

    fn hostname(&self) -> Option<&str> {
        Some(self.node.hostname.as_str()).filter(|h| !h.is_empty())
    }
}

/// The `--json` shape (field order is output order).
#[derive(Serialize)]
struct JsonReport<'a> {
    launcher: Launcher,
    rank: Option<u32>,
    local_rank: Option<u32>,
    world_size: Option<u32>,
    local_world_size: Option<u32>,
    node_rank: Option<u32>,
    node_master: Option<bool>,
    hostname: Option<&'a str>,
    node_ip: Option<IpAddr>,
    debug: JsonDebug<'a>,
    warnings: &'a [String],
}

#[derive(Serialize)]
struct JsonDebug<'a> {
    enabled: bool,
    ranks: String,
    verdict: Verdict,
    /// `verdict == target`, for scripts that only want a yes/no.
    target: bool,
    reason: &'a str,
    /// At most this many live targets on the node; `null`: unbounded.
    slot_limit: Option<u32>,
}

/// Writes `buf` to stdout in a single `write(2)` when the kernel takes it whole (pipes
/// do up to `PIPE_BUF` atomically), looping only on a short write.
fn write_once(mut buf: &[u8]) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    while !buf.is_empty() {
        match nix::unistd::write(&stdout, buf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(())
}
