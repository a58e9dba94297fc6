//! The TOML file: its schema (an unknown key is an error), and errors naming file, line, key.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::LogFormat;
use crate::inject::InjectMode;
use crate::policy::RankSpec;
use crate::ports::PortRange;
use crate::session::{DebugMode, FailurePolicy};

use super::ConfigError;
use super::secret::Secret;
use super::server::ServerSection;
use super::targets::TargetSection;
use super::value::{NodeIp, Parsed, PostMortemLimit, SpareTunnels, TargetLimit, TunnelLimit};
use toml::Spanned;

/// The whole file as written; every key is optional, absent means "not set here".
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FileConfig {
    pub debug: DebugSection,
    pub ports: PortsSection,
    pub node: NodeSection,
    pub log: LogSection,
    pub relay: RelaySection,
    pub targets: BTreeMap<String, Spanned<TargetSection>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DebugSection {
    pub enabled: Option<bool>,
    pub ranks: Option<Parsed<RankSpec>>,
    pub max_targets_per_node: Option<Parsed<TargetLimit>>,
    pub mode: Option<Parsed<DebugMode>>,
    pub on_debug_failure: Option<Parsed<FailurePolicy>>,
    pub attach_timeout: Option<Parsed<Duration>>,
    pub inject: Option<Parsed<InjectMode>>,
    pub wait_for_client: Option<bool>,
    pub post_mortem: Option<bool>,
    pub post_mortem_timeout: Option<Parsed<Duration>>,
    pub post_mortem_max: Option<Parsed<PostMortemLimit>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PortsSection {
    pub range: Option<Parsed<PortRange>>,
    #[serde(default, deserialize_with = "directory")]
    pub lock_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NodeSection {
    pub ip: Option<Parsed<NodeIp>>,
    #[serde(default, deserialize_with = "directory")]
    pub state_dir: Option<PathBuf>,
}

/// A directory setting: an empty one named the current directory, so records and locks
/// landed wherever the step happened to start.
fn directory<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let dir = PathBuf::deserialize(d)?;
    if dir.as_os_str().is_empty() {
        return Err(serde::de::Error::custom(
            "is empty: name a directory, or leave the key out for the default",
        ));
    }
    Ok(Some(dir))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogSection {
    pub format: Option<Parsed<LogFormat>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RelaySection {
    pub connection_string: Option<Secret>,
    pub connection_string_file: Option<PathBuf>,
    pub hybrid_connection: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub insecure_ws: Option<bool>,
    pub max_tunnels: Option<Parsed<TunnelLimit>>,
    pub spare_tunnels: Option<Parsed<SpareTunnels>>,
    #[serde(default)]
    pub server: ServerSection,
}

/// Largest config file read. Real ones are a few kilobytes; the bound keeps a mistaken
/// `--config /dev/zero` (or a huge log file) from filling memory.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Reads a config file of at most [`MAX_CONFIG_BYTES`] ([`crate::small_file::read_text`]).
pub(super) fn read_bounded(path: &Path) -> Result<String, String> {
    crate::small_file::read_text(path, MAX_CONFIG_BYTES, "config files")
}

/// The file being read, for error messages (`path:line: key: message`).
#[derive(Debug, Clone, Copy)]
pub(super) struct FileContext<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl FileContext<'_> {
    /// An error at `span` (a byte range of the text) about `key` (dotted; may be empty).
    pub fn error(&self, span: Option<Range<usize>>, key: &str, message: &str) -> ConfigError {
        let mut out = self.path.display().to_string();
        if let Some(span) = span {
            out.push_str(&format!(":{}", line_of(self.text, span.start)));
        }
        if !key.is_empty() {
            out.push_str(&format!(": {key}"));
        }
        ConfigError::new(format!("{out}: {message}"))
    }

    /// Parses the text. Messages never quote the file's text, only keys and values of
    /// non-secret settings, so a secret near a syntax error stays out of the log.
    pub fn parse(&self) -> Result<FileConfig, ConfigError> {
        self.parse_as()
    }

    /// [`parse`](Self::parse) into any schema (a targets file holds only `[targets.*]`).
    pub fn parse_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let root = toml::de::DeTable::parse(self.text)
            .map_err(|e| self.error(e.span(), "", &format!("malformed TOML: {}", e.message())))?;
        T::deserialize(toml::de::Deserializer::from(root)).map_err(|e| {
            let key = e
                .span()
                .map(|span| key_at(self.text, &span))
                .unwrap_or_default();
            let (key, message) = explain(key, e.message());
            self.error(e.span(), &key, &message)
        })
    }
}

/// 1-based line of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The dotted key whose entry holds `span` of `text` (`relay.server.keys[0].name`; empty
/// at the top level), read from the document's spans. The error of a setting carries its
/// span, not its key: the text is parsed once more, only for an error. (A crate that
/// tracks the path during deserialization cost the static binary 318 KB, more than any
/// other part of the configuration.)
pub(super) fn key_at(text: &str, span: &Range<usize>) -> String {
    toml::de::DeTable::parse(text)
        .ok()
        .and_then(|root| path_to(&toml::de::DeValue::Table(root.into_inner()), span, 0))
        .unwrap_or_default()
}

/// How deep [`path_to`] looks: settings sit a few tables down; below this (only a hostile
/// file nests deeper) the search stops and the error names the deepest key found.
pub(super) const MAX_KEY_DEPTH: usize = 32;

/// The path below `value` to the entry whose key or value covers `span`. A table's own
/// span covers its header only (`[relay.server]`), not the keys under it, so every entry
/// is searched, not only those that cover the span.
fn path_to(value: &toml::de::DeValue<'_>, span: &Range<usize>, depth: usize) -> Option<String> {
    if depth >= MAX_KEY_DEPTH {
        return None;
    }
    let covers = |outer: Range<usize>| outer.start <= span.start && span.end <= outer.end;
    match value {
        toml::de::DeValue::Table(table) => table.iter().find_map(|(key, value)| {
            let below = path_to(value.get_ref(), span, depth + 1);
            let here = covers(key.span()) || covers(value.span());
            match below {
                // An array's items follow their key directly: `keys[0]`.
                Some(below) if below.starts_with('[') => Some(format!("{}{below}", key.get_ref())),
                Some(below) => Some(format!("{}.{below}", key.get_ref())),
                None => here.then(|| key.get_ref().to_string()),
            }
        }),
        toml::de::DeValue::Array(array) => {
            array.into_iter().enumerate().find_map(|(index, item)| {
                match path_to(item.get_ref(), span, depth + 1) {
                    Some(below) if below.starts_with('[') => Some(format!("[{index}]{below}")),
                    Some(below) => Some(format!("[{index}].{below}")),
                    None => covers(item.span()).then(|| format!("[{index}]")),
                }
            })
        }
        _ => None,
    }
}

/// Rewrites serde's wording for keys ("unknown field `x`, expected one of `a`, `b`")
/// into the file's (`unknown key debug.x (known keys: a, b)`), returning (key, message).
fn explain(key: String, message: &str) -> (String, String) {
    let quoted = |text: &str| -> Vec<String> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, known) = rest.split_once('`').unwrap_or((rest, ""));
        // The key found by its span may be the unknown key itself, or its table.
        let full = if key == field || key.ends_with(&format!(".{field}")) {
            key.clone()
        } else if key.is_empty() {
            field.to_owned()
        } else {
            format!("{key}.{field}")
        };
        let known = quoted(known);
        let hint = if known.is_empty() {
            "this table takes no keys".to_owned()
        } else {
            format!("known keys: {}", known.join(", "))
        };
        return (String::new(), format!("unknown key {full} ({hint})"));
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        let full = if key.is_empty() {
            field.to_owned()
        } else {
            format!("{key}.{field}")
        };
        return (String::new(), format!("missing key {full}"));
    }
    (key, message.to_owned())
}
