//! The benchmark's child processes and what `/proc` says about them: every child is killed
//! (its whole process group for agent sessions) when its guard drops, its output is drained
//! in a thread so it never blocks, and every wait is bounded by [`WAIT`].

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// Bound for any single wait: a process printing its address, a port opening, a read.
pub const WAIT: Duration = Duration::from_secs(30);
/// Pause between two looks at something polled (a port, a status file).
const POLL: Duration = Duration::from_millis(10);

/// A child process, killed when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    /// Its stdout and stderr lines, ANSI colour codes removed.
    lines: Receiver<String>,
    seen: Vec<String>,
    /// Started in its own process group, killed as a group (the agent's sidecar and
    /// keeper are its children).
    group: bool,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout and stderr drained into [`Proc::wait_for`].
    pub fn spawn(name: impl Into<String>, mut cmd: Command) -> anyhow::Result<Proc> {
        let name = name.into();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start {name} ({cmd:?})"))?;
        let (tx, lines) = mpsc::channel();
        drain(child.stdout.take(), tx.clone());
        drain(child.stderr.take(), tx);
        Ok(Proc {
            name,
            child,
            lines,
            seen: Vec::new(),
            group: false,
        })
    }

    /// Like [`Proc::spawn`], in a process group of its own that is killed as a whole.
    pub fn spawn_group(name: impl Into<String>, mut cmd: Command) -> anyhow::Result<Proc> {
        cmd.process_group(0);
        let mut proc = Proc::spawn(name, cmd)?;
        proc.group = true;
        Ok(proc)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (at most [`WAIT`]) for an output line containing `needle`.
    pub fn wait_for(&mut self, needle: &str) -> anyhow::Result<String> {
        self.wait_for_within(needle, WAIT)
    }

    pub fn wait_for_within(&mut self, needle: &str, within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => {
                    self.seen.push(line.clone());
                    return Ok(line);
                }
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{} printed no {needle:?} within {within:?}:\n{}",
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

    /// Waits (at most `within`) for the process to exit; true when it did.
    pub fn wait_exit(&mut self, within: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.child.try_wait().context("wait for a child")?.is_some() {
                return Ok(true);
            }
            thread::sleep(POLL);
        }
        Ok(false)
    }

    /// Sends `sig` to the process (not its group).
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        signal::kill(pid_of(self.pid()), sig)
            .with_context(|| format!("could not signal {}", self.name))
    }

    /// Everything it printed so far.
    pub fn dump(&mut self) -> String {
        self.seen.extend(self.lines.try_iter());
        format!("--- {}:\n{}", self.name, self.seen.join("\n"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.group {
            let _ = signal::killpg(pid_of(self.pid()), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).expect("a pid fits in pid_t"))
}

fn drain(out: Option<impl Read + Send + 'static>, tx: Sender<String>) {
    let Some(out) = out else { return };
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(strip_ansi(&line)).is_err() {
                break;
            }
        }
    });
}

/// `line` without ANSI escape sequences (some peers colour their logs even into a pipe).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (a letter).
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

/// A port the OS just handed out on 127.0.0.1, for peers that cannot bind port 0 and say
/// which port they got (rathole, websocat, iperf3, the debug port range): the socket is
/// closed before the peer binds it, so another program could take it in between.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("could not bind 127.0.0.1:0")?;
    Ok(listener
        .local_addr()
        .context("bound socket has no address")?
        .port())
}

/// Whether something listens on TCP `port` (any address), from `/proc/net/tcp{,6}`; looking
/// does not open a connection the peer would have to serve.
pub fn is_listening(port: u16) -> bool {
    const LISTEN: &str = "0A";
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.get(3) == Some(&LISTEN)
                    && fields
                        .get(1)
                        .and_then(|local| local.rsplit_once(':'))
                        .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok())
                        == Some(port)
            })
        })
    })
}

/// Waits (at most [`WAIT`]) until `port` listens; `proc` is named (and its output shown)
/// when it does not.
pub fn wait_listening(proc: &mut Proc, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    while !is_listening(port) {
        if Instant::now() > deadline {
            bail!(
                "nothing listened on {port} within {WAIT:?}\n{}",
                proc.dump()
            );
        }
        thread::sleep(POLL);
    }
    Ok(())
}

/// Polls `what` (at most `within`) until it returns `Some`.
pub fn poll<T>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = f() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("{what} did not happen within {within:?}");
        }
        thread::sleep(POLL);
    }
}

/// User + system CPU time of `pid` so far, in clock ticks (`/proc/<pid>/stat` fields 14, 15).
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("could not read /proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces and parentheses.
    let rest = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .with_context(|| format!("no command name in /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("no field {} in /proc/{pid}/stat", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when that fails, as on every Linux).
pub fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Resident set size of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("could not read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// `name` on PATH, if there.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A client connection with bounded reads and writes and no Nagle delay.
pub fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let tcp = TcpStream::connect_timeout(&addr, WAIT)
        .with_context(|| format!("could not connect to {addr}"))?;
    tcp.set_nodelay(true).context("set TCP_NODELAY")?;
    tcp.set_read_timeout(Some(WAIT))
        .context("set read timeout")?;
    tcp.set_write_timeout(Some(WAIT))
        .context("set write timeout")?;
    Ok(tcp)
}

/// The socket address that follows `marker` in `line`.
pub fn address_after(line: &str, marker: &str) -> anyhow::Result<SocketAddr> {
    line.split_once(marker)
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|addr| addr.trim_end_matches(['/', ',']).parse().ok())
        .with_context(|| format!("no address after {marker:?} in {line:?}"))
}

/// `amlx-agent` with the settings of this benchmark alone (no `AMLX_*`, no `RUST_LOG`).
pub fn agent_command(agent: &Path) -> Command {
    let mut cmd = Command::new(agent);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AMLX_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

/// System calls made by every thread of `pids` while `during` runs: `strace -c -f`
/// attached to them, its summary's total.
pub fn syscalls_during(
    pids: &[u32],
    during: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    /// Time for strace to reach the threads it attaches after announcing the processes.
    const SETTLE: Duration = Duration::from_millis(300);
    let dir = tempfile::tempdir().context("could not create a temp dir")?;
    let summary = dir.path().join("strace.txt");
    let mut cmd = Command::new("strace");
    cmd.args(["-c", "-f", "-o"]).arg(&summary);
    for pid in pids {
        cmd.args(["-p", &pid.to_string()]);
    }
    let mut strace = Proc::spawn("strace", cmd)?;
    for _ in pids {
        strace.wait_for(" attached")?;
    }
    thread::sleep(SETTLE);
    during()?;
    strace.signal(Signal::SIGINT)?;
    if !strace.wait_exit(WAIT)? {
        bail!("strace did not exit within {WAIT:?}\n{}", strace.dump());
    }
    let text = std::fs::read_to_string(&summary).context("read strace's summary")?;
    // "100.00    0.012345           3      4567       89 total": calls are the 4th column.
    text.lines()
        .find(|line| line.trim_end().ends_with(" total"))
        .and_then(|line| line.split_whitespace().nth(3)?.parse().ok())
        .with_context(|| format!("no total in strace's summary:\n{text}"))
}
