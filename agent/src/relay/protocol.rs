//! Hybrid Connections wire protocol: URLs, query names, status texts and the control
//! channel's JSON messages, shared by the client and `relay serve`.
//!
//! See docs/relay.md, "The wire protocol". Everything here is pure (no I/O), and parses
//! text from outside: no byte-index slicing, no indexing that could panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::config::Secret;

/// First path segment of every Hybrid Connections URL.
pub const HC_SEGMENT: &str = "$hc";
/// Query parameter naming the action: listen, connect or accept.
pub const QUERY_ACTION: &str = "sb-hc-action";
/// Query parameter carrying the client's tracking id.
pub const QUERY_ID: &str = "sb-hc-id";
/// Query parameter carrying a URL-encoded SAS token (alternative to the header).
pub const QUERY_TOKEN: &str = "sb-hc-token";
/// Query parameter on a reject rendezvous: the status the sender gets.
pub const QUERY_STATUS_CODE: &str = "sb-hc-statusCode";
/// Query parameter on a reject rendezvous: the reason text the sender gets.
pub const QUERY_STATUS_DESCRIPTION: &str = "sb-hc-statusDescription";
/// Prefix of every query parameter that belongs to the protocol rather than the app.
pub const QUERY_PREFIX: &str = "sb-hc-";
/// Header carrying the SAS token (what .NET and Node send).
pub const HEADER_TOKEN: &str = "ServiceBusAuthorization";
/// Header the .NET client sends describing itself; servers ignore it.
pub const HEADER_USER_AGENT: &str = "Relay-User-Agent";
/// Text (prefix) of the 404 a sender gets when no listener is connected.
pub const NO_LISTENER_TEXT: &str = "There are no listeners connected for the endpoint.";

/// Handshake statuses with a protocol meaning.
pub mod status {
    /// Token missing or invalid (bad signature, expired).
    pub const UNAUTHORIZED: u16 = 401;
    /// Token valid but not for this path or action.
    pub const FORBIDDEN: u16 = 403;
    /// Unknown path, or no listener connected.
    pub const NOT_FOUND: u16 = 404;
    /// Answer to a listener's reject rendezvous: the reject succeeded.
    pub const GONE: u16 = 410;
    /// Misdirected request: a listener refusing a sender meant for another listener
    /// on the same Hybrid Connection (the sender tries again).
    pub const MISDIRECTED: u16 = 421;
    /// Service error.
    pub const SERVER_ERROR: u16 = 500;
    /// Busy, or unable to serve now: a listener's refusal that names why.
    pub const SERVICE_UNAVAILABLE: u16 = 503;
}

/// WebSocket close codes: the one list lives with the codec.
pub use crate::relay::websocket::close_code;

/// The query argument (`amlx-spare=1`) the upgrade of a spare tunnel carries (one
/// `relay connect --spare-tunnels` opens before a local connection needs it): the relay
/// passes it on in the accept address (Azure Relay passes app arguments as well), so
/// `relay listen` does not reach its target before the preamble, and `relay serve` logs
/// the spare only once it carried bytes.
pub const SPARE_QUERY: &str = "amlx-spare";

/// Longest Close reason in bytes: a control frame carries at most 125 payload bytes, two
/// of which are the close code (RFC 6455 5.5, 5.5.1).
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

/// The longest prefix of `reason` that fits a Close frame, cut at a character boundary
/// (a cut inside a character would panic, or send invalid UTF-8 the peer must reject).
/// Every Close the relay code builds, client and server, goes through this.
///
/// ```
/// use amlx_agent::relay::protocol::close_reason;
/// assert_eq!(close_reason("token expired"), "token expired");
/// assert_eq!(close_reason(&"é".repeat(100)).len(), 122);
/// ```
pub fn close_reason(reason: &str) -> &str {
    prefix_within(reason, MAX_CLOSE_REASON_BYTES)
}

/// The longest prefix of `text` of at most `max_bytes` bytes that ends at a character
/// boundary.
///
/// ```
/// use amlx_agent::relay::protocol::prefix_within;
/// assert_eq!(prefix_within("héllo", 2), "h");
/// assert_eq!(prefix_within("héllo", 3), "hé");
/// assert_eq!(prefix_within("hi", 10), "hi");
/// ```
pub fn prefix_within(text: &str, max_bytes: usize) -> &str {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    text.get(..end).unwrap_or_default()
}

/// Characters escaped in one path segment (everything but unreserved and `$`-style sub-delims).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// The `sb-hc-action` of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Listener control channel.
    Listen,
    /// Sender.
    Connect,
    /// Listener rendezvous (accept, or reject when a status code is present).
    Accept,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Listen => "listen",
            Action::Connect => "connect",
            Action::Accept => "accept",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "listen" => Ok(Action::Listen),
            "connect" => Ok(Action::Connect),
            "accept" => Ok(Action::Accept),
            _ => Err(ProtocolError::UnknownAction(s.to_owned())),
        }
    }
}

/// A request target that is not a Hybrid Connections URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("path does not start with /$hc/")]
    NotHybridConnection,
    #[error("no Hybrid Connection name after /$hc/")]
    NoEntity,
    #[error("unknown sb-hc-action {0:?}")]
    UnknownAction(String),
    #[error("sb-hc-statusCode {0:?} is not an HTTP status")]
    BadStatusCode(String),
    /// URLs drop such segments (`a/x/..` is `a`), so the rendezvous address issued for
    /// this path could never name it again.
    #[error("the path has a '.' or '..' segment; name the Hybrid Connection and suffix plainly")]
    DotSegment,
}

/// A fresh tracking id (`sb-hc-id`) for one request, also used in logs.
pub fn new_tracking_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn hc_url(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let mut encoded = format!("/{HC_SEGMENT}");
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        encoded.push('/');
        encoded.extend(utf8_percent_encode(segment, SEGMENT));
    }
    url.set_path(&encoded);
    url.set_query(None);
    url.set_fragment(None);
    url
}

/// Listener control channel: `{base}/$hc/{path}?sb-hc-action=listen&sb-hc-id={id}`.
pub fn listen_url(base: &Url, path: &str, id: &str) -> Url {
    let mut url = hc_url(base, path);
    url.query_pairs_mut()
        .append_pair(QUERY_ACTION, Action::Listen.as_str())
        .append_pair(QUERY_ID, id);
    url
}

/// Sender: `{base}/$hc/{path}[/{suffix}]?{app args}&sb-hc-action=connect&sb-hc-id={id}`.
///
/// App arguments whose names start with `sb-hc-` are dropped (they belong to the protocol).
pub fn connect_url(
    base: &Url,
    path: &str,
    suffix: Option<&str>,
    app_query: &[(String, String)],
    id: &str,
) -> Url {
    let full = match suffix {
        Some(s) => format!("{path}/{s}"),
        None => path.to_owned(),
    };
    let mut url = hc_url(base, &full);
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in app_query.iter().filter(|(k, _)| !is_protocol_param(k)) {
            q.append_pair(k, v);
        }
        q.append_pair(QUERY_ACTION, Action::Connect.as_str())
            .append_pair(QUERY_ID, id);
    }
    url
}

/// Server side: the rendezvous address put in an accept message. Carries the sender's
/// suffix and app query arguments, so the listener sees what the sender asked for.
pub fn accept_url(base: &Url, full_path: &str, app_query: &[(String, String)], id: &str) -> Url {
    let mut url = hc_url(base, full_path);
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in app_query.iter().filter(|(k, _)| !is_protocol_param(k)) {
            q.append_pair(k, v);
        }
        q.append_pair(QUERY_ACTION, Action::Accept.as_str())
            .append_pair(QUERY_ID, id);
    }
    url
}

/// Listener side: the address of an accept message turned into a reject rendezvous
/// (the address itself is otherwise used exactly as given).
pub fn reject_url(address: &str, status: u16, description: &str) -> String {
    let description: String =
        url::form_urlencoded::byte_serialize(description.as_bytes()).collect();
    let separator = if address.contains('?') { '&' } else { '?' };
    format!(
        "{address}{separator}{QUERY_STATUS_CODE}={status}&{QUERY_STATUS_DESCRIPTION}={description}"
    )
}

/// Whether a query name starts with `sb-hc-` (any case). Compares bytes: the name is
/// decoded text from outside and may have a multi-byte character at any offset.
fn is_protocol_param(name: &str) -> bool {
    name.as_bytes()
        .get(..QUERY_PREFIX.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(QUERY_PREFIX.as_bytes()))
}

/// `sb-hc-statusCode` as a listener sent it. A value that is no HTTP status is kept
/// (not a parse error): the rendezvous it came on still names a waiting sender, who must
/// learn of the rejection rather than wait out its timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectStatus {
    /// An HTTP status, 100 to 599.
    Status(u16),
    /// Anything else, as sent (decoded).
    Invalid(String),
}

impl RejectStatus {
    /// Why a server refuses it, when it is [`RejectStatus::Invalid`].
    pub fn problem(&self) -> Option<ProtocolError> {
        match self {
            RejectStatus::Status(_) => None,
            RejectStatus::Invalid(text) => Some(ProtocolError::BadStatusCode(text.clone())),
        }
    }
}

/// What a server reads from a request target (`/$hc/path?query`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HcRequest {
    /// Decoded path after `/$hc/`, without leading or trailing `/` (entity plus any suffix).
    pub path: String,
    /// `sb-hc-action`, when present.
    pub action: Option<Action>,
    /// `sb-hc-id`, when present.
    pub id: Option<String>,
    /// `sb-hc-token` decoded once (what [`crate::relay::sas::SasToken::parse`] takes).
    pub token: Option<String>,
    /// `sb-hc-statusCode` on a reject rendezvous.
    pub status_code: Option<RejectStatus>,
    /// `sb-hc-statusDescription` on a reject rendezvous.
    pub status_description: Option<String>,
    /// Every query argument not starting with `sb-hc-`, in order.
    pub app_query: Vec<(String, String)>,
}

impl HcRequest {
    /// Parses a request target as found in the HTTP request line (`/$hc/a/b?x=1&...`).
    pub fn parse(target: &str) -> Result<HcRequest, ProtocolError> {
        let (raw_path, query) = target.split_once('?').unwrap_or((target, ""));
        let raw_path = raw_path.trim_start_matches('/');
        let (first, rest) = raw_path.split_once('/').unwrap_or((raw_path, ""));
        if !first.eq_ignore_ascii_case(HC_SEGMENT) && !first.eq_ignore_ascii_case("%24hc") {
            return Err(ProtocolError::NotHybridConnection);
        }
        let decoded = percent_decode_str(rest).decode_utf8_lossy();
        // Empty segments (`a//b`) are dropped, as they are from every URL built of a path:
        // `a//b` names what `a/b` names.
        let segments: Vec<&str> = decoded.split('/').filter(|s| !s.is_empty()).collect();
        if segments.iter().any(|s| *s == "." || *s == "..") {
            return Err(ProtocolError::DotSegment);
        }
        let path = segments.join("/");
        if path.is_empty() {
            return Err(ProtocolError::NoEntity);
        }
        let mut req = HcRequest {
            path,
            ..HcRequest::default()
        };
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            if k.eq_ignore_ascii_case(QUERY_ACTION) {
                req.action = Some(v.parse()?);
            } else if k.eq_ignore_ascii_case(QUERY_ID) {
                req.id = Some(v.into_owned());
            } else if k.eq_ignore_ascii_case(QUERY_TOKEN) {
                req.token = Some(v.into_owned());
            } else if k.eq_ignore_ascii_case(QUERY_STATUS_CODE) {
                let code = v.parse::<u16>().ok().filter(|c| (100..=599).contains(c));
                req.status_code = Some(match code {
                    Some(code) => RejectStatus::Status(code),
                    None => RejectStatus::Invalid(v.into_owned()),
                });
            } else if k.eq_ignore_ascii_case(QUERY_STATUS_DESCRIPTION) {
                req.status_description = Some(v.into_owned());
            } else if !is_protocol_param(&k) {
                req.app_query.push((k.into_owned(), v.into_owned()));
            }
        }
        Ok(req)
    }
}

/// The sender's path suffix after `$hc/{entity}/` in a rendezvous address, if any (where
/// `relay connect` and the debug sidecars name the port they want). The path is read as
/// `relay serve` reads request targets ([`HcRequest::parse`]); the entity matches at a
/// segment boundary only (`debug` is not a prefix of `debugger/1`).
///
/// ```
/// use amlx_agent::relay::protocol::sender_suffix;
/// assert_eq!(sender_suffix("debug", "wss://h/$hc/debug/5678?sb-hc-action=accept").as_deref(), Some("5678"));
/// assert_eq!(sender_suffix("debug", "wss://h/$hc/debug?sb-hc-action=accept"), None);
/// ```
pub fn sender_suffix(entity: &str, address: &str) -> Option<String> {
    let url = crate::web_url::parse(address).ok()?;
    let request = HcRequest::parse(url.path()).ok()?;
    let suffix = request.path.strip_prefix(entity)?.strip_prefix('/')?;
    (!suffix.is_empty()).then(|| suffix.to_owned())
}

/// Longest Hybrid Connection path (entity) in bytes: Azure Relay's names are at most 260
/// characters. A sender's path may be longer (its suffix names a port), but only its
/// prefixes up to this length can name a Hybrid Connection, so looking one up costs at
/// most that much hashing whatever the path: a request whose path had 15,000 segments
/// had `relay serve` hash every one of its prefixes, ~56 ms of CPU per request, before
/// the token was looked at.
pub const MAX_ENTITY_PATH_BYTES: usize = 260;

/// Candidate entity names for `path`, longest first, at segment boundaries:
/// `a/b/c` gives `a/b/c`, `a/b`, `a`. A server picks the first one it knows; the rest
/// is the sender's suffix. Only prefixes of at most [`MAX_ENTITY_PATH_BYTES`] are
/// candidates.
pub fn path_prefixes(path: &str) -> impl Iterator<Item = &str> {
    let path = path.trim_matches('/');
    let cuts = path
        .char_indices()
        .filter(|(_, c)| *c == '/')
        .map(|(i, _)| i)
        .rev();
    std::iter::once(path)
        .chain(cuts.filter_map(move |i| path.get(..i)))
        .filter(|p| !p.is_empty() && p.len() <= MAX_ENTITY_PATH_BYTES)
}

/// Where the sender connected from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RemoteEndpoint {
    pub address: String,
    pub port: u16,
}

/// `address:port`, an IPv6 address in brackets (`[::1]:5000`) so the port reads apart.
impl std::fmt::Display for RemoteEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.address.contains(':') {
            write!(f, "[{}]:{}", self.address, self.port)
        } else {
            write!(f, "{}:{}", self.address, self.port)
        }
    }
}

/// `{"accept":{...}}`: a sender is waiting; open `address` to take it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Accept {
    /// The rendezvous URL, used exactly as given (its host may differ from the namespace).
    pub address: String,
    /// The connection's id (a GUID).
    pub id: String,
    /// The sender's upgrade headers. Always sent: Node listeners need `Sec-WebSocket-Key`.
    #[serde(default)]
    pub connect_headers: BTreeMap<String, String>,
    /// Always sent: the Java client throws without it.
    #[serde(default)]
    pub remote_endpoint: RemoteEndpoint,
}

/// `{"renewToken":{"token":"SharedAccessSignature ..."}}`, listener to service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewToken {
    #[serde(with = "secret_text")]
    pub token: Secret,
}

/// One JSON text frame on the control channel.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlMessage {
    Accept(Accept),
    RenewToken(RenewToken),
    /// HTTP gesture request (not used for tunnelling; kept raw).
    Request(serde_json::Value),
    /// HTTP gesture response (not used for tunnelling; kept raw).
    Response(serde_json::Value),
    /// A command this version does not know: ignored (logged at debug level).
    Unknown(String),
}

impl ControlMessage {
    /// Parses a text frame. Unknown commands are [`ControlMessage::Unknown`], not errors.
    pub fn parse(text: &str) -> Result<ControlMessage, serde_json::Error> {
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)?;
        let Some((command, body)) = object.into_iter().next() else {
            return Ok(ControlMessage::Unknown(String::new()));
        };
        Ok(match command.as_str() {
            "accept" => ControlMessage::Accept(serde_json::from_value(body)?),
            "renewToken" => ControlMessage::RenewToken(serde_json::from_value(body)?),
            "request" => ControlMessage::Request(body),
            "response" => ControlMessage::Response(body),
            _ => ControlMessage::Unknown(command),
        })
    }

    /// The text frame for this message.
    pub fn to_json(&self) -> String {
        let (command, body) = match self {
            ControlMessage::Accept(a) => ("accept", serde_json::to_value(a)),
            ControlMessage::RenewToken(r) => ("renewToken", serde_json::to_value(r)),
            ControlMessage::Request(v) => ("request", Ok(v.clone())),
            ControlMessage::Response(v) => ("response", Ok(v.clone())),
            ControlMessage::Unknown(c) => (c.as_str(), Ok(serde_json::json!({}))),
        };
        let body = body.expect("control messages contain only strings, numbers and maps");
        serde_json::json!({ command: body }).to_string()
    }
}

/// Serde for a [`Secret`] carried as a JSON string.
mod secret_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::config::Secret;

    pub fn serialize<S: Serializer>(secret: &Secret, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(secret.expose())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
