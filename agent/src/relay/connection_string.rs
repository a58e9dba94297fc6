//! Azure Relay connection strings:
//! `Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=n;SharedAccessKey=k[;EntityPath=hc]`.
//!
//! Split on `;` (empty parts dropped), then on the first `=` (keys end in `=` padding),
//! keys case-insensitive, unknown keys refused by name. Values of secret keys never
//! appear in errors or `Debug`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use url::Url;

use crate::config::Secret;
use crate::relay::sas;

/// Why a connection string cannot be used. Never carries a key or signature value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    #[error("connection string part {0} has no '=' (expected Key=Value)")]
    NoEquals(usize),
    /// The key as written when it looks like a key name, else only its length: a secret
    /// after a stray `;` is not echoed.
    #[error(
        "unknown connection string key {0} (known: Endpoint, EntityPath, SharedAccessKeyName, SharedAccessKey, SharedAccessSignature, OperationTimeout, Authentication)"
    )]
    UnknownKey(String),
    /// A value holds another part (`SharedAccessKeyName=nSharedAccessKey=k`): the value
    /// would carry a secret into a token's key name or the wrong field.
    #[error(
        "connection string {0} holds '{1}=': is a ';' missing before {1}? (the value is not shown)"
    )]
    MissingSeparator(&'static str, &'static str),
    #[error(
        "connection string SharedAccessKeyName contains '=' (the value is not shown): it looks like a key; is a ';' missing, or are the name and key swapped?"
    )]
    KeyNameWithEquals,
    #[error("connection string key {0} appears twice")]
    Duplicate(&'static str),
    #[error("connection string has no Endpoint=sb://<namespace>/")]
    NoEndpoint,
    #[error("connection string Endpoint {0:?} is not sb://host[:port]/")]
    BadEndpoint(String),
    #[error(
        "connection string Endpoint {0:?} has a host name that is not ASCII; write it in its Punycode form (xn--...)"
    )]
    NonAsciiHost(String),
    #[error(
        "connection string has no credentials: add SharedAccessKeyName and SharedAccessKey, or SharedAccessSignature"
    )]
    NoCredentials,
    #[error("connection string has {0} without {1}")]
    Incomplete(&'static str, &'static str),
    #[error(
        "connection string has both SharedAccessSignature and SharedAccessKey/SharedAccessKeyName; keep one"
    )]
    BothCredentials,
    #[error(
        "connection string SharedAccessKeyName or SharedAccessKey is longer than {} characters",
        sas::MAX_KEY_FIELD_CHARS
    )]
    TooLong,
    #[error("connection string OperationTimeout {0:?} is not hh:mm:ss")]
    BadTimeout(String),
    #[error(
        "connection string Authentication={0:?} is not supported; use SharedAccessKeyName/SharedAccessKey or SharedAccessSignature"
    )]
    UnsupportedAuthentication(String),
}

/// How the client proves its right.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Sign fresh tokens with this key.
    Key { name: String, key: Secret },
    /// Use this ready-made token as is.
    Signature(Secret),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Key { name, .. } => write!(f, "Key {{ name: {name:?}, key: *** }}"),
            Credentials::Signature(_) => f.write_str("Signature(***)"),
        }
    }
}

/// Which WebSocket scheme the client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// `wss://` (TLS), always used with Azure.
    #[default]
    Tls,
    /// Plain `ws://`: only for a self-hosted relay on a loopback address.
    InsecureWs,
}

/// A parsed, validated connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// Namespace host name or address, as written.
    pub host: String,
    /// Explicit port from `Endpoint` (a self-hosted relay); `None` means the scheme default.
    pub port: Option<u16>,
    /// The Hybrid Connection, when the string names one.
    pub entity_path: Option<String>,
    pub credentials: Credentials,
    /// How long one operation (connect, handshake) may take, when set.
    pub operation_timeout: Option<Duration>,
}

/// Canonical names of the keys we know, matched case-insensitively.
const KNOWN_KEYS: [&str; 7] = [
    "Endpoint",
    "EntityPath",
    "SharedAccessKeyName",
    "SharedAccessKey",
    "SharedAccessSignature",
    "OperationTimeout",
    "Authentication",
];

impl FromStr for ConnectionString {
    type Err = ConnectionStringError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut values: [Option<&str>; KNOWN_KEYS.len()] = Default::default();
        let parts = s.split(';').map(str::trim).filter(|p| !p.is_empty());
        for (index, part) in parts.enumerate() {
            let (key, value) = part
                .split_once('=')
                .ok_or(ConnectionStringError::NoEquals(index + 1))?;
            let key = key.trim();
            let slot = KNOWN_KEYS
                .iter()
                .position(|k| k.eq_ignore_ascii_case(key))
                .ok_or_else(|| ConnectionStringError::UnknownKey(shown_part_key(key)))?;
            if let Some(inner) = embedded_part(value) {
                return Err(ConnectionStringError::MissingSeparator(
                    KNOWN_KEYS[slot],
                    inner,
                ));
            }
            if values[slot].replace(value.trim()).is_some() {
                return Err(ConnectionStringError::Duplicate(KNOWN_KEYS[slot]));
            }
        }
        let [
            endpoint,
            entity,
            key_name,
            key,
            signature,
            timeout,
            authentication,
        ] = values;
        let (host, port) = parse_endpoint(endpoint.ok_or(ConnectionStringError::NoEndpoint)?)?;
        let credentials = match (key_name, key, signature) {
            (None, None, Some(sig)) => Credentials::Signature(Secret::new(sig)),
            (Some(name), Some(key), None) => {
                if name.contains('=') {
                    return Err(ConnectionStringError::KeyNameWithEquals);
                }
                if name.chars().count() > sas::MAX_KEY_FIELD_CHARS
                    || key.chars().count() > sas::MAX_KEY_FIELD_CHARS
                {
                    return Err(ConnectionStringError::TooLong);
                }
                Credentials::Key {
                    name: name.to_owned(),
                    key: Secret::new(key),
                }
            }
            (_, _, Some(_)) => return Err(ConnectionStringError::BothCredentials),
            (Some(_), None, None) => {
                return Err(ConnectionStringError::Incomplete(
                    "SharedAccessKeyName",
                    "SharedAccessKey",
                ));
            }
            (None, Some(_), None) => {
                return Err(ConnectionStringError::Incomplete(
                    "SharedAccessKey",
                    "SharedAccessKeyName",
                ));
            }
            (None, None, None) => {
                return Err(match authentication {
                    Some(a) => ConnectionStringError::UnsupportedAuthentication(a.to_owned()),
                    None => ConnectionStringError::NoCredentials,
                });
            }
        };
        let operation_timeout = timeout.map(parse_timespan).transpose()?;
        Ok(ConnectionString {
            host,
            port,
            entity_path: entity
                .map(|e| e.trim_matches('/').to_owned())
                .filter(|e| !e.is_empty()),
            credentials,
            operation_timeout,
        })
    }
}

/// The longest unknown part key an error shows as written.
const MAX_SHOWN_PART_KEY_CHARS: usize = 32;

/// An unknown part's key for the error: as written when it looks like a key name (ASCII
/// letters, at most [`MAX_SHOWN_PART_KEY_CHARS`]), else only its length — after a stray
/// `;` the "key" may be the start of a secret.
fn shown_part_key(key: &str) -> String {
    let plausible = !key.is_empty()
        && key.len() <= MAX_SHOWN_PART_KEY_CHARS
        && key.bytes().all(|b| b.is_ascii_alphabetic());
    if plausible {
        format!("{key:?}")
    } else {
        format!("of {} characters (not shown)", key.chars().count())
    }
}

/// A known part written inside a value, `Key=` followed by more text: the `;` before it
/// is missing. A base64 key may end in `=` padding, so only a known key name with text
/// after its `=` counts.
fn embedded_part(value: &str) -> Option<&'static str> {
    let lower = value.to_ascii_lowercase();
    KNOWN_KEYS.iter().copied().find(|known| {
        let needle = format!("{}=", known.to_ascii_lowercase());
        lower
            .match_indices(&needle)
            .any(|(at, _)| lower.len() > at + needle.len())
    })
}

/// An Endpoint for an error message, user info (`sb://user:password@host/`) masked.
fn shown_endpoint(value: &str) -> String {
    match value.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => value.to_owned(),
        },
        None => match value.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => value.to_owned(),
        },
    }
}

fn parse_endpoint(value: &str) -> Result<(String, Option<u16>), ConnectionStringError> {
    let bad = || ConnectionStringError::BadEndpoint(shown_endpoint(value));
    // A host no relay has: an internationalised name is said to be one (write it in
    // Punycode), anything else is a bad Endpoint.
    let bad_host = || {
        if value.is_ascii() {
            bad()
        } else {
            ConnectionStringError::NonAsciiHost(shown_endpoint(value))
        }
    };
    // web_url refuses a host that is not a plain ASCII name for https/wss.
    let url = crate::web_url::parse(value).map_err(|_| bad_host())?;
    if !matches!(url.scheme(), "sb" | "https" | "wss") {
        return Err(bad());
    }
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(bad)?;
    // `sb` is no scheme the URL parser knows, so it keeps a host as written, percent-
    // encoding what is not ASCII.
    if host.contains('%') {
        return Err(bad_host());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad());
    }
    // `sb`, unlike https/wss, has no default port in the url crate, so `port()` is what
    // was written; for https/wss an explicit :443 is dropped, which is the same thing.
    Ok((host.to_ascii_lowercase(), url.port()))
}

/// .NET `TimeSpan` text: `[d.]hh:mm:ss[.fraction]`.
fn parse_timespan(value: &str) -> Result<Duration, ConnectionStringError> {
    let bad = || ConnectionStringError::BadTimeout(value.to_owned());
    let (days, clock) = match value.split_once('.') {
        Some((d, rest)) if !d.contains(':') => (d.parse::<u64>().map_err(|_| bad())?, rest),
        _ => (0, value),
    };
    let fields: Vec<&str> = clock.split(':').collect();
    let [h, m, s] = fields.as_slice() else {
        return Err(bad());
    };
    let hours: u64 = h.parse().map_err(|_| bad())?;
    let minutes: u64 = m.parse().map_err(|_| bad())?;
    let seconds: f64 = s.parse().map_err(|_| bad())?;
    if minutes >= 60 || !(0.0..60.0).contains(&seconds) {
        return Err(bad());
    }
    let whole = days
        .checked_mul(86_400)
        .and_then(|d| d.checked_add(hours.checked_mul(3_600)?))
        .and_then(|dh| dh.checked_add(minutes * 60))
        .ok_or_else(bad)?;
    Duration::from_secs(whole)
        .checked_add(Duration::from_secs_f64(seconds))
        .ok_or_else(bad)
}

impl ConnectionString {
    /// The WebSocket base URL (`wss://host[:port]`, or `ws://` for [`Transport::InsecureWs`],
    /// which is refused unless the host is a loopback address).
    pub fn ws_base(&self, transport: Transport) -> Result<Url, InsecureTransportError> {
        let scheme = match transport {
            Transport::Tls => "wss",
            Transport::InsecureWs if is_loopback_host(&self.host) => "ws",
            Transport::InsecureWs => {
                return Err(InsecureTransportError {
                    host: self.host.clone(),
                });
            }
        };
        let authority = match self.port {
            Some(port) => format!("{}:{port}", bracket_ipv6(&self.host)),
            None => bracket_ipv6(&self.host),
        };
        crate::web_url::parse(&format!("{scheme}://{authority}/")).map_err(|_| {
            InsecureTransportError {
                host: self.host.clone(),
            }
        })
    }

    /// The Hybrid Connection to use: `explicit` (from `--hc`) wins over `EntityPath`.
    pub fn entity<'a>(&'a self, explicit: Option<&'a str>) -> Option<&'a str> {
        explicit
            .map(|e| e.trim_matches('/'))
            .filter(|e| !e.is_empty())
            .or(self.entity_path.as_deref())
    }

    /// A token for `path`: freshly signed (valid for `ttl` from `now`) or the given signature.
    pub fn token(&self, path: &str, now: u64, ttl: Duration) -> Result<Secret, sas::SasError> {
        match &self.credentials {
            Credentials::Signature(sig) => Ok(sig.clone()),
            Credentials::Key { name, key } => sas::sign(
                &sas::audience(&self.host, path),
                name,
                key,
                now.saturating_add(ttl.as_secs()),
            ),
        }
    }

    /// Expiry (unix seconds) of the token [`ConnectionString::token`] would produce, when known.
    pub fn token_expiry(&self, now: u64, ttl: Duration) -> Option<u64> {
        match &self.credentials {
            Credentials::Key { .. } => Some(now.saturating_add(ttl.as_secs())),
            Credentials::Signature(sig) => {
                sas::SasToken::parse(sig.expose()).ok().map(|t| t.expiry)
            }
        }
    }
}

/// `ws://` was asked for a relay that is not on loopback.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "plain ws:// is only allowed to a loopback relay, not {host:?}; drop the insecure-ws option and use wss"
)]
pub struct InsecureTransportError {
    pub host: String,
}

/// `localhost`, `127.0.0.0/8` or `::1`.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

fn bracket_ipv6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

#[cfg(test)]
#[path = "connection_string_tests.rs"]
mod tests;
