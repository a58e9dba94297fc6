//! Releasing a step that debugpy holds for a debugger: over fresh connections to a
//! debuggee that listens, or over a connection already open to it, retried until debugpy
//! acknowledges and bounded by [`RELEASE_GRACE`].

use std::net::SocketAddr;
use std::time::Duration;

use super::{RELEASE_GRACE, dap, gate};

/// At the attach timeout, a debuggee that listens and waits for a client (listen and
/// direct modes with `--wait-for-client`) is released by attaching and leaving, on a
/// fresh connection each try (debugpy may not listen yet, or may be busy with a client
/// that just left), until it acknowledges; bounded by [`RELEASE_GRACE`].
pub(super) async fn release_listening_debuggee(debugpy: impl Fn() -> SocketAddr) {
    let outcome = tokio::time::timeout(RELEASE_GRACE, async {
        loop {
            // Asked again each try: a port debugpy's adapter picked may be reported late.
            let address = debugpy();
            let mut stream = None;
            let attempt = async {
                let stream = stream.insert(tokio::net::TcpStream::connect(address).await?);
                gate::release(&mut gate::GateState::default(), stream)
                    .await
                    .map_err(std::io::Error::other)
            };
            let outcome = tokio::time::timeout(dap::RELEASE_DRAIN_TIMEOUT, attempt).await;
            // Never a reset: three in a row left debugpy's adapter taking no connection.
            if let Some(mut stream) = stream {
                gate::close_gracefully(&mut stream).await;
            }
            match outcome {
                Ok(Ok(())) => return,
                Ok(Err(err)) => tracing::debug!("releasing debugpy at {address}: {err}; again"),
                Err(_) => tracing::debug!("debugpy at {address} did not answer; again"),
            }
            tokio::time::sleep(RELEASE_RETRY_PAUSE).await;
        }
    })
    .await;
    let address = debugpy();
    match outcome {
        Ok(()) => tracing::info!("released the step waiting for a debugger at {address}"),
        Err(_) => tracing::warn!(
            "debugpy at {address} did not acknowledge a release within {}",
            humantime::format_duration(RELEASE_GRACE)
        ),
    }
}

/// What [`release_on`] does when debugpy refuses the release's `configurationDone`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Tries again on the same connection (connect mode: debugpy's only connection).
    Retry,
    /// Gives the connection up after one try: an adapter connection a developer left
    /// refuses it only when that developer's `attach` failed there (debugpy's adapter
    /// allows `configurationDone` only while an `attach` is under way), and it never will
    /// accept one; one that does not answer may be busy with a request the developer left.
    /// The release goes on over fresh connections.
    GiveUp,
}

/// Releases a step held by debugpy over an open connection (connect mode's debugpy
/// connection, or an adapter connection a developer left), retrying until debugpy
/// acknowledges; bounded by [`RELEASE_GRACE`].
pub(super) async fn release_on(
    state: &mut gate::GateState,
    debuggee: &mut tokio::net::TcpStream,
    on_refusal: Refusal,
) -> Result<(), String> {
    let released = tokio::time::timeout(RELEASE_GRACE, async {
        loop {
            match gate::release(state, debuggee).await {
                Ok(()) => return Ok(()),
                Err(err @ (gate::ReleaseError::Closed | gate::ReleaseError::Io(_))) => {
                    return Err(format!(
                        "debugpy's connection ended during the release: {err}"
                    ));
                }
                Err(gate::ReleaseError::Refused) if on_refusal == Refusal::GiveUp => {
                    return Err(
                        "debugpy refused the release there (the developer's attach had failed)"
                            .to_owned(),
                    );
                }
                // debugpy answers requests in turn: one the developer left pending there
                // (an attach to a process that does not exist waits 60 s) holds the
                // release back, and fresh connections may be answered at once.
                Err(gate::ReleaseError::NoAck(_)) if on_refusal == Refusal::GiveUp => {
                    return Err(
                        "debugpy did not answer the release there (a request the developer \
                         left is still pending)"
                            .to_owned(),
                    );
                }
                Err(gate::ReleaseError::NoAck(_) | gate::ReleaseError::Refused) => {
                    tracing::debug!("debugpy has not acknowledged the release yet; again");
                }
            }
        }
    })
    .await;
    released.unwrap_or_else(|_| {
        Err(format!(
            "debugpy did not acknowledge the release within {}",
            humantime::format_duration(RELEASE_GRACE)
        ))
    })
}

/// Pause between two release attempts on fresh connections.
const RELEASE_RETRY_PAUSE: Duration = Duration::from_millis(200);
