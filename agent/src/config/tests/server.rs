//! `[relay.server]`: defaults, validation across keys, path patterns.

use std::time::Duration;

use super::super::*;
use super::{SECRET, file_err, from_file};
use crate::relay::sas::Right;

#[test]
fn server_settings_from_file() {
    let text = format!(
        r#"
[relay.server]
listen = "0.0.0.0:9443"
tls_cert = "/c.pem"
tls_key = "/k.pem"
max_listeners_per_path = 2
max_connections = 10
handshake_timeout = "1s"
rendezvous_timeout = "2s"
max_control_message = 1024
shutdown_grace = "3s"

[[relay.server.keys]]
name = "agent"
key = "{SECRET}"

[[relay.server.keys]]
name = "laptop"
key = "k2"
rights = ["send"]
paths = ["team-a/*"]
max_connections = 2

[[relay.server.keys]]
name = "one-listener"
key = "k3"
rights = ["listen"]
max_connections = 1

[[relay.server.keys]]
name = "alice@laptop:ci"
key = "k4"
max_connections = 1
"#
    );
    let server = from_file(&text).relay.server;
    assert_eq!(server.listen.to_string(), "0.0.0.0:9443");
    assert_eq!(
        server.tls,
        Some(TlsFiles {
            cert: "/c.pem".into(),
            key: "/k.pem".into()
        })
    );
    assert_eq!(
        (
            server.max_listeners_per_path,
            server.max_connections,
            server.max_control_message
        ),
        (2, 10, 1024)
    );
    assert_eq!(
        (
            server.handshake_timeout,
            server.rendezvous_timeout,
            server.shutdown_grace
        ),
        (
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(3)
        )
    );
    let agent = server.key("agent").expect("agent key");
    assert_eq!(agent.key.expose(), SECRET);
    assert_eq!(
        (agent.rights.as_slice(), agent.paths.as_slice()),
        (&[Right::Listen, Right::Send][..], &["*".to_owned()][..])
    );
    let laptop = server.key("laptop").expect("laptop key");
    assert!(laptop.allows(Right::Send, "team-a/job1"));
    assert!(!laptop.allows(Right::Listen, "team-a/job1"));
    assert!(!laptop.allows(Right::Send, "team-b/job1"));
    assert_eq!(laptop.max_connections, Some(2), "a sender's one tunnel");
    let listener = server.key("one-listener").expect("listen-only key");
    assert_eq!(
        listener.max_connections,
        Some(1),
        "a listener's one control channel"
    );
    assert!(server.key("nobody").is_none());
    assert!(!format!("{server:?}").contains(SECRET));
}

#[test]
fn server_defaults() {
    let server = from_file("").relay.server;
    assert_eq!(server, ServerSettings::default());
    assert_eq!(server.listen.to_string(), "127.0.0.1:9351");
    assert_eq!(server.max_listeners_per_path, 25);
    assert_eq!(server.max_control_message, 65536);
    assert!(server.tls.is_none() && !server.insecure_ws && server.keys.is_empty());
}

#[test]
fn insecure_ws_is_allowed_on_loopback_or_when_asked() {
    for text in [
        "[relay.server]\ninsecure_ws = true\n",
        "[relay.server]\ninsecure_ws = true\nlisten = \"[::1]:0\"\n",
        "[relay.server]\ninsecure_ws = true\nlisten = \"0.0.0.0:80\"\nallow_insecure_remote = true\n",
    ] {
        assert!(from_file(text).relay.server.insecure_ws, "{text}");
    }
}

#[test]
fn server_errors_name_file_line_and_key() {
    let long = "x".repeat(MAX_KEY_CHARS + 1);
    let ok_len = "y".repeat(MAX_KEY_CHARS);
    assert_eq!(
        from_file(&format!(
            "[[relay.server.keys]]\nname = \"{ok_len}\"\nkey = \"{ok_len}\"\n"
        ))
        .relay
        .server
        .keys
        .len(),
        1
    );
    let cases: Vec<(String, &str)> = vec![
        (
            "[relay.server]\nlisten = \"127.0.0.1:1\"\ntls_cert = \"/c.pem\"\n".into(),
            "3: relay.server.tls_cert: tls_cert is set but tls_key is not (set both PEM files, or neither)",
        ),
        (
            "[relay.server]\n\ntls_key = \"/k.pem\"\n".into(),
            "3: relay.server.tls_key: tls_key is set but tls_cert is not (set both PEM files, or neither)",
        ),
        (
            "[relay.server]\ntls_cert = \"/c\"\ntls_key = \"/k\"\ninsecure_ws = true\n".into(),
            "4: relay.server.insecure_ws: insecure_ws = true contradicts tls_cert/tls_key (choose one)",
        ),
        (
            "[relay.server]\ninsecure_ws = true\nlisten = \"0.0.0.0:80\"\n".into(),
            "3: relay.server.listen: 0.0.0.0:80 is not a loopback address and insecure_ws = true \
             would send tokens in clear (use TLS, or set allow_insecure_remote = true)",
        ),
        (
            "[relay.server]\nlisten = \"localhost:80\"\n".into(),
            "2: relay.server.listen: invalid address \"localhost:80\" (expected IP:PORT, e.g. \
             127.0.0.1:9351 or [::]:443)",
        ),
        (
            "[relay.server]\nmax_connections = 0\n".into(),
            "2: relay.server.max_connections: must be at least 3 (it is 0): a listener's \
             control channel takes one and each tunnel two, its sender's leg and its listener's",
        ),
        (
            "[relay.server]\nmax_connections = 2\n".into(),
            "2: relay.server.max_connections: must be at least 3 (it is 2): a listener's \
             control channel takes one and each tunnel two, its sender's leg and its listener's",
        ),
        (
            "[relay.server]\nhandshake_timeout = \"0s\"\n".into(),
            "2: relay.server.handshake_timeout: must be longer than 0s",
        ),
        (
            "[relay.server]\nshutdown_grace = \"later\"\n".into(),
            "2: relay.server.shutdown_grace: invalid duration \"later\" (expected e.g. 30s, 10m)",
        ),
        (
            "[relay.server]\nport = 1\n".into(),
            "2: unknown key relay.server.port (known keys: listen, tls_cert, tls_key, \
             insecure_ws, allow_insecure_remote, max_listeners_per_path, max_connections, max_handshakes, \
             max_handshakes_per_source, handshake_timeout, rendezvous_timeout, listener_answer_timeout, listener_ping_interval, half_close_timeout, \
             stalled_write_timeout, max_control_message, shutdown_grace, keys)",
        ),
        (
            format!("[[relay.server.keys]]\nname = \"{long}\"\nkey = \"k\"\n"),
            "2: relay.server.keys[0].name: key name must be 1 to 256 characters (it has 257)",
        ),
        (
            format!("[[relay.server.keys]]\nname = \"a\"\nkey = \"{long}\"\n"),
            "3: relay.server.keys[0].key: key must be 1 to 256 characters (it has 257)",
        ),
        (
            "[[relay.server.keys]]\nname = \"a&b\"\nkey = \"k\"\n".into(),
            "2: relay.server.keys[0].name: key name may not hold '&': '&', '%', '+', '#', '=', \
             spaces and control characters change meaning in a token's skn= field, which not \
             every client URL-encodes",
        ),
        (
            "[[relay.server.keys]]\nname = \"a\"\nkey = \"\"\n".into(),
            "3: relay.server.keys[0].key: key must be 1 to 256 characters (it has 0)",
        ),
        (
            "[[relay.server.keys]]\nname = \"a\"\nkey = \"k\"\nrights = [\"listen\", \"manage\"]\n"
                .into(),
            "4: relay.server.keys[0].rights[1]: invalid right \"manage\": expected one of listen, send",
        ),
        (
            "[[relay.server.keys]]\nname = \"a\"\nkey = \"k\"\nrights = []\n".into(),
            "4: relay.server.keys[0].rights: must name at least one of listen, send (omit it for both)",
        ),
        (
            "[[relay.server.keys]]\nname = \"a\"\nkey = \"k\"\npaths = [\"/\"]\n".into(),
            "4: relay.server.keys[0].paths: must list non-empty path patterns, e.g. [\"*\"] or \
             [\"team-a/*\"]",
        ),
        (
            "[[relay.server.keys]]\nname = \"a\"\nkey = \"k\"\n[[relay.server.keys]]\nname = \"a\"\nkey = \"k\"\n"
                .into(),
            "5: relay.server.keys[1].name: duplicate key name \"a\"",
        ),
        (
            "[[relay.server.keys]]\nname = \"a\"\n".into(),
            "1: missing key relay.server.keys[0].key",
        ),
        (
            "[[relay.server.keys]]\nname = \"a\"\nkey = \"k\"\nright = [\"send\"]\n".into(),
            "4: unknown key relay.server.keys[0].right (known keys: name, key, rights, paths, \
             max_connections)",
        ),
        (
            "[[relay.server.keys]]\nname = \"a\"\nkey = \"k\"\nmax_connections = 0\n".into(),
            "4: relay.server.keys[0].max_connections: must be at least 1",
        ),
        (
            "[[relay.server.keys]]\nname = \"a\"\nkey = \"k\"\nrights = [\"send\"]\n\
             max_connections = 1\n"
                .into(),
            "5: relay.server.keys[0].max_connections: must be at least 2 for a key that may \
             only send: each of its tunnels takes two, its sender's leg and its listener's",
        ),
        (
            "[[relay.server.keys]]\nname = \"a\"\nkey = \"k\"\nrights = [\"listen\"]\n\
             max_connections = 0\n"
                .into(),
            "5: relay.server.keys[0].max_connections: must be at least 1",
        ),
        (
            "[relay.server]\nmax_connections = 4611686018427387904\n".into(),
            "2: relay.server.max_connections: must be at most 1073741816 (it is \
             4611686018427387904): each connection holds a file descriptor, and no Linux \
             process may open more",
        ),
        (
            "[[relay.server.keys]]\nname = \"a\"\nkey = \"k\"\n\
             max_connections = 18446744073709551615\n"
                .into(),
            "4: relay.server.keys[0].max_connections: must be at most 1073741816 (it is \
             18446744073709551615): each connection holds a file descriptor, and no Linux \
             process may open more",
        ),
    ];
    for (text, want) in &cases {
        assert_eq!(
            file_err(text),
            format!("config error: /cfg/agent.toml:{want}"),
            "{text}"
        );
    }
}

#[test]
fn path_patterns() {
    let cases: &[(&str, &str, bool)] = &[
        ("*", "anything/at/all", true),
        ("*", "", true),
        ("debug", "debug", true),
        ("debug", "/Debug/", true),
        ("debug", "debug2", false),
        ("debug", "debug/sub", false),
        ("team-a/*", "team-a/job1", true),
        ("team-a/*", "team-a/job1/rank0", true),
        ("team-a/*", "team-b/job1", false),
        ("team-a/*", "team-a", false),
        ("*-debug", "job7-debug", true),
        ("*-debug", "job7-debugx", false),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "axxbyy", false),
        ("a*a", "aaa", true),
        ("hc", "HC", true),
        ("hc", "hc2", false),
        ("team-*", "team-a", true),
        ("team-*/dbg", "team-a/dbg", true),
        ("team-*/dbg", "team-a/x", false),
        ("/hc/", "hc", true),
        ("", "hc", false),
    ];
    for (pattern, path, want) in cases {
        assert_eq!(path_matches(pattern, path), *want, "{pattern} vs {path}");
    }
}

/// The bound of a `max_connections` is itself allowed, for the relay and for a key (the
/// relay's slot counter holds it: tokio's semaphore panicked past 2^61).
#[test]
fn the_largest_max_connections_is_accepted() {
    let most = crate::config::value::MOST_CONNECTIONS;
    let server = from_file(&format!(
        "[relay.server]\nmax_connections = {most}\n[[relay.server.keys]]\nname = \"a\"\n\
         key = \"k\"\nmax_connections = {most}\n"
    ))
    .relay
    .server;
    assert_eq!(server.max_connections, most);
    assert_eq!(server.key("a").expect("key").max_connections, Some(most));
    assert!(most <= tokio::sync::Semaphore::MAX_PERMITS);
}
