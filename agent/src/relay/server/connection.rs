//! One TCP connection: TLS, the upgrade request under the handshake timeout, then the
//! action it asks for (`listen`, `connect`, `accept` or `GET /$status`).
//!
//! The connection holds its handshake slot until its upgrade is authenticated, then
//! trades it for a relayed slot ([`Ctx::take_relayed_slot`]); an eviction (a newer
//! connection needed the handshake slot) ends it while it is still reading its head.
//!
//! This file reads the request, routes it and serves `listen` (a control channel);
//! `sender` serves `connect`, `rendezvous_leg` serves `accept`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::Instrument as _;

use super::admission::{HandshakeSlot, Overload};
use super::io::{BoxIo, Prefixed};
use super::registry::{CONTROL_QUEUE, ListenerHandle};
use super::rendezvous::ReservedSlot;
use super::upgrade::{self, HeadError, Request};
use super::{Full, Server, Slot, accept, auth, control};
use crate::logging::{Throttle, loggable};
use crate::relay::protocol::{
    self, Action, HEADER_TOKEN, HcRequest, MAX_ENTITY_PATH_BYTES, ProtocolError, RejectStatus,
    status,
};
use crate::relay::sas::{Right, SasError};

mod rendezvous_leg;
mod sender;

/// The stats document.
const STATUS_PATH: &str = "/$status";

type Stream = Prefixed<BoxIo>;

/// Serves one accepted TCP connection to the end; errors are logged here.
pub(super) async fn handle(
    server: Arc<Server>,
    tcp: TcpStream,
    peer: SocketAddr,
    handshake: HandshakeSlot,
) {
    let _ = tcp.set_nodelay(true);
    if let Err(err) = crate::relay::keepalive::probe_when_silent(&tcp) {
        tracing::debug!("TCP keepalive not set: {err}");
    }
    let local = tcp.local_addr().ok();
    let timeout = server.settings.config.handshake_timeout;
    // Dropping `read_head` drops the socket: that is how a cut handshake ends.
    let head = tokio::select! {
        () = server.shutdown.cancelled() => return,
        () = handshake.evicted.cancelled() => {
            tracing::debug!("cut off: a newer connection needed the handshake slot");
            return;
        }
        head = tokio::time::timeout(timeout, read_head(&server, tcp)) => head,
    };
    let (mut stream, request) = match head {
        Err(_) => {
            tracing::debug!("cut off: no complete upgrade request within {timeout:?}");
            server.admission.overload.note(Overload::HandshakeTimeout);
            return;
        }
        Ok(Err(err)) => {
            tracing::debug!("handshake failed: {}", loggable(&err.to_string()));
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Ok(Some(pair))) => pair,
    };
    let request = match request {
        Ok(r) => r,
        Err(HeadError { status, message }) => {
            return bad_request(&mut stream, status, &message, &server.bad_requests_logged).await;
        }
    };
    let ctx = Ctx {
        server,
        peer,
        local,
        request,
        handshake: Some(handshake),
    };
    ctx.route(stream).await;
}

/// TLS (when configured) and the request head.
async fn read_head(
    server: &Server,
    tcp: TcpStream,
) -> std::io::Result<Option<(Stream, Result<Request, HeadError>)>> {
    let mut io: BoxIo = match &server.settings.tls {
        Some(tls) => Box::new(tls.accept(tcp).await?),
        None => Box::new(tcp),
    };
    Ok(match upgrade::read_request(&mut io).await? {
        None => None,
        Some(Ok((request, rest))) => Some((Prefixed::new(rest, io), Ok(request))),
        Some(Err(err)) => Some((Prefixed::new(Vec::new(), io), Err(err))),
    })
}

/// Everything known about a connection once its request is read.
struct Ctx {
    server: Arc<Server>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    request: Request,
    /// Held until the upgrade is authenticated (then `None`).
    handshake: Option<HandshakeSlot>,
}

/// Takes a listener off the registry when its control channel ends, however it ends.
struct Registration<'a> {
    server: &'a Server,
    entity: &'a str,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.server.registry.remove(self.entity, self.id);
    }
}

/// Why a connection found no slot, in the words of its log line and its 503.
fn full_reason(full: &Full) -> String {
    match full {
        Full::Relay { tunnel: false } => "the relay is at its connection limit".to_owned(),
        Full::Relay { tunnel: true } => "the relay is at its connection limit (a tunnel \
            takes two of its max_connections, its sender's leg and its listener's)"
            .to_owned(),
        Full::Key {
            name,
            max,
            tunnel: false,
        } => format!(
            "key {} holds its most connections ({max}, the max_connections of its \
             [[relay.server.keys]] entry)",
            loggable(name)
        ),
        Full::Key {
            name,
            max,
            tunnel: true,
        } => format!(
            "key {} has fewer than the two free connections a tunnel takes, its sender's \
             leg and its listener's ({max}, the max_connections of its [[relay.server.keys]] \
             entry)",
            loggable(name)
        ),
    }
}

impl Ctx {
    /// Trades the handshake slot for a relayed slot on behalf of `key`; `Err` (answer 503
    /// with [`Ctx::no_slot`]'s text) when the relay's or the key's slots are all taken, in which
    /// case the handshake slot is kept until the answer.
    fn take_relayed_slot(&mut self, key: &str) -> Result<Slot, Full> {
        let slot = self.server.relayed_slot(key)?;
        self.handshake = None;
        Ok(slot)
    }

    /// [`Ctx::take_relayed_slot`] for a sender: its own slot, and the one its tunnel's
    /// listener leg will take.
    fn take_tunnel_slots(&mut self, key: &str) -> Result<(Slot, ReservedSlot), Full> {
        let (own, listener) = self.server.tunnel_slots(key)?;
        self.handshake = None;
        Ok((own, ReservedSlot::new(listener)))
    }

    /// Logs (throttled) that `who` found no slot, and returns the 503's text saying why.
    fn no_slot(&self, who: &str, full: &Full) -> String {
        let reason = full_reason(full);
        self.server.at_limit_logged.log(|left_out| {
            tracing::info!("{who} refused: {reason}{left_out}");
        });
        format!("Service Unavailable: {reason}")
    }

    async fn route(self, mut stream: Stream) {
        let path = self.request.decoded_path();
        if path == STATUS_PATH && self.request.header("Upgrade").is_none() {
            let body = self.server.status_json();
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
            return;
        }
        let hc = match HcRequest::parse(&self.request.target()) {
            Ok(hc) => hc,
            Err(err) => {
                let code = match err {
                    ProtocolError::NotHybridConnection | ProtocolError::NoEntity => {
                        status::NOT_FOUND
                    }
                    ProtocolError::UnknownAction(_)
                    | ProtocolError::BadStatusCode(_)
                    | ProtocolError::DotSegment => 400,
                };
                let title = if code == 400 {
                    "Bad Request"
                } else {
                    "Not Found"
                };
                let msg = format!("{title}: {err}");
                let logged = &self.server.bad_requests_logged;
                return bad_request(&mut stream, code, &msg, logged).await;
            }
        };
        let key = match self.request.websocket_key() {
            Ok(k) => k.to_owned(),
            Err(e) => {
                let logged = &self.server.bad_requests_logged;
                return bad_request(&mut stream, e.status, &e.message, logged).await;
            }
        };
        let tracking = hc
            .id
            .clone()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(protocol::new_tracking_id);
        let Some(action) = hc.action else {
            let msg = "Bad Request: sb-hc-action must be listen, connect or accept";
            return bad_request(&mut stream, 400, msg, &self.server.bad_requests_logged).await;
        };
        // Only a reject rendezvous carries a status; there a malformed one still names a
        // waiting sender (`decide`).
        if action != Action::Accept
            && let Some(err) = hc.status_code.as_ref().and_then(RejectStatus::problem)
        {
            let msg = format!("Bad Request: {err}");
            return bad_request(&mut stream, 400, &msg, &self.server.bad_requests_logged).await;
        }
        // Both are the client's own text, logged before it is authenticated.
        let span = tracing::info_span!(
            "hc",
            tracking = %loggable(&tracking),
            %action,
            path = %loggable(&hc.path)
        );
        let call = Call { key, hc, tracking };
        match action {
            Action::Listen => self.listen(stream, call).instrument(span).await,
            Action::Connect => self.connect(stream, call).instrument(span).await,
            Action::Accept => self.accept(stream, call).instrument(span).await,
        }
    }

    /// The request's token ([`auth::token_of`]).
    fn token<'a>(&'a self, call: &'a Call) -> Option<&'a str> {
        auth::token_of(self.request.header(HEADER_TOKEN), call.hc.token.as_deref())
    }

    /// Checks the token ([`Self::token`]) for `right` on the call's own path.
    fn authorize(&self, call: &Call, right: Right) -> Result<auth::Grant, SasError> {
        auth::authorize(
            &self.server.settings.config.keys,
            self.token(call),
            &call.hc.path,
            right,
            auth::now(),
        )
    }

    /// The host:port this client reached us by (what a listener can reach again).
    fn host(&self) -> String {
        match self.request.header("Host").map(str::trim) {
            Some(h) if !h.is_empty() => h.to_owned(),
            _ => self
                .local
                .map_or_else(|| "localhost".to_owned(), |a| a.to_string()),
        }
    }

    async fn listen(mut self, mut stream: Stream, call: Call) {
        if call.hc.path.len() > MAX_ENTITY_PATH_BYTES {
            // No sender could ever reach it (only prefixes that short are looked up).
            let msg = format!(
                "Bad Request: a Hybrid Connection path is at most {MAX_ENTITY_PATH_BYTES} bytes"
            );
            return upgrade::write_status(&mut stream, 400, &msg).await;
        }
        let grant = match self.authorize(&call, Right::Listen) {
            Ok(g) => g,
            Err(err) => return refuse(&mut stream, &err, &self.server.refusals_logged).await,
        };
        let server = self.server.clone();
        let Some(base) = accept::listener_base(server.settings.scheme(), &self.host()) else {
            let msg = "Bad Request: the Host header is not a host[:port]";
            return upgrade::write_status(&mut stream, 400, msg).await;
        };
        let permit = match self.take_relayed_slot(&grant.key_name) {
            Ok(permit) => permit,
            Err(full) => {
                let text = self.no_slot("listener", &full);
                return upgrade::write_status(&mut stream, 503, &text).await;
            }
        };
        let entity = call.hc.path.as_str();
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        let id = server.registry.next_id();
        let handle = ListenerHandle {
            id,
            base,
            commands: tx,
        };
        if let Err(full) = server.registry.add(entity, handle) {
            server.full_path_logged.log(|left_out| {
                tracing::warn!(
                    "listener refused: {}{left_out}",
                    loggable(&full.to_string())
                );
            });
            return upgrade::write_status(&mut stream, status::FORBIDDEN, &full.to_string()).await;
        }
        let registration = Registration {
            server: &server,
            entity,
            id,
        };
        if let Err(err) = upgrade::write_switching(&mut stream, &call.key, None).await {
            tracing::debug!("listener vanished during the handshake: {err}");
            return;
        }
        tracing::info!(key = %grant.key_name, "listener connected");
        let config = control::websocket_config(server.settings.config.max_control_message);
        let ws = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;
        let ended = control::serve(
            ws,
            control::Channel {
                path: entity,
                keys: &server.settings.config.keys,
                expiry: grant.expiry,
                commands: rx,
                rendezvous: &server.rendezvous,
                answer_timeout: server.settings.config.listener_answer_timeout,
                ping_interval: server.settings.config.listener_ping_interval,
                shutdown: server.shutdown.clone(),
            },
        )
        .await;
        drop(registration);
        tracing::info!("listener disconnected: {ended:?}");
        drop(permit);
    }
}

/// What the request asked for, once it is known to be a Hybrid Connections upgrade.
struct Call {
    /// The client's `Sec-WebSocket-Key`.
    key: String,
    hc: HcRequest,
    /// `sb-hc-id`, or a fresh id when the client sent none (logs, 404 text).
    tracking: String,
}

/// Answers a request the relay cannot serve (malformed, too large, no such endpoint) with
/// `status` and `message`, and says so in the log at most once per interval with a count
/// of the rest: anyone can repeat a bad request at will.
async fn bad_request(stream: &mut Stream, status: u16, message: &str, logged: &Throttle) {
    logged.log(|left_out| {
        tracing::info!(status, "bad request: {}{left_out}", loggable(message));
    });
    upgrade::write_status(stream, status, message).await;
}

/// Answers a failed authorisation: 401 or 403 with the reason (never the token); the log
/// line is `logged`'s to allow.
async fn refuse(stream: &mut Stream, err: &SasError, logged: &Throttle) {
    let status = err.status();
    logged.log(|left_out| {
        tracing::info!(status, "refused: {}{left_out}", loggable(&err.to_string()));
    });
    let title = if status == 401 {
        "Unauthorized"
    } else {
        "Forbidden"
    };
    upgrade::write_status(stream, status, &format!("{title}: {err}")).await;
}

#[cfg(test)]
mod tests {
    /// Every connection's task keeps its future at full size for the connection's whole
    /// life, and `relay serve` holds two per idle tunnel (the sender's and the
    /// listener's rendezvous): the budget is 16 KB a tunnel for the whole process.
    /// A 4 KiB read buffer on the stack of a wait, gone long before, made every idle
    /// tunnel 4.3 KiB dearer (this test's unoptimised build: 7200 bytes then, 5224 after).
    #[test]
    fn a_connections_task_is_small() {
        const LARGEST_CONNECTION_TASK: usize = 6144;
        fn size_of_output<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = size_of_output(super::handle);
        assert!(
            size <= LARGEST_CONNECTION_TASK,
            "a connection's task is {size} bytes, over {LARGEST_CONNECTION_TASK}: box or \
             heap-allocate what only one phase needs"
        );
    }
}
