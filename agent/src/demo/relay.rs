//! The demo's two relay ends in one process: a self-hosted relay on 127.0.0.1:0 (plain
//! ws, loopback only, a fresh random key that lives in memory only) and the laptop-side
//! listener that hands the debugged step's connection to VS Code.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Secret, ServerKey, ServerSettings};
use crate::relay::bridge::{self, Forward, Forwards};
use crate::relay::client::listener::{self, AcceptHandler, Decision};
use crate::relay::client::{Endpoint, Tunnel};
use crate::relay::connection_string::{ConnectionString, Transport};
use crate::relay::protocol::{Accept, close_code};
use crate::relay::sas::Right;
use crate::relay::server;

/// The SAS key name of the demo relay's only key.
const KEY_NAME: &str = "demo";
/// Random bytes in the demo key (base64 in the connection string, like Azure's keys).
const KEY_BYTES: usize = 32;
/// Relayed connections get this long to finish when the demo stops.
const SERVER_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long the listener may take to come online before the step starts.
pub const ONLINE_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest one relayed connection is held while VS Code is not listening yet: below the
/// sender's preamble timeout (`bridge::PREAMBLE_TIMEOUT`), so the agent's side sees a
/// refusal and retries rather than a timeout.
const HOLD_FOR_VSCODE: Duration = Duration::from_secs(45);
/// Between two tries to reach VS Code while a relayed connection is held.
const VSCODE_POLL: Duration = Duration::from_millis(200);

/// The in-process relay: where it listens and the credentials clients use.
#[derive(Debug)]
pub struct LocalRelay {
    pub addr: SocketAddr,
    /// The Hybrid Connection the demo uses (unique per run).
    pub hc: String,
    key: Secret,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl LocalRelay {
    /// Binds 127.0.0.1:0 and serves until [`stop`](Self::stop).
    pub async fn start() -> anyhow::Result<LocalRelay> {
        let key_bytes: [u8; KEY_BYTES] = rand::random();
        let key = Secret::new(base64::engine::general_purpose::STANDARD.encode(key_bytes));
        let hc = format!("amlx-demo-{}", uuid::Uuid::new_v4().simple());
        let config = ServerSettings {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            insecure_ws: true,
            shutdown_grace: SERVER_SHUTDOWN_GRACE,
            keys: vec![ServerKey {
                name: KEY_NAME.to_owned(),
                key: key.clone(),
                rights: vec![Right::Listen, Right::Send],
                paths: vec![hc.clone()],
            }],
            ..ServerSettings::default()
        };
        let settings = server::Settings::from_config(&config)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("demo relay: could not bind {}", config.listen))?;
        let addr = listener.local_addr().context("demo relay: bound address")?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server::run(listener, settings, shutdown.clone()));
        Ok(LocalRelay {
            addr,
            hc,
            key,
            shutdown,
            task,
        })
    }

    /// The connection string for the step's agent (environment only, never argv).
    pub fn connection_string(&self) -> Secret {
        Secret::new(format!(
            "Endpoint=sb://{}/;SharedAccessKeyName={KEY_NAME};SharedAccessKey={};EntityPath={}",
            self.addr,
            self.key.expose(),
            self.hc
        ))
    }

    /// The endpoint the in-process listener uses.
    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let connection: ConnectionString = self.connection_string().expose().parse()?;
        Endpoint::new(connection, Some(&self.hc), Transport::InsecureWs, None)
    }

    /// Stops the relay: relayed connections get a short grace, then `run` returns.
    pub async fn stop(self) {
        self.shutdown.cancel();
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!("demo relay: {err:#}"),
            Err(err) => tracing::warn!("demo relay task failed: {err}"),
        }
    }
}

/// What the laptop side saw of VS Code.
#[derive(Debug, Default)]
pub struct VsCodeSeen {
    /// A relayed debug connection reached VS Code.
    pub attached: AtomicBool,
    /// "Waiting for VS Code" was said once already.
    announced_wait: AtomicBool,
}

/// Hands every relayed connection to VS Code on 127.0.0.1:`port`, holding it (bounded)
/// while VS Code is not listening yet, so VS Code can be started at any time before
/// the attach timeout and attaches at once.
#[derive(Debug)]
struct VsCodeForwarder {
    forwards: Forwards,
    port: u16,
    attach_timeout: Duration,
    /// When the step's debugpy first came through: its agent's attach timeout runs from
    /// about then, so connections are held for VS Code no longer than that.
    first_debuggee: OnceLock<Instant>,
    seen: Arc<VsCodeSeen>,
    online: watch::Sender<bool>,
    shutdown: CancellationToken,
}

impl AcceptHandler for VsCodeForwarder {
    fn decide(&self, _accept: &Accept) -> Decision {
        // The relay is on loopback with a key only this process and the step know.
        Decision::Accept
    }

    fn online(&self) {
        let _ = self.online.send(true);
    }

    async fn handle(self: Arc<Self>, tunnel: Tunnel, _accept: Accept) {
        let tunnel = match bridge::accept(tunnel, &self.forwards).await {
            Ok(Some((tunnel, _))) => {
                let _ = self.first_debuggee.set(Instant::now());
                tunnel
            }
            Ok(None) => return,
            Err(err) => {
                tracing::warn!("demo listener: relayed connection failed: {err}");
                return;
            }
        };
        let Some(vscode) = self.reach_vscode().await else {
            tunnel
                .finish(close_code::SERVER_ERROR, "VS Code is not listening")
                .await;
            return;
        };
        if let Err(err) = bridge::confirm(&tunnel).await {
            tracing::warn!("demo listener: relayed connection failed: {err}");
            return;
        }
        self.seen.attached.store(true, Ordering::Relaxed);
        println!(
            "amlx-agent demo: VS Code on 127.0.0.1:{} has the debug connection of rank 0",
            self.port
        );
        match tunnel.splice(vscode).await {
            Ok(_) => println!("amlx-agent demo: VS Code detached"),
            Err(err) => println!("amlx-agent demo: the debug connection broke: {err}"),
        }
    }
}

impl VsCodeForwarder {
    /// Connects to VS Code, retrying until it listens, the step's attach deadline, the
    /// hold limit or shutdown, whichever comes first.
    async fn reach_vscode(&self) -> Option<TcpStream> {
        let hold = Instant::now() + HOLD_FOR_VSCODE;
        let until = self
            .first_debuggee
            .get()
            .map_or(hold, |first| hold.min(*first + self.attach_timeout));
        loop {
            if let Ok(stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).await {
                let _ = stream.set_nodelay(true);
                return Some(stream);
            }
            if !self.seen.announced_wait.swap(true, Ordering::Relaxed) {
                println!(
                    "amlx-agent demo: rank 0 is waiting for VS Code to listen on 127.0.0.1:{}",
                    self.port
                );
            }
            if Instant::now() + VSCODE_POLL >= until {
                return None;
            }
            tokio::select! {
                () = tokio::time::sleep(VSCODE_POLL) => {}
                () = self.shutdown.cancelled() => return None,
            }
        }
    }
}

/// The running laptop-side listener.
#[derive(Debug)]
pub struct LaptopListener {
    pub seen: Arc<VsCodeSeen>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl LaptopListener {
    /// Starts the listener for `relay` and waits (bounded) until it is online. Relayed
    /// connections are held for VS Code at most `attach_timeout` (the step's).
    pub async fn start(
        relay: &LocalRelay,
        vscode_port: u16,
        attach_timeout: Duration,
    ) -> anyhow::Result<LaptopListener> {
        let endpoint = Arc::new(relay.endpoint()?);
        let (online, mut is_online) = watch::channel(false);
        let seen = Arc::new(VsCodeSeen::default());
        let shutdown = CancellationToken::new();
        // One forward: the azbridge rule sends every numeric port name (whichever debug
        // port the agent reserves) to it.
        let forwards = Forwards(vec![Forward {
            name: "vscode".to_owned(),
            host: Ipv4Addr::LOCALHOST.to_string(),
            port: vscode_port,
        }]);
        let handler = Arc::new(VsCodeForwarder {
            forwards,
            port: vscode_port,
            attach_timeout,
            first_debuggee: OnceLock::new(),
            seen: seen.clone(),
            online,
            shutdown: shutdown.clone(),
        });
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(err) = listener::run(endpoint, handler, stop).await {
                tracing::error!("demo listener stopped: {err}");
            }
        });
        let came_online = tokio::time::timeout(ONLINE_TIMEOUT, is_online.wait_for(|up| *up)).await;
        if !matches!(came_online, Ok(Ok(_))) {
            shutdown.cancel();
            let _ = task.await;
            anyhow::bail!(
                "the demo's listener did not come online on its own relay within {}",
                humantime::format_duration(ONLINE_TIMEOUT)
            );
        }
        Ok(LaptopListener {
            seen,
            shutdown,
            task,
        })
    }

    /// Stops the listener (its own drain is bounded).
    pub async fn stop(self) {
        self.shutdown.cancel();
        if let Err(err) = self.task.await {
            tracing::warn!("demo listener task failed: {err}");
        }
    }
}
