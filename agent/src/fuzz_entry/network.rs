//! Fuzz entry points for what arrives from the network or in relay credentials: request
//! targets, upgrade requests and responses, SAS tokens, connection strings, WebSocket
//! frames in both directions, control messages, the azbridge preamble and the DAP gate.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::{ScriptedIo, fields, selector, text};
use crate::config::{Secret, ServerKey};
use crate::relay::bridge::{self, Forward, Forwards};
use crate::relay::client::Tunnel;
use crate::relay::client::error::Role as ClientRole;
use crate::relay::client::handshake::{self, WebSocket};
use crate::relay::client::tls::BoxedIo;
use crate::relay::connection_string::{self, ConnectionString, Transport};
use crate::relay::protocol::{self, ControlMessage, HEADER_TOKEN, HcRequest, RejectStatus};
use crate::relay::sas::{self, Audience, Right, SasError, SasToken};
use crate::relay::server::Rendezvous;
use crate::relay::server::io::{BoxIo, Prefixed};
use crate::relay::server::relay as pump;
use crate::relay::server::{accept, auth, control, upgrade};
use crate::relay::websocket::{self as frame, FrameReader, FrameWriter, OpCode};

/// "Now" for token checks that must not depend on the clock (2023-11-14).
const FUZZ_NOW: u64 = 1_700_000_000;
/// Expiry of tokens signed here (2100-01-01): valid at [`FUZZ_NOW`] and today.
const FUZZ_EXPIRY: u64 = 4_102_444_800;
/// The one key the fuzzed relay knows (the seeds are signed with it).
const FUZZ_KEY_NAME: &str = "fuzz-key";
const FUZZ_KEY: &str = "fuzz-secret";
/// Bound on frames read per input, so a stream of empty frames stays quick.
const MAX_FRAMES: usize = 256;
/// The relay's default limit on one control message.
const MAX_CONTROL_MESSAGE: usize = 64 * 1024;
/// Base of the fuzzed relay's URLs.
const BASE_URL: &str = "wss://relay.test/";

fn base_url() -> Url {
    Url::parse(BASE_URL).expect("BASE_URL is a valid URL")
}

fn fuzz_keys() -> Vec<ServerKey> {
    vec![ServerKey {
        name: FUZZ_KEY_NAME.to_owned(),
        key: Secret::new(FUZZ_KEY),
        rights: vec![Right::Listen, Right::Send],
        paths: vec!["*".to_owned()],
        max_connections: None,
    }]
}

fn peer() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000)
}

/// HC request target (`/$hc/path?sb-hc-action=...`), then every URL built from it.
pub fn hc_request_target(data: &[u8]) {
    let target = text(data);
    let Ok(hc) = HcRequest::parse(&target) else {
        return;
    };
    let _ = protocol::path_prefixes(&hc.path).count();
    let base = base_url();
    let id = hc.id.clone().unwrap_or_default();
    // What `relay serve` logs of them: one line, whatever the client sent.
    for logged in [
        crate::logging::loggable(&hc.path),
        crate::logging::loggable(&id),
    ] {
        assert!(!logged.contains(['\n', '\r']), "{logged:?}");
    }
    let accept = protocol::accept_url(&base, &hc.path, &hc.app_query, &id);
    let _ = HcRequest::parse(&format!(
        "{}?{}",
        accept.path(),
        accept.query().unwrap_or_default()
    ));
    let _ = protocol::listen_url(&base, &hc.path, &id);
    let _ = protocol::connect_url(&base, &hc.path, None, &hc.app_query, &id);
    if let Some(description) = &hc.status_description {
        let code = match hc.status_code {
            Some(RejectStatus::Status(code)) => code,
            _ => 404,
        };
        let _ = protocol::reject_url(accept.as_str(), code, description);
    }
}

/// `relay serve` reading an upgrade request from an unauthenticated client, up to and
/// including authorization and the accept command a listener would get.
pub async fn serve_upgrade_request(data: &[u8]) {
    let (shape, script) = selector(data);
    let mut io = ScriptedIo::new(script.to_vec(), usize::from(shape) * 16 + 1);
    let request = match upgrade::read_request(&mut io).await {
        Ok(Some(Ok((request, _after)))) => request,
        Ok(Some(Err(err))) => {
            let _ = upgrade::status_response(err.status, &err.message);
            return;
        }
        Ok(None) | Err(_) => return,
    };
    let _ = request.decoded_path();
    if let Ok(key) = request.websocket_key() {
        let _ = upgrade::switching_protocols(key, request.header("Sec-WebSocket-Protocol"));
    }
    let hc = match HcRequest::parse(&request.target()) {
        Ok(hc) => hc,
        Err(err) => {
            let _ = upgrade::status_response(404, &format!("Not Found: {err}"));
            return;
        }
    };
    let token = auth::token_of(request.header(HEADER_TOKEN), hc.token.as_deref());
    for right in [Right::Listen, Right::Send] {
        if let Err(err) = auth::authorize(&fuzz_keys(), token, &hc.path, right, FUZZ_NOW) {
            let _ = upgrade::status_response(err.status(), &err.to_string());
        }
    }
    // A sender's check, against each Hybrid Connection its path could reach, and none.
    let entities = crate::relay::protocol::path_prefixes(&hc.path).map(Some);
    for entity in entities.chain([None]) {
        let checked = auth::authorize_sender(&fuzz_keys(), token, &hc.path, entity, FUZZ_NOW);
        if let Err(err) = checked {
            let _ = upgrade::status_response(err.status(), &err.to_string());
        }
    }
    let host = request.header("Host").unwrap_or("relay.test");
    if let Some(base) = accept::listener_base("wss", host) {
        let _ = accept::command(&base, &request, &hc, "fuzz-id", peer());
    }
    if let Some(asked) = &hc.status_code {
        let code = accept::reject_status(asked);
        if let Some(err) = asked.problem() {
            let _ = upgrade::status_response(400, &err.to_string());
        }
        let description = hc.status_description.as_deref().unwrap_or_default();
        let _ = upgrade::status_response(code, description);
    }
}

/// SAS tokens: shape bit 0 clear, the input is a token (header form and query form);
/// set, the input is `resource NUL key-name NUL path`, signed here, which must verify.
pub fn sas_token_text(data: &[u8]) {
    let (shape, rest) = selector(data);
    let key = Secret::new(FUZZ_KEY);
    if shape & 1 == 0 {
        let token = text(rest);
        for parsed in [SasToken::parse(&token), SasToken::parse_query(&token)] {
            if let Ok(Ok(audience)) = parsed.map(|t| t.verify(&key, FUZZ_NOW)) {
                let _ = audience.covers("fuzz/a");
            }
        }
        let _ = Audience::from_raw(&token).map(|a| a.covers(&token));
        let _ = auth::authorize(&fuzz_keys(), Some(&token), "fuzz", Right::Listen, FUZZ_NOW);
        return;
    }
    let parts = fields(rest, 3);
    let part = |i: usize| parts.get(i).map(|p| text(p)).unwrap_or_default();
    let (resource, key_name, path) = (part(0), part(1), part(2));
    let _ = sas::audience(&resource, &path);
    let Ok(token) = sas::sign(&resource, &key_name, &key, FUZZ_EXPIRY) else {
        return;
    };
    let parsed = SasToken::parse(token.expose());
    // Key names are written into the token unencoded; plain ones must survive the trip.
    let plain_name = key_name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !plain_name {
        return;
    }
    let parsed = match parsed {
        Ok(parsed) => parsed,
        Err(err) => panic!("a token signed here does not parse: {err}"),
    };
    match parsed.verify(&key, FUZZ_NOW) {
        Err(SasError::BadSignature(_)) => panic!("a token signed here does not verify"),
        Ok(audience) => {
            let _ = audience.covers(&path);
        }
        Err(_) => {}
    }
}

/// A connection string (environment, 0600 file or config), then what the client
/// derives from it: URLs, tokens, expiry.
pub fn connection_string_text(data: &[u8]) {
    let text = text(data);
    let Ok(parsed) = text.parse::<ConnectionString>() else {
        return;
    };
    let _ = format!("{parsed:?}");
    let entity = parsed.entity(None).unwrap_or("fuzz").to_owned();
    let _ = parsed.entity(Some(&text));
    for transport in [Transport::Tls, Transport::InsecureWs] {
        if let Ok(base) = parsed.ws_base(transport) {
            let _ = protocol::listen_url(&base, &entity, "fuzz-id");
        }
    }
    let ttl = Duration::from_secs(3600);
    let _ = parsed.token(&entity, FUZZ_NOW, ttl);
    let _ = parsed.token_expiry(FUZZ_NOW, ttl);
    let _ = connection_string::is_loopback_host(&parsed.host);
}

/// The client's WebSocket reader over what the relay sends (shape: how much the
/// handshake already read, and the size of each transport read), then a Close whose
/// reason is the input.
pub async fn client_frame_reader(data: &[u8]) {
    let (shape, rest) = selector(data);
    let already_read = (usize::from(shape >> 4) * 3).min(rest.len());
    let (prefix, script) = rest.split_at(already_read);
    let io = ScriptedIo::new(script.to_vec(), usize::from(shape & 0x0f) * 64 + 1);
    let mut reader = FrameReader::new(io, prefix.to_vec());
    for _ in 0..MAX_FRAMES {
        match reader.read_frame().await {
            Ok(Some(frame)) if frame.opcode == OpCode::Close => {
                let _ = frame.close_code();
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let mut writer = FrameWriter::new(ScriptedIo::new(Vec::new(), 1), shape & 1 == 1);
    let _ = writer.write_close(1000, &text(rest)).await;
}

/// `relay serve` pumping frames between a sender and a listener: the input is split
/// between what each sends (first byte: where), read in chunks (second byte: size).
pub async fn server_frame_relay(data: &[u8]) {
    let (split, rest) = selector(data);
    let (chunk, rest) = selector(rest);
    let at = (usize::from(split) * rest.len() / 255).min(rest.len());
    let (from_sender, from_listener) = rest.split_at(at);
    let leg = |script: &[u8]| {
        let io = ScriptedIo::new(script.to_vec(), usize::from(chunk) * 8 + 1);
        Prefixed::new(Vec::new(), Box::new(io) as BoxIo)
    };
    let _ = pump::pump(
        leg(from_sender),
        leg(from_listener),
        CancellationToken::new(),
        // Time is paused in the fuzz runtime: the deadlines fire at once when due.
        pump::Deadlines {
            close: std::time::Duration::from_secs(30),
            write: std::time::Duration::from_secs(60),
        },
    )
    .await;
    let reason = text(from_listener);
    let code = u16::from_be_bytes([split, chunk]);
    let _ = frame::close_payload(code, &reason);
    pump::close(leg(&[]), code, &reason).await;
}

/// A control message as either side reads it (JSON text), and what the client does with
/// an accept before opening its address.
pub fn control_message_text(data: &[u8]) {
    let text = text(data);
    let Ok(message) = ControlMessage::parse(&text) else {
        return;
    };
    let json = message.to_json();
    if let Err(err) = ControlMessage::parse(&json) {
        panic!("a control message we wrote does not parse back: {err}");
    }
    match &message {
        ControlMessage::Accept(accept) => {
            let reject = protocol::reject_url(&accept.address, 404, &accept.id);
            let _ = crate::web_url::parse(&reject);
            let _ = crate::web_url::parse(&accept.address);
            let _ = handshake::verbatim_target(&accept.address);
            let _ = crate::relay::client::spare::is_spare(&accept.address);
        }
        ControlMessage::RenewToken(renew) => {
            let _ = SasToken::parse(renew.token.expose());
        }
        ControlMessage::Request(_) | ControlMessage::Response(_) | ControlMessage::Unknown(_) => {}
    }
}

/// `relay serve`'s side of a listener's control channel: shape bit 0 clear, the input is
/// the text of one (masked) text frame; set, it is the raw frames.
pub async fn serve_control_channel(data: &[u8]) {
    let (shape, rest) = selector(data);
    let script = if shape & 1 == 0 {
        masked_frame(0x81, rest)
    } else {
        rest.to_vec()
    };
    let io = ScriptedIo::new(script, usize::from(shape >> 1) * 16 + 1);
    let stream = Prefixed::new(Vec::new(), Box::new(io) as BoxIo);
    let config = control::websocket_config(MAX_CONTROL_MESSAGE);
    let ws = WebSocketStream::from_raw_socket(stream, WsRole::Server, Some(config)).await;
    let keys = fuzz_keys();
    // The sender half stays alive while the channel runs: dropping it means shutdown.
    let (commands_tx, commands) = mpsc::channel(1);
    let rendezvous = Rendezvous::default();
    let channel = control::Channel {
        path: "fuzz",
        keys: &keys,
        expiry: auth::now().saturating_add(3600),
        commands,
        rendezvous: &rendezvous,
        answer_timeout: std::time::Duration::from_secs(10),
        ping_interval: std::time::Duration::from_secs(60),
        shutdown: CancellationToken::new(),
    };
    let _ = control::serve(ws, channel).await;
    drop(commands_tx);
}

/// A client-to-server frame (mask key zero, so the payload reads as given).
fn masked_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first_byte];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// The client's upgrade (the HTTP response it parses). The accept key is random per
/// run, so the fuzzer mostly explores the status line, headers and error bodies.
pub async fn upgrade_response(data: &[u8]) {
    let (shape, script) = selector(data);
    let io: BoxedIo = Box::new(ScriptedIo::new(
        script.to_vec(),
        usize::from(shape) * 16 + 1,
    ));
    let url = Url::parse("ws://relay.test:9000/$hc/fuzz?sb-hc-action=connect")
        .expect("constant URL is valid");
    let token = Secret::new("SharedAccessSignature sr=x&sig=y&se=1&skn=z");
    let role = match shape % 3 {
        0 => ClientRole::Listen,
        1 => ClientRole::Send,
        _ => ClientRole::Rendezvous,
    };
    let target = "/$hc/fuzz?sb-hc-action=connect".to_owned();
    match handshake::upgrade(io, &url, target, Some(&token), role).await {
        Ok(mut ws) => {
            for _ in 0..MAX_FRAMES {
                if !matches!(ws.reader.read_frame().await, Ok(Some(_))) {
                    break;
                }
            }
        }
        Err(err) => {
            let _ = (err.to_string(), err.status());
        }
    }
}

/// azbridge's preamble on a relayed connection. Shape bit 0: the input is raw frames
/// (else stream bytes, framed here); bit 1: the sender's side (reading the reply) instead
/// of the listener's; bit 2: two named forwards instead of one numeric (the listener's
/// side), or a taken spare proving itself (the sender's); bits 3-7: frame size. The input
/// is also tried as a `--forward name=host:port` spec.
pub async fn bridge_preamble(data: &[u8]) {
    let (shape, rest) = selector(data);
    let script = if shape & 1 == 1 {
        rest.to_vec()
    } else {
        server_frames(rest, usize::from(shape >> 3) + 1)
    };
    let io: BoxedIo = Box::new(ScriptedIo::new(script, 64));
    let (read_half, write_half) = tokio::io::split(io);
    let mut tunnel = Tunnel::new(WebSocket {
        reader: FrameReader::new(read_half, Vec::new()),
        writer: FrameWriter::new(write_half, true),
    });
    if shape & 6 == 6 {
        let _ = crate::relay::client::spare::prove(tunnel, "5678", b"first").await;
    } else if shape & 2 == 2 {
        let _ = bridge::open(&mut tunnel, "5678").await;
    } else {
        let forwards = if shape & 4 == 4 {
            Forwards(vec![
                Forward {
                    name: "5678".to_owned(),
                    host: "127.0.0.1".to_owned(),
                    port: 5678,
                },
                Forward {
                    name: "debug".to_owned(),
                    host: "::1".to_owned(),
                    port: 5679,
                },
            ])
        } else {
            Forwards::from_ports(&[5678])
        };
        if let Ok(Some((tunnel, forward))) = bridge::accept(tunnel, &forwards).await {
            let _ = forward.to_string();
            let _ = bridge::confirm(&tunnel).await;
        }
    }
    if let Ok(forward) = text(rest).parse::<Forward>() {
        let _ = Forwards(vec![forward]).resolve("5678");
    }
}

/// `stream` as unmasked binary frames of at most `size` (< 126) bytes each.
fn server_frames(stream: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(stream.len() * 2);
    for piece in stream.chunks(size.clamp(1, 125)) {
        out.push(0x80 | 0x2);
        out.push(piece.len() as u8);
        out.extend_from_slice(piece);
    }
    out
}

/// The DAP gate between a developer's connection and debugpy: the input (after the
/// selector) is the developer's stream, carried by
/// [`gate::pump`](crate::session::gate::pump) to a debuggee that accepts
/// `configurationDone`, so it is read both while framed and once passed on. Then
/// the gate's parsers alone, the input split where the selector says: framing, the scans
/// for debugpy's answers, and the watch for a request that ends the debuggee.
pub async fn dap_gate(data: &[u8]) {
    use crate::session::dap::{AckScanner, EndWatcher, Framer};
    use crate::session::gate::{self, GateState};
    let (shape, rest) = selector(data);
    let chunk = usize::from(shape) + 1;
    let answer = r#"{"seq":1,"type":"response","request_seq":1,"command":"configurationDone","success":true}"#;
    let answer = format!("Content-Length: {}\r\n\r\n{answer}", answer.len());
    let mut state = GateState::default();
    let mut debuggee = ScriptedIo::new(answer.into_bytes(), chunk);
    let developer = ScriptedIo::new(rest.to_vec(), chunk);
    let _ = gate::pump(&mut state, &mut debuggee, developer).await;
    let _ = (state.configured(), state.ends_debuggee(), state.progress());

    let at = chunk.min(rest.len());
    let (first, second) = (
        rest.get(..at).unwrap_or_default(),
        rest.get(at..).unwrap_or_default(),
    );
    let mut framer = Framer::default();
    for part in [first, second] {
        framer.push(part);
        while let Ok(Some(message)) = framer.next_message() {
            let _ = (message.request_command(), message.response_command());
            // What direct mode answers a first request it cannot serve: it must frame again.
            if let Some(answer) = crate::session::dap::refusal_response(&message, "why") {
                let mut again = Framer::default();
                again.push(&answer);
                assert!(
                    matches!(again.next_message(), Ok(Some(_))),
                    "a refusal that is not one whole DAP message"
                );
            }
        }
    }
    let mut scanner = AckScanner::default();
    let _ = (scanner.scan(first), scanner.scan(second));
    let mut answers = AckScanner::default();
    for part in [first, second] {
        let mut next = answers.next_answer(part);
        while next.is_some() {
            next = answers.next_answer(&[]);
        }
    }
    let mut watcher = EndWatcher::default();
    watcher.push(first);
    watcher.push(second);
    let _ = watcher.ends_debuggee();
}
