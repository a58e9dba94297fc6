//! Lifecycle: SIGTERM drain and grace, TLS, and the setups `relay serve` refuses.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::net::TcpStream;
use tokio_tungstenite::Connector;

use super::harness::*;

#[tokio::test]
async fn sigterm_drains_relayed_connections() {
    let mut relay = Relay::start("shutdown_grace = \"60s\"");
    let mut control = listen(&relay, "hc").await;
    let (mut sender, mut data) = rendezvous(&relay, &mut control, "hc").await;
    relay.wait_status("relayed", 1).await;

    relay.signal(Signal::SIGTERM);
    assert_eq!(
        next_close(&mut control).await,
        Some(1001),
        "control channel closed"
    );
    // New connections are refused once the listening socket is gone.
    let started = std::time::Instant::now();
    while TcpStream::connect(relay.addr).await.is_ok() {
        assert!(
            started.elapsed() < DEADLINE,
            "still accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The relayed connection keeps working during the grace.
    assert_relays(&mut sender, &mut data, b"during the grace").await;
    assert_relays(&mut data, &mut sender, b"both ways").await;
    sender.close(Some(normal_close())).await.expect("close");
    assert_eq!(next_close(&mut data).await, Some(1000));
    assert_eq!(next_close(&mut sender).await, Some(1000));

    let (status, log) = relay.wait_exit(DEADLINE).await;
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        log.contains("1 relayed connection(s) drained, 0 cut"),
        "{log}"
    );
}

#[tokio::test]
async fn sigterm_cuts_what_is_left_at_the_end_of_the_grace() {
    let mut relay = Relay::start("shutdown_grace = \"1s\"");
    let mut control = listen(&relay, "hc").await;
    let (mut sender, mut data) = rendezvous(&relay, &mut control, "hc").await;
    relay.wait_status("relayed", 1).await;
    relay.signal(Signal::SIGTERM);
    assert_eq!(next_close(&mut sender).await, Some(1001));
    assert_eq!(next_close(&mut data).await, Some(1001));
    let (status, log) = relay.wait_exit(DEADLINE).await;
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        log.contains("0 relayed connection(s) drained, 1 cut"),
        "{log}"
    );
}

/// A SIGINT or SIGTERM during the drain cuts what is left: with a long `shutdown_grace`
/// (100y here) nothing but SIGKILL ended the drain, and with it went the Close frames and
/// the last log lines. The tunnel still carries bytes until then, a repeated SIGHUP (a
/// closed terminal sends two) included.
#[tokio::test]
async fn a_second_stop_signal_cuts_a_long_drain() {
    let mut relay = Relay::start("shutdown_grace = \"100y\"");
    let mut control = listen(&relay, "hc").await;
    let (mut sender, mut data) = rendezvous(&relay, &mut control, "hc").await;
    relay.wait_status("relayed", 1).await;
    // A terminal that closes sends SIGHUP twice (the shell's and the kernel's): a drain.
    relay.signal(Signal::SIGHUP);
    relay.log_containing("relay serve: shutting down").await;
    relay.signal(Signal::SIGHUP);
    // Nothing is said of a second SIGHUP; a cut would close the tunnel within this.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_relays(&mut sender, &mut data, b"still draining").await;
    relay.signal(Signal::SIGINT);
    assert_eq!(next_close(&mut sender).await, Some(1001));
    assert_eq!(next_close(&mut data).await, Some(1001));
    let (status, log) = relay.wait_exit(DEADLINE).await;
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        log.contains("SIGINT received during the drain; cutting what is left now"),
        "{log}"
    );
    assert!(
        log.contains("0 relayed connection(s) drained, 1 cut at a second stop signal"),
        "{log}"
    );
}

#[tokio::test]
async fn tls_rendezvous_uses_wss_addresses() {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("rcgen");
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let relay = Relay::start_with(
        "",
        &["--tls-cert", "cert.pem", "--tls-key", "key.pem"],
        |dir| {
            std::fs::write(dir.join("cert.pem"), &cert_pem).expect("write cert");
            std::fs::write(dir.join("key.pem"), &key_pem).expect("write key");
        },
    );
    assert_eq!(relay.scheme, "wss");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert.cert.der().clone())
        .expect("trust the test cert");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = Connector::Rustls(Arc::new(config));
    let tls_open = |req| {
        let connector = connector.clone();
        async move {
            tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector))
                .await
                .map(|(ws, _)| ws)
                .expect("TLS WebSocket")
        }
    };
    let tok = token(ROOT, KEY, "hc", 3600);
    let mut control = tls_open(request(&relay.url("hc", "listen"), Some(&tok))).await;
    let sender = tokio::spawn(tls_open(request(&relay.url("hc", "connect"), Some(&tok))));
    let accept = next_accept(&mut control).await;
    let address = accept["accept"]["address"].as_str().expect("address");
    assert!(
        address.starts_with(&format!("wss://{}/$hc/hc?", relay.addr)),
        "{address}"
    );
    let mut data = tls_open(request(address, None)).await;
    let mut sender = sender.await.expect("sender task");
    assert_relays(&mut sender, &mut data, b"over TLS").await;
    assert_relays(&mut data, &mut sender, b"and back").await;
}

#[test]
fn serve_refuses_unsafe_or_useless_setups() {
    let dir = tempfile::tempdir().expect("temp dir");
    let with_key = dir.path().join("keys.toml");
    std::fs::write(
        &with_key,
        format!("[relay.server]\n[[relay.server.keys]]\nname = \"k\"\nkey = \"{KEY}\"\nrights = [\"listen\"]\n"),
    )
    .expect("write config");
    let without_key = dir.path().join("empty.toml");
    std::fs::write(&without_key, "[relay.server]\n").expect("write config");
    let cases: [(&std::path::Path, &[&str], &str); 4] = [
        (
            &with_key,
            &["--listen", "0.0.0.0:0", "--insecure-ws"],
            "loopback",
        ),
        (
            &with_key,
            &["--listen", "127.0.0.1:0"],
            "needs a certificate",
        ),
        (
            &without_key,
            &["--listen", "127.0.0.1:0", "--insecure-ws"],
            "no keys",
        ),
        (
            &with_key,
            &[
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                "missing.pem",
                "--tls-key",
                "missing.pem",
            ],
            "could not open",
        ),
    ];
    for (config, flags, want) in cases {
        let out = crate::util::agent()
            .arg("--config")
            .arg(config)
            .args(["relay", "serve"])
            .args(flags)
            .output()
            .expect("run relay serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {stderr}");
        assert!(stderr.contains(want), "{flags:?}: {stderr}");
        assert!(!stderr.contains(KEY), "the key leaked: {stderr}");
    }
    let help = crate::util::agent()
        .args(["relay", "serve", "--help"])
        .output()
        .expect("help");
    let text = String::from_utf8_lossy(&help.stdout);
    for want in [
        "openssl rand",
        "--insecure-ws",
        "--tls-cert",
        "[[relay.server.keys]]",
    ] {
        assert!(text.contains(want), "help lacks {want}: {text}");
    }
}

/// SIGHUP (the terminal that started it went away) drains like SIGTERM; it used to end
/// the relay at once, with no Close frames and no log line. Under `nohup` (SIGHUP ignored
/// when it starts) it stays ignored.
#[tokio::test]
#[allow(unsafe_code)]
async fn sighup_drains_unless_it_was_ignored_at_start() {
    let mut relay = Relay::start("shutdown_grace = \"1s\"");
    let mut control = listen(&relay, "hc").await;
    relay.signal(Signal::SIGHUP);
    assert_eq!(next_close(&mut control).await, Some(1001), "a drain");
    let (status, log) = relay.wait_exit(DEADLINE).await;
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("SIGHUP received; shutting down"), "{log}");

    let relay = Relay::start_adjusted(
        "",
        &["--insecure-ws"],
        |_| {},
        |cmd| {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: between fork and exec only sigaction runs: async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::signal::signal(Signal::SIGHUP, nix::sys::signal::SigHandler::SigIgn)
                        .map(|_| ())
                        .map_err(std::io::Error::from)
                });
            }
        },
    );
    relay.signal(Signal::SIGHUP);
    // Still serving after the hang-up: a listener connects.
    let _control = listen(&relay, "hc").await;
    relay.wait_status("listeners", 1).await;
    assert!(!relay.log().contains("SIGHUP"));
}

/// `/$status` counts every connection the relay holds: with relayed pairs open it left out
/// each pair's listener leg (handed from the task that accepted it to the sender's), so a
/// relay at its `max_connections` said it had half of them left.
#[tokio::test]
async fn status_counts_both_legs_of_every_relayed_connection() {
    const PAIRS: u64 = 3;
    let relay = Relay::start("");
    let mut control = listen(&relay, "counted").await;
    let mut pairs = Vec::new();
    for _ in 0..PAIRS {
        pairs.push(rendezvous(&relay, &mut control, "counted").await);
    }
    relay.wait_status("relayed", PAIRS).await;
    // The control channel, two legs a pair, and the `/$status` request itself.
    relay.wait_status("connections", 1 + 2 * PAIRS + 1).await;
    drop(pairs);
    relay.wait_status("relayed", 0).await;
    relay.wait_status("connections", 1 + 1).await;
}
