//! VS Code launch configurations for a job's debug ports: one attach configuration per
//! port and a compound that starts them all, merged into `.vscode/launch.json`.
//!
//! - connect mode: debugpy on the node connects out, so VS Code must listen:
//!   `"listen": {"host", "port"}` where `relay listen` on the laptop delivers it.
//! - listen / direct: VS Code connects to `"connect": {"host", "port"}`: the laptop end of
//!   `relay connect`, or the node IP the agent logged.
//! - `"justMyCode": false`: training code is mostly libraries (torch, transformers) and
//!   the remote paths often miss the path mappings, which would make debugpy skip the very
//!   frames being debugged.
//! - The compound has no `stopAll`: when one rank finishes, the others keep their debugger.
//! - Only entries whose name starts with [`NAME_PREFIX`] are ever replaced; everything
//!   else in the file, comments included, is kept byte for byte.

mod file;
mod jsonc;
mod merge;

use std::collections::BTreeSet;

use serde::Serialize;

use crate::policy::RankSpec;
use crate::session::DebugMode;

pub use file::{LOCK_WAIT, MAX_LAUNCH_JSON_BYTES, WriteOutcome, backup_path, write};
pub use jsonc::SyntaxError;
pub use merge::MergeError;

/// Every generated configuration and compound is named with this prefix.
pub const NAME_PREFIX: &str = "amlx: ";
/// The compound that starts every generated configuration.
pub const COMPOUND_NAME: &str = "amlx: all ranks";
/// The configuration that listens for whichever rank crashes (`--post-mortem`).
pub const POST_MORTEM_NAME: &str = "amlx: post-mortem (any rank)";
/// Rank r gets port base + r, as the agent's reservations prefer.
pub const DEFAULT_PORT_BASE: u16 = 5678;
/// More configurations than this is a typo (`--ranks 0-100000`), not a debugging session.
pub const MAX_TARGETS: usize = 1024;
/// `presentation.group`: keeps the generated entries together in VS Code's picker.
const PRESENTATION_GROUP: &str = "amlx";
/// The start of a launch.json this command creates.
const NEW_FILE: &str = "{\n    // Written by amlx-agent launch-json. Entries named \"amlx: ...\" are replaced\n    // on every run; add your own configurations freely, they are kept.\n    \"version\": \"0.2.0\"\n}\n";
/// The same without the comment: what `--output -` prints (plain JSON for pipes).
const NEW_DOCUMENT: &str = "{\n    \"version\": \"0.2.0\"\n}\n";

/// One debuggable process: its port, and its rank when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugTarget {
    pub rank: Option<u32>,
    pub port: u16,
}

impl DebugTarget {
    /// `amlx: rank 0 (port 5678)`, or `amlx: port 5678` when the rank is unknown.
    pub fn name(&self) -> String {
        match self.rank {
            Some(rank) => format!("{NAME_PREFIX}rank {rank} (port {})", self.port),
            None => format!("{NAME_PREFIX}port {}", self.port),
        }
    }
}

/// Bad `--ports` / `--ranks` input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("no ports given")]
    Empty,
    #[error("port 0 is not a debug port")]
    PortZero,
    #[error("port {0} is listed twice")]
    DuplicatePort(u16),
    #[error(transparent)]
    RankSpec(#[from] crate::policy::RankSpecError),
    #[error("--ranks {0} depends on the job; list the ranks, e.g. 0-3 or 0,2")]
    NotExplicit(String),
    #[error("rank {rank} with --port-base {base} is past port 65535")]
    PortOverflow { rank: u32, base: u16 },
    #[error("{0} configurations is more than the {MAX_TARGETS} this command writes")]
    TooMany(usize),
}

/// One target per port, in the order given.
pub fn targets_from_ports(ports: &[u16]) -> Result<Vec<DebugTarget>, TargetError> {
    if ports.is_empty() {
        return Err(TargetError::Empty);
    }
    if ports.len() > MAX_TARGETS {
        return Err(TargetError::TooMany(ports.len()));
    }
    let mut seen = BTreeSet::new();
    ports
        .iter()
        .map(|&port| match port {
            0 => Err(TargetError::PortZero),
            p if !seen.insert(p) => Err(TargetError::DuplicatePort(p)),
            p => Ok(DebugTarget {
                rank: None,
                port: p,
            }),
        })
        .collect()
}

/// One target per rank of an explicit spec (`0-3`, `0,2,5-7`), port = `base` + rank.
pub fn targets_from_ranks(spec: &str, base: u16) -> Result<Vec<DebugTarget>, TargetError> {
    let RankSpec::Ranks(ranges) = spec.parse::<RankSpec>()? else {
        return Err(TargetError::NotExplicit(spec.trim().to_owned()));
    };
    let mut ranks = BTreeSet::new();
    for range in ranges {
        // Check the size before expanding: `0-4000000000` must not allocate.
        let count = (*range.end() - *range.start()) as usize + 1;
        if ranks.len() + count > MAX_TARGETS {
            return Err(TargetError::TooMany(ranks.len() + count));
        }
        ranks.extend(range);
    }
    ranks
        .into_iter()
        .map(|rank| {
            let port = u16::try_from(rank)
                .ok()
                .and_then(|r| base.checked_add(r))
                .ok_or(TargetError::PortOverflow { rank, base })?;
            // `--port-base 0`: rank 0 would get port 0, which `--ports 0` refuses too.
            if port == 0 {
                return Err(TargetError::PortZero);
            }
            Ok(DebugTarget {
                rank: Some(rank),
                port,
            })
        })
        .collect()
}

/// Everything that goes into the generated entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    /// How debugpy and VS Code meet (decides `listen` vs `connect`).
    pub mode: DebugMode,
    /// Where VS Code listens (connect mode) or connects (listen/direct mode).
    pub host: String,
    pub targets: Vec<DebugTarget>,
    /// `pathMappings[0].localRoot`, e.g. `${workspaceFolder}`.
    pub local_root: String,
    /// `pathMappings[0].remoteRoot`, e.g. `.` (the step's working directory).
    pub remote_root: String,
    /// Connect mode: one more configuration, [`POST_MORTEM_NAME`], where VS Code listens
    /// on this port for the post-mortem session of whichever rank crashes (`relay listen`
    /// with a single forward delivers any port to it).
    pub post_mortem_port: Option<u16>,
}

#[derive(Serialize)]
struct HostPort<'a> {
    host: &'a str,
    port: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PathMapping<'a> {
    local_root: &'a str,
    remote_root: &'a str,
}

#[derive(Serialize)]
struct Presentation {
    group: &'static str,
    order: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AttachConfig<'a> {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    request: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<HostPort<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connect: Option<HostPort<'a>>,
    path_mappings: [PathMapping<'a>; 1],
    just_my_code: bool,
    presentation: Presentation,
}

#[derive(Serialize)]
struct Compound {
    name: &'static str,
    configurations: Vec<String>,
    presentation: Presentation,
}

fn pretty(value: &impl Serialize) -> String {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(merge::ENTRY_INDENT.as_bytes());
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    value
        .serialize(&mut serializer)
        .expect("plain structs of strings and numbers always serialize");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// The generated attach configurations, pretty-printed, one per target (and the
/// post-mortem one last).
pub fn configurations(spec: &LaunchSpec) -> Vec<String> {
    let post_mortem = spec
        .post_mortem_port
        .map(|port| (POST_MORTEM_NAME.to_owned(), port, DebugMode::Connect));
    spec.targets
        .iter()
        .map(|target| (target.name(), target.port, spec.mode))
        .chain(post_mortem)
        .enumerate()
        .map(|(i, (name, port, mode))| {
            let endpoint = HostPort {
                host: &spec.host,
                port,
            };
            let (listen, connect) = match mode {
                DebugMode::Connect => (Some(endpoint), None),
                DebugMode::Listen | DebugMode::Direct => (None, Some(endpoint)),
            };
            pretty(&AttachConfig {
                name,
                kind: "debugpy",
                request: "attach",
                listen,
                connect,
                path_mappings: [PathMapping {
                    local_root: &spec.local_root,
                    remote_root: &spec.remote_root,
                }],
                just_my_code: false,
                presentation: Presentation {
                    group: PRESENTATION_GROUP,
                    order: i + 1,
                },
            })
        })
        .collect()
}

/// The generated compound, pretty-printed.
pub fn compound(spec: &LaunchSpec) -> String {
    pretty(&Compound {
        name: COMPOUND_NAME,
        configurations: spec.targets.iter().map(DebugTarget::name).collect(),
        presentation: Presentation {
            group: PRESENTATION_GROUP,
            order: 0,
        },
    })
}

/// Replaces the generated entries of an existing launch.json (JSON with comments),
/// keeping every other entry, comment and blank line as it was.
pub fn merge(existing: &str, spec: &LaunchSpec) -> Result<String, MergeError> {
    // Without rank configurations (only the post-mortem one) there is nothing to start
    // together.
    let compounds = if spec.targets.is_empty() {
        Vec::new()
    } else {
        vec![compound(spec)]
    };
    let sections = [
        ("configurations", configurations(spec)),
        ("compounds", compounds),
    ];
    merge::merge(existing, |name| name.starts_with(NAME_PREFIX), &sections)
}

/// A complete launch.json holding only the generated entries (plain JSON, no comment).
pub fn render(spec: &LaunchSpec) -> String {
    merge(NEW_DOCUMENT, spec).expect("the built-in document is a JSON object")
}

#[cfg(test)]
mod tests;
