//! Plumbing for the debug-session tests: the developer's side (a real DAP client
//! driving the real debugpy adapter, behind `relay listen`) and the node's side
//! (`amlx-agent exec --debug` running an unchanged step through `relay serve`).

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::relay::harness::{KEY_BOTH, Relay};
use crate::util;

/// The line of `marker = ...` in tests/session/step.py.
pub const BREAKPOINT_LINE: u32 = 14;
/// The local variable read at the breakpoint and its value after `train(4)`'s loop.
pub const VARIABLE: (&str, &str) = ("total", "6");
/// Longest a session test waits for anything.
pub const SESSION_DEADLINE: Duration = Duration::from_secs(90);

/// The unchanged step script.
pub fn step_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/session/step.py")
        .canonicalize()
        .expect("tests/session/step.py exists")
}

/// A port nobody listens on right now (bound to 0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Whether something listens on 127.0.0.1:`port` (read from /proc, without connecting:
/// a probe connection would reach debugpy's adapter as a bogus debuggee).
pub fn is_listening(port: u16) -> bool {
    let needle = format!(":{port:04X} 00000000:0000 0A");
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|table| table.contains(&needle))
}

/// The debugpy adapter directory of the python3 on PATH.
fn debugpy_adapter() -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import debugpy, os; print(os.path.join(os.path.dirname(debugpy.__file__), 'adapter'))",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "debugpy is not installed: run `python3 -m pip install -r tests/requirements.txt` (tests/run.sh does)"
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One debugging session the DAP client runs.
#[derive(Debug, Clone)]
pub struct Attach {
    /// VS Code's attach config: `{"listen": {...}}` or `{"connect": {...}}`.
    pub attach: serde_json::Value,
    pub line: u32,
    /// Keep the debuggee stopped at the breakpoint until this file exists (bounded).
    pub hold_until_file: Option<PathBuf>,
    /// A crashed process: no breakpoint, it stops at the frame that raised; the session
    /// reads the exception and detaches.
    pub post_mortem: bool,
    /// End the session at the breakpoint as VS Code's Stop does: `disconnect` with
    /// `terminateDebuggee: true`.
    pub terminate: bool,
}

impl Attach {
    /// VS Code listens on `port` for debugpy (connect mode).
    pub fn listen(port: u16) -> Attach {
        Attach {
            attach: serde_json::json!({"listen": {"host": "127.0.0.1", "port": port}}),
            line: BREAKPOINT_LINE,
            hold_until_file: None,
            post_mortem: false,
            terminate: false,
        }
    }

    /// VS Code connects to `port` (listen and direct modes).
    pub fn connect(host: &str, port: u16) -> Attach {
        Attach {
            attach: serde_json::json!({"connect": {"host": host, "port": port}}),
            line: BREAKPOINT_LINE,
            hold_until_file: None,
            post_mortem: false,
            terminate: false,
        }
    }

    /// Stops at the breakpoint, then ends the session asking debugpy to end the step.
    pub fn terminate(mut self) -> Attach {
        self.terminate = true;
        self
    }

    /// A post-mortem session: stops where the process raised, detaches after reading.
    pub fn post_mortem(mut self) -> Attach {
        self.post_mortem = true;
        self
    }

    /// The session stays stopped at the breakpoint until `file` exists.
    pub fn hold_until(mut self, file: &Path) -> Attach {
        self.hold_until_file = Some(file.to_owned());
        self
    }
}

/// What the DAP client saw in one session.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Outcome {
    pub ok: bool,
    pub line: Option<u32>,
    pub value: Option<String>,
    pub error: Option<String>,
    /// Post-mortem sessions: the exception's description and the stop's reason.
    #[serde(default)]
    pub exception: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// The developer's VS Code: tests/dap/dap_client.js with one session per attach.
#[derive(Debug)]
pub struct DapClient {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl DapClient {
    /// Sessions with breakpoints in tests/session/step.py, reading [`VARIABLE`].
    pub fn start(sessions: &[Attach]) -> DapClient {
        DapClient::start_in(sessions, &step_py(), VARIABLE.0)
    }

    /// Sessions with breakpoints in `program`, reading `variable` at the breakpoint.
    pub fn start_in(sessions: &[Attach], program: &Path, variable: &str) -> DapClient {
        let spec = serde_json::json!({
            "python": "python3",
            "adapter": debugpy_adapter(),
            "timeoutMs": SESSION_DEADLINE.as_millis() as u64,
            "sessions": sessions.iter().map(|s| serde_json::json!({
                "attach": s.attach,
                "program": program,
                "line": s.line,
                "variable": variable,
                "holdUntilFile": s.hold_until_file,
                "postMortem": s.post_mortem,
                "terminate": s.terminate,
            })).collect::<Vec<_>>(),
        });
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/dap/dap_client.js");
        let mut child = Command::new("node")
            .arg(script)
            .arg(spec.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own group: the adapters it starts go with it on drop.
            .process_group(0)
            .spawn()
            .expect("node runs tests/dap/dap_client.js (npm ci in tests/dap; tests/run.sh does)");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = util::line_channel(stdout);
        DapClient { child, lines }
    }

    /// Waits until the adapter listens on `port` (connect-mode attach configs).
    pub fn wait_listening(&self, port: u16) {
        util::wait_for(
            &format!("the debugpy adapter to listen on {port}"),
            SESSION_DEADLINE,
            || is_listening(port).then_some(()),
        );
    }

    /// Waits (bounded) until a session reports it stopped (lines before it are dropped).
    pub fn wait_stopped(&self) {
        let deadline = Instant::now() + SESSION_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no session stopped within {SESSION_DEADLINE:?}"));
            if line.contains("\"event\":\"stopped\"") {
                return;
            }
        }
    }

    /// Every session's outcome, in the order given to `start` (bounded).
    pub fn finish(self, count: usize) -> Vec<Outcome> {
        let deadline = Instant::now() + SESSION_DEADLINE;
        let mut outcomes: Vec<(usize, Outcome)> = Vec::new();
        while outcomes.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "the DAP client reported {} of {count} sessions",
                    outcomes.len()
                )
            });
            let value: serde_json::Value =
                serde_json::from_str(&line).expect("JSON from the DAP client");
            if value.get("event").is_some() {
                continue;
            }
            let index = value["index"].as_u64().expect("index") as usize;
            let outcome: Outcome = serde_json::from_value(value).expect("an outcome");
            outcomes.push((index, outcome));
        }
        outcomes.sort_by_key(|(i, _)| *i);
        outcomes.into_iter().map(|(_, o)| o).collect()
    }
}

impl Drop for DapClient {
    fn drop(&mut self) {
        // Not reaped yet, so the group id is still ours: node and its debugpy adapters.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A relay with the developer's `relay listen` forwarding port names to local ports.
pub struct DeveloperSide {
    pub relay: Relay,
    pub hc: String,
    pub listen: Option<crate::relay::harness::Proc>,
}

impl DeveloperSide {
    /// `relay serve` only (nobody listening yet).
    pub fn relay_only(hc: &str) -> DeveloperSide {
        DeveloperSide {
            relay: Relay::start(),
            hc: hc.to_owned(),
            listen: None,
        }
    }

    /// Starts `relay listen --forward NAME=127.0.0.1:PORT ...` and waits until online.
    pub fn listen(&mut self, forwards: &[(u16, u16)]) {
        let args: Vec<String> = forwards
            .iter()
            .flat_map(|(name, port)| ["--forward".to_owned(), format!("{name}=127.0.0.1:{port}")])
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let connection = self.connection_string();
        self.listen = Some(self.relay.listen_online(&connection, &args));
    }

    /// Starts `relay listen` with these arguments and waits until online.
    pub fn listen_raw(&mut self, args: &[&str]) {
        let connection = self.connection_string();
        self.listen = Some(self.relay.listen_online(&connection, args));
    }

    pub fn connection_string(&self) -> String {
        self.relay.connection_string(KEY_BOTH, &self.hc)
    }

    /// `amlx-agent exec` for a step on the node, pointed at this relay.
    pub fn agent(&self, lock_dir: &Path) -> Command {
        agent_for(&self.connection_string(), lock_dir)
    }
}

/// The agent for a node whose relay is `connection_string` (plain ws), with its lock
/// directory `lock_dir` and its state directory inside it.
pub fn agent_for(connection_string: &str, lock_dir: &Path) -> Command {
    let mut cmd = util::agent();
    cmd.env("AMLX_RELAY_CONNECTION_STRING", connection_string)
        .env("AMLX_RELAY_INSECURE_WS", "true")
        .env("AMLX_LOCK_DIR", lock_dir)
        .env("AMLX_STATE_DIR", lock_dir.join("state"))
        .env("NO_COLOR", "1");
    cmd
}

/// The developer ready for rank 0's connect-mode session: VS Code (the DAP client, one
/// session from `attach` given its listen port) listening behind `relay listen`, which
/// forwards the first port of a fresh window of `ports` debug ports.
pub struct ListeningDeveloper {
    pub side: DeveloperSide,
    pub client: DapClient,
    /// Rank 0's debug port (the window's first).
    pub debug_port: u16,
    /// The window, for `--port-range`.
    pub range: String,
}

impl ListeningDeveloper {
    pub fn start(hc: &str, ports: u16, attach: impl FnOnce(u16) -> Attach) -> ListeningDeveloper {
        ListeningDeveloper::start_in(hc, ports, attach, &step_py(), VARIABLE.0)
    }

    /// [`ListeningDeveloper::start`] with the breakpoint in `program`, reading `variable`.
    pub fn start_in(
        hc: &str,
        ports: u16,
        attach: impl FnOnce(u16) -> Attach,
        program: &Path,
        variable: &str,
    ) -> ListeningDeveloper {
        let mut side = DeveloperSide::relay_only(hc);
        let vscode_port = free_port();
        let client = DapClient::start_in(&[attach(vscode_port)], program, variable);
        client.wait_listening(vscode_port);
        let (debug_port, _, range) = port_range(ports);
        side.listen(&[(debug_port, vscode_port)]);
        ListeningDeveloper {
            side,
            client,
            debug_port,
            range,
        }
    }
}

/// A window of free debug ports for one test (distinct per test: no collisions).
pub fn port_range(len: u16) -> (u16, u16, String) {
    let (start, end) = util::free_port_range(len);
    (start, end, format!("{start}-{end}"))
}
