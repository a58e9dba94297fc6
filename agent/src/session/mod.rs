//! One debug session: modes, failure policy, sidecar lifecycle and attach timeout.
//!
//! The agent decides and prepares (`commands::exec`); the sidecar process runs the
//! session: [`run_sidecar`] reports readiness, then keeps the relay path and the
//! published state for exactly as long as the step lives.

mod connect;
pub mod dap;
pub mod keeper;
mod listen;
pub mod report;
pub mod sidecar;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use crate::publish::SessionState;
use crate::relay::client::Endpoint;
use report::Reporter;
use sidecar::{Lifeline, ReadySignal};

use serde::Serialize;

/// Who listens and who connects (DESIGN.md "Debug modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DebugMode {
    /// debugpy connects out to 127.0.0.1:port; the sidecar relays it as a sender.
    #[default]
    Connect,
    /// debugpy listens on 127.0.0.1:port; the sidecar is the relay listener.
    Listen,
    /// debugpy listens on the node IP; no relay.
    Direct,
}

/// What happens when debugging cannot be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Run the step without a debugger and log why.
    #[default]
    Continue,
    /// Do not run the step; exit non-zero.
    Fail,
}

macro_rules! keyword_enum {
    ($ty:ty, $what:literal, $($text:literal => $variant:expr),+ $(,)?) => {
        impl ::std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($text => Ok($variant),)+
                    _ => Err(format!(concat!("invalid ", $what, " {:?}: expected one of {}"), s,
                        [$($text),+].join(", "))),
                }
            }
        }
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                $(if *self == $variant { return f.write_str($text); })+
                Ok(())
            }
        }
    };
}
pub(crate) use keyword_enum;

keyword_enum!(DebugMode, "debug mode", "connect" => DebugMode::Connect, "listen" => DebugMode::Listen, "direct" => DebugMode::Direct);
keyword_enum!(FailurePolicy, "failure policy", "continue" => FailurePolicy::Continue, "fail" => FailurePolicy::Fail);

/// How long the relay may take to answer the readiness probe before the step starts.
pub const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the final state may take to reach MLflow once the step is gone: the sidecar
/// must be gone within a second of the step, and its keeper kills it after
/// [`keeper::SIDECAR_EXIT_GRACE`].
const FINAL_PUBLISH_TIMEOUT: Duration = Duration::from_millis(400);

/// Everything the sidecar needs, prepared by the agent before it forks.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub mode: DebugMode,
    /// The reserved debug port (also the azbridge port name).
    pub port: u16,
    pub rank: Option<u32>,
    pub local_rank: Option<u32>,
    pub hostname: String,
    pub node_ip: Option<IpAddr>,
    /// The process the session belongs to: the agent, which becomes (replace) or
    /// supervises the step. The status record is alive exactly as long as it is.
    pub holder_pid: u32,
    pub attach_timeout: Duration,
    /// The step waits at startup for a debugger (listen/direct modes; connect mode
    /// always waits, debugpy's `--connect` does).
    pub wait_for_client: bool,
    /// The relay (connect and listen modes).
    pub relay: Option<Endpoint>,
    pub state_dir: Option<PathBuf>,
    /// With `continue`, a session that cannot be set up leaves its `running-undebugged`
    /// record (and the reason) for the step's lifetime; with `fail` no step runs.
    pub on_failure: FailurePolicy,
}

impl SessionSpec {
    /// How a developer reaches this session, for the status record and the run tag.
    pub fn endpoint_text(&self) -> String {
        match (&self.relay, self.mode) {
            (Some(relay), DebugMode::Connect | DebugMode::Listen) => {
                format!("relay:{}/{}", relay.entity, self.port)
            }
            _ => {
                let ip = self.node_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
                SocketAddr::new(ip, self.port).to_string()
            }
        }
    }

    /// Where debugpy listens (listen and direct modes).
    pub(crate) fn debugpy_address(&self) -> SocketAddr {
        let ip = match self.mode {
            DebugMode::Direct => self.node_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            DebugMode::Connect | DebugMode::Listen => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        SocketAddr::new(ip, self.port)
    }
}

/// The sidecar's whole life: returns its exit code. Reports readiness through `ready`
/// before the step starts, then serves the session until the step dies or the lifeline
/// closes (see [`Lifeline::ended`]).
pub fn run_sidecar(spec: SessionSpec, mut ready: ReadySignal, lifeline: Lifeline) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            ready.failed(&format!("could not start the sidecar's runtime: {err}"));
            return 1;
        }
    };
    runtime.block_on(async move {
        let mut reporter = Reporter::start(&spec);
        let session = async {
            match spec.mode {
                DebugMode::Connect => connect::run(&spec, ready, &mut reporter).await,
                DebugMode::Listen => listen::run(&spec, ready, &mut reporter).await,
                DebugMode::Direct => direct(&spec, ready, &mut reporter).await,
            }
        };
        tokio::select! {
            () = session => {}
            () = lifeline.ended() => {}
        }
        let _ = tokio::time::timeout(FINAL_PUBLISH_TIMEOUT, reporter.finish()).await;
    });
    // Dropping the runtime would wait for blocking tasks (a DNS lookup, say): the
    // session is over, so leave them to the process exit.
    runtime.shutdown_background();
    0
}

/// Direct mode: debugpy itself listens on the node IP; the sidecar only publishes and,
/// with `--wait-for-client`, releases the step at the attach timeout.
async fn direct(spec: &SessionSpec, mut ready: ReadySignal, reporter: &mut Reporter) {
    ready.ready();
    reporter.set(SessionState::WaitingForDebugger, None);
    let deadline = Instant::now() + spec.attach_timeout;
    let mut attached_once = false;
    let mut released = !spec.wait_for_client;
    loop {
        // debugpy accepts the developer itself; its connections show in the kernel's
        // socket table (its own adapter-to-debuggee link uses another port).
        let attached = clients_connected(spec.port);
        match (attached, attached_once) {
            (true, _) => reporter.set(SessionState::Attached, None),
            (false, true) => reporter.set(
                SessionState::RunningUndebugged,
                Some("the debugger detached; the step runs on"),
            ),
            (false, false) => {}
        }
        attached_once |= attached;
        if !released && !attached_once && Instant::now() >= deadline {
            release_listening_debuggee(spec, reporter).await;
            released = true;
        }
        tokio::time::sleep(ATTACH_POLL).await;
    }
}

/// How often direct mode looks for a connected debugger.
const ATTACH_POLL: Duration = Duration::from_millis(200);

/// Whether an established TCP connection has `port` as its local port (IPv4 or IPv6),
/// read from /proc without touching the socket.
fn clients_connected(port: u16) -> bool {
    let local = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // fields: sl, local_address, rem_address, st (01 = ESTABLISHED), ...
                fields.len() > 3 && format!("{} ", fields[1]).ends_with(&local) && fields[3] == "01"
            })
        })
    })
}

/// The relay path cannot be set up: record why, tell the agent, and (when the step runs
/// anyway) keep the `running-undebugged` record for the step's lifetime.
fn setup_failed(spec: &SessionSpec, ready: &mut ReadySignal, reporter: &mut Reporter, why: &str) {
    reporter.set(SessionState::RunningUndebugged, Some(why));
    if spec.on_failure == FailurePolicy::Continue {
        reporter.keep_record();
    }
    ready.failed(why);
}

/// At the attach timeout, a debuggee that listens and waits for a client (listen and
/// direct modes with `--wait-for-client`) is released by attaching and leaving.
async fn release_listening_debuggee(spec: &SessionSpec, reporter: &mut Reporter) {
    let address = spec.debugpy_address();
    let deadline = Instant::now() + dap::RELEASE_DRAIN_TIMEOUT;
    match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(mut stream)) => {
            let _ = dap::release(&mut stream).await;
            reporter.set(
                SessionState::TimedOut,
                Some(&format!(
                    "no debugger attached within {}; the step runs on without one",
                    humantime::format_duration(spec.attach_timeout)
                )),
            );
        }
        Ok(Err(err)) => tracing::warn!("could not reach debugpy at {address} to release it: {err}"),
        Err(_) => tracing::warn!("debugpy at {address} did not answer the release in time"),
    }
}
