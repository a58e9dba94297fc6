//! One debug session: modes, failure policy, sidecar lifecycle and attach timeout.
//!
//! The agent decides and prepares (`commands::exec`); the sidecar process runs the
//! session: [`run_sidecar`] reports readiness, then keeps the relay path and the
//! published state for exactly as long as the step lives.

mod attach;
mod connect;
pub mod dap;
mod direct;
pub mod gate;
pub mod keeper;
pub mod lifeline;
mod listen;
pub mod peers;
mod release;
pub mod report;
pub mod sidecar;
pub mod step_end;

use release::{Refusal, release_listening_debuggee, release_on};

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use crate::inject::bootstrap::{self, Report};
use crate::publish::SessionState;
use crate::relay::client::Endpoint;
use lifeline::{Lifeline, LifelineEnd};
use report::Reporter;
use sidecar::ReadySignal;
use step_end::StepEnd;

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

/// How long the relay may take to answer the readiness probe before the step starts,
/// at most (see [`SessionSpec::ready_probe_timeout`]).
pub const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// The shortest readiness probe, whatever the attach timeout: a relay on the other side
/// of the world answers in well under a second.
pub const SHORTEST_READY_PROBE: Duration = Duration::from_secs(1);

/// How long releasing a step that debugpy still holds may take after the attach
/// deadline: attempts (each bounded by [`dap::RELEASE_DRAIN_TIMEOUT`]) repeat until
/// debugpy acknowledges or this passes. A step finishes within its attach timeout plus
/// this grace, whatever the debugger, the relay or the network did.
pub const RELEASE_GRACE: Duration = Duration::from_secs(10);

/// The longest wait any session timer honours: user durations beyond it (up to
/// `u64::MAX` seconds) saturate here instead of overflowing a clock.
pub const LONGEST_WAIT: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// The instant `wait` from now, saturating at [`LONGEST_WAIT`]: never panics.
pub fn deadline_after(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait.min(LONGEST_WAIT))
        .unwrap_or_else(|| now + Duration::from_secs(24 * 60 * 60))
}

/// How long the final state may take to reach MLflow once the step is gone: the sidecar
/// must be gone within a second of the step, and its keeper kills it after
/// [`keeper::SIDECAR_EXIT_GRACE`].
const FINAL_PUBLISH_TIMEOUT: Duration = Duration::from_millis(400);

/// What the final state's publishing gets at least when the developer's connections
/// took part of [`FINAL_PUBLISH_TIMEOUT`] to end in order ([`step_end::BOUND`]).
const SHORTEST_FINAL_PUBLISH: Duration = Duration::from_millis(100);

const _: () = assert!(
    step_end::BOUND.as_millis() + SHORTEST_FINAL_PUBLISH.as_millis()
        <= FINAL_PUBLISH_TIMEOUT.as_millis()
);

/// Everything the sidecar needs, prepared by the agent before it forks.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub mode: DebugMode,
    /// The reserved debug port (also the azbridge port name).
    pub port: u16,
    /// Direct mode with debugpy injected: the loopback port debugpy listens on, while
    /// the sidecar listens on the published `node-ip:port` and passes developers
    /// through the DAP gate; 0 when debugpy's adapter picks it and the step's bootstrap
    /// reports it (see `attach::Shared::debugpy_now`). `None`: debugpy (or the step's own code)
    /// owns `port`.
    pub proxy_port: Option<u16>,
    pub rank: Option<u32>,
    pub local_rank: Option<u32>,
    pub hostname: String,
    pub node_ip: Option<IpAddr>,
    /// The process the session belongs to: the agent, which becomes (replace) or
    /// supervises the step. The status record is alive exactly as long as it is.
    pub holder_pid: u32,
    /// The step itself holds the lifeline (replace mode): if the lifeline closes while
    /// the step still runs, the step closed the descriptors it inherited, and the log
    /// says so (in supervise mode the supervisor closes it when the step has exited).
    pub step_holds_lifeline: bool,
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
    /// Something the developer must know before pausing this step (a ParallelRunStep
    /// worker's run() timeout), shown in `status` as well as in the log.
    pub warning: Option<String>,
    /// A post-mortem session (the process crashed, see `post_mortem`): it waits in the
    /// `post-mortem` state, ends at the deadline or when the debugger leaves, and never
    /// releases debugpy itself (the hook is released by the session's end).
    pub post_mortem: Option<PostMortem>,
}

/// What a post-mortem session shows about the crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostMortem {
    pub crash: crate::post_mortem::crash::Crash,
    /// No other process of this node was in a post-mortem session when this one
    /// crashed: as far as one node can tell, this rank failed first.
    pub first: bool,
}

impl PostMortem {
    /// The crash, for the log, `status` and the run tag.
    pub fn describe(&self) -> String {
        let first = if self.first {
            ", failed first on this node"
        } else {
            ""
        };
        format!(
            "{} at {} (thread {}{first})",
            self.crash.summary(),
            self.crash.location,
            self.crash.thread
        )
    }
}

impl SessionSpec {
    /// The readiness probe's bound: [`READY_PROBE_TIMEOUT`], or the attach timeout when
    /// that is shorter (at least [`SHORTEST_READY_PROBE`]). The probe is part of the wait
    /// the attach timeout bounds: a relay that accepted and never answered held the step
    /// 15 s with `--attach-timeout 1s`.
    pub fn ready_probe_timeout(&self) -> Duration {
        READY_PROBE_TIMEOUT.min(self.attach_timeout.max(SHORTEST_READY_PROBE))
    }
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

    /// Where debugpy listens (listen and direct modes); port 0 in direct mode when
    /// debugpy's adapter picks its port and the step's bootstrap reports it.
    pub(crate) fn debugpy_address(&self) -> SocketAddr {
        match (self.mode, self.proxy_port) {
            (DebugMode::Direct, Some(port)) => {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
            }
            (DebugMode::Direct, None) => self.published_address(),
            (DebugMode::Connect | DebugMode::Listen, _) => {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port)
            }
        }
    }

    /// Where a developer reaches this node in direct mode: the node IP and the port.
    pub(crate) fn published_address(&self) -> SocketAddr {
        let ip = self.node_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        SocketAddr::new(ip, self.port)
    }
}

/// In debug builds (the tests'), a sidecar started with this variable set panics at
/// once: the test that a panic there ends the sidecar alone, not the agent's frames the
/// fork copied. Release builds do not read it.
#[cfg(debug_assertions)]
pub const TEST_SIDECAR_PANIC: &str = "AMLX_TEST_SIDECAR_PANIC";

/// The sidecar's whole life: returns its exit code. Reports readiness through `ready`
/// before the step starts, then serves the session until the step dies or the lifeline
/// closes (see [`Lifeline::ended`]), or the step's bootstrap reports through `bootstrap`
/// that it runs without debugpy (see [`crate::inject::bootstrap`]): then the session
/// stops and the record says `running-undebugged` with the reason.
pub fn run_sidecar(
    spec: SessionSpec,
    mut ready: ReadySignal,
    lifeline: Lifeline,
    bootstrap: Option<OwnedFd>,
) -> i32 {
    // Debug builds only, for the test that a sidecar's panic ends the sidecar alone.
    #[cfg(debug_assertions)]
    if std::env::var_os(TEST_SIDECAR_PANIC).is_some() {
        panic!("{TEST_SIDECAR_PANIC} is set");
    }
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
        let step_holds_lifeline = spec.step_holds_lifeline;
        let port = spec.port;
        // Resolves with whether the step lives on without its session (it closed the
        // lifeline itself).
        let ended = async move {
            let why = lifeline.ended().await;
            let step_lives_on = why == LifelineEnd::Closed && step_holds_lifeline;
            if step_lives_on {
                tracing::warn!(
                    "the step closed the descriptors it was started with while still running \
                     (os.closerange, a daemonising library): the debug session ends here and \
                     port {port} is no longer reserved for it"
                );
            }
            step_lives_on
        };
        tokio::pin!(ended);
        let step_end = StepEnd::default();
        // What the step's bootstrap says about debugpy, for the developers who arrive
        // before it did (listen and direct modes).
        let (bootstrap_said, bootstrap_word) = tokio::sync::watch::channel(None);
        let mut ended_at = None;
        let mut lives_on = false;
        let without_debugpy = {
            let session = async {
                match spec.mode {
                    DebugMode::Connect => {
                        connect::run(&spec, ready, &mut reporter, &step_end).await;
                    }
                    DebugMode::Listen => {
                        listen::run(&spec, ready, &mut reporter, &step_end, bootstrap_word).await;
                    }
                    DebugMode::Direct => {
                        direct::run(&spec, ready, &mut reporter, &step_end, bootstrap_word).await;
                    }
                }
            };
            tokio::pin!(session);
            tokio::select! {
                () = &mut session => None,
                step_lives_on = &mut ended => {
                    lives_on = step_lives_on;
                    // The developer's connections pass on debugpy's last bytes and end in
                    // order (bounded) instead of being dropped unfinished.
                    ended_at = Some(Instant::now());
                    step_end.announce();
                    let _ = tokio::time::timeout(step_end::BOUND, async {
                        tokio::select! {
                            () = &mut session => {}
                            () = step_end.idle() => {}
                        }
                    })
                    .await;
                    None
                }
                why = bootstrap_missing(bootstrap, bootstrap_said) => Some(why),
            }
        };
        if let Some(why) = without_debugpy {
            // The step runs without a debugger: nothing to wait for or release. A developer
            // who reached the debug port before the step said so met whatever holds it
            // (another process, when debugpy could not listen there): ended in order now,
            // not left connected to it for the step's life.
            step_end.announce();
            let _ = tokio::time::timeout(step_end::BOUND, step_end.idle()).await;
            reporter.set(
                SessionState::RunningUndebugged,
                Some(&format!("debugging disabled for this run: {why}")),
            );
            reporter.keep_record();
            lives_on = match spec.mode {
                // The developers who come later hear why, not "no such endpoint".
                DebugMode::Listen => tokio::select! {
                    step_lives_on = &mut ended => step_lives_on,
                    () = listen::refuse(&spec, &why) => ended.await,
                },
                DebugMode::Connect | DebugMode::Direct => ended.await,
            };
        }
        if lives_on {
            // The step runs on: its record says so (and why) for as long as it does,
            // instead of vanishing as if the step had ended.
            reporter.set(
                SessionState::RunningUndebugged,
                Some(&format!(
                    "the step closed the descriptors it was started with (os.closerange, a \
                     daemonising library): the debug session ended there and port {port} is \
                     no longer reserved for it"
                )),
            );
            reporter.keep_record();
        }
        // The whole end, drain and publishing, fits in FINAL_PUBLISH_TIMEOUT.
        let publish_within = ended_at.map_or(FINAL_PUBLISH_TIMEOUT, |at| {
            FINAL_PUBLISH_TIMEOUT
                .saturating_sub(at.elapsed())
                .max(SHORTEST_FINAL_PUBLISH)
        });
        if tokio::time::timeout(publish_within, reporter.finish())
            .await
            .is_err()
        {
            // Only an MLflow tag can take this long; a short step may never have heard
            // from a tracking server that does not answer at all.
            tracing::warn!(
                "the MLflow tracking server did not take the session's end within {}; the \
                 run's tag may still show an earlier state",
                humantime::format_duration(FINAL_PUBLISH_TIMEOUT)
            );
        }
    });
    // Dropping the runtime would wait for blocking tasks (a DNS lookup, say): the
    // session is over, so leave them to the process exit.
    runtime.shutdown_background();
    0
}

/// Reads the step's bootstrap report and passes it on through `said` (no pipe at all, or
/// nothing usable, is [`Report::Silent`]); resolves (with the reason) only when the
/// bootstrap could not start debugpy.
async fn bootstrap_missing(
    report: Option<OwnedFd>,
    said: tokio::sync::watch::Sender<Option<Report>>,
) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut heard = Report::Silent;
    if let Some(fd) = report {
        // One line, then the bootstrap closes its end; a supervisor may still hold a
        // copy of the write end, so the line's end, not EOF, ends the read.
        let read = async {
            let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
            let mut bytes = Vec::new();
            let mut chunk = [0u8; 512];
            while !bytes.contains(&b'\n') && bytes.len() < bootstrap::MAX_REPORT_BYTES {
                let n = pipe.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                bytes.extend_from_slice(chunk.get(..n).unwrap_or_default());
            }
            Ok::<_, std::io::Error>(bytes)
        };
        match read.await {
            Ok(bytes) => heard = bootstrap::read_report(&bytes),
            Err(err) => tracing::debug!("reading the step's bootstrap report: {err}"),
        }
    }
    match &heard {
        Report::Missing(_) => {}
        Report::Started(port) => {
            tracing::debug!("the step's bootstrap started debugpy (port {port:?})");
            if let Some(port) = *port {
                // The keeper releases the step after a sidecar death: it needs the port
                // when debugpy's adapter picked it.
                sidecar::tell_keeper_debugpy_port(port);
            }
        }
        Report::Silent => tracing::debug!("the step's bootstrap did not report"),
    }
    // Kept for the developers who ask later (a receiver reads the last value).
    said.send_replace(Some(heard.clone()));
    match heard {
        Report::Missing(why) => why,
        Report::Started(_) | Report::Silent => std::future::pending().await,
    }
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
