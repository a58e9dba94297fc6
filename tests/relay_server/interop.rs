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
    let run = tokio::process::Command::new("node")
        .arg("hyco_ws_roundtrip.js")
        .current_dir(&dir)
        .env("RELAY_BASE", format!("ws://{}", relay.addr))
        .env("HC_PATH", "hyco")
        .env("RELAY_KEY_NAME", ROOT)
        .env("RELAY_KEY", KEY)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("node script finished in time")
        .expect("node runs");
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
