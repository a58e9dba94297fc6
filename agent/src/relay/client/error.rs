//! Why a WebSocket to the relay could not be opened: one variant per cause the caller
//! branches on, each message naming the cause and the fix on one line.

use std::io;
use std::time::Duration;

use crate::relay::protocol::status;

/// A failed connect, listen or rendezvous upgrade.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "relay {url} rejected the token (401 Unauthorized: {text}); check SharedAccessKeyName/SharedAccessKey in the connection string and this machine's clock"
    )]
    Unauthorized { url: String, text: String },
    #[error(
        "relay {url} refused access (403 Forbidden: {text}); use a key with the {right} right on this Hybrid Connection{hint}"
    )]
    Forbidden {
        url: String,
        text: String,
        right: &'static str,
        /// For senders: a listener may also refuse with 403.
        hint: &'static str,
    },
    /// A 403 that is not about rights: the relay holds as many listeners (or connections)
    /// as it allows on this Hybrid Connection. Passes when one of them leaves.
    #[error(
        "relay {url} is full (403 quota exceeded: {text}); this passes when a listener leaves: stop one you no longer need on this Hybrid Connection, or raise the relay's limit (relay serve: max_listeners_per_path)"
    )]
    QuotaExceeded { url: String, text: String },
    #[error("relay {url} has no such endpoint (404 Not Found: {text}); {fix}")]
    NotFound {
        url: String,
        text: String,
        fix: &'static str,
    },
    #[error(
        "relay {url} answered 410 Gone ({text}); the rendezvous expired or was already used, retry"
    )]
    Gone { url: String, text: String },
    /// 503: the relay or the listener cannot take the connection now, and its text says
    /// why (a full relay, a listener at its `--max-tunnels`, a target that refuses
    /// developers because its step runs without debugpy).
    #[error("relay {url} cannot take this connection now (503 Service Unavailable: {text})")]
    Unavailable { url: String, text: String },
    #[error(
        "relay {url} failed with HTTP {status} ({text}); retry later, or check the relay's log"
    )]
    Server {
        url: String,
        status: u16,
        text: String,
    },
    #[error(
        "relay {url}: every listener that answered forwards other port names (421 Misdirected: {text}); {WRONG_LISTENER_FIX}"
    )]
    WrongListener { url: String, text: String },
    #[error(
        "relay {url} answered HTTP {status} ({text}) instead of a WebSocket upgrade; check that Endpoint points at a Hybrid Connections relay"
    )]
    Unexpected {
        url: String,
        status: u16,
        text: String,
    },
    #[error("cannot reach relay {addr}: {source}; {}", connect_fix(source))]
    Connect { addr: String, source: io::Error },
    /// The rendezvous address came from the relay's accept message, not from the
    /// connection string: the connection string's fix would mislead.
    #[error(
        "cannot reach the rendezvous address {addr} that the relay sent: {source}; {}",
        rendezvous_fix(source)
    )]
    RendezvousUnreachable { addr: String, source: io::Error },
    #[error("TLS with relay {host} failed: {source}; {}", tls_fix(source))]
    Tls { host: String, source: io::Error },
    #[error(
        "relay {url} did not finish the WebSocket handshake within {timeout:?}; check that the relay is healthy"
    )]
    Timeout { url: String, timeout: Duration },
    #[error("relay {url} broke the WebSocket handshake: {detail}")]
    Protocol { url: String, detail: String },
}

/// Fix for a 404 on listen (the Hybrid Connection does not exist).
pub const NOT_FOUND_LISTEN_FIX: &str = "create the Hybrid Connection or fix --hc / EntityPath";
/// Fix for a 404 on connect (nobody listening).
/// `relay connect` is a developer's way to a listen-mode target as well as to a `relay
/// listen`, so the fix names both.
pub const NOT_FOUND_SEND_FIX: &str = "for a listen-mode debug target, nothing listens for it now: its step has not started its session yet, has ended, or its debug sidecar is gone (`amlx-agent status` on the node says which); otherwise start `amlx-agent relay listen` (or azbridge -R) for this Hybrid Connection, or fix --hc / EntityPath";
/// Fix for a sender that only ever reached listeners of other ports (421).
pub const WRONG_LISTENER_FIX: &str = "check --port-name against the names the listener forwards (`relay listen --forward NAME=...`, or the debug port of the node), and that the listener for it is running";
/// Extra hint for a sender's 403.
pub const FORBIDDEN_SEND_HINT: &str = " (or the listener refused this sender)";

/// Which side of the protocol failed: decides the texts of 403 and 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Control channel (needs Listen).
    Listen,
    /// Sender (needs Send).
    Send,
    /// Listener's rendezvous.
    Rendezvous,
}

impl ConnectError {
    /// Maps a non-101 handshake answer.
    pub fn from_status(role: Role, url: String, status_code: u16, text: String) -> ConnectError {
        // A relay (ours included) may start its text with the status's reason phrase,
        // which the message below names already: said once, not "Forbidden: Forbidden:".
        // A text that is the phrase alone says nothing more.
        const PHRASES: [&str; 4] = [
            "Unauthorized",
            "Forbidden",
            "Not Found",
            "Service Unavailable",
        ];
        let trimmed = text.trim();
        let text = if trimmed.is_empty() || PHRASES.contains(&trimmed) {
            "no reason given".to_owned()
        } else {
            PHRASES
                .iter()
                .find_map(|phrase| text.strip_prefix(phrase)?.strip_prefix(": "))
                .map_or_else(|| text.clone(), str::to_owned)
        };
        match status_code {
            status::UNAUTHORIZED => ConnectError::Unauthorized { url, text },
            // `relay serve` says "quota exceeded", Azure Relay "QuotaExceeded".
            status::FORBIDDEN if text.to_ascii_lowercase().contains("quota") => {
                ConnectError::QuotaExceeded { url, text }
            }
            status::FORBIDDEN => ConnectError::Forbidden {
                url,
                text,
                right: if role == Role::Send { "Send" } else { "Listen" },
                hint: if role == Role::Send {
                    FORBIDDEN_SEND_HINT
                } else {
                    ""
                },
            },
            status::NOT_FOUND => ConnectError::NotFound {
                url,
                text,
                fix: if role == Role::Listen {
                    NOT_FOUND_LISTEN_FIX
                } else {
                    NOT_FOUND_SEND_FIX
                },
            },
            // Only a reject rendezvous is answered 410, and only a sender is sent on to
            // another listener (421): to anyone else either is a relay speaking out of turn.
            status::GONE if role == Role::Rendezvous => ConnectError::Gone { url, text },
            status::MISDIRECTED if role == Role::Send => ConnectError::WrongListener { url, text },
            status::SERVICE_UNAVAILABLE => ConnectError::Unavailable { url, text },
            500..=599 => ConnectError::Server {
                url,
                status: status_code,
                text,
            },
            _ => ConnectError::Unexpected {
                url,
                status: status_code,
                text,
            },
        }
    }

    /// The HTTP status the relay answered, if it answered one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ConnectError::Unauthorized { .. } => Some(status::UNAUTHORIZED),
            ConnectError::Forbidden { .. } | ConnectError::QuotaExceeded { .. } => {
                Some(status::FORBIDDEN)
            }
            ConnectError::NotFound { .. } => Some(status::NOT_FOUND),
            ConnectError::Gone { .. } => Some(status::GONE),
            ConnectError::WrongListener { .. } => Some(status::MISDIRECTED),
            ConnectError::Unavailable { .. } => Some(status::SERVICE_UNAVAILABLE),
            ConnectError::Server { status, .. } | ConnectError::Unexpected { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// True when waiting cannot help: wrong credentials, rights or name (a full relay,
    /// [`ConnectError::QuotaExceeded`], is not: a place frees when a listener leaves).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ConnectError::Unauthorized { .. }
                | ConnectError::Forbidden { .. }
                | ConnectError::NotFound { .. }
        )
    }
}

/// What to do about a relay that could not be reached: out of descriptors is this
/// process's limit, not the relay's fault; anything else is the address or the relay.
pub fn connect_fix(source: &io::Error) -> &'static str {
    use nix::libc::{EMFILE, ENFILE};
    match source.raw_os_error() {
        Some(EMFILE) => {
            "this process is out of file descriptors (too many tunnels open); raise its limit (ulimit -n, LimitNOFILE=) or lower --max-tunnels"
        }
        Some(ENFILE) => {
            "this machine is out of file descriptors (fs.file-max); close some or raise the limit"
        }
        _ => {
            "check the Endpoint host and port in the connection string and that the relay is running"
        }
    }
}

/// What to do about a rendezvous address that could not be reached: our own limit, as
/// for the relay; otherwise the address is the relay's choice.
pub fn rendezvous_fix(source: &io::Error) -> &'static str {
    use nix::libc::{EMFILE, ENFILE};
    match source.raw_os_error() {
        Some(EMFILE | ENFILE) => connect_fix(source),
        _ => {
            "the relay named it in its accept message: check that this machine can reach that host and port, and the relay's health (for a self-hosted relay, its log)"
        }
    }
}

/// What to do about a failed TLS handshake with the relay, judged from rustls' verdict on
/// its certificate (the error inside `source`).
pub fn tls_fix(source: &io::Error) -> &'static str {
    use rustls::CertificateError as Cert;
    const UNTRUSTED: &str = "for a relay with a private CA pass --ca-file, for a loopback relay without TLS use --insecure-ws";
    let verdict = source
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let Some(rustls::Error::InvalidCertificate(cert)) = verdict else {
        return UNTRUSTED;
    };
    match cert {
        Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
            "the relay's certificate does not name the host of the Endpoint; use a name the certificate lists (its subjectAltName)"
        }
        Cert::Expired
        | Cert::ExpiredContext { .. }
        | Cert::NotValidYet
        | Cert::NotValidYetContext { .. } => {
            "the relay's certificate is outside its validity period; renew it, and check this machine's clock"
        }
        Cert::Other(other)
            if other.0.downcast_ref::<webpki::Error>()
                == Some(&webpki::Error::CaUsedAsEndEntity) =>
        {
            "the relay serves a CA certificate (basic constraints CA:TRUE) as its own; serve a certificate that CA signed (or a self-signed one without CA:TRUE) and pass the CA with --ca-file"
        }
        _ => UNTRUSTED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_kinds_with_one_line_messages() {
        let cases = [
            (Role::Send, 401, "401 Unauthorized", true),
            (Role::Send, 403, "Send right", true),
            (Role::Listen, 403, "Listen right", true),
            (Role::Send, 404, "relay listen", true),
            (Role::Listen, 404, "create the Hybrid Connection", true),
            (Role::Rendezvous, 410, "410 Gone", false),
            (Role::Send, 503, "503 Service Unavailable: why", false),
            (Role::Listen, 503, "503 Service Unavailable: why", false),
            (Role::Send, 502, "HTTP 502", false),
            (Role::Send, 200, "instead of a WebSocket upgrade", false),
            (Role::Send, 421, "check --port-name", false),
            // Out of turn for this role: no advice meant for another.
            (Role::Listen, 421, "instead of a WebSocket upgrade", false),
            (
                Role::Rendezvous,
                421,
                "instead of a WebSocket upgrade",
                false,
            ),
            (Role::Listen, 410, "instead of a WebSocket upgrade", false),
            (Role::Send, 410, "instead of a WebSocket upgrade", false),
        ];
        for (role, code, needle, permanent) in cases {
            let err = ConnectError::from_status(role, "ws://h/$hc/x".into(), code, "why".into());
            let text = err.to_string();
            assert!(text.contains(needle), "{code}: {text}");
            assert!(!text.contains('\n'), "{text}");
            assert_eq!(err.status(), Some(code));
            assert_eq!(err.is_permanent(), permanent, "{code}");
        }
        // A full relay is not a missing right: it passes, so a listener waits it out.
        let texts = [
            "quota exceeded: at most 25 listeners may be connected to one Hybrid Connection",
            "QuotaExceeded: listener limit reached",
        ];
        for (role, text) in [Role::Listen, Role::Send].into_iter().zip(texts) {
            let err = ConnectError::from_status(role, "ws://h/$hc/x".into(), 403, text.into());
            assert!(matches!(err, ConnectError::QuotaExceeded { .. }), "{err}");
            assert!(!err.is_permanent(), "{err}");
            assert!(err.to_string().contains("this passes when"), "{err}");
            assert_eq!(err.status(), Some(403));
        }
    }

    /// The reason phrase is said once, and a text that is only the phrase (or nothing) is
    /// not repeated as if it were the relay's reason.
    #[test]
    fn the_relays_text_is_shown_once_and_never_as_an_echo_of_the_status() {
        let cases = [
            (403, "Forbidden", "(403 Forbidden: no reason given)"),
            (403, "", "(403 Forbidden: no reason given)"),
            (404, "Not Found", "(404 Not Found: no reason given)"),
            (401, " Unauthorized ", "(401 Unauthorized: no reason given)"),
            (
                403,
                "Forbidden: key k has no Listen",
                "(403 Forbidden: key k has no Listen)",
            ),
            (403, "Forbiddenness", "(403 Forbidden: Forbiddenness)"),
            (404, "Not Found: no such hc", "(404 Not Found: no such hc)"),
            (
                503,
                "Service Unavailable: the relay is at its connection limit",
                "(503 Service Unavailable: the relay is at its connection limit)",
            ),
            (
                503,
                "Service Unavailable",
                "(503 Service Unavailable: no reason given)",
            ),
        ];
        for (code, text, want) in cases {
            let err =
                ConnectError::from_status(Role::Listen, "ws://h/$hc/x".into(), code, text.into());
            assert!(err.to_string().contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn an_unreachable_relay_names_the_limit_when_it_is_ours() {
        // (OS error, part of the fix)
        let cases = [
            (24, "this process is out of file descriptors"),
            (23, "this machine is out of file descriptors"),
            (111, "check the Endpoint host and port"),
        ];
        for (errno, fix) in cases {
            let err = ConnectError::Connect {
                addr: "relay:443".into(),
                source: io::Error::from_raw_os_error(errno),
            };
            let text = err.to_string();
            assert!(text.contains(fix), "{errno}: {text}");
            assert!(!text.contains('\n'), "{text}");
        }
        // A rendezvous address is the relay's choice, not the connection string's.
        let rendezvous = [
            (24, "this process is out of file descriptors"),
            (111, "the relay named it in its accept message"),
        ];
        for (errno, fix) in rendezvous {
            let err = ConnectError::RendezvousUnreachable {
                addr: "relay:9".into(),
                source: io::Error::from_raw_os_error(errno),
            };
            let text = err.to_string();
            assert!(text.contains(fix), "{errno}: {text}");
            assert!(!text.contains("connection string"), "{text}");
        }
    }
}
