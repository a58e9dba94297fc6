//! Hybrid Connections client: the listener (control channel + rendezvous) and the
//! sender, over the agent's one WebSocket codec (`relay::websocket`, which says why) and
//! rustls.

pub mod backoff;
pub mod credentials;
pub mod error;
pub mod forward;
pub mod handshake;
pub mod listener;
pub mod sender;
pub mod spare;
pub mod tls;
pub mod tunnel;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use url::Url;

pub use error::ConnectError;
pub use tunnel::{SpliceStats, Tunnel};

use crate::config::Secret;
use crate::relay::connection_string::{ConnectionString, Transport};
use crate::relay::sas;

/// How long one handshake may take when the connection string sets no OperationTimeout.
/// A sender's upgrade waits for the listener's rendezvous, which the relay allows ~30 s.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and as whom the client talks to the relay.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub connection: ConnectionString,
    /// The Hybrid Connection (entity path).
    pub entity: String,
    /// `wss://host[:port]/` (or `ws://` for a loopback relay).
    pub base: Url,
    /// TLS settings; `None` for plain ws.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Bound for one handshake.
    pub operation_timeout: Duration,
    /// Lifetime of the tokens we sign (renewed on the control channel before expiry).
    pub token_ttl: Duration,
}

impl Endpoint {
    /// Resolves the entity (`explicit` wins over EntityPath), the URL scheme and TLS roots.
    pub fn new(
        connection: ConnectionString,
        explicit_entity: Option<&str>,
        transport: Transport,
        ca_file: Option<&Path>,
    ) -> anyhow::Result<Endpoint> {
        let entity = connection
            .entity(explicit_entity)
            .context("no Hybrid Connection name: pass --hc NAME, set AMLX_RELAY_HC, or add EntityPath= to the connection string")?
            .to_owned();
        // Past it a relay answers 431 or 400 to every attempt, which a listener retried
        // for good, logging the whole name twice each time.
        let most = crate::relay::protocol::MAX_ENTITY_PATH_BYTES;
        anyhow::ensure!(
            entity.len() <= most,
            "the Hybrid Connection name is {} bytes, over the {most} a relay takes (Azure's \
             limit too): shorten --hc, AMLX_RELAY_HC or the connection string's EntityPath",
            entity.len()
        );
        let base = connection.ws_base(transport)?;
        let tls = match transport {
            Transport::Tls => Some(super::client::tls::client_config(ca_file)?),
            Transport::InsecureWs => {
                if let Some(ca) = ca_file {
                    tracing::warn!(
                        "the CA file {} is not used: plain ws (--insecure-ws) has no TLS; \
                         drop one of the two",
                        ca.display()
                    );
                }
                None
            }
        };
        let operation_timeout = connection
            .operation_timeout
            .unwrap_or(DEFAULT_OPERATION_TIMEOUT);
        let endpoint = Endpoint {
            connection,
            entity,
            base,
            tls,
            operation_timeout,
            token_ttl: sas::DEFAULT_TOKEN_TTL,
        };
        endpoint.token().context("cannot sign a SAS token")?;
        Ok(endpoint)
    }

    /// A token for this Hybrid Connection, fresh from now.
    pub fn token(&self) -> Result<Secret, sas::SasError> {
        self.connection
            .token(&self.entity, sas::unix_now(), self.token_ttl)
    }

    /// How often the listener sends renewToken: a few minutes before expiry for long
    /// tokens, halfway for short ones; `None` when the token is fixed (a given signature).
    pub fn renew_interval(&self) -> Option<Duration> {
        use crate::relay::connection_string::Credentials;
        match self.connection.credentials {
            Credentials::Signature(_) => None,
            Credentials::Key { .. } => Some(renew_interval(self.token_ttl)),
        }
    }
}

/// Renew this long before a token expires, when the token lives long enough.
const RENEW_MARGIN: Duration = Duration::from_secs(5 * 60);

fn renew_interval(ttl: Duration) -> Duration {
    if ttl >= RENEW_MARGIN * 2 {
        ttl - RENEW_MARGIN
    } else {
        (ttl / 2).max(Duration::from_millis(500))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_before_expiry() {
        let cases = [(3600, 3300.0), (600, 300.0), (60, 30.0), (4, 2.0), (0, 0.5)];
        for (ttl, every) in cases {
            let got = renew_interval(Duration::from_secs(ttl)).as_secs_f64();
            assert_eq!(got, every, "ttl {ttl}");
        }
    }

    /// A Hybrid Connection name longer than a relay takes is refused when the endpoint is
    /// made, naming where it came from; the longest allowed is accepted.
    #[test]
    fn a_hybrid_connection_name_past_the_limit_is_refused_up_front() {
        let most = crate::relay::protocol::MAX_ENTITY_PATH_BYTES;
        let endpoint = |hc: &str| {
            let connection: ConnectionString =
                "Endpoint=sb://127.0.0.1:9/;SharedAccessKeyName=k;SharedAccessKey=abc"
                    .parse()
                    .expect("connection string");
            Endpoint::new(connection, Some(hc), Transport::InsecureWs, None)
        };
        assert!(endpoint(&"a".repeat(most)).is_ok());
        let err = endpoint(&"a".repeat(most + 1)).expect_err("too long");
        let text = format!("{err:#}");
        assert!(text.contains("261 bytes, over the 260"), "{text}");
        assert!(
            !text.contains(&"a".repeat(100)),
            "the name is not echoed: {text}"
        );
    }
}
