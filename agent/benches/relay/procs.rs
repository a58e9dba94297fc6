//! The relay's processes for the benchmark: the real `relay serve`, `relay listen` and
//! `relay connect` on loopback with a generated key, each killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::Instant;

use anyhow::{Context as _, bail};
use base64::Engine as _;

use super::{ECHO_NAME, HC, SINK_NAME, WAIT};

/// `relay serve`, `relay listen` and one `relay connect` per local server.
#[derive(Debug)]
pub struct RelayPath {
    serve: Proc,
    listen: Proc,
    connect_sink: (Proc, SocketAddr),
    connect_echo: (Proc, SocketAddr),
    /// Holds the config file (and its key) until the processes are gone.
    _dir: tempfile::TempDir,
}

impl RelayPath {
    pub fn start(sink: SocketAddr, echo: SocketAddr) -> anyhow::Result<RelayPath> {
        let dir = tempfile::tempdir().context("could not create a temp dir")?;
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        let config = dir.path().join("relay.toml");
        std::fs::write(
            &config,
            format!(
                "[relay.server]\n[[relay.server.keys]]\nname = \"bench\"\nkey = \"{key}\"\n\
                 rights = [\"listen\", \"send\"]\npaths = [\"*\"]\n"
            ),
        )
        .with_context(|| format!("could not write {}", config.display()))?;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("could not chmod {}", config.display()))?;

        let mut serve = Proc::spawn("relay serve", |cmd| {
            cmd.arg("--config").arg(&config).args([
                "relay",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--insecure-ws",
            ]);
        })?;
        let line = serve.wait_for("listening on ws://")?;
        let relay_addr: SocketAddr = address_after(&line, "ws://")?;
        // Credentials travel in the environment, never in argv.
        let cs = format!(
            "Endpoint=sb://{relay_addr}/;SharedAccessKeyName=bench;SharedAccessKey={key};EntityPath={HC}"
        );
        let mut listen = Proc::spawn("relay listen", |cmd| {
            cmd.args(["relay", "listen", "--insecure-ws", "--forward"])
                .arg(format!("{SINK_NAME}={sink}"))
                .arg("--forward")
                .arg(format!("{ECHO_NAME}={echo}"))
                .env("AMLX_RELAY_CONNECTION_STRING", &cs);
        })?;
        listen.wait_for("listener online")?;
        let connect = |name: &str| -> anyhow::Result<(Proc, SocketAddr)> {
            let mut p = Proc::spawn("relay connect", |cmd| {
                cmd.args(["relay", "connect", "--insecure-ws", "--bind", "127.0.0.1:0"])
                    .args(["--port-name", name])
                    .env("AMLX_RELAY_CONNECTION_STRING", &cs);
            })?;
            let line = p.wait_for("listening on ")?;
            let addr = address_after(&line, "listening on ")?;
            Ok((p, addr))
        };
        Ok(RelayPath {
            connect_sink: connect(SINK_NAME)?,
            connect_echo: connect(ECHO_NAME)?,
            serve,
            listen,
            _dir: dir,
        })
    }

    /// Where `relay connect` accepts connections for the sink.
    pub fn sink(&self) -> SocketAddr {
        self.connect_sink.1
    }

    /// Where `relay connect` accepts connections for the echo server.
    pub fn echo(&self) -> SocketAddr {
        self.connect_echo.1
    }

    /// Everything the relay processes said, for a failed run.
    pub fn dump(&mut self) -> String {
        [
            &mut self.serve,
            &mut self.listen,
            &mut self.connect_sink.0,
            &mut self.connect_echo.0,
        ]
        .into_iter()
        .map(|p| {
            let lines = p.drain().join("\n");
            format!("--- {} stderr:\n{lines}", p.name)
        })
        .collect::<Vec<_>>()
        .join("\n")
    }
}

/// An `amlx-agent` child, killed when dropped; its stderr is drained in a thread (so its
/// logging never blocks) and kept for waits and failure reports.
#[derive(Debug)]
struct Proc {
    name: &'static str,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(name: &'static str, args: impl FnOnce(&mut Command)) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_amlx-agent"));
        // The agent's settings come from this benchmark alone.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("AMLX_") || key == "RUST_LOG" {
                cmd.env_remove(key);
            }
        }
        args(&mut cmd);
        cmd.env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start {name}"))?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            name,
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Waits (at most [`WAIT`]) for a stderr line containing `needle`.
    fn wait_for(&mut self, needle: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{} printed no {needle:?} within {WAIT:?}:\n{}",
                        self.name,
                        self.seen.join("\n")
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "{} exited ({status:?}) before printing {needle:?}:\n{}",
                        self.name,
                        self.seen.join("\n")
                    )
                }
            }
        }
    }

    /// Every stderr line so far.
    fn drain(&mut self) -> &[String] {
        self.seen.extend(self.lines.try_iter());
        &self.seen
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The socket address that follows `marker` in `line`.
fn address_after(line: &str, marker: &str) -> anyhow::Result<SocketAddr> {
    line.split_once(marker)
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .with_context(|| format!("no address after {marker:?} in {line:?}"))
}
