//! The TLS crypto provider of every relay end (`relay serve` and the clients): ring, with
//! AES-128-GCM preferred.
//!
//! rustls lists AES-256-GCM first. Over wss every relayed byte is encrypted or decrypted
//! four times (sender, relay in and out, listener), and AES-128 (10 rounds against 14)
//! costs about 30 % less per byte while being just as standard (it is TLS 1.3's mandatory
//! suite). The set of suites is unchanged; only the order moves, and a server follows the
//! client's order, so third-party clients keep theirs.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{CipherSuite, SupportedCipherSuite};

/// Suites moved to the front of ring's list, in this order (the rest keep theirs).
const PREFERRED: [CipherSuite; 3] = [
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
];

/// ring's default provider with `PREFERRED` first.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = preferred_first(provider.cipher_suites);
    Arc::new(provider)
}

/// `suites` with those in [`PREFERRED`] first, each group in its own order.
fn preferred_first(mut suites: Vec<SupportedCipherSuite>) -> Vec<SupportedCipherSuite> {
    let rank = |s: &SupportedCipherSuite| {
        PREFERRED
            .iter()
            .position(|p| *p == s.suite())
            .unwrap_or(PREFERRED.len())
    };
    // A stable sort keeps ring's order among the others.
    suites.sort_by_key(rank);
    suites
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_first_and_no_suite_lost() {
        let ring = rustls::crypto::ring::default_provider().cipher_suites;
        let ours = provider().cipher_suites.clone();
        assert_eq!(ours.len(), ring.len());
        for suite in &ring {
            assert!(
                ours.iter().any(|s| s.suite() == suite.suite()),
                "{suite:?} kept"
            );
        }
        assert_eq!(ours[0].suite(), CipherSuite::TLS13_AES_128_GCM_SHA256);
        let tls13: Vec<_> = ours.iter().filter(|s| s.tls13().is_some()).collect();
        assert_eq!(tls13[0].suite(), CipherSuite::TLS13_AES_128_GCM_SHA256);
    }
}
