//! Plumbing for the `relay serve` tests: the real binary on port 0, tokens, a tungstenite
//! client, a raw frame-level client (for half-close) and raw HTTP (for status bodies).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use amlx_agent::config::Secret;
use amlx_agent::relay::sas;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::util;

/// The key every test key uses (any string is a valid key).
pub const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHM=";
/// Listen + send on every path.
pub const ROOT: &str = "root";
/// Send only.
pub const SEND_ONLY: &str = "sender";
/// Bound for every wait in these tests.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A running `amlx-agent relay serve`, killed on drop.
pub struct Relay {
    child: Child,
    pub addr: SocketAddr,
    /// `ws` or `wss`.
    pub scheme: String,
    lines: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Relay {
    /// Plain ws on loopback; `server_toml` is extra `[relay.server]` lines (limits).
    pub fn start(server_toml: &str) -> Relay {
        Relay::start_with(server_toml, &["--insecure-ws"], |_| {})
    }

    /// Any flags; `prepare` may write files (certificates) into the temp dir first.
    pub fn start_with(
        server_toml: &str,
        flags: &[&str],
        prepare: impl FnOnce(&std::path::Path),
    ) -> Relay {
        Relay::start_adjusted(server_toml, flags, prepare, |_| {})
    }

    /// As [`Relay::start_with`], with `adjust` applied to the command before it is spawned.
    pub fn start_adjusted(
        server_toml: &str,
        flags: &[&str],
        prepare: impl FnOnce(&std::path::Path),
        adjust: impl FnOnce(&mut std::process::Command),
    ) -> Relay {
        Relay::start_full(server_toml, "", flags, prepare, adjust)
    }

    /// As [`Relay::start`], with `sender_key_toml` added to the [`SEND_ONLY`] key's table.
    pub fn start_with_sender_key(server_toml: &str, sender_key_toml: &str) -> Relay {
        Relay::start_full(
            server_toml,
            sender_key_toml,
            &["--insecure-ws"],
            |_| {},
            |_| {},
        )
    }

    fn start_full(
        server_toml: &str,
        sender_key_toml: &str,
        flags: &[&str],
        prepare: impl FnOnce(&std::path::Path),
        adjust: impl FnOnce(&mut std::process::Command),
    ) -> Relay {
        let dir = tempfile::tempdir().expect("temp dir");
        prepare(dir.path());
        let config = dir.path().join("relay.toml");
        std::fs::write(
            &config,
            format!(
                "[relay.server]\n{server_toml}\n\
                 [[relay.server.keys]]\nname = \"{ROOT}\"\nkey = \"{KEY}\"\nrights = [\"listen\", \"send\"]\n\
                 [[relay.server.keys]]\nname = \"{SEND_ONLY}\"\nkey = \"{KEY}\"\nrights = [\"send\"]\npaths = [\"*\"]\n\
                 {sender_key_toml}\n"
            ),
        )
        .expect("write config");
        let mut cmd = util::agent();
        cmd.current_dir(dir.path())
            .arg("--config")
            .arg(&config)
            .args(["relay", "serve", "--listen", "127.0.0.1:0"])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("spawn amlx-agent relay serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = util::line_channel(stderr);
        let started = Instant::now();
        // Everything before the address line, so a refused start explains itself.
        let mut before = Vec::new();
        let url = loop {
            let left = DEADLINE.saturating_sub(started.elapsed());
            match lines.recv_timeout(left) {
                Ok(line) => match line.strip_prefix("relay serve: listening on ") {
                    Some(url) => break Some(url.to_owned()),
                    None => before.push(line),
                },
                Err(_) => break None,
            }
        };
        let Some((scheme, addr)) = url.as_deref().and_then(|u| u.split_once("://")) else {
            let _ = child.kill();
            let exit = child.wait();
            panic!(
                "relay serve did not print its address within {DEADLINE:?} ({exit:?}); \
                 its stderr so far:\n{}",
                before.join("\n")
            );
        };
        Relay {
            addr: addr.parse().expect("socket address"),
            scheme: scheme.to_owned(),
            child,
            lines,
            _dir: dir,
        }
    }

    /// The relay's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The relay's resident memory now, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the relay's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// The kernel's timer on the relay's end of the TCP connection from `client` (a local
    /// address of ours): (`tr`, `tm->when` in clock ticks), where `tr` 2 is a keepalive timer.
    pub fn socket_timer(&self, client: SocketAddr) -> (u8, u64) {
        util::tcp_timer(self.child.id(), self.addr.port(), client.port())
            .unwrap_or_else(|| panic!("no relay socket for {client}"))
    }

    /// `ws://127.0.0.1:PORT/$hc/{path}?sb-hc-action={action}`.
    pub fn url(&self, path: &str, action: &str) -> String {
        format!(
            "{}://{}/$hc/{path}?sb-hc-action={action}",
            self.scheme, self.addr
        )
    }

    /// `GET /$status` as JSON.
    pub async fn status(&self) -> Value {
        let (status, _, body) = http(self.addr, "GET /$status HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// Polls `/$status` until `field` equals `want`.
    pub async fn wait_status(&self, field: &str, want: u64) {
        let started = Instant::now();
        loop {
            let status = self.status().await;
            if status[field].as_u64() == Some(want) {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{field} never became {want}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Panics unless the process is still running.
    pub fn assert_alive(&mut self, after: &str) {
        let exited = self.child.try_wait().expect("try_wait");
        assert!(
            exited.is_none(),
            "relay serve exited ({exited:?}) after {after}; its stderr:\n{}",
            self.log()
        );
    }

    /// The stderr lines printed so far and not yet taken, once `done` holds for them; panics
    /// with them past [`DEADLINE`]. The relay writes a line before the answer it goes
    /// with, but a thread forwards its stderr to the test: a client may hear its answer
    /// before the line arrives here, so a test that looks for a line waits for it.
    pub async fn log_until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let mut log = self.log();
        let until = std::time::Instant::now() + DEADLINE;
        while !done(&log) {
            assert!(
                std::time::Instant::now() < until,
                "the log never showed {what}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            log.push_str(&self.log());
        }
        log
    }

    /// [`Relay::log_until`] it contains `want`.
    pub async fn log_containing(&self, want: &str) -> String {
        self.log_until(want, |log| log.contains(want)).await
    }

    /// The stderr lines printed so far and not yet taken (never waits).
    pub fn log(&self) -> String {
        let mut text = String::new();
        while let Ok(line) = self.lines.try_recv() {
            text.push_str(&line);
            text.push('\n');
        }
        text
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal relay serve");
    }

    /// Waits (bounded) for the process to exit; returns its status and all of stderr.
    pub async fn wait_exit(&mut self, within: Duration) -> (ExitStatus, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                started.elapsed() < within,
                "relay serve did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut text = String::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            text.push_str(&line);
            text.push('\n');
        }
        (status, text)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token for `path` signed with `name`, expiring `ttl` seconds from now (negative:
/// already expired), with the .NET-style audience.
pub fn token(name: &str, key: &str, path: &str, ttl: i64) -> String {
    token_expiring_at(name, key, path, (sas::unix_now() as i64 + ttl) as u64)
}

/// A token for `path` signed with `name`, expiring at unix second `expiry` (any `u64`).
pub fn token_expiring_at(name: &str, key: &str, path: &str, expiry: u64) -> String {
    sas::sign(
        &sas::audience("127.0.0.1", path),
        name,
        &Secret::new(key),
        expiry,
    )
    .expect("short key")
    .expose()
    .to_owned()
}

/// A client request with the token in the `ServiceBusAuthorization` header.
pub fn request(url: &str, token: Option<&str>) -> Request {
    let mut req = url.into_client_request().expect("valid URL");
    if let Some(t) = token {
        req.headers_mut().insert(
            "ServiceBusAuthorization",
            HeaderValue::from_str(t).expect("token is a header value"),
        );
    }
    req
}

/// Opens a WebSocket; a refused upgrade becomes its HTTP status.
pub async fn open(req: Request) -> Result<Ws, u16> {
    match tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(req))
        .await
        .expect("upgrade answered in time")
    {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => Err(resp.status().as_u16()),
        Err(err) => panic!("WebSocket connect failed: {err}"),
    }
}

/// A listener control channel on `path` with the root key.
pub async fn listen(relay: &Relay, path: &str) -> Ws {
    let tok = token(ROOT, KEY, path, 3600);
    open(request(&relay.url(path, "listen"), Some(&tok)))
        .await
        .expect("listener accepted")
}

/// The next message other than Ping/Pong, bounded.
pub async fn next_message(ws: &mut Ws) -> Message {
    loop {
        let msg = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("message in time")
            .expect("stream open")
            .expect("valid message");
        if !matches!(msg, Message::Ping(_) | Message::Pong(_)) {
            return msg;
        }
    }
}

/// The next accept command on a control channel.
pub async fn next_accept(control: &mut Ws) -> Value {
    match next_message(control).await {
        Message::Text(t) => serde_json::from_str(t.as_str()).expect("accept JSON"),
        other => panic!("expected an accept command, got {other:?}"),
    }
}

/// The Close a peer sends next (skipping data), answered; `None` if the stream just ended.
pub async fn next_close(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(frame))) => {
                // tungstenite queues its Close reply; flushing sends it.
                let _ = ws.flush().await;
                return frame.map(|f| u16::from(f.code));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}

pub async fn send_binary(ws: &mut Ws, data: &[u8]) {
    ws.send(Message::binary(data.to_vec()))
        .await
        .expect("send binary");
}

/// Raw HTTP: sends `head` and reads the response to EOF. Returns (status, reason, body).
pub async fn http(addr: SocketAddr, head: &str) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect relay");
    tcp.write_all(head.as_bytes()).await.expect("send request");
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut out))
        .await
        .expect("response in time")
        .expect("read response");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("complete response");
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let _version = parts.next();
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let reason = parts.next().unwrap_or_default().to_owned();
    (status, reason, body.to_owned())
}

/// `tests/interop`, where `npm ci` installs hyco-ws.
pub fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tests")
        .join("interop")
}

/// A sender on `path` (root key) and the listener's accepted rendezvous, both open.
pub async fn rendezvous(relay: &Relay, control: &mut Ws, path: &str) -> (Ws, Ws) {
    rendezvous_as(relay, control, path, ROOT).await
}

/// [`rendezvous`] with a sender whose token key `key_name` signed.
pub async fn rendezvous_as(
    relay: &Relay,
    control: &mut Ws,
    path: &str,
    key_name: &str,
) -> (Ws, Ws) {
    let tok = token(key_name, KEY, path, 3600);
    let sender = tokio::spawn(open(request(&relay.url(path, "connect"), Some(&tok))));
    let accept = next_accept(control).await;
    let address = accept["accept"]["address"]
        .as_str()
        .expect("address")
        .to_owned();
    let data = open(request(&address, None))
        .await
        .expect("rendezvous accepted");
    let sender = sender.await.expect("sender task").expect("sender upgraded");
    (sender, data)
}

/// Sends `data` on `from` and asserts it arrives, as one binary message, on `to`.
pub async fn assert_relays(from: &mut Ws, to: &mut Ws, data: &[u8]) {
    send_binary(from, data).await;
    match next_message(to).await {
        Message::Binary(got) => assert_eq!(got.as_ref(), data),
        other => panic!("expected binary {data:?}, got {other:?}"),
    }
}

/// What the service says when a sender finds nobody.
pub const NO_LISTENERS: &str = "There are no listeners connected for the endpoint.";

pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub fn normal_close() -> CloseFrame {
    CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }
}

/// Raises this process's open-file limit to its hard limit, for tests that hold many
/// sockets at once (a flood, hundreds of senders); `relay serve` (a child started after)
/// inherits the raised limit.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raise RLIMIT_NOFILE");
    }
}
