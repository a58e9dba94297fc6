//! TLS for `relay serve`: a PEM certificate chain and key, rustls with the ring provider.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::relay::buffer::{BufferedReads, TLS_SEND_LIMIT};

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
        use crate::relay::client::tls::MAX_PEM_FILE_BYTES;
        let cert_pem = crate::small_file::read(cert, MAX_PEM_FILE_BYTES, "certificate files")
            .map_err(|e| {
                anyhow::anyhow!("could not open TLS certificate {}: {e}", cert.display())
            })?;
        let key_pem = crate::small_file::read(key, MAX_PEM_FILE_BYTES, "key files")
            .map_err(|e| anyhow::anyhow!("could not open TLS key {}: {e}", key.display()))?;
        let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("could not read PEM certificates from {}", cert.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "no certificate found in {} (expected PEM \"BEGIN CERTIFICATE\")",
            cert.display()
        );
        let private_key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .with_context(|| format!("could not read the PEM key in {}", key.display()))?
            .with_context(|| format!("no private key found in {}", key.display()))?;
        let provider = crate::relay::cipher::provider();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, private_key)
            .map_err(|err| pair_error(&err, cert, key))?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Runs the server side of the TLS handshake.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<TlsStream<BufferedReads<TcpStream>>> {
        let mut stream = self.acceptor.accept(BufferedReads::new(tcp)).await?;
        stream.get_mut().1.set_buffer_limit(Some(TLS_SEND_LIMIT));
        Ok(stream)
    }
}

/// Why a certificate and key could not serve, in words: every failure was "does not
/// match", also for a malformed certificate or a key of a kind the relay cannot sign with.
fn pair_error(err: &rustls::Error, cert: &Path, key: &Path) -> anyhow::Error {
    use rustls::{Error, InconsistentKeys};
    let (cert, key) = (cert.display(), key.display());
    match err {
        Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => anyhow::anyhow!(
            "TLS certificate {cert} does not match key {key} (the key is not the certificate's)"
        ),
        Error::InvalidCertificate(why) => anyhow::anyhow!(
            "TLS certificate {cert} cannot be read ({why:?}): its first PEM block must be the \
             server's X.509 certificate"
        ),
        // The key provider's refusal: an unsupported algorithm or size, or bytes that are
        // not a key.
        other => anyhow::anyhow!(
            "TLS key {key} cannot be used ({other}): give an ECDSA P-256 or P-384, Ed25519, \
             or RSA (2048 to 8192 bits) key in PEM"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest write of the relay's data path: a whole piece and the longest header.
    const WHOLE_FRAME: usize = crate::relay::websocket::PIECE_LEN + 14;

    /// Every step of the exchange below is bounded by this.
    const TEST_BOUND: std::time::Duration = std::time::Duration::from_secs(10);

    /// A relay serving `served` (certificate and key PEM) on loopback and a client
    /// trusting `trusted` (PEM) reaching it as `host`: both ends of the TLS handshake,
    /// within the test's bound.
    async fn handshake(
        served: (String, String),
        trusted: &str,
        host: &str,
    ) -> (
        Result<crate::relay::client::tls::BoxedIo, crate::relay::client::error::ConnectError>,
        std::io::Result<TlsStream<BufferedReads<TcpStream>>>,
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key, ca) = (
            dir.path().join("cert.pem"),
            dir.path().join("key.pem"),
            dir.path().join("ca.pem"),
        );
        std::fs::write(&cert, served.0).expect("write cert");
        std::fs::write(&key, served.1).expect("write key");
        std::fs::write(&ca, trusted).expect("write CA");
        let tls = Tls::load(&cert, &key).expect("pair loads");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let port = listener.local_addr().expect("bound address").port();
        let url = url::Url::parse(&format!("wss://{host}:{port}/")).expect("url");
        let config = crate::relay::client::tls::client_config(Some(&ca)).expect("CA loads");
        tokio::time::timeout(TEST_BOUND, async {
            tokio::join!(
                crate::relay::client::tls::connect(&url, Some(&config)),
                async {
                    let (tcp, _) = listener.accept().await.expect("accept");
                    tls.accept(tcp).await
                }
            )
        })
        .await
        .expect("the handshake ends within the test's bound")
    }

    /// The client's error when the handshake of [`handshake`] must fail.
    async fn refused(served: (String, String), trusted: &str, host: &str) -> String {
        match handshake(served, trusted, host).await.0 {
            Ok(_) => panic!("the handshake with {host} succeeded"),
            Err(err) => err.to_string(),
        }
    }

    /// A pair that cannot serve is refused with what is wrong with it: every case read
    /// "certificate does not match key", a malformed certificate and a key the relay cannot
    /// sign with included.
    #[test]
    fn a_pair_that_cannot_serve_says_what_is_wrong() {
        let one = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
        let two = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
        let garbage_cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let garbage_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let cases = [
            (
                one.cert.pem(),
                two.signing_key.serialize_pem(),
                "does not match key",
            ),
            (
                garbage_cert.to_owned(),
                one.signing_key.serialize_pem(),
                "cannot be read",
            ),
            (one.cert.pem(), garbage_key.to_owned(), "cannot be used"),
        ];
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        for (cert_pem, key_pem, want) in cases {
            std::fs::write(&cert, &cert_pem).expect("write cert");
            std::fs::write(&key, &key_pem).expect("write key");
            let err = match Tls::load(&cert, &key) {
                Ok(_) => panic!("{want}: the pair loaded"),
                Err(err) => format!("{err:#}"),
            };
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[tokio::test]
    async fn both_ends_take_a_whole_frame_in_one_write() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let pair = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
            .expect("rcgen generates");
        let cert = pair.cert.pem();
        let served = (cert.clone(), pair.signing_key.serialize_pem());
        let (client, server) = handshake(served, &cert, "127.0.0.1").await;
        let (mut client, mut server) = (client.expect("client"), server.expect("server"));
        let header = [0x82u8, 127, 0, 0, 0, 0, 0, 1, 0, 4];
        let payload = vec![7u8; WHOLE_FRAME - header.len()];
        let frame = [
            std::io::IoSlice::new(&header),
            std::io::IoSlice::new(&payload),
        ];
        let bounded = |what| {
            move |r: Result<std::io::Result<usize>, tokio::time::error::Elapsed>| {
                r.unwrap_or_else(|_| panic!("{what} took over {TEST_BOUND:?}"))
                    .unwrap_or_else(|e| panic!("{what}: {e}"))
            }
        };
        // rustls takes what it accepts into its buffer at once: the whole frame, or the
        // first of two writes.
        let taken = tokio::time::timeout(TEST_BOUND, client.write_vectored(&frame)).await;
        assert_eq!(
            bounded("client write")(taken),
            WHOLE_FRAME,
            "the client took the frame in one write"
        );
        let mut got = vec![0u8; WHOLE_FRAME];
        let (flushed, read) = tokio::join!(
            tokio::time::timeout(TEST_BOUND, async { client.flush().await.map(|()| 0) }),
            tokio::time::timeout(TEST_BOUND, server.read_exact(&mut got)),
        );
        bounded("client flush")(flushed);
        assert_eq!(bounded("server read")(read), WHOLE_FRAME);
        let taken = tokio::time::timeout(TEST_BOUND, server.write_vectored(&frame)).await;
        assert_eq!(
            bounded("server write")(taken),
            WHOLE_FRAME,
            "the server took the frame in one write"
        );
        let (flushed, read) = tokio::join!(
            tokio::time::timeout(TEST_BOUND, async { server.flush().await.map(|()| 0) }),
            tokio::time::timeout(TEST_BOUND, client.read_exact(&mut got)),
        );
        bounded("server flush")(flushed);
        assert_eq!(bounded("client read")(read), WHOLE_FRAME);
    }

    #[tokio::test]
    async fn a_refused_relay_certificate_is_named_with_its_fix() {
        let pem = |cert: rcgen::Certificate, key: rcgen::KeyPair| (cert.pem(), key.serialize_pem());
        let leaf = |names: &[&str], ca: bool| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = rcgen::CertificateParams::new(names).expect("names");
            if ca {
                params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            }
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = params.self_signed(&key).expect("self-signed");
            pem(cert, key)
        };
        let ca_as_leaf = leaf(&["127.0.0.1"], true);
        let other_name = leaf(&["relay.example"], false);
        let stranger = leaf(&["127.0.0.1"], false);
        let someone_else = leaf(&["127.0.0.1"], false);
        let cases = [
            (
                "a CA certificate served as the relay's own",
                ca_as_leaf.clone(),
                ca_as_leaf.0.clone(),
                "serves a CA certificate",
            ),
            (
                "a certificate for another name",
                other_name.clone(),
                other_name.0.clone(),
                "does not name the host",
            ),
            (
                "a certificate nobody trusted signed",
                stranger,
                someone_else.0,
                "pass --ca-file",
            ),
        ];
        for (what, served, trusted, fix) in cases {
            let err = refused(served, &trusted, "127.0.0.1").await;
            assert!(err.contains(fix), "{what}: {err}");
        }
    }

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
