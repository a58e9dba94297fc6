//! Releasing a debuggee that is waiting for a debugger that never came.
//!
//! debugpy has no bounded wait: `--connect` blocks in pydevd until the IDE says
//! `configurationDone`, and closing its socket does not release it (it waits forever).
//! `--listen --wait-for-client` blocks the same way. What does release both is a
//! debugger that attaches and leaves at once, so at the attach timeout the sidecar
//! plays that debugger: `initialize`, `attach`, `configurationDone`, then
//! `disconnect` with `terminateDebuggee: false`. This is plain Debug Adapter Protocol,
//! understood by pydevd (connect mode) and by the debugpy adapter (listen mode) alike.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long to wait for the debuggee to answer before closing the socket anyway.
pub const RELEASE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The four requests that let a waiting debuggee run on, framed as DAP messages.
///
/// ```
/// let bytes = amlx_agent::session::dap::release_requests();
/// let text = String::from_utf8(bytes).unwrap();
/// assert!(text.starts_with("Content-Length: "));
/// assert!(text.contains(r#""command":"configurationDone""#));
/// assert!(text.contains(r#""terminateDebuggee":false"#));
/// // The attach carries arguments: an empty object fails in the debugpy adapter.
/// assert!(text.contains(r#""name":"amlx-agent release""#));
/// ```
pub fn release_requests() -> Vec<u8> {
    let requests = [
        (
            "initialize",
            serde_json::json!({"adapterID": "amlx-agent", "clientID": "amlx-agent"}),
        ),
        // Not `{}`: the debugpy adapter forwards empty arguments as none at all, and
        // pydevd then fails the attach ("missing ... 'arguments'"), which leaves a
        // listening debuggee waiting forever.
        ("attach", serde_json::json!({"name": "amlx-agent release"})),
        ("configurationDone", serde_json::json!({})),
        (
            "disconnect",
            serde_json::json!({"terminateDebuggee": false}),
        ),
    ];
    let mut out = Vec::new();
    for (seq, (command, arguments)) in requests.into_iter().enumerate() {
        let body = serde_json::json!({
            "seq": seq + 1,
            "type": "request",
            "command": command,
            "arguments": arguments,
        })
        .to_string();
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Sends the release requests and drains the answers for a bounded time.
pub async fn release<S>(stream: &mut S) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&release_requests()).await?;
    stream.flush().await?;
    let mut sink = [0u8; 4096];
    // The answers themselves do not matter; reading until the debuggee closes (or the
    // timeout) just avoids resetting the connection under its feet.
    let _ = tokio::time::timeout(RELEASE_DRAIN_TIMEOUT, async {
        while stream.read(&mut sink).await.map(|n| n > 0).unwrap_or(false) {}
    })
    .await;
    let _ = stream.shutdown().await;
    Ok(())
}
