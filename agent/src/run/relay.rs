//! The developer side of `run` in one process: a self-hosted relay on 127.0.0.1:0 (plain
//! ws, loopback only, a fresh random key that lives in memory only) and the laptop-side
//! listener that hands each debugged rank's connection to its own VS Code port.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
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

/// The SAS key name of the in-process relay's only key.
const KEY_NAME: &str = "amlx-run";
/// Random bytes in the key (base64 in the connection string, like Azure's keys).
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
    /// The Hybrid Connection this run uses (unique per run).
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
        let hc = format!("amlx-run-{}", uuid::Uuid::new_v4().simple());
        let config = ServerSettings {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            insecure_ws: true,
            shutdown_grace: SERVER_SHUTDOWN_GRACE,
            keys: vec![ServerKey {
                name: KEY_NAME.to_owned(),
                key: key.clone(),
                rights: vec![Right::Listen, Right::Send],
                paths: vec![hc.clone()],
                max_connections: None,
            }],
            ..ServerSettings::default()
        };
        let settings = server::Settings::from_config(&config)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("in-process relay: could not bind {}", config.listen))?;
        let addr = listener
            .local_addr()
            .context("in-process relay: bound address")?;
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

    /// The connection string for the step's agent (environment only, never argv), with
    /// the relay at `addr`: where the step reaches it (this machine's address, or the
    /// far end of a forward).
    pub fn connection_string_at(&self, addr: &str) -> Secret {
        Secret::new(format!(
            "Endpoint=sb://{addr}/;SharedAccessKeyName={KEY_NAME};SharedAccessKey={};EntityPath={}",
            self.key.expose(),
            self.hc
        ))
    }

    /// The connection string with the relay's own address.
    pub fn connection_string(&self) -> Secret {
        self.connection_string_at(&self.addr.to_string())
    }

    /// The endpoint the in-process listener uses.
    pub fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let connection: ConnectionString = self.connection_string().expose().parse()?;
        Endpoint::new(connection, Some(&self.hc), Transport::InsecureWs, None)
    }

    /// Stops the relay: relayed connections get a short grace, then `run` returns.
    pub async fn stop(self) {
        self.shutdown.cancel();
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!("in-process relay: {err:#}"),
            Err(err) => tracing::warn!("in-process relay task failed: {err}"),
        }
    }
}

/// One debug target's way to VS Code: the relayed connection named `debug_port` (the
/// port the rank's agent reserves on the target) goes to VS Code on `vscode_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub rank: u32,
    pub debug_port: u16,
    pub vscode_port: u16,
}

impl Route {
    /// How the lines this listener prints name the route's process.
    fn who(&self, post_mortem: Option<u16>) -> String {
        if post_mortem == Some(self.vscode_port) {
            "a crashed rank (post-mortem)".to_owned()
        } else {
            format!("rank {}", self.rank)
        }
    }
}

/// `run --post-mortem`: every debug port that is not a debugged rank's (the crashed
/// rank's post-mortem session takes its own) goes to this VS Code port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostMortemRoute {
    pub debug_ports: crate::ports::PortRange,
    pub vscode_port: u16,
}

/// What the laptop side saw of VS Code.
#[derive(Debug, Default)]
pub struct VsCodeSeen {
    /// Ranks whose relayed debug connection reached VS Code.
    attached: Mutex<BTreeSet<u32>>,
    /// Ranks for which "waiting for VS Code" was said already.
    announced_wait: Mutex<BTreeSet<u32>>,
}

impl VsCodeSeen {
    /// The ranks whose debug connection reached VS Code.
    pub fn attached(&self) -> BTreeSet<u32> {
        self.attached
            .lock()
            .map(|set| set.clone())
            .unwrap_or_default()
    }

    fn mark_attached(&self, rank: u32) {
        if let Ok(mut set) = self.attached.lock() {
            set.insert(rank);
        }
    }

    /// True the first time for `rank`.
    fn first_wait(&self, rank: u32) -> bool {
        self.announced_wait
            .lock()
            .is_ok_and(|mut set| set.insert(rank))
    }
}

/// Hands every relayed connection to the VS Code port of its rank, holding it (bounded)
/// while VS Code is not listening yet, so VS Code can be started at any time before
/// the attach timeout and attaches at once.
#[derive(Debug)]
struct VsCodeForwarder {
    forwards: Forwards,
    routes: Vec<Route>,
    /// The VS Code port of post-mortem sessions (`run --post-mortem`).
    post_mortem: Option<u16>,
    /// `amlx-agent run` or `amlx-agent demo`: how its lines start.
    label: &'static str,
    attach_timeout: Duration,
    /// When a step's debugpy first came through: its agent's attach timeout runs from
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
        let (tunnel, forward) = match bridge::accept(tunnel, &self.forwards).await {
            Ok(Some(accepted)) => {
                let _ = self.first_debuggee.set(Instant::now());
                accepted
            }
            Ok(None) => return,
            Err(err) => {
                tracing::warn!("laptop listener: relayed connection failed: {err}");
                return;
            }
        };
        let post_mortem =
            self.post_mortem
                .filter(|port| *port == forward.port)
                .map(|vscode_port| Route {
                    rank: u32::MAX,
                    debug_port: 0,
                    vscode_port,
                });
        let Some(route) = self
            .routes
            .iter()
            .find(|r| r.vscode_port == forward.port)
            .copied()
            .or(post_mortem)
        else {
            tracing::warn!("laptop listener: no rank forwards to {forward}");
            return;
        };
        let Some(vscode) = self.reach_vscode(route).await else {
            tunnel
                .finish(close_code::SERVER_ERROR, "VS Code is not listening")
                .await;
            return;
        };
        if let Err(err) = bridge::confirm(&tunnel).await {
            tracing::warn!("laptop listener: relayed connection failed: {err}");
            return;
        }
        let who = route.who(self.post_mortem);
        if post_mortem.is_none() {
            self.seen.mark_attached(route.rank);
        }
        let label = self.label;
        // Whatever listens on VS Code's port takes the connection: said as a port, not as
        // VS Code (another program there was reported as VS Code attaching).
        let port = route.vscode_port;
        say!("{label}: the debug connection of {who} went to 127.0.0.1:{port}, VS Code's port");
        let mut vscode = vscode;
        crate::relay::client::tunnel::reset_unless_ended_in_order(&vscode);
        match tunnel.splice(&mut vscode).await {
            Ok(_) => {
                crate::relay::client::tunnel::end_in_order(&vscode);
                say!("{label}: the debugger on 127.0.0.1:{port} detached from {who}")
            }
            // Most often VS Code closed its end first (Stop, Disconnect, a closed window):
            // a broken pipe or a reset, not a fault of the relay. VS Code's connection is
            // dropped armed, so reset, not closed: should the step's side have broken, it
            // must not read as a clean end.
            Err(err) => say!(
                "{label}: the debug connection of {who} ended ({err}: VS Code closed it, or \
                 the step's side went away)"
            ),
        }
    }
}

impl VsCodeForwarder {
    /// Connects to VS Code, retrying until it listens, the step's attach deadline, the
    /// hold limit or shutdown, whichever comes first.
    async fn reach_vscode(&self, route: Route) -> Option<TcpStream> {
        let hold = Instant::now() + HOLD_FOR_VSCODE;
        let until = self
            .first_debuggee
            .get()
            .and_then(|first| first.checked_add(self.attach_timeout))
            .map_or(hold, |deadline| hold.min(deadline));
        loop {
            if let Ok(stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, route.vscode_port)).await {
                let _ = stream.set_nodelay(true);
                return Some(stream);
            }
            if self.seen.first_wait(route.rank) {
                say!(
                    "{}: {} is waiting for VS Code to listen on 127.0.0.1:{}",
                    self.label,
                    route.who(self.post_mortem),
                    route.vscode_port
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
    /// Starts the listener on `endpoint` (the in-process relay's, or one of the user's
    /// settings) and waits (bounded) until it is online; a listener that fails first (a
    /// key without Listen rights, an unknown Hybrid Connection) is an error saying why.
    /// Relayed connections are held for VS Code at most `attach_timeout` (the step's).
    pub async fn start(
        endpoint: Arc<Endpoint>,
        routes: &[Route],
        post_mortem: Option<PostMortemRoute>,
        attach_timeout: Duration,
        label: &'static str,
    ) -> anyhow::Result<LaptopListener> {
        let (online, mut is_online) = watch::channel(false);
        let seen = Arc::new(VsCodeSeen::default());
        let shutdown = CancellationToken::new();
        // One forward per rank, named by the debug port its agent reserves (the port
        // name the agent's sidecar sends). With one rank, azbridge's lone-forward rule
        // takes any numeric name, so a rank that had to take another port still arrives.
        let mut forwards: Vec<Forward> = routes
            .iter()
            .map(|route| Forward {
                name: route.debug_port.to_string(),
                host: Ipv4Addr::LOCALHOST.to_string(),
                port: route.vscode_port,
            })
            .collect();
        // A crash's session comes under the port its rank reserved: any of the range's
        // that is not a debugged rank's.
        if let Some(post_mortem) = post_mortem {
            let range = post_mortem.debug_ports;
            forwards.extend(
                (range.start..=range.end)
                    .filter(|port| !routes.iter().any(|r| r.debug_port == *port))
                    .map(|port| Forward {
                        name: port.to_string(),
                        host: Ipv4Addr::LOCALHOST.to_string(),
                        port: post_mortem.vscode_port,
                    }),
            );
        }
        let handler = Arc::new(VsCodeForwarder {
            forwards: Forwards(forwards),
            routes: routes.to_vec(),
            post_mortem: post_mortem.map(|p| p.vscode_port),
            label,
            attach_timeout,
            first_debuggee: OnceLock::new(),
            seen: seen.clone(),
            online,
            shutdown: shutdown.clone(),
        });
        let stop = shutdown.clone();
        let base = endpoint.base.clone();
        let (failed, mut failure) = tokio::sync::oneshot::channel::<String>();
        let task = tokio::spawn(async move {
            if let Err(err) = listener::run(endpoint, handler, stop).await {
                tracing::error!("laptop listener stopped: {err}");
                let _ = failed.send(format!("{err:#}"));
            }
        });
        // Both are cancel-safe: a watch receiver and a oneshot receiver keep their state.
        let came_online = tokio::time::timeout(ONLINE_TIMEOUT, async {
            tokio::select! {
                up = is_online.wait_for(|up| *up) => up.map(|_| ()).map_err(|_| "it stopped".to_owned()),
                why = &mut failure => Err(why.unwrap_or_else(|_| "it stopped".to_owned())),
            }
        })
        .await;
        let why = match came_online {
            Ok(Ok(())) => None,
            Ok(Err(why)) => Some(why),
            Err(_) => Some(format!(
                "it did not come online within {}",
                humantime::format_duration(ONLINE_TIMEOUT)
            )),
        };
        if let Some(why) = why {
            shutdown.cancel();
            let _ = task.await;
            anyhow::bail!("the laptop listener on the relay at {base} failed: {why}");
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
            tracing::warn!("laptop listener task failed: {err}");
        }
    }
}
