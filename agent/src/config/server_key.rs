//! One `[[relay.server.keys]]`: a shared access key of the self-hosted relay, its rights,
//! the Hybrid Connection paths it covers and its own connection limit, read and checked.

use serde::Deserialize;
use serde::de::{self, Deserializer};
use toml::Spanned;

use super::ConfigError;
use super::file::FileContext;
use super::secret::Secret;
use super::server::{MAX_KEY_CHARS, too_many_connections};
use super::value::{FromConfig, Parsed};
use crate::relay::sas::Right;

/// A key's `rights` words are Azure's claim names, parsed straight into the server's
/// vocabulary.
impl FromConfig for Right {
    fn from_config(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "listen" => Ok(Right::Listen),
            "send" => Ok(Right::Send),
            _ => Err(format!(
                "invalid right {text:?}: expected one of listen, send"
            )),
        }
    }
}

/// One shared access key of the self-hosted relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerKey {
    /// The `skn` tokens name.
    pub name: String,
    /// The key as written (signing uses its UTF-8 bytes, never a base64 decoding).
    pub key: Secret,
    /// What tokens signed with it may do.
    pub rights: Vec<Right>,
    /// Hybrid Connection paths it covers: exact names or globs where `*` matches any run
    /// of characters, `/` included (`*`, `team-a/*`); compared case-insensitively.
    pub paths: Vec<String>,
    /// Most connection slots (of `max_connections`) that connections authenticated with
    /// this key hold at once: its control channels, its senders, and the listener's leg
    /// of each of its senders' tunnels. `None`: only the relay's own limit, so one holder
    /// of the key (a leaked node key) can take every slot from every other key.
    pub max_connections: Option<usize>,
}

impl ServerKey {
    /// Whether a token signed with this key may do `right` on `path`.
    pub fn allows(&self, right: Right, path: &str) -> bool {
        self.rights.contains(&right) && self.covers(path)
    }

    /// Whether one of its path patterns matches `path`.
    pub fn covers(&self, path: &str) -> bool {
        self.paths.iter().any(|p| path_matches(p, path))
    }
}

/// Case-insensitive glob match of a Hybrid Connection path; outer slashes do not count.
///
/// ```
/// use amlx_agent::config::path_matches;
/// assert!(path_matches("team-a/*", "Team-A/job1/"));
/// assert!(!path_matches("team-a/*", "team-b/job1"));
/// ```
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let norm = |s: &str| {
        s.trim_matches('/')
            .to_lowercase()
            .chars()
            .collect::<Vec<_>>()
    };
    let (pat, text) = (norm(pattern), norm(path));
    // Greedy wildcard match with one backtrack point: linear enough for short paths.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pat.len() && pat[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if p < pat.len() && pat[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|c| *c == '*')
}

/// One `[[relay.server.keys]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeySection {
    #[serde(deserialize_with = "key_name")]
    pub(super) name: Spanned<String>,
    #[serde(deserialize_with = "key_secret")]
    key: Secret,
    #[serde(default, deserialize_with = "rights")]
    rights: Option<Vec<Right>>,
    #[serde(default, deserialize_with = "paths")]
    paths: Option<Vec<String>>,
    /// Checked against the key's rights (a key that may send needs two per tunnel).
    max_connections: Option<Spanned<usize>>,
}

impl KeySection {
    /// The key at `keys[i]` (whose name's uniqueness the caller checked).
    pub(super) fn into_key(
        self,
        i: usize,
        ctx: &FileContext<'_>,
    ) -> Result<ServerKey, ConfigError> {
        let name = self.name.into_inner();
        let rights = self
            .rights
            .unwrap_or_else(|| vec![Right::Listen, Right::Send]);
        let max_connections = match self.max_connections {
            None => None,
            Some(max) => {
                // A key that may only send uses its slots in twos; one that may also listen
                // may be meant for one control channel.
                let only_sends = rights == [Right::Send];
                let least = if only_sends { 2 } else { 1 };
                let n = *max.get_ref();
                let why = if n < least && only_sends {
                    Some(
                        "must be at least 2 for a key that may only send: each of its tunnels \
                         takes two, its sender's leg and its listener's"
                            .to_owned(),
                    )
                } else if n < least {
                    Some("must be at least 1".to_owned())
                } else if n > super::value::MOST_CONNECTIONS {
                    Some(too_many_connections(n))
                } else {
                    None
                };
                if let Some(why) = why {
                    return Err(ctx.error(
                        Some(max.span()),
                        &format!("relay.server.keys[{i}].max_connections"),
                        &why,
                    ));
                }
                Some(max.into_inner())
            }
        };
        Ok(ServerKey {
            name,
            key: self.key,
            rights,
            paths: self.paths.unwrap_or_else(|| vec!["*".to_owned()]),
            max_connections,
        })
    }
}

fn key_name<'de, D: Deserializer<'de>>(d: D) -> Result<Spanned<String>, D::Error> {
    let name = Spanned::<String>::deserialize(d)?;
    let len = name.get_ref().chars().count();
    if len == 0 || len > MAX_KEY_CHARS {
        return Err(de::Error::custom(format!(
            "key name must be 1 to {MAX_KEY_CHARS} characters (it has {len})"
        )));
    }
    // A token carries the name in `skn=`, which some clients (Microsoft's hyco-ws among
    // them) do not URL-encode: a name with `&`, `%`, `+`, `#`, `=` or a space reached the
    // relay as another name, and every token signed with it was refused with 401.
    if let Some(bad) = name
        .get_ref()
        .chars()
        .find(|c| matches!(c, '&' | '%' | '+' | '#' | '=') || c.is_whitespace() || c.is_control())
    {
        return Err(de::Error::custom(format!(
            "key name may not hold {bad:?}: '&', '%', '+', '#', '=', spaces and control \
             characters change meaning in a token's skn= field, which not every client \
             URL-encodes"
        )));
    }
    Ok(name)
}

fn key_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    let key = Secret::deserialize(d)?;
    let len = key.char_len();
    if len == 0 || len > MAX_KEY_CHARS {
        return Err(de::Error::custom(format!(
            "key must be 1 to {MAX_KEY_CHARS} characters (it has {len})"
        )));
    }
    Ok(key)
}

fn rights<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Right>>, D::Error> {
    let rights: Vec<Right> = Vec::<Parsed<Right>>::deserialize(d)?
        .into_iter()
        .map(|r| r.0)
        .collect();
    if rights.is_empty() {
        return Err(de::Error::custom(
            "must name at least one of listen, send (omit it for both)",
        ));
    }
    Ok(Some(rights))
}

fn paths<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let paths = Vec::<String>::deserialize(d)?;
    if paths.is_empty() || paths.iter().any(|p| p.trim_matches('/').is_empty()) {
        return Err(de::Error::custom(
            "must list non-empty path patterns, e.g. [\"*\"] or [\"team-a/*\"]",
        ));
    }
    Ok(Some(paths))
}
