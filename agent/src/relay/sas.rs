//! Shared Access Signature tokens: signing (clients) and lenient verification (`relay serve`).
//!
//! Wire facts (docs/relay.md, "The wire protocol"): the string to sign is
//! `UrlEncode(resource) + "\n" + expiry`, the HMAC-SHA256 key is the UTF-8 bytes of the
//! key string *as written* (never base64-decoded), and the token is
//! `SharedAccessSignature sr=<enc uri>&sig=<enc b64>&se=<expiry>&skn=<key name>`.
//! Clients disagree on the audience (`http://host/path/` for .NET, port kept and no
//! trailing slash for hyco-ws), so the verifier HMACs the raw `sr` it received and
//! normalises only for the authorisation check.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::Secret;

/// Every token starts with this word and a space.
pub const TOKEN_PREFIX: &str = "SharedAccessSignature";

/// Longest key name or key Azure accepts (and so do we).
pub const MAX_KEY_FIELD_CHARS: usize = 256;

/// How long a freshly signed token is valid (what the .NET client uses by default).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(60 * 60);

/// Characters left as-is by JavaScript's `encodeURIComponent`, which is what the test
/// vectors and hyco-ws use; everything else is `%XX` with upper-case hex.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// The longest key name [`shown_key_name`] shows as written.
const MAX_SHOWN_KEY_NAME_CHARS: usize = 64;

/// From this length, a key name with a digit in it is taken for a key (a 32-byte key is
/// 43 base64 or 64 hex characters) and not shown.
const KEY_LIKE_CHARS: usize = 32;

/// A key name for a message or log line: quoted when it looks like a name (letters,
/// digits, `.`, `_`, `-`, at most 64 characters, and not 32 or more with a digit among
/// them, as generated keys are), else only its length.
/// A client whose connection string lost a `;` sends its key as the key name; echoing
/// that in a 401 and the relay's log would spread the secret.
///
/// ```
/// use amlx_agent::relay::sas::shown_key_name;
/// assert_eq!(shown_key_name("RootManageSharedAccessKey"), "\"RootManageSharedAccessKey\"");
/// assert_eq!(
///     shown_key_name("c2VjcmV0a2V5=="),
///     "of 14 characters (not shown: it does not look like a key name; is a key in its place?)"
/// );
/// // A hex key has no '=' to give it away.
/// assert!(shown_key_name(&"3f9a1c2e".repeat(8)).starts_with("of 64 characters"));
/// ```
pub fn shown_key_name(name: &str) -> String {
    let chars = name.chars().count();
    // A generated key (hex, base64 without its padding) is long and has digits among its
    // letters; key names people choose (`RootManageSharedAccessKey`) rarely are both.
    let key_like = chars >= KEY_LIKE_CHARS && name.chars().any(|c| c.is_ascii_digit());
    let plausible = !name.is_empty()
        && chars <= MAX_SHOWN_KEY_NAME_CHARS
        && !key_like
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if plausible {
        format!("{name:?}")
    } else {
        format!(
            "of {} characters (not shown: it does not look like a key name; is a key in its place?)",
            name.chars().count()
        )
    }
}

/// Why a token was refused. [`SasError::status`] is the HTTP status the relay answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    #[error("no SAS token (send the ServiceBusAuthorization header or the sb-hc-token query)")]
    Missing,
    #[error("malformed SAS token: {0}")]
    Malformed(&'static str),
    /// The name as [`shown_key_name`] shows it: a key pasted where its name goes is not echoed.
    #[error("SAS key name {0} is not known to this relay")]
    UnknownKey(String),
    #[error("SAS signature does not match (wrong key for key name {0:?})")]
    BadSignature(String),
    #[error("SAS token expired at unix time {expiry} (now {now})")]
    Expired { expiry: u64, now: u64 },
    #[error("SAS token for {audience:?} does not cover path {path:?}")]
    WrongPath { audience: String, path: String },
    #[error("SAS key {key_name:?} lacks the {right} right")]
    MissingRight { key_name: String, right: Right },
    /// The token is good, but the relay's key may not reach this Hybrid Connection.
    #[error(
        "SAS key {key_name:?} may not reach Hybrid Connection {path:?}: the key's paths in \
         [relay.server] do not cover it"
    )]
    OutOfScope { key_name: String, path: String },
    #[error("SAS key name or key longer than {MAX_KEY_FIELD_CHARS} characters")]
    TooLong,
}

impl SasError {
    /// 401 for a token that is missing, malformed, unknown, forged or expired; 403 for a
    /// valid token that does not cover the requested path or action.
    pub fn status(&self) -> u16 {
        match self {
            SasError::WrongPath { .. }
            | SasError::MissingRight { .. }
            | SasError::OutOfScope { .. } => 403,
            _ => 401,
        }
    }
}

/// What a key may do on a Hybrid Connection (Azure's Listen and Send claims).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    Listen,
    Send,
}

impl std::fmt::Display for Right {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Right::Listen => "Listen",
            Right::Send => "Send",
        })
    }
}

/// Unix seconds now (0 if the clock is before 1970, which only makes tokens look expired).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The audience the .NET client signs for `host` and entity `path`: `http://host/path/`
/// (scheme http, no port, lower case, trailing slash). Azure and `relay serve` accept it.
pub fn audience(host: &str, path: &str) -> String {
    let path = path.trim_matches('/');
    let host = host.to_ascii_lowercase();
    if path.is_empty() {
        format!("http://{host}/")
    } else {
        format!("http://{host}/{}/", path.to_ascii_lowercase())
    }
}

/// Signs a token for `resource_uri` valid until `expiry` (unix seconds).
///
/// ```
/// use amlx_agent::config::Secret;
/// use amlx_agent::relay::sas;
///
/// let key = Secret::new("SGVsbG9Xb3JsZEtleUZvclRlc3RpbmdPbmx5IQ==");
/// let token = sas::sign(
///     "http://contoso.servicebus.windows.net/hyco/",
///     "RootManageSharedAccessKey",
///     &key,
///     1_700_000_000,
/// )
/// .expect("short key");
/// assert_eq!(
///     token.expose(),
///     "SharedAccessSignature sr=http%3A%2F%2Fcontoso.servicebus.windows.net%2Fhyco%2F\
///      &sig=V2vY%2FGGpVAbOe3TOt%2BFANHiotMuW%2F1qhr7k4tXr1%2F3I%3D&se=1700000000\
///      &skn=RootManageSharedAccessKey"
/// );
/// ```
pub fn sign(
    resource_uri: &str,
    key_name: &str,
    key: &Secret,
    expiry: u64,
) -> Result<Secret, SasError> {
    check_key_fields(key_name, key)?;
    let sr = utf8_percent_encode(resource_uri, URI_COMPONENT).to_string();
    let se = expiry.to_string();
    let sig = BASE64.encode(hmac(key, &sr, &se));
    let sig = utf8_percent_encode(&sig, URI_COMPONENT);
    // Encoded like the other fields: the relay decodes `skn`, and a name with `&` or `%`
    // (a connection string's SharedAccessKeyName may hold one) reached it as another.
    let skn = utf8_percent_encode(key_name, URI_COMPONENT);
    Ok(Secret::new(format!(
        "{TOKEN_PREFIX} sr={sr}&sig={sig}&se={se}&skn={skn}"
    )))
}

/// The base64 signature of `resource_uri` at `expiry` (exposed for the test vectors).
pub fn signature(resource_uri: &str, key: &Secret, expiry: u64) -> String {
    let sr = utf8_percent_encode(resource_uri, URI_COMPONENT).to_string();
    BASE64.encode(hmac(key, &sr, &expiry.to_string()))
}

fn hmac(key: &Secret, raw_sr: &str, raw_se: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
        .expect("HMAC-SHA256 takes keys of any length");
    mac.update(raw_sr.as_bytes());
    mac.update(b"\n");
    mac.update(raw_se.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn check_key_fields(key_name: &str, key: &Secret) -> Result<(), SasError> {
    if key_name.chars().count() > MAX_KEY_FIELD_CHARS
        || key.expose().chars().count() > MAX_KEY_FIELD_CHARS
    {
        return Err(SasError::TooLong);
    }
    Ok(())
}

/// The fields of a received token, as sent (nothing re-encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasToken {
    /// `sr` exactly as received (still URL-encoded): the HMAC covers these bytes.
    pub raw_resource: String,
    /// `se` exactly as received.
    pub raw_expiry: String,
    /// `se` as unix seconds.
    pub expiry: u64,
    /// `sig` URL-decoded: the base64 signature.
    pub signature: String,
    /// `skn`: which key signed it.
    pub key_name: String,
}

impl SasToken {
    /// Parses a token as found in the `ServiceBusAuthorization` header (or a query value
    /// already decoded once, e.g. by `url::Url::query_pairs`).
    pub fn parse(token: &str) -> Result<SasToken, SasError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(SasError::Missing);
        }
        let body = match token.split_once(' ') {
            Some((word, rest)) if word.eq_ignore_ascii_case(TOKEN_PREFIX) => rest.trim_start(),
            _ => {
                return Err(SasError::Malformed(
                    "does not start with SharedAccessSignature",
                ));
            }
        };
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for pair in body.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "sr" => sr = Some(value),
                "sig" => sig = Some(value),
                "se" => se = Some(value),
                "skn" => skn = Some(value),
                _ => {} // Unknown fields are ignored, like the service does.
            }
        }
        let raw_resource = sr.ok_or(SasError::Malformed("no sr"))?.to_owned();
        let raw_expiry = se.ok_or(SasError::Malformed("no se"))?.to_owned();
        let expiry = raw_expiry
            .parse::<u64>()
            .map_err(|_| SasError::Malformed("se is not unix seconds"))?;
        let signature = decode(sig.ok_or(SasError::Malformed("no sig"))?)?;
        let key_name = decode(skn.ok_or(SasError::Malformed("no skn"))?)?;
        if key_name.chars().count() > MAX_KEY_FIELD_CHARS {
            return Err(SasError::TooLong);
        }
        Ok(SasToken {
            raw_resource,
            raw_expiry,
            expiry,
            signature,
            key_name,
        })
    }

    /// Parses the raw `sb-hc-token` query value as it appears in the URL (decodes it once).
    pub fn parse_query(raw: &str) -> Result<SasToken, SasError> {
        let decoded: String = url::form_urlencoded::parse(format!("t={raw}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        SasToken::parse(&decoded)
    }

    /// Checks the signature with `key` (constant time) and that the token is not expired.
    pub fn verify(&self, key: &Secret, now: u64) -> Result<Audience, SasError> {
        check_key_fields(&self.key_name, key)?;
        let expected = hmac(key, &self.raw_resource, &self.raw_expiry);
        let given = BASE64
            .decode(self.signature.as_bytes())
            .map_err(|_| SasError::BadSignature(self.key_name.clone()))?;
        if !bool::from(expected.as_slice().ct_eq(given.as_slice())) {
            return Err(SasError::BadSignature(self.key_name.clone()));
        }
        if self.expiry <= now {
            return Err(SasError::Expired {
                expiry: self.expiry,
                now,
            });
        }
        Audience::from_raw(&self.raw_resource)
    }
}

fn decode(value: &str) -> Result<String, SasError> {
    percent_decode_str(value)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| SasError::Malformed("field is not UTF-8"))
}

/// The normalised audience of a verified token: `host/path`, lower case, without scheme,
/// port or trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience {
    /// Host name (lower case, no port).
    pub host: String,
    /// Entity path without leading or trailing `/` (empty for a namespace-wide token).
    pub path: String,
}

impl Audience {
    /// Normalises a still-encoded `sr` value.
    pub fn from_raw(raw_sr: &str) -> Result<Audience, SasError> {
        let decoded = decode(raw_sr)?.to_ascii_lowercase();
        let rest = decoded
            .split_once("://")
            .map_or(decoded.as_str(), |(_, r)| r);
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host = match authority.rsplit_once(':') {
            // `[::1]:443` keeps its brackets; a bare port suffix is dropped.
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => authority,
        };
        Ok(Audience {
            host: host.to_owned(),
            path: path.trim_matches('/').to_owned(),
        })
    }

    /// True when `path` (an entity path, with or without slashes; compared case-insensitively)
    /// equals the audience path or sits under it at a segment boundary.
    ///
    /// The host is not compared: a self-hosted relay is reached under many names
    /// (IP, DNS, port forward), and the key is what proves the right.
    pub fn covers(&self, path: &str) -> bool {
        let path = path.trim_matches('/').to_ascii_lowercase();
        if self.path.is_empty() {
            return true;
        }
        path == self.path
            || (path.starts_with(&self.path) && path.as_bytes().get(self.path.len()) == Some(&b'/'))
    }
}

#[cfg(test)]
#[path = "sas_tests.rs"]
mod tests;
