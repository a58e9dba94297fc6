//! One TCP connection: TLS, the upgrade request under the handshake timeout, then the
//! action it asks for (`listen`, `connect`, `accept` or `GET /$status`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::Instrument as _;

use super::io::{BoxIo, Prefixed};
use super::registry::{CONTROL_QUEUE, ListenerHandle};
use super::rendezvous::{Decision, Leg, Pending};
use super::upgrade::{self, HeadError, Request};
use super::{Server, Slot, accept, auth, control, frame, relay};
use crate::relay::sas::{Right, SasError};

/// Where Hybrid Connection upgrades live.
const HC_PREFIX: &str = "/$hc/";
/// The stats document.
const STATUS_PATH: &str = "/$status";
/// The header .NET and Node send their token in.
const AUTH_HEADER: &str = "ServiceBusAuthorization";
/// What the service says when a sender finds nobody (clients match on it).
pub const NO_LISTENERS: &str = "There are no listeners connected for the endpoint.";

type Stream = Prefixed<BoxIo>;

/// Serves one accepted TCP connection to the end; errors are logged here.
pub(super) async fn handle(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr, permit: Slot) {
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().ok();
    let timeout = server.settings.limits.handshake_timeout;
    let head = tokio::select! {
        () = server.shutdown.cancelled() => return,
        head = tokio::time::timeout(timeout, read_head(&server, tcp)) => head,
    };
    let (mut stream, request) = match head {
        Err(_) => {
            tracing::info!("cut off: no complete upgrade request within {timeout:?}");
            return;
        }
        Ok(Err(err)) => {
            tracing::debug!("handshake failed: {err}");
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Ok(Some(pair))) => pair,
    };
    let request = match request {
        Ok(r) => r,
        Err(HeadError { status, message }) => {
            upgrade::write_status(&mut stream, status, &message).await;
            return;
        }
    };
    let ctx = Ctx {
        server,
        peer,
        local,
        request,
        permit,
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
    permit: Slot,
}

impl Ctx {
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
        let Some(entity) = path.strip_prefix(HC_PREFIX).map(|e| e.trim_matches('/')) else {
            let msg = "Not Found: Hybrid Connection addresses look like /$hc/{path}";
            return upgrade::write_status(&mut stream, 404, msg).await;
        };
        if entity.is_empty() {
            let msg = "Not Found: no Hybrid Connection path after /$hc/";
            return upgrade::write_status(&mut stream, 404, msg).await;
        }
        let key = match self.request.websocket_key() {
            Ok(k) => k.to_owned(),
            Err(e) => return upgrade::write_status(&mut stream, e.status, &e.message).await,
        };
        let tracking = self
            .request
            .query_param("sb-hc-id")
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let entity = entity.to_owned();
        let action = self.request.query_param("sb-hc-action").unwrap_or_default();
        let span =
            tracing::info_span!("hc", tracking = %tracking, action = %action, path = %entity);
        match action.as_str() {
            "listen" => self.listen(stream, &entity, &key).instrument(span).await,
            "connect" => {
                self.connect(stream, &entity, &key, &tracking)
                    .instrument(span)
                    .await
            }
            "accept" => self.accept(stream, &entity, &key).instrument(span).await,
            other => {
                let msg = format!(
                    "Bad Request: sb-hc-action must be listen, connect or accept (got {other:?})"
                );
                upgrade::write_status(&mut stream, 400, &msg).await;
            }
        }
    }

    /// The token from the header, else from `sb-hc-token` (decoded once).
    fn token(&self) -> Option<String> {
        self.request
            .header(AUTH_HEADER)
            .map(str::to_owned)
            .or_else(|| self.request.query_param("sb-hc-token"))
    }

    fn authorize(&self, entity: &str, right: Right) -> Result<auth::Grant, SasError> {
        let token = self.token();
        auth::authorize(
            &self.server.settings.keys,
            token.as_deref(),
            entity,
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

    async fn listen(self, mut stream: Stream, entity: &str, key: &str) {
        let grant = match self.authorize(entity, Right::Listen) {
            Ok(g) => g,
            Err(err) => return refuse(&mut stream, &err).await,
        };
        let server = self.server.clone();
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        let id = server.registry.next_id();
        let handle = ListenerHandle {
            id,
            host: self.host(),
            commands: tx,
        };
        if let Err(full) = server.registry.add(entity, handle) {
            tracing::warn!("listener refused: {full}");
            return upgrade::write_status(&mut stream, 403, &full.to_string()).await;
        }
        if let Err(err) = upgrade::write_switching(&mut stream, key, None).await {
            tracing::debug!("listener vanished during the handshake: {err}");
            server.registry.remove(entity, id);
            return;
        }
        tracing::info!(key = %grant.key_name, "listener connected");
        let config = WebSocketConfig::default()
            .max_message_size(Some(server.settings.limits.max_control_message))
            .max_frame_size(Some(server.settings.limits.max_control_message));
        let ws = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;
        let ended = control::serve(
            ws,
            control::Channel {
                path: entity,
                keys: &server.settings.keys,
                expiry: grant.expiry,
                commands: rx,
                shutdown: server.shutdown.clone(),
            },
        )
        .await;
        server.registry.remove(entity, id);
        tracing::info!("listener disconnected: {ended:?}");
        drop(self.permit);
    }

    async fn connect(self, mut stream: Stream, entity: &str, key: &str, tracking: &str) {
        if let Err(err) = self.authorize(entity, Right::Send) {
            return refuse(&mut stream, &err).await;
        }
        let server = self.server.clone();
        let no_listener = format!("{NO_LISTENERS} TrackingId:{tracking}");
        let Some((entity_path, listeners)) = server.registry.resolve(entity) else {
            tracing::info!("sender refused: no listener");
            return upgrade::write_status(&mut stream, 404, &no_listener).await;
        };
        tracing::debug!(listener_path = %entity_path, "sender waiting for a listener");
        let (ticket, decision) = server.rendezvous.open(tracking, entity);
        let delivered = listeners.iter().any(|l| {
            let address =
                accept::address(&self.request, server.settings.scheme(), &l.host, &ticket.id);
            let command = accept::command(&address, &ticket.id, &self.request, self.peer);
            l.commands.try_send(command).is_ok()
        });
        if !delivered {
            tracing::info!("sender refused: every listener's queue is full or closed");
            return upgrade::write_status(&mut stream, 404, &no_listener).await;
        }
        let wait = server.settings.limits.rendezvous_timeout;
        let decision = tokio::select! {
            () = server.shutdown.cancelled() => {
                return upgrade::write_status(&mut stream, 503, "Service Unavailable: the relay is shutting down").await;
            }
            d = tokio::time::timeout(wait, decision) => d,
        };
        drop(ticket);
        match decision {
            Err(_) => {
                tracing::info!("sender failed: no accept within {wait:?}");
                let msg = format!(
                    "Gateway Timeout: the listener did not accept within {}. TrackingId:{tracking}",
                    humantime::format_duration(wait)
                );
                upgrade::write_status(&mut stream, 504, &msg).await;
            }
            Ok(Err(_)) => {
                upgrade::write_status(&mut stream, 500, "Internal Server Error: rendezvous lost")
                    .await;
            }
            Ok(Ok(Decision::Reject {
                status,
                description,
            })) => {
                tracing::info!(status, "sender rejected by the listener");
                upgrade::write_status(&mut stream, status, &description).await;
            }
            Ok(Ok(Decision::Accept(leg))) => self.relay(stream, key, leg).await,
        }
    }

    /// Completes the sender's upgrade and pumps bytes until both sides are done.
    async fn relay(self, mut stream: Stream, key: &str, leg: Leg) {
        let server = self.server.clone();
        if let Err(err) = upgrade::write_switching(&mut stream, key, leg.protocol.as_deref()).await
        {
            tracing::info!("sender vanished before its 101: {err}");
            relay::close(leg.stream, frame::CLOSE_GOING_AWAY, "the sender went away").await;
            return;
        }
        server.relayed.fetch_add(1, Ordering::Relaxed);
        server.relayed_total.fetch_add(1, Ordering::Relaxed);
        tracing::info!(listener = %leg.peer, "relayed connection open");
        let outcome = relay::pump(stream, leg.stream, server.hard_stop.clone()).await;
        server.relayed.fetch_sub(1, Ordering::Relaxed);
        tracing::info!("relayed connection closed: {outcome}");
        drop((leg.permit, self.permit));
    }

    /// The listener's rendezvous: accept (101, hand the socket to the sender) or reject
    /// (410 here, the listener's status to the sender).
    async fn accept(self, mut stream: Stream, entity: &str, key: &str) {
        let id = self.request.query_param("sb-hc-id").unwrap_or_default();
        // The address is the capability; the path must still be the one it was issued for.
        let pending = self
            .server
            .rendezvous
            .take(&id)
            .filter(|p| p.path == entity.to_ascii_lowercase());
        let Some(pending) = pending else {
            let msg = "Not Found: this rendezvous address is unknown, used or expired";
            return upgrade::write_status(&mut stream, 404, msg).await;
        };
        let span = tracing::info_span!("rendezvous", tracking = %pending.tracking_id);
        self.decide(stream, key, pending).instrument(span).await;
    }

    async fn decide(self, mut stream: Stream, key: &str, pending: Pending) {
        if let Some(raw) = self.request.query_param("sb-hc-statusCode") {
            let description = self
                .request
                .query_param("sb-hc-statusDescription")
                .unwrap_or_default();
            let status = accept::reject_status(&raw);
            tracing::info!(status, "listener rejected the connection");
            let _ = pending.decision.send(Decision::Reject {
                status,
                description,
            });
            let msg = "Gone: the connection was rejected as asked";
            return upgrade::write_status(&mut stream, 410, msg).await;
        }
        if pending.decision.is_closed() {
            let msg = "Not Found: the sender is gone";
            return upgrade::write_status(&mut stream, 404, msg).await;
        }
        let protocol = self
            .request
            .header("Sec-WebSocket-Protocol")
            .and_then(|p| p.split(',').map(str::trim).find(|p| !p.is_empty()))
            .map(str::to_owned);
        if let Err(err) = upgrade::write_switching(&mut stream, key, protocol.as_deref()).await {
            tracing::info!("listener's rendezvous vanished during the handshake: {err}");
            let _ = pending.decision.send(Decision::Reject {
                status: 502,
                description: "Bad Gateway: the listener's rendezvous failed".to_owned(),
            });
            return;
        }
        let leg = Leg {
            stream,
            protocol,
            peer: self.peer,
            permit: self.permit,
        };
        if let Err(Decision::Accept(leg)) = pending.decision.send(Decision::Accept(leg)) {
            tracing::info!("sender gave up just before the accept");
            relay::close(leg.stream, frame::CLOSE_GOING_AWAY, "the sender went away").await;
        }
    }
}

/// Answers a failed authorisation: 401 or 403 with the reason (never the token).
async fn refuse(stream: &mut Stream, err: &SasError) {
    let status = err.status();
    tracing::info!(status, "refused: {err}");
    let title = if status == 401 {
        "Unauthorized"
    } else {
        "Forbidden"
    };
    upgrade::write_status(stream, status, &format!("{title}: {err}")).await;
}
