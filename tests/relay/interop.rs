//! Interop with Microsoft's own client: hyco-ws (Azure/azure-relay-node), installed by
//! `npm ci --prefix tests/interop`, talking through our `relay serve` to our client.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::harness::*;

/// tests/interop, with hyco-ws installed (panics with the fix when it is not).
fn interop_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/interop");
    assert!(
        dir.join("node_modules/hyco-ws").is_dir(),
        "hyco-ws is not installed: run `npm ci --prefix tests/interop` (needs node and npm)"
    );
    dir
}

fn node(relay: &Relay, args: &[&str], key: &str) -> Command {
    let dir = interop_dir();
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir)
        .arg("hyco.js")
        .args(args)
        .env("HYCO_KEY", key);
    if let Some(ca) = &relay.ca_file {
        cmd.env("NODE_EXTRA_CA_CERTS", ca);
    }
    cmd
}

fn base(relay: &Relay) -> String {
    let scheme = if relay.ca_file.is_some() { "wss" } else { "ws" };
    format!("{scheme}://127.0.0.1:{}", relay.addr.port())
}

fn hyco_sender_reaches_relay_listen(relay: Relay) {
    let echo = echo_server();
    let cs = relay.connection_string(KEY_BOTH, "fromnode");
    let listener = relay.listen_online(&cs, &["--ports", &echo.port().to_string()]);
    let out = node(
        &relay,
        &[
            "send",
            &base(&relay),
            "fromnode",
            KEY_BOTH.0,
            "-",
            &echo.port().to_string(),
            "1048576",
        ],
        KEY_BOTH.1,
    )
    .output()
    .expect("run node (install nodejs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("OK "),
        "hyco-ws sender failed: {}{}\nlisten:\n{}\nrelay:\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr),
        listener.dump(),
        relay.proc.dump()
    );
}

/// A hyco-ws listener on "tonode", online: (the process, its stdout, its stderr).
fn hyco_listener(relay: &Relay) -> (KillOnDrop, Lines, Lines) {
    let mut cmd = node(
        relay,
        &["listen", &base(relay), "tonode", KEY_BOTH.0, "-"],
        KEY_BOTH.1,
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run node (install nodejs)");
    let stdout = Lines::from_reader(child.stdout.take().expect("piped"));
    let stderr = Lines::from_reader(child.stderr.take().expect("piped"));
    let guard = KillOnDrop(child);
    assert!(
        stdout.wait_for("LISTENING").is_some(),
        "hyco-ws listener did not come online:\n{}\nrelay:\n{}",
        stderr.all().join("\n"),
        relay.proc.dump()
    );
    (guard, stdout, stderr)
}

fn relay_connect_reaches_hyco_listener(relay: Relay) {
    let (_guard, stdout, stderr) = hyco_listener(&relay);
    let cs = relay.connection_string(KEY_BOTH, "tonode");
    let (connect, addr) = relay.connect(&cs, "5678");
    let data = random_bytes(1 << 20);
    let back = round_trip(addr, &data).unwrap_or_default();
    assert_eq!(
        sha256(&back),
        sha256(&data),
        "connect:\n{}\nnode:\n{}\nrelay:\n{}",
        connect.dump(),
        stderr.all().join("\n"),
        relay.proc.dump()
    );
    assert!(
        stdout.wait_for("PORTNAME 5678").is_some(),
        "the preamble reached hyco-ws"
    );
}

#[test]
fn hyco_ws_sender_through_relay_serve_to_relay_listen() {
    hyco_sender_reaches_relay_listen(Relay::start());
}

#[test]
fn hyco_ws_sender_over_tls() {
    hyco_sender_reaches_relay_listen(Relay::start_tls());
}

#[test]
fn relay_connect_through_relay_serve_to_hyco_ws_listener() {
    relay_connect_reaches_hyco_listener(Relay::start());
}

#[test]
fn relay_connect_to_hyco_ws_listener_over_tls() {
    relay_connect_reaches_hyco_listener(Relay::start_tls());
}

/// A sender that offers a WebSocket extension (which the relay never negotiates) is
/// relayed to a hyco-ws listener like any other: the offer once reached the listener in
/// the accept's `connectHeaders`, and hyco-ws crashed acting on it.
#[test]
fn a_sender_offering_an_extension_leaves_a_hyco_ws_listener_running() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let relay = Relay::start();
    let (mut listener, _stdout, stderr) = hyco_listener(&relay);
    let token = relay.token(KEY_BOTH, "tonode");
    let mut request = format!("{}/$hc/tonode?sb-hc-action=connect", base(&relay))
        .into_client_request()
        .expect("request");
    let headers = request.headers_mut();
    headers.insert(
        "ServiceBusAuthorization",
        HeaderValue::from_str(token.expose()).expect("header"),
    );
    headers.insert(
        "Sec-WebSocket-Extensions",
        HeaderValue::from_static("permessage-deflate; server_max_window_bits=99"),
    );
    let tcp = std::net::TcpStream::connect(relay.addr).expect("connect");
    tcp.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let upgraded = tokio_tungstenite::tungstenite::client(request, tcp);
    let exited = listener.0.try_wait().expect("try_wait");
    assert!(
        upgraded.is_ok() && exited.is_none(),
        "upgrade {:?}; hyco-ws exited: {exited:?}\nnode:\n{}\nrelay:\n{}",
        upgraded.err(),
        stderr.all().join("\n"),
        relay.proc.dump()
    );
    drop(upgraded);
    // And it still serves the next sender.
    let cs = relay.connection_string(KEY_BOTH, "tonode");
    let (connect, addr) = relay.connect(&cs, "5678");
    let data = random_bytes(4096);
    let back = round_trip(addr, &data).unwrap_or_default();
    assert_eq!(
        sha256(&back),
        sha256(&data),
        "connect:\n{}\nnode:\n{}",
        connect.dump(),
        stderr.all().join("\n")
    );
}

/// Kills a child process when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
