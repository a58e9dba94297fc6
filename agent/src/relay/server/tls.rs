//! TLS for `relay serve`: a PEM certificate chain and key, rustls with the ring provider.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::relay::buffer::BufferedReads;

/// A loaded certificate and key, ready to terminate TLS.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

impl Tls {
    /// Loads `cert` (PEM chain, leaf first) and `key` (PEM PKCS#8, PKCS#1 or SEC1).
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Tls> {
        let certs = rustls_pemfile::certs(&mut BufReader::new(
            File::open(cert)
                .with_context(|| format!("could not open TLS certificate {}", cert.display()))?,
        ))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("could not read PEM certificates from {}", cert.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "no certificate found in {} (expected PEM \"BEGIN CERTIFICATE\")",
            cert.display()
        );
        let private_key = rustls_pemfile::private_key(&mut BufReader::new(
            File::open(key).with_context(|| format!("could not open TLS key {}", key.display()))?,
        ))
        .with_context(|| format!("could not read the PEM key in {}", key.display()))?
        .with_context(|| format!("no private key found in {}", key.display()))?;
        let provider = crate::relay::cipher::provider();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, private_key)
            .with_context(|| {
                format!(
                    "TLS certificate {} does not match key {}",
                    cert.display(),
                    key.display()
                )
            })?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Runs the server side of the TLS handshake.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<TlsStream<BufferedReads<TcpStream>>> {
        self.acceptor.accept(BufferedReads::new(tcp)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_a_generated_pair_and_refuses_junk() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("rcgen generates");
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
        Tls::load(&cert_path, &key_path).expect("valid pair loads");

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").expect("write junk");
        let err = Tls::load(&junk, &key_path).expect_err("junk cert");
        assert!(format!("{err:#}").contains("no certificate"), "{err:#}");
        let err = Tls::load(&cert_path, &junk).expect_err("junk key");
        assert!(format!("{err:#}").contains("no private key"), "{err:#}");
        let err = Tls::load(&dir.path().join("missing"), &key_path).expect_err("missing");
        assert!(format!("{err:#}").contains("could not open"), "{err:#}");
    }
}
