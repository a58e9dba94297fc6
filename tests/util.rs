//! Shared test plumbing: the agent binary with a clean environment, and tool lookup.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// Path of the `amlx-agent` binary under test.
pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_amlx-agent"))
}

/// Variables that would leak the test runner's own role or settings into the agent.
const LEAKY_PREFIXES: &[&str] = &[
    "AMLX_",
    "OMPI_",
    "PMI_",
    "PMIX_",
    "MPI_",
    "MV2_",
    "SLURM_",
    "HOROVOD_",
    "AZ_BATCH",
    "TORCHELASTIC_",
    "PET_",
    "K_MPI_",
];
const LEAKY_NAMES: &[&str] = &[
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "NODE_RANK",
    "CROSS_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "RUST_LOG",
];

/// `amlx-agent` with every rank/launcher/AMLX variable removed from its environment.
pub fn agent() -> Command {
    clean(Command::new(agent_bin()))
}

/// `cmd` with every rank/launcher/AMLX variable of the test runner removed.
pub fn clean(mut cmd: Command) -> Command {
    for (key, _) in std::env::vars_os() {
        let key_str = key.to_string_lossy();
        if LEAKY_PREFIXES.iter().any(|p| key_str.starts_with(p))
            || LEAKY_NAMES.contains(&key_str.as_ref())
        {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// The directory pip installs console scripts into (where the `mpich` wheel puts `mpiexec`).
pub fn python_scripts_dir() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .expect("python3 runs (install it, or run tests/run.sh)");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// `mpiexec` to spawn, with SIGPIPE ignored. The mpich wheel's hydra (5.0.2) writes to a
/// proxy's socket after the proxy closed it when the ranks end within milliseconds (a C
/// hello world does it, so does `amlx-agent detect`): with SIGPIPE's default action
/// mpiexec then dies, exit 141 and no output at all, in about one run of ten on a loaded
/// machine (CI saw it twice in one day). Ignored, hydra gets EPIPE and ends normally (no
/// failure in 150 runs). Training ranks live far longer than that window.
pub fn mpiexec_command() -> Command {
    let mut cmd = Command::new(mpiexec());
    ignore_sigpipe(&mut cmd);
    cmd
}

/// `cmd` starts with SIGPIPE ignored (std resets it to the default action in children).
pub fn ignore_sigpipe(cmd: &mut Command) {
    // SAFETY: between fork and exec only signal(2), which is async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigIgn,
            )
            .map(drop)
            .map_err(std::io::Error::from)
        });
    }
}

/// `mpiexec` from the `mpich` wheel; panics with the fix when it is missing.
pub fn mpiexec() -> PathBuf {
    let candidate = python_scripts_dir().join("mpiexec");
    assert!(
        candidate.exists(),
        "{} not found: install the test dependencies with `python3 -m pip install -r tests/requirements.txt` (tests/run.sh does)",
        candidate.display()
    );
    candidate
}

/// A random window of `len` ports (inclusive `(start, end)`) outside the kernel's ephemeral
/// range, so connections of concurrently running tests never land in it, and every port
/// of which could be bound on 127.0.0.1 just now. For `--port-range` in debug-port tests.
pub fn free_port_range(len: u16) -> (u16, u16) {
    /// Below this, ports are commonly taken by system services.
    const LOWEST: u16 = 10_000;
    /// Windows tried before giving up.
    const ATTEMPTS: usize = 200;
    let (eph_lo, eph_hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999));
    let mut windows: Vec<(u16, u16)> = Vec::new();
    if eph_lo > LOWEST && eph_lo - LOWEST > len {
        windows.push((LOWEST, eph_lo - len));
    }
    if eph_hi < u16::MAX - len {
        windows.push((eph_hi + 1, u16::MAX - len));
    }
    assert!(
        !windows.is_empty(),
        "no room for {len} ports outside the ephemeral range"
    );
    for _ in 0..ATTEMPTS {
        let (lo, hi) = windows[rand::random_range(0..windows.len())];
        let start = rand::random_range(lo..=hi);
        let end = start + len - 1;
        let all_free = (start..=end).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return (start, end);
        }
    }
    panic!("found no {len} free consecutive ports in {ATTEMPTS} attempts");
}

/// The lines `reader` yields, sent one by one from a thread of their own, so a test can
/// wait for a line with a bound (`recv_timeout`) without blocking on the pipe.
pub fn line_channel(
    reader: impl std::io::Read + Send + 'static,
) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(reader)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// Longest a test waits for a process or a condition before failing.
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);
/// Pause between two polls of a condition (polling, never synchronisation by itself).
const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// Polls `probe` until it returns `Some`, panicking with `what` after `timeout`.
/// The bounded replacement for sleeping in tests.
pub fn wait_for<T>(
    what: &str,
    timeout: std::time::Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Polls `condition` until it holds; panics naming `what` after [`DEADLINE`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    wait_for(what, DEADLINE, || condition().then_some(()));
}

/// Waits for `child` at most `timeout`; kills it and panics when it is still running.
pub fn wait_within(
    child: &mut std::process::Child,
    timeout: std::time::Duration,
) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "process {} still running after {timeout:?}; killed",
                child.id()
            );
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Waits for `child` at most [`DEADLINE`]; kills it and panics when it is still running.
pub fn wait_bounded(child: &mut std::process::Child) -> std::process::ExitStatus {
    wait_within(child, DEADLINE)
}

/// Runs `cmd` to completion, killing it and panicking after `timeout`. Output goes
/// through files, so a leftover grandchild holding stdout open cannot block the test.
pub fn output_within(cmd: &mut Command, timeout: std::time::Duration) -> std::process::Output {
    let stdout = tempfile::tempfile().expect("stdout file");
    let stderr = tempfile::tempfile().expect("stderr file");
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(stdout.try_clone().expect("clone stdout file"))
        .stderr(stderr.try_clone().expect("clone stderr file"))
        .spawn()
        .expect("spawn");
    let status = wait_within(&mut child, timeout);
    let read = |mut file: std::fs::File| {
        use std::io::{Read, Seek};
        let mut bytes = Vec::new();
        file.rewind().expect("rewind");
        file.read_to_end(&mut bytes).expect("read output");
        bytes
    };
    std::process::Output {
        status,
        stdout: read(stdout),
        stderr: read(stderr),
    }
}

/// [`output_within`] bounded by [`DEADLINE`].
pub fn output_bounded(cmd: &mut Command) -> std::process::Output {
    output_within(cmd, DEADLINE)
}

/// The kernel's timer on process `pid`'s end of the TCP connection from its local port
/// `ours` to port `theirs`, from `/proc/<pid>/net/tcp`: (`tr`, `tm->when` in clock ticks).
/// `tr` 2 is a keepalive timer. `None` when no such connection is listed.
pub fn tcp_timer(pid: u32, ours: u16, theirs: u16) -> Option<(u8, u64)> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if port(fields.get(1)?)? != ours || port(fields.get(2)?)? != theirs {
            return None;
        }
        let (tr, when) = fields.get(5)?.split_once(':')?;
        Some((tr.parse().ok()?, u64::from_str_radix(when, 16).ok()?))
    })
}

/// The processes of this PID namespace (the agent's own bounded `/proc` walk).
pub fn processes() -> impl Iterator<Item = u32> {
    amlx_agent::publish::holder::pids()
}

/// Children of `parent` in any state, zombies included, with their state letter.
pub fn children_of(parent: u32) -> Vec<(u32, char)> {
    processes()
        .filter_map(|pid| {
            let stat = amlx_agent::publish::holder::read_stat(pid)?;
            (stat.parent == parent).then_some((pid, stat.state))
        })
        .collect()
}

/// Processes whose environment holds exactly the entry `entry` (`NAME=value`). Zombies
/// have no environment, so they never match.
pub fn processes_with_env(entry: &str) -> Vec<u32> {
    processes()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == entry.as_bytes()))
        })
        .collect()
}

/// A process's command line with its NUL separators as spaces (empty once it is gone).
pub fn command_line(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).replace('\0', " ")
}
