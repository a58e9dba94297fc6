//! Real processes for the relay tests: `relay serve`, `relay listen`, `relay connect`,
//! local echo/half-close servers, and stderr watching with bounded waits.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::util;

/// Upper bound for any single wait in these tests.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Key names and keys the test relay knows.
pub const KEY_BOTH: (&str, &str) = ("both", "Zm9vYmFyLWJvdGgta2V5LWZvci10ZXN0cw==");
pub const KEY_SEND: (&str, &str) = ("sendonly", "c2VuZC1vbmx5LWtleQ==");
pub const KEY_LISTEN: (&str, &str) = ("listenonly", "bGlzdGVuLW9ubHkta2V5");

/// Lines a child wrote to stderr, shared with the thread that reads them.
#[derive(Debug, Clone, Default)]
pub struct Lines(Arc<(Mutex<Vec<String>>, Condvar)>);

impl Lines {
    /// Collects the lines of `stream` (a child's stdout or stderr) in a thread.
    pub fn from_reader(stream: impl Read + Send + 'static) -> Lines {
        Lines::capture(stream)
    }

    fn capture(stream: impl Read + Send + 'static) -> Lines {
        let lines = Lines::default();
        let sink = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let (lock, cvar) = &*sink.0;
                lock.lock().expect("lines lock").push(strip_ansi(&line));
                cvar.notify_all();
            }
        });
        lines
    }

    /// Waits (bounded) for a line containing `needle`, starting at line index `from`.
    pub fn wait_for_from(
        &self,
        from: usize,
        needle: &str,
        within: Duration,
    ) -> Option<(usize, String)> {
        let (lock, cvar) = &*self.0;
        let end = Instant::now() + within;
        let mut lines = lock.lock().expect("lines lock");
        loop {
            if let Some((i, l)) = lines
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, l)| l.contains(needle))
            {
                return Some((i, l.clone()));
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            lines = cvar.wait_timeout(lines, end - now).expect("lines lock").0;
        }
    }

    pub fn wait_for(&self, needle: &str) -> Option<String> {
        self.wait_for_from(0, needle, DEADLINE).map(|(_, l)| l)
    }

    pub fn len(&self) -> usize {
        self.0.0.lock().expect("lines lock").len()
    }

    pub fn all(&self) -> Vec<String> {
        self.0.0.lock().expect("lines lock").clone()
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A child process killed when dropped, with its stderr captured.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub stderr: Lines,
}

impl Proc {
    fn spawn(mut cmd: std::process::Command) -> Proc {
        cmd.env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn amlx-agent");
        let stderr = Lines::capture(child.stderr.take().expect("piped stderr"));
        Proc { child, stderr }
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < end,
                "process did not exit; stderr:\n{}",
                self.stderr.all().join("\n")
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn dump(&self) -> String {
        self.stderr.all().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `relay serve` and what clients need to reach it.
#[derive(Debug)]
pub struct Relay {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// CA (the self-signed certificate) when serving TLS.
    pub ca_file: Option<PathBuf>,
    dir: tempfile::TempDir,
    /// Extra `[relay.server]` lines, kept for a restart.
    settings: String,
    /// The amlx-agent binary of `relay serve` and of the clients this relay starts.
    agent: PathBuf,
}

impl Relay {
    /// Plain ws on 127.0.0.1, a free port.
    pub fn start() -> Relay {
        Relay::start_at(None, false)
    }

    /// wss with a certificate for 127.0.0.1 generated here.
    pub fn start_tls() -> Relay {
        Relay::start_at(None, true)
    }

    pub fn start_at(port: Option<u16>, tls: bool) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        Relay::start_in(dir, port, tls, "", util::agent_bin())
    }

    /// Plain ws (or wss when `tls`) on a free port, `relay serve` and every client of
    /// this relay run from `agent` instead of the test build (the static release binary).
    pub fn start_with_agent(agent: &Path, tls: bool) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        Relay::start_in(dir, None, tls, "", agent.to_owned())
    }

    /// Plain ws on a free port, with `settings` (TOML lines) in `[relay.server]`.
    pub fn start_with(settings: &str) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        Relay::start_in(dir, None, false, settings, util::agent_bin())
    }

    fn start_in(
        dir: tempfile::TempDir,
        port: Option<u16>,
        tls: bool,
        settings: &str,
        agent: PathBuf,
    ) -> Relay {
        let config = dir.path().join("relay.toml");
        let mut text = format!("[relay.server]\n{settings}\n");
        for ((name, key), rights) in [
            (KEY_BOTH, r#"["listen", "send"]"#),
            (KEY_SEND, r#"["send"]"#),
            (KEY_LISTEN, r#"["listen"]"#),
        ] {
            text.push_str(&format!(
                "[[relay.server.keys]]\nname = \"{name}\"\nkey = \"{key}\"\nrights = {rights}\n"
            ));
        }
        std::fs::write(&config, text).expect("write relay config");
        let mut cmd = util::clean(std::process::Command::new(&agent));
        cmd.args(["relay", "serve", "--config"]).arg(&config);
        cmd.args(["--listen", &format!("127.0.0.1:{}", port.unwrap_or(0))]);
        let ca_file = if tls {
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            if !cert.exists() {
                let pair = rcgen::generate_simple_self_signed(vec![
                    "127.0.0.1".to_owned(),
                    "localhost".to_owned(),
                ])
                .expect("generate a certificate");
                std::fs::write(&cert, pair.cert.pem()).expect("write cert");
                std::fs::write(&key, pair.signing_key.serialize_pem()).expect("write key");
            }
            cmd.arg("--tls-cert").arg(&cert).arg("--tls-key").arg(&key);
            Some(cert)
        } else {
            cmd.arg("--insecure-ws");
            None
        };
        let proc = Proc::spawn(cmd);
        let line = proc
            .stderr
            .wait_for("listening on ")
            .unwrap_or_else(|| panic!("relay serve did not start:\n{}", proc.dump()));
        let addr = line
            .rsplit("://")
            .next()
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Relay {
            proc,
            addr,
            ca_file,
            dir,
            settings: settings.to_owned(),
            agent,
        }
    }

    /// Waits (bounded) for a line of the relay's log containing `needle`; fails the test
    /// with the whole log when none comes.
    pub fn wait_logged(&self, needle: &str) -> String {
        self.proc
            .stderr
            .wait_for(needle)
            .unwrap_or_else(|| panic!("relay serve never logged {needle:?}:\n{}", self.proc.dump()))
    }

    /// Kills this relay and starts a new one on the same port (and certificate).
    pub fn restart(mut self) -> Relay {
        self.proc.kill();
        let tls = self.ca_file.is_some();
        let port = self.addr.port();
        let Relay {
            dir,
            settings,
            agent,
            ..
        } = self;
        Relay::start_in(dir, Some(port), tls, &settings, agent)
    }

    pub fn connection_string(&self, key: (&str, &str), hc: &str) -> String {
        format!(
            "Endpoint=sb://127.0.0.1:{}/;SharedAccessKeyName={};SharedAccessKey={};EntityPath={hc}",
            self.addr.port(),
            key.0,
            key.1
        )
    }

    /// A SAS token for `key` on Hybrid Connection `hc` of this relay, valid for an hour
    /// (for tests that speak to the relay as a raw WebSocket client).
    pub fn token(&self, key: (&str, &str), hc: &str) -> amlx_agent::config::Secret {
        let audience = format!("http://127.0.0.1:{}/{hc}", self.addr.port());
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
            + 3600;
        let key_secret = amlx_agent::config::Secret::new(key.1);
        amlx_agent::relay::sas::sign(&audience, key.0, &key_secret, expiry).expect("sign")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `relay listen` with `connection_string` in the environment and extra `args`.
    pub fn listen(&self, connection_string: &str, args: &[&str]) -> Proc {
        let mut cmd = self.client_cmd("listen", connection_string);
        cmd.args(args);
        Proc::spawn(cmd)
    }

    /// `relay listen` that is online (its control channel is open).
    pub fn listen_online(&self, connection_string: &str, args: &[&str]) -> Proc {
        let p = self.listen(connection_string, args);
        if p.stderr.wait_for("listener online").is_none() {
            panic!("relay listen did not come online:\n{}", p.dump());
        }
        p
    }

    /// `relay connect` bound to a free port; returns it with its bound address.
    pub fn connect(&self, connection_string: &str, port_name: &str) -> (Proc, SocketAddr) {
        self.connect_with(connection_string, port_name, &[])
    }

    /// [`Relay::connect`] with more arguments.
    pub fn connect_with(
        &self,
        connection_string: &str,
        port_name: &str,
        args: &[&str],
    ) -> (Proc, SocketAddr) {
        let mut cmd = self.client_cmd("connect", connection_string);
        cmd.args(["--bind", "127.0.0.1:0", "--port-name", port_name])
            .args(args);
        let p = Proc::spawn(cmd);
        let line = p
            .stderr
            .wait_for("listening on ")
            .unwrap_or_else(|| panic!("relay connect did not start:\n{}", p.dump()));
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        (p, addr)
    }

    fn client_cmd(&self, sub: &str, connection_string: &str) -> std::process::Command {
        let mut cmd = util::clean(std::process::Command::new(&self.agent));
        cmd.args(["relay", sub])
            .env("AMLX_RELAY_CONNECTION_STRING", connection_string);
        match &self.ca_file {
            Some(ca) => {
                cmd.arg("--ca-file").arg(ca);
            }
            None => {
                cmd.arg("--insecure-ws");
            }
        }
        cmd
    }
}

/// `relay listen` over plain ws to a relay that is not a `relay serve` (a test double),
/// with `connection_string` in the environment and extra `args`.
pub fn listen_without_relay(connection_string: &str, args: &[&str]) -> Proc {
    let mut cmd = util::agent();
    cmd.args(["relay", "listen", "--insecure-ws"])
        .args(args)
        .env("AMLX_RELAY_CONNECTION_STRING", connection_string);
    Proc::spawn(cmd)
}

/// A local TCP echo server (echoes until EOF, then half-closes).
pub fn echo_server() -> SocketAddr {
    serve_each(|mut s| {
        let mut r = s.try_clone().expect("clone socket");
        let _ = std::io::copy(&mut r, &mut s);
        let _ = s.shutdown(Shutdown::Write);
    })
}

/// A local server running `handle` on each connection in its own thread.
pub fn serve_each(handle: impl Fn(TcpStream) + Send + Sync + Clone + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("bound");
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let handle = handle.clone();
            thread::spawn(move || handle(conn));
        }
    });
    addr
}

/// Sends `data` through `addr` and reads until EOF (concurrently); returns what came back.
pub fn round_trip(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    let mut writer = stream.try_clone()?;
    let owned = data.to_vec();
    let sender = thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&owned)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut back = Vec::new();
    let mut reader = stream;
    reader.read_to_end(&mut back)?;
    sender.join().expect("writer thread")?;
    Ok(back)
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::fill(v.as_mut_slice());
    v
}

pub fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Polls `attempt` until it returns `Some`, bounded by `within`.
pub fn poll<T>(within: Duration, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = attempt() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        thread::sleep(Duration::from_millis(100));
    }
}
