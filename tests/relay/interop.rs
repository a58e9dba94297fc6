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

fn relay_connect_reaches_hyco_listener(relay: Relay) {
    let mut cmd = node(
        &relay,
        &["listen", &base(&relay), "tonode", KEY_BOTH.0, "-"],
        KEY_BOTH.1,
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run node (install nodejs)");
    let stdout = Lines::from_reader(child.stdout.take().expect("piped"));
    let stderr = Lines::from_reader(child.stderr.take().expect("piped"));
    let _guard = KillOnDrop(child);
    assert!(
        stdout.wait_for("LISTENING").is_some(),
        "hyco-ws listener did not come online:\n{}\nrelay:\n{}",
        stderr.all().join("\n"),
        relay.proc.dump()
    );
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

/// Kills a child process when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
