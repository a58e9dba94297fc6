//! Microsoft's own client (hyco-ws from Azure/azure-relay-node) against `relay serve`.

use std::time::Duration;

use super::harness::*;

#[tokio::test]
async fn microsofts_hyco_ws_listener_and_sender_talk_through_the_relay() {
    let relay = Relay::start("");
    let dir = interop_dir();
    assert!(
        dir.join("node_modules").join("hyco-ws").exists(),
        "hyco-ws is not installed: run `npm ci` in {} (tests/run.sh does)",
        dir.display()
    );
    // std's Command on a thread of its own, bounded and killed at its deadline, while the
    // in-process relay runs on: tokio's process support would install a SIGCHLD handler
    // in the whole test binary for good, and every child's exit would then interrupt the
    // socket reads with a timeout of the tests running next to it (EINTR, which such
    // reads never restart).
    let mut cmd = std::process::Command::new("node");
    cmd.arg("hyco_ws_roundtrip.js")
        .current_dir(&dir)
        .env("RELAY_BASE", format!("ws://{}", relay.addr))
        .env("HC_PATH", "hyco")
        .env("RELAY_KEY_NAME", ROOT)
        .env("RELAY_KEY", KEY);
    let out = tokio::task::spawn_blocking(move || {
        crate::util::output_within(&mut cmd, Duration::from_secs(60))
    })
    .await
    .expect("the node script's waiter");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("OK query-token: echo:hello from hyco-ws query-token"),
        "{stdout}"
    );
    assert!(
        stdout.contains("OK header-token: echo:hello from hyco-ws header-token"),
        "{stdout}"
    );
    let status = relay.status().await;
    assert_eq!(status["relayed_total"], 2, "{status}");
}
