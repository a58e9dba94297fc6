//! `[relay.server]`: settings for `amlx-agent relay serve`, the self-hosted relay.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};
use toml::Spanned;

use super::ConfigError;
use super::file::FileContext;
use super::server_key::KeySection;
pub use super::server_key::{ServerKey, path_matches};
use super::value::Parsed;

/// Where the relay listens by default: loopback only, so nothing is exposed unasked.
pub const DEFAULT_SERVER_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9351));
/// Listeners one Hybrid Connection path may have at once (Azure's limit).
pub const DEFAULT_MAX_LISTENERS_PER_PATH: usize = 25;
/// Authenticated WebSocket connections (control channels, senders, rendezvous) at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// Connections still in their handshake (before the upgrade is authenticated) at once,
/// every source together; past it the oldest pending handshake is cut.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;
/// Connections still in their handshake at once from one source address; past it that
/// source's oldest pending handshake is cut. Generous: a burst of hundreds of tunnels
/// from one host or NAT (a sender and a rendezvous each) must fit, since a client that
/// has sent its head but not yet been read would be cut too; still half the total, so
/// one source never holds every handshake slot.
pub const DEFAULT_MAX_HANDSHAKES_PER_SOURCE: usize = 512;
/// Time a client has to send its whole request head (TLS included).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a listener has to answer the Ping sent after each accept command: one that
/// does not (stopped, frozen, its host gone without a reset) is dropped, and the senders
/// it was sent go to another listener (or get 404) instead of waiting out the rendezvous
/// timeout for a 504. Listeners answer Pings as they read, so only a stopped one misses
/// this; generous all the same, since dropping a slow listener costs it a reconnect.
pub const DEFAULT_LISTENER_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a listener's control channel may carry nothing before the relay Pings it
/// (answer due within [`DEFAULT_LISTENER_ANSWER_TIMEOUT`]): a listener that stopped while
/// idle would otherwise hold its place, and the path's listener quota, until a sender came.
pub const DEFAULT_LISTENER_PING_INTERVAL: Duration = Duration::from_secs(60);
/// After one side of a relayed connection closed (its Close forwarded), how long the
/// other side may stay silent before the pair is dropped; each frame it still sends
/// restarts the clock. Generous: that side may be finishing a reply under load.
pub const DEFAULT_HALF_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a relayed frame may take to be written to its destination (the peer's
/// receive window closed: it stopped reading, or vanished without a reset reaching us)
/// before the pair is dropped. While a write waits, nothing is read from the other side,
/// so without this bound a peer that stops reading would hold both legs forever, even
/// after the other side has gone. azbridge bounds its writes at 60 s too.
pub const DEFAULT_STALLED_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a listener has to open the rendezvous address of an accept (Azure: about 30 s).
pub const DEFAULT_RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest control-channel message accepted, in bytes (Azure: 64 kB).
pub const DEFAULT_MAX_CONTROL_MESSAGE: usize = 64 * 1024;
/// Time open connections get to finish on shutdown before they are dropped.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// SAS key names and keys are at most this many characters (the Azure limit).
pub const MAX_KEY_CHARS: usize = 256;

/// Everything `relay serve` needs, validated.
///
/// The server itself refuses to start with neither `tls` nor `insecure_ws`, and with no
/// `keys`: the agent's other commands load the same settings and must not fail on that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Certificate chain and private key (PEM) for wss; `None` means no TLS.
    pub tls: Option<TlsFiles>,
    /// Serve plain ws without TLS; only when asked, since tokens then travel in clear.
    pub insecure_ws: bool,
    /// Allow `insecure_ws` on a non-loopback `listen` address.
    pub allow_insecure_remote: bool,
    /// Listeners one Hybrid Connection path may have at once.
    pub max_listeners_per_path: usize,
    /// Authenticated WebSocket connections at once (relayed slots).
    pub max_connections: usize,
    /// Connections in their handshake at once (handshake slots), every source together.
    pub max_handshakes: usize,
    /// Connections in their handshake at once from one source (an IPv4 address or an
    /// IPv6 /64).
    pub max_handshakes_per_source: usize,
    /// Time a client has to send its whole request head.
    pub handshake_timeout: Duration,
    /// Time a listener has to open an accept's rendezvous address.
    pub rendezvous_timeout: Duration,
    /// Time a listener has to answer the Ping sent after an accept command.
    pub listener_answer_timeout: Duration,
    /// Silence on a listener's control channel after which the relay Pings it.
    pub listener_ping_interval: Duration,
    /// Silence allowed from the side of a relayed connection that was forwarded a Close.
    pub half_close_timeout: Duration,
    /// Time a relayed frame may take to be written before the pair is dropped.
    pub stalled_write_timeout: Duration,
    /// Largest control-channel message in bytes.
    pub max_control_message: usize,
    /// Time open connections get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Shared access keys that sign clients' SAS tokens (names are unique).
    pub keys: Vec<ServerKey>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: DEFAULT_SERVER_LISTEN,
            tls: None,
            insecure_ws: false,
            allow_insecure_remote: false,
            max_listeners_per_path: DEFAULT_MAX_LISTENERS_PER_PATH,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_source: DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            rendezvous_timeout: DEFAULT_RENDEZVOUS_TIMEOUT,
            listener_answer_timeout: DEFAULT_LISTENER_ANSWER_TIMEOUT,
            listener_ping_interval: DEFAULT_LISTENER_PING_INTERVAL,
            half_close_timeout: DEFAULT_HALF_CLOSE_TIMEOUT,
            stalled_write_timeout: DEFAULT_STALLED_WRITE_TIMEOUT,
            max_control_message: DEFAULT_MAX_CONTROL_MESSAGE,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            keys: Vec::new(),
        }
    }
}

impl ServerSettings {
    /// The key a token's `skn` names.
    pub fn key(&self, name: &str) -> Option<&ServerKey> {
        self.keys.iter().find(|k| k.name == name)
    }

    /// Whether plain ws would carry tokens in clear across the network: `insecure_ws` on a
    /// non-loopback `listen` address without `allow_insecure_remote`.
    pub fn insecure_remote(&self) -> bool {
        self.insecure_ws && !self.listen.ip().is_loopback() && !self.allow_insecure_remote
    }
}

/// PEM files for wss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf certificate.
    pub key: PathBuf,
}

/// `[relay.server]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServerSection {
    listen: Option<Spanned<Parsed<SocketAddr>>>,
    tls_cert: Option<Spanned<PathBuf>>,
    tls_key: Option<Spanned<PathBuf>>,
    insecure_ws: Option<Spanned<bool>>,
    allow_insecure_remote: Option<bool>,
    #[serde(default, deserialize_with = "positive_count")]
    max_listeners_per_path: Option<usize>,
    #[serde(default, deserialize_with = "room_for_a_tunnel")]
    max_connections: Option<usize>,
    #[serde(default, deserialize_with = "positive_count")]
    max_handshakes: Option<usize>,
    #[serde(default, deserialize_with = "positive_count")]
    max_handshakes_per_source: Option<usize>,
    #[serde(default, deserialize_with = "positive_duration")]
    handshake_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "positive_duration")]
    rendezvous_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "positive_duration")]
    listener_answer_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "positive_duration")]
    listener_ping_interval: Option<Duration>,
    #[serde(default, deserialize_with = "positive_duration")]
    half_close_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "positive_duration")]
    stalled_write_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "positive_count")]
    max_control_message: Option<usize>,
    #[serde(default, deserialize_with = "positive_duration")]
    shutdown_grace: Option<Duration>,
    #[serde(default)]
    keys: Vec<KeySection>,
}

fn positive_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    match usize::deserialize(d)? {
        0 => Err(de::Error::custom("must be at least 1")),
        n => Ok(Some(n)),
    }
}

/// What a `max_connections` past [`MOST_CONNECTIONS`](super::value::MOST_CONNECTIONS) is
/// told.
pub(super) fn too_many_connections(n: usize) -> String {
    use super::value::MOST_CONNECTIONS;
    format!(
        "must be at most {MOST_CONNECTIONS} (it is {n}): each connection holds a file \
         descriptor, and no Linux process may open more"
    )
}

/// The relay's `max_connections`: below 3 no tunnel could ever be made (a listener's
/// control channel, and a tunnel's sender and listener legs).
fn room_for_a_tunnel<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    match usize::deserialize(d)? {
        n @ 0..=2 => Err(de::Error::custom(format!(
            "must be at least 3 (it is {n}): a listener's control channel takes one and each \
             tunnel two, its sender's leg and its listener's"
        ))),
        n if n > super::value::MOST_CONNECTIONS => Err(de::Error::custom(too_many_connections(n))),
        n => Ok(Some(n)),
    }
}

fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let Parsed(duration) = Parsed::<Duration>::deserialize(d)?;
    if duration.is_zero() {
        return Err(de::Error::custom("must be longer than 0s"));
    }
    Ok(Some(duration))
}

impl ServerSection {
    /// Applies the section over the defaults and checks what spans several keys.
    pub(super) fn into_settings(
        self,
        ctx: &FileContext<'_>,
    ) -> Result<ServerSettings, ConfigError> {
        let d = ServerSettings::default();
        let key = |name: &str| format!("relay.server.{name}");
        let tls = match (self.tls_cert, self.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.into_inner(),
                key: key.into_inner(),
            }),
            (Some(cert), None) => {
                return Err(ctx.error(
                    Some(cert.span()),
                    &key("tls_cert"),
                    "tls_cert is set but tls_key is not (set both PEM files, or neither)",
                ));
            }
            (None, Some(k)) => {
                return Err(ctx.error(
                    Some(k.span()),
                    &key("tls_key"),
                    "tls_key is set but tls_cert is not (set both PEM files, or neither)",
                ));
            }
        };
        let (listen, listen_span) = match self.listen {
            Some(l) => (l.get_ref().0, Some(l.span())),
            None => (d.listen, None),
        };
        let insecure_span = self.insecure_ws.as_ref().map(Spanned::span);
        let mut settings = ServerSettings {
            listen,
            tls,
            insecure_ws: self.insecure_ws.map_or(d.insecure_ws, Spanned::into_inner),
            allow_insecure_remote: self
                .allow_insecure_remote
                .unwrap_or(d.allow_insecure_remote),
            max_listeners_per_path: self
                .max_listeners_per_path
                .unwrap_or(d.max_listeners_per_path),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_handshakes: self.max_handshakes.unwrap_or(d.max_handshakes),
            max_handshakes_per_source: self
                .max_handshakes_per_source
                .unwrap_or(d.max_handshakes_per_source),
            handshake_timeout: self.handshake_timeout.unwrap_or(d.handshake_timeout),
            rendezvous_timeout: self.rendezvous_timeout.unwrap_or(d.rendezvous_timeout),
            listener_answer_timeout: self
                .listener_answer_timeout
                .unwrap_or(d.listener_answer_timeout),
            listener_ping_interval: self
                .listener_ping_interval
                .unwrap_or(d.listener_ping_interval),
            half_close_timeout: self.half_close_timeout.unwrap_or(d.half_close_timeout),
            stalled_write_timeout: self
                .stalled_write_timeout
                .unwrap_or(d.stalled_write_timeout),
            max_control_message: self.max_control_message.unwrap_or(d.max_control_message),
            shutdown_grace: self.shutdown_grace.unwrap_or(d.shutdown_grace),
            keys: Vec::with_capacity(self.keys.len()),
        };
        if settings.insecure_ws && settings.tls.is_some() {
            return Err(ctx.error(
                insecure_span,
                &key("insecure_ws"),
                "insecure_ws = true contradicts tls_cert/tls_key (choose one)",
            ));
        }
        if settings.insecure_remote() {
            return Err(ctx.error(
                listen_span,
                &key("listen"),
                &format!(
                    "{listen} is not a loopback address and insecure_ws = true would send tokens \
                 in clear (use TLS, or set allow_insecure_remote = true)"
                ),
            ));
        }
        for (i, k) in self.keys.into_iter().enumerate() {
            let name = k.name.get_ref();
            if settings.key(name).is_some() {
                return Err(ctx.error(
                    Some(k.name.span()),
                    &format!("relay.server.keys[{i}].name"),
                    &format!("duplicate key name {name:?}"),
                ));
            }
            settings.keys.push(k.into_key(i, ctx)?);
        }
        Ok(settings)
    }
}
