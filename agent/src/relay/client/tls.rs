//! Transport to the relay: TCP, then rustls (ring) for `wss://` with the system roots
//! or a private CA file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use url::Url;

use super::error::ConnectError;
use crate::relay::buffer::{BufferedReads, TLS_SEND_LIMIT};

/// A byte stream to the relay, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static> Io for T {}

impl std::fmt::Debug for dyn Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("relay transport")
    }
}

/// A boxed [`Io`].
pub type BoxedIo = Box<dyn Io>;

/// How long a TCP connect plus TLS handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest PEM file read (a CA file, `relay serve`'s certificate chain and key): a whole
/// system CA bundle is about 200 KiB.
pub const MAX_PEM_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// A rustls client config (ring provider): trust only `ca_file` when given, else the
/// system roots.
pub fn client_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = crate::small_file::read(path, MAX_PEM_FILE_BYTES, "CA files")
                .map_err(|e| anyhow::anyhow!("could not read CA file {}: {e}", path.display()))?;
            let mut count = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert =
                    cert.with_context(|| format!("CA file {} is not valid PEM", path.display()))?;
                roots.add(cert).with_context(|| {
                    format!("CA file {} holds an unusable certificate", path.display())
                })?;
                count += 1;
            }
            anyhow::ensure!(
                count > 0,
                "CA file {} holds no PEM certificate",
                path.display()
            );
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                anyhow::bail!(
                    "no system CA certificates found ({}); install ca-certificates or pass --ca-file",
                    errors.join("; ")
                );
            }
        }
    }
    Ok(Arc::new(config_with_roots(roots)?))
}

/// The agent's one rustls client setup (ring provider with AES-128-GCM first, safe
/// default versions, no client certificate, ALPN `http/1.1`) trusting `roots`; the relay
/// and the MLflow client differ only in where their roots come from.
pub fn config_with_roots(roots: rustls::RootCertStore) -> anyhow::Result<rustls::ClientConfig> {
    let provider = crate::relay::cipher::provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("rustls rejected its default protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Opens the transport for a `ws://` or `wss://` URL.
pub async fn connect(
    url: &Url,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<BoxedIo, ConnectError> {
    let host = url.host_str().unwrap_or_default().to_owned();
    // The scheme decides before any connection is made: a URL the relay sent (a
    // rendezvous address) must not make us connect or resolve anything first.
    let secure = match url.scheme() {
        "ws" => false,
        "wss" => true,
        other => {
            return Err(ConnectError::Protocol {
                url: url.to_string(),
                detail: format!("unsupported scheme {other:?} (expected ws or wss)"),
            });
        }
    };
    // The TLS configuration a wss:// address needs, decided before anything is connected.
    let tls = match (secure, tls) {
        (false, _) => None,
        (true, Some(config)) => Some(config),
        (true, None) => {
            return Err(ConnectError::Tls {
                host,
                source: std::io::Error::other("no TLS configuration for a wss:// address"),
            });
        }
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let addr = format!("{host}:{port}");
    let timed_out = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what} took over {CONNECT_TIMEOUT:?}"),
        )
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((bare.as_str(), port)))
        .await
        .map_err(|_| timed_out("TCP connect"))
        .and_then(|r| r)
        .map_err(|source| ConnectError::Connect {
            addr: addr.clone(),
            source,
        })?;
    // Small frames (debugger messages) should leave at once.
    let _ = tcp.set_nodelay(true);
    // A relay that vanished is noticed even while nothing flows (an idle tunnel).
    if let Err(err) = crate::relay::keepalive::probe_when_silent(&tcp) {
        tracing::debug!("TCP keepalive not set: {err}");
    }
    match tls {
        None => Ok(Box::new(tcp)),
        Some(config) => {
            let name = ServerName::try_from(bare.clone()).map_err(|e| ConnectError::Tls {
                host: host.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            })?;
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
            let tcp = BufferedReads::new(tcp);
            let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| timed_out("TLS handshake"))
                .and_then(|r| r)
                .map_err(|source| ConnectError::Tls { host, source })?;
            stream.get_mut().1.set_buffer_limit(Some(TLS_SEND_LIMIT));
            Ok(Box::new(stream))
        }
    }
}
