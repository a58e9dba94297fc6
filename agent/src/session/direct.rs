//! Direct mode: the developer reaches the node's IP and debug port without a relay.
//!
//! When the agent injected debugpy, debugpy listens on a loopback port of its own and
//! the sidecar listens on the published `node-ip:port`, passing each developer through
//! the DAP gate ([`super::attach`]), so the attach deadline holds whatever a client
//! does. When the step starts debugpy itself (prior-art code reading
//! `AMLX_DEBUG_PORT`), debugpy owns the published port and the sidecar can only watch
//! the kernel's socket table and release at the deadline when nobody is connected.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::attach::{self, BootstrapWord, Developer, Shared};
use super::dap::{self, Framer, Message};
use super::gate::{self, GateState};
use super::report::Reporter;
use super::sidecar::ReadySignal;
use super::step_end::StepEnd;
use super::{SessionSpec, deadline_after, release_listening_debuggee};
use crate::ports::connections::established_on;
use crate::publish::SessionState;

/// Pause after a failed accept (e.g. out of descriptors) so the loop cannot spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(200);

pub async fn run(
    spec: &SessionSpec,
    mut ready: ReadySignal,
    reporter: &mut Reporter,
    step_end: &StepEnd,
    bootstrap: BootstrapWord,
) {
    if spec.proxy_port.is_none() {
        return watch(spec, ready, reporter).await;
    }
    let published = spec.published_address();
    let listener = match TcpListener::bind(published).await {
        Ok(listener) => listener,
        Err(err) => {
            super::setup_failed(
                spec,
                &mut ready,
                reporter,
                &format!("could not listen on {published} for the developer: {err}"),
            );
            return;
        }
    };
    ready.ready();
    reporter.set(SessionState::WaitingForDebugger, None);
    let (shared, events) = Shared::new(spec.debugpy_address(), step_end.clone(), bootstrap);
    let accepting = accept_loop(listener, shared.clone());
    let why = attach::hold(spec, &shared, events, reporter, accepting).await;
    if spec.post_mortem.is_some() {
        return;
    }
    tracing::warn!("direct mode stopped accepting developers: {why}");
    std::future::pending().await
}

/// Accepts developers until the step ends; each is served on its own task.
async fn accept_loop(listener: TcpListener, shared: Shared) -> String {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, peer)) => {
                tracing::info!("developer connection from {peer}");
                tcp
            }
            Err(err) => {
                tracing::warn!("accepting a developer connection failed: {err}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(serve_one(tcp, shared));
    }
}

/// Serves one connection to the published port: debugpy is reached only for a debugger,
/// once its first whole DAP message has arrived.
///
/// A connection that closes unread, or sends something else (a port scanner, a health
/// check, a browser), never reaches debugpy's adapter: debugpy 1.8.22's adapter stopped
/// taking connections after a few such ones had come and gone, and then no debugger
/// could attach for the rest of the step.
async fn serve_one(mut tcp: TcpStream, shared: Shared) {
    // What the connection is told before it is closed, when it is not served.
    let mut answer = Vec::new();
    match opening(&mut tcp).await {
        Opening::Debugger { sent, first } => {
            // A developer who leaves while debugpy is awaited is let go, not connected to
            // it later (several such left debugpy's adapter unable to serve the next).
            let reached = tokio::select! {
                // Biased: debugpy reached at once decides (a developer who left is then
                // found out by the gate, as before).
                biased;
                reached = shared.connect_debugpy() => reached,
                () = left(&tcp) => {
                    tracing::info!("a developer left before debugpy was reached");
                    // What it sent (the rest never read: it reached nothing), for how far
                    // it got.
                    let mut more = vec![0u8; crate::relay::client::tunnel::MAX_HELD_BYTES];
                    let n = tcp.try_read(&mut more).unwrap_or(0);
                    let mut sent = sent;
                    sent.extend_from_slice(more.get(..n).unwrap_or_default());
                    shared.left_while_waiting(&sent);
                    return;
                }
            };
            match reached {
                Ok(debugpy) => {
                    // Attached once debugpy is reached, not while it is awaited.
                    shared.arrived();
                    shared.serve(Developer::Direct { tcp, sent }, debugpy).await;
                    return;
                }
                Err(why) => {
                    tracing::warn!("a developer could not be connected to debugpy: {why}");
                    // Said to the debugger, which shows it, where a bare close says only
                    // that the connection closed.
                    let why = format!("amlx-agent: {why}");
                    answer = dap::refusal_response(&first, &why).unwrap_or_default();
                }
            }
        }
        Opening::Left => {
            tracing::info!(
                "a connection to the debug port closed before it sent a whole DAP message; \
                 debugpy was not reached"
            );
            // Not called a debugger that left: nothing it sent says it was one (a port
            // scanner, a load balancer's check).
            shared.not_a_debugger("no whole DAP message before it closed".to_owned());
            return;
        }
        Opening::NotDap(what) => {
            tracing::info!("a connection to the debug port is not a debugger: it sent {what}");
            shared.not_a_debugger(what);
        }
    }
    let _ = tokio::time::timeout(REFUSAL_WRITE, tcp.write_all(&answer)).await;
    gate::close_gracefully(&mut tcp).await;
}

/// How long a connection to the published port may take to send its first whole DAP
/// message before it is closed. A debugger sends `initialize` as soon as it is
/// connected; nothing else is kept waiting on the step's node for long.
const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(30);

/// How long writing a refusal to a developer may take (it is a few hundred bytes: only a
/// peer that reads nothing makes it wait).
const REFUSAL_WRITE: Duration = Duration::from_secs(5);

/// What a connection to the published port sent first.
#[cfg_attr(test, derive(Debug))]
enum Opening {
    /// A whole DAP message: a debugger. `sent` is all it sent so far (that message first).
    Debugger { sent: Vec<u8>, first: Message },
    /// It closed (or broke) before a whole message.
    Left,
    /// Not a debugger: what it sent instead, in words.
    NotDap(String),
}

/// Reads until `tcp` has sent one whole DAP message, bounded by [`FIRST_MESSAGE_WAIT`].
async fn opening<R: AsyncRead + Unpin>(tcp: &mut R) -> Opening {
    let mut framer = Framer::default();
    let mut chunk = vec![0u8; CHUNK];
    let reading = async {
        loop {
            // A broken connection ends like a closed one.
            let n = tcp.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return Opening::Left;
            }
            framer.push(chunk.get(..n).unwrap_or_default());
            match framer.next_message() {
                // Whole within one read, it may still be larger than any first message.
                Ok(Some(first)) if first.raw.len() > MAX_FIRST_MESSAGE_BYTES => {
                    return Opening::NotDap(too_large());
                }
                Ok(Some(first)) => {
                    let mut sent = first.raw.clone();
                    sent.extend_from_slice(&framer.take_rest());
                    // Whatever the gate would cut off never opens a connection to debugpy
                    // either (one opened and closed unused wears its adapter down).
                    return match GateState::vet(&sent) {
                        Ok(()) => Opening::Debugger { sent, first },
                        Err(not_dap) => Opening::NotDap(not_dap.to_string()),
                    };
                }
                Ok(None) if framer.buffered() > MAX_FIRST_MESSAGE_BYTES => {
                    return Opening::NotDap(too_large());
                }
                Ok(None) => {}
                Err(not_dap) => return Opening::NotDap(not_dap.to_string()),
            }
        }
    };
    tokio::time::timeout(FIRST_MESSAGE_WAIT, reading)
        .await
        .unwrap_or_else(|_| {
            Opening::NotDap(format!(
                "no whole DAP message within {}s",
                FIRST_MESSAGE_WAIT.as_secs()
            ))
        })
}

/// The largest first message a connection may send: a debugger's first is `initialize`,
/// a few hundred bytes. Held back from debugpy, a larger one would be node memory that any
/// client on the network could take while the step waits.
const MAX_FIRST_MESSAGE_BYTES: usize = 64 * 1024;

/// What a connection whose first message is over [`MAX_FIRST_MESSAGE_BYTES`] sent, in words.
fn too_large() -> String {
    format!(
        "a first message of more than {} KiB (a debugger's first is a small `initialize`)",
        MAX_FIRST_MESSAGE_BYTES / 1024
    )
}

/// Bytes read from a connection per read while its first message is awaited.
const CHUNK: usize = 16 * 1024;

/// How often a developer who sent bytes while debugpy is awaited is looked at again for
/// having left (with bytes waiting, readiness cannot wait for the close alone).
const LEFT_LOOK: Duration = Duration::from_millis(100);

/// Resolves once the developer's side of `tcp` is closed (or broken).
async fn left(tcp: &tokio::net::TcpStream) {
    loop {
        match tcp.ready(tokio::io::Interest::READABLE).await {
            Ok(ready) if ready.is_read_closed() || ready.is_error() => return,
            Ok(_) => tokio::time::sleep(LEFT_LOOK).await,
            Err(_) => return,
        }
    }
}

/// The step's own debugpy holds the published port: watch for connected clients and,
/// with `--wait-for-client`, release at the deadline the first moment nobody is
/// connected (a client connected then holds the step for as long as it stays).
async fn watch(spec: &SessionSpec, mut ready: ReadySignal, reporter: &mut Reporter) {
    ready.ready();
    reporter.set(SessionState::WaitingForDebugger, None);
    let deadline = deadline_after(spec.attach_timeout);
    let mut attached_once = false;
    let mut released = !spec.wait_for_client;
    loop {
        let attached = established_on(spec.port);
        match (attached, attached_once) {
            (true, _) => reporter.set(SessionState::Attached, None),
            (false, true) => reporter.set(
                SessionState::RunningUndebugged,
                Some("the debugger detached; the step runs on"),
            ),
            (false, false) => {}
        }
        attached_once |= attached;
        if !released && !attached && Instant::now() >= deadline {
            let why = if attached_once {
                "a debugger connected and left, and none was attached at the attach deadline"
                    .to_owned()
            } else {
                format!(
                    "no debugger attached within {}",
                    humantime::format_duration(spec.attach_timeout)
                )
            };
            reporter.set(
                SessionState::TimedOut,
                Some(&format!("{why}; the step runs on without one")),
            );
            release_listening_debuggee(|| spec.published_address()).await;
            released = true;
        }
        // Wake at the deadline itself when it is still ahead and comes before the next
        // poll (once it has passed, a connected debugger is polled at the usual pace).
        let now = Instant::now();
        let next = now + ATTACH_POLL;
        let wake = if !released && deadline > now {
            next.min(deadline)
        } else {
            next
        };
        tokio::time::sleep_until(wake).await;
    }
}

/// How often the watch looks for a connected debugger. Each look costs the kernel a walk
/// of its socket table (milliseconds, see [`crate::ports::connections`]): every 5 s keeps
/// an idle sidecar under 0.1 % of a core, and only the `attached` state shown by `status`
/// lags by up to this much; the release itself happens at the deadline.
const ATTACH_POLL: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    const INITIALIZE: &[u8] =
        b"Content-Length: 49\r\n\r\n{\"seq\":1,\"type\":\"request\",\"command\":\"initialize\"}";

    /// What a connection sends, in writes (then closes, or stays silent), and what the
    /// opening makes of it: only a whole DAP message makes a debugger, and nothing is lost
    /// of what it sent.
    #[tokio::test(start_paused = true)]
    async fn only_a_whole_dap_message_makes_a_debugger_and_nothing_it_sent_is_lost() {
        let initialize_then_more = [INITIALIZE, b"Content-Len"].concat();
        let (head, tail) = INITIALIZE.split_at(20);
        let huge_header = [b"X".repeat(dap::MAX_HEADER_BYTES + 1)].concat();
        let huge_first = [
            b"Content-Length: 70000\r\n\r\n".to_vec(),
            b" ".repeat(MAX_FIRST_MESSAGE_BYTES),
        ]
        .concat();
        let whole_but_too_large = {
            let body = format!(
                r#"{{"seq":1,"type":"request","command":"initialize","pad":"{}"}}"#,
                "x".repeat(MAX_FIRST_MESSAGE_BYTES)
            );
            format!("Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
        };
        let initialize_then_http = [INITIALIZE, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"].concat();
        let cases: [(&str, Vec<&[u8]>, bool, &str); 14] = [
            ("one write", vec![INITIALIZE], true, "debugger"),
            ("split in two", vec![head, tail], true, "debugger"),
            (
                "a message and part of the next",
                vec![&initialize_then_more],
                true,
                "debugger",
            ),
            ("closed unread (a port scan)", vec![], false, "left"),
            ("half a message, then closed", vec![head], false, "left"),
            (
                "an HTTP request",
                vec![b"GET / HTTP/1.1\r\n\r\n"],
                true,
                "not",
            ),
            ("a header that never ends", vec![&huge_header], true, "not"),
            ("a first message too large", vec![&huge_first], true, "not"),
            (
                "a first message too large, whole in one write",
                vec![&whole_but_too_large],
                true,
                "not",
            ),
            (
                "a body that is not JSON",
                vec![b"Content-Length: 5\r\n\r\n{{{{{"],
                true,
                "not",
            ),
            (
                "initialize, then an HTTP request",
                vec![&initialize_then_http],
                true,
                "not",
            ),
            (
                "a body that is JSON but no DAP message",
                vec![b"Content-Length: 2\r\n\r\n[]"],
                false,
                "not",
            ),
            ("silent, connection kept open", vec![], true, "not"),
            ("half a message, then silent", vec![head], true, "not"),
        ];
        for (what, writes, stays_open, want) in cases {
            let (mut peer, mut ours) = tokio::io::duplex(1 << 20);
            for bytes in &writes {
                peer.write_all(bytes).await.expect("write");
            }
            let kept = stays_open.then_some(peer);
            let started = Instant::now();
            let opening = opening(&mut ours).await;
            let all: Vec<u8> = writes.concat();
            match (want, &opening) {
                ("debugger", Opening::Debugger { sent, first }) => {
                    assert_eq!(sent, &all, "{what}");
                    assert_eq!(first.raw, INITIALIZE, "{what}");
                }
                ("left", Opening::Left) => {}
                ("not", Opening::NotDap(_)) => {}
                _ => panic!("{what}: {opening:?}, not {want}"),
            }
            // Only silence waits, and no longer than the bound.
            let waited = started.elapsed();
            let silent = what.contains("silent");
            assert_eq!(waited >= FIRST_MESSAGE_WAIT, silent, "{what}: {waited:?}");
            assert!(
                waited <= FIRST_MESSAGE_WAIT + Duration::from_secs(1),
                "{what}"
            );
            drop(kept);
        }
    }

    /// A debugger that cannot be served is told why in the answer to its first request.
    #[test]
    fn a_refusal_answers_the_first_request_and_nothing_else() {
        let mut framer = Framer::default();
        framer.push(INITIALIZE);
        framer.push(b"Content-Length: 26\r\n\r\n{\"type\":\"event\",\"seq\":2}  ");
        let request = framer.next_message().expect("dap").expect("whole");
        let answer = dap::refusal_response(&request, "amlx-agent: debugpy did not start: ü")
            .expect("an answer");
        let mut reader = Framer::default();
        reader.push(&answer);
        let answer = reader.next_message().expect("dap").expect("whole");
        let body: serde_json::Value = serde_json::from_slice(answer.body()).expect("json");
        assert_eq!(body["request_seq"], 1);
        assert_eq!(body["success"], false);
        assert_eq!(body["command"], "initialize");
        assert_eq!(body["message"], "amlx-agent: debugpy did not start: ü");
        let event = framer.next_message().expect("dap").expect("whole");
        assert!(dap::refusal_response(&event, "why").is_none(), "an event");
    }
}
