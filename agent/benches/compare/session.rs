//! What the agent costs in front of a step: `exec` for a non-target (time and user-space
//! instructions, next to `tini`), a debug target's start in connect mode with a debugger
//! attaching through the relay, the idle direct-mode sidecar, and the binary itself.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde_json::json;

use super::procs::{self, Proc, WAIT, agent_command, free_port};
use super::tunnels;

/// What the step prints first; its start is the time until this line.
const STEP_FIRST_LINE: &str = "step started";
/// The step: one line, then exit.
const STEP: &str = "print(\"step started\", flush=True)\n";
/// Longest a DAP message the benchmark's debugger accepts (debugpy's are a few KiB).
const MAX_DAP_MESSAGE: usize = 16 * 1024 * 1024;

/// `cmd` with no I/O, timed from spawn to exit; it must succeed.
fn time_one(mut cmd: Command) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("could not run {cmd:?}"))?;
    let elapsed = start.elapsed();
    ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(elapsed)
}

/// Start-to-exit times of `true`, `amlx-agent exec -- true` (a non-target) and, when
/// installed, `tini -s -- true`, interleaved `runs` times after a warm-up.
pub fn exec_times(
    agent: &Path,
    tini: Option<&Path>,
    runs: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, Vec<Duration>)> {
    let direct = || Command::new("true");
    let through_agent = || {
        let mut cmd = agent_command(agent);
        cmd.args(["exec", "--", "true"]);
        cmd
    };
    let through_tini = |tini: &Path| {
        let mut cmd = Command::new(tini);
        cmd.args(["-s", "--", "true"]);
        cmd
    };
    let (mut d, mut a, mut t) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs + runs / 10 {
        let warm = i < runs / 10;
        let times = (
            time_one(direct())?,
            time_one(through_agent())?,
            tini.map(|tini| time_one(through_tini(tini))).transpose()?,
        );
        if !warm {
            d.push(times.0);
            a.push(times.1);
            t.extend(times.2);
        }
    }
    Ok((d, a, t))
}

/// Start-to-exit times of a step that does not crash (`python3 <python_args> step.py`, one line) under
/// `amlx-agent exec` and under `amlx-agent exec --post-mortem` (the hook installed),
/// interleaved `runs` times after a warm-up.
pub fn hook_times(
    agent: &Path,
    python: &Path,
    python_args: &[&str],
    runs: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let dir = tempfile::tempdir().context("could not create a temp dir")?;
    let step = dir.path().join("step.py");
    std::fs::write(&step, STEP).context("could not write the step")?;
    let under = |post_mortem: bool| {
        let mut cmd = agent_command(agent);
        cmd.arg("exec");
        if post_mortem {
            cmd.arg("--post-mortem");
        }
        cmd.arg("--").arg(python).args(python_args).arg(&step);
        cmd
    };
    let (mut alone, mut hooked) = (Vec::new(), Vec::new());
    for i in 0..runs + runs / 10 {
        let times = (time_one(under(false))?, time_one(under(true))?);
        if i >= runs / 10 {
            alone.push(times.0);
            hooked.push(times.1);
        }
    }
    Ok((alone, hooked))
}

/// User-space instructions a wrapper executes up to its `execve` of the command: the
/// command is one that does not exist, so each wrapper's run ends right there (an error
/// line and an exit) and callgrind counts the whole run of every process. Finding the
/// `execve` by name (`--dump-before=execve`) counted nothing for a stripped static
/// binary, which has no symbol to find.
pub fn instructions(wrapper: &[&str]) -> anyhow::Result<u64> {
    let dir = tempfile::tempdir().context("could not create a temp dir")?;
    let missing = dir.path().join("no-such-command");
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--trace-children=yes"])
        .arg(format!(
            "--callgrind-out-file={}/cg.%p",
            dir.path().display()
        ))
        .args(wrapper)
        .arg(&missing)
        .env_remove("AMLX_DEBUG")
        .env_remove("AMLX_CONFIG")
        .output()
        .context("could not run valgrind")?;
    // The wrapper fails (no such command); valgrind itself must have run it.
    ensure!(
        !String::from_utf8_lossy(&out.stderr).contains("valgrind: "),
        "valgrind {wrapper:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut total = 0;
    for entry in std::fs::read_dir(dir.path()).context("read callgrind's output")? {
        let path = entry.context("a callgrind file")?.path();
        if path == missing {
            continue;
        }
        let text = std::fs::read_to_string(path)?;
        total += text
            .lines()
            .filter_map(|l| l.strip_prefix("totals:"))
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum::<u64>();
    }
    ensure!(total > 0, "callgrind counted nothing for {wrapper:?}");
    Ok(total)
}

/// Start times of a debug target, interleaved: until the step's first line.
#[derive(Debug, Default)]
pub struct Starts {
    /// `python3 step.py`.
    pub plain: Vec<Duration>,
    /// `python3 -m debugpy --connect DEBUGGER --wait-for-client step.py`: debugpy's own
    /// cost, no agent and no relay.
    pub debugpy: Vec<Duration>,
    /// `amlx-agent exec --debug -- python3 step.py`, connect mode, the debugger behind
    /// `relay serve` and `relay listen`.
    pub agent: Vec<Duration>,
}

/// The start of a debug target in connect mode (see [`Starts`]).
pub fn target_start(agent: &Path, python: &Path, rounds: usize) -> anyhow::Result<Starts> {
    let dir = tempfile::tempdir().context("could not create a temp dir")?;
    let step = dir.path().join("step.py");
    std::fs::write(&step, STEP).context("write the step")?;
    let debugger = debugger()?;
    // The relay: only its serve and listen parts (the node's sidecar is the sender).
    let debug_port = free_port()?;
    let (mut relay, mut listen) = tunnels::relay_for_debugger(agent, debug_port, debugger)?;
    let mut starts = Starts::default();
    for round in 0..=rounds {
        let mut cmd = Command::new(python);
        cmd.arg(&step);
        let p = first_line(Proc::spawn("python3 step.py", cmd)?)?;
        let mut cmd = Command::new(python);
        cmd.args([
            "-m",
            "debugpy",
            "--connect",
            &debugger.to_string(),
            "--wait-for-client",
        ])
        .arg(&step);
        let alone = first_line(Proc::spawn_group("python3 -m debugpy", cmd)?)?;
        let mut cmd = agent_command(agent);
        cmd.args([
            "exec",
            "--debug",
            "--rank",
            "0",
            "--mode",
            "connect",
            "--insecure-ws",
        ])
        .args(["--port-range", &format!("{debug_port}-{debug_port}")])
        .args(["--attach-timeout", "60s", "--"])
        .arg(python)
        .arg(&step)
        .env("AMLX_RELAY_CONNECTION_STRING", &relay.cs)
        .env("AMLX_LOCK_DIR", dir.path().join("locks"))
        .env("AMLX_STATE_DIR", dir.path().join("state"));
        let d = match first_line(Proc::spawn_group("amlx-agent exec --debug", cmd)?) {
            Ok(d) => d,
            Err(err) => bail!("{err:#}\n{}\n{}", relay.serve.dump(), listen.dump()),
        };
        // Round 0 warms the page cache and Python's bytecode cache.
        if round > 0 {
            starts.plain.push(p);
            starts.debugpy.push(alone);
            starts.agent.push(d);
        }
    }
    Ok(starts)
}

/// Time from spawn until [`STEP_FIRST_LINE`], then waits (bounded) for a clean exit.
fn first_line(mut proc: Proc) -> anyhow::Result<Duration> {
    let began = Instant::now();
    proc.wait_for(STEP_FIRST_LINE)?;
    let elapsed = began.elapsed();
    if !proc.wait_exit(WAIT)? {
        bail!("the step did not exit within {WAIT:?}\n{}", proc.dump());
    }
    Ok(elapsed)
}

/// A developer's debugger listening on loopback port 0 (VS Code in connect mode): for each
/// connection it sends `initialize`, `attach` and, after debugpy's `initialized` event,
/// `configurationDone`, then reads until the debuggee hangs up.
fn debugger() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("could not bind 127.0.0.1:0")?;
    let addr = listener
        .local_addr()
        .context("bound socket has no address")?;
    thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            thread::spawn(move || {
                if let Err(err) = attach(tcp) {
                    eprintln!("bench debugger: {err:#}");
                }
            });
        }
    });
    Ok(addr)
}

fn attach(tcp: TcpStream) -> anyhow::Result<()> {
    tcp.set_read_timeout(Some(WAIT))?;
    let mut out = tcp.try_clone()?;
    let mut input = BufReader::new(tcp);
    let mut send = |seq: u64, command: &str, arguments: serde_json::Value| -> anyhow::Result<()> {
        let body =
            json!({"seq": seq, "type": "request", "command": command, "arguments": arguments})
                .to_string();
        write!(out, "Content-Length: {}\r\n\r\n{body}", body.len()).context("send a DAP request")
    };
    send(
        1,
        "initialize",
        json!({"adapterID": "bench", "clientID": "bench", "pathFormat": "path"}),
    )?;
    read_until(&mut input, |m| {
        m["type"] == "response" && m["command"] == "initialize"
    })?;
    send(2, "attach", json!({"name": "bench", "justMyCode": true}))?;
    read_until(&mut input, |m| {
        m["type"] == "event" && m["event"] == "initialized"
    })?;
    send(3, "configurationDone", json!({}))?;
    read_until(&mut input, |m| {
        m["type"] == "response" && m["command"] == "configurationDone"
    })?;
    // Stay attached until the step ends and debugpy closes.
    let mut sink = [0u8; 4096];
    while input.read(&mut sink).map(|n| n > 0).unwrap_or(false) {}
    Ok(())
}

/// Reads DAP messages until one satisfies `done`.
fn read_until(
    input: &mut BufReader<TcpStream>,
    done: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<()> {
    loop {
        let mut length = None;
        loop {
            let mut line = String::new();
            ensure!(
                input.read_line(&mut line)? > 0,
                "debugpy closed the DAP connection"
            );
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.strip_prefix("Content-Length:") {
                length = v.trim().parse::<usize>().ok();
            }
        }
        let length = length.context("a DAP message without Content-Length")?;
        ensure!(length <= MAX_DAP_MESSAGE, "a DAP message of {length} bytes");
        let mut body = vec![0u8; length];
        input.read_exact(&mut body)?;
        let message: serde_json::Value = serde_json::from_slice(&body)?;
        if message["type"] == "response" && message["success"] == false {
            bail!("debugpy refused: {message}");
        }
        if done(&message) {
            return Ok(());
        }
    }
}

/// CPU use, in % of one core, of an idle direct-mode session's sidecar, keeper and step
/// (debugpy waiting): the target waits for a client (`--wait-for-client`), nobody comes.
pub fn idle_sidecar(agent: &Path, python: &Path, idle: Duration) -> anyhow::Result<[f64; 3]> {
    let dir = tempfile::tempdir().context("could not create a temp dir")?;
    let step = dir.path().join("step.py");
    std::fs::write(&step, STEP).context("write the step")?;
    let state = dir.path().join("state");
    let debug_port = free_port()?;
    let mut cmd = agent_command(agent);
    cmd.args([
        "exec",
        "--debug",
        "--rank",
        "0",
        "--mode",
        "direct",
        "--node-ip",
        "127.0.0.1",
    ])
    .args(["--wait-for-client", "--attach-timeout", "10m"])
    .args(["--port-range", &format!("{debug_port}-{debug_port}"), "--"])
    .arg(python)
    .arg(&step)
    .env("AMLX_LOCK_DIR", dir.path().join("locks"))
    .env("AMLX_STATE_DIR", &state);
    let mut session = Proc::spawn_group("amlx-agent exec --mode direct", cmd)?;
    // debugpy listening on the debug port: the session is set up and waits.
    procs::wait_listening(&mut session, debug_port)?;
    let pid = |key: &str| {
        procs::poll(
            &format!("the session's {key} in `status --json`"),
            WAIT,
            || session_pid(agent, &state, key),
        )
    };
    let (sidecar, keeper) = match (pid("sidecar_pid"), pid("keeper_pid")) {
        (Ok(sidecar), Ok(keeper)) => (sidecar, keeper),
        (Err(err), _) | (_, Err(err)) => bail!("{err:#}\n{}", session.dump()),
    };
    // In replace mode the agent became the step: same pid.
    let pids = [sidecar, keeper, session.pid()];
    let ticks = procs::ticks_per_second();
    let before = pids.map(procs::cpu_ticks);
    thread::sleep(idle);
    let after = pids.map(procs::cpu_ticks);
    let mut percent = [0.0; 3];
    for (i, (before, after)) in before.into_iter().zip(after).enumerate() {
        percent[i] = (after? - before?) as f64 / ticks / idle.as_secs_f64() * 100.0;
    }
    Ok(percent)
}

/// The pid under `key` of this state directory's one session.
fn session_pid(agent: &Path, state: &Path, key: &str) -> Option<u32> {
    let out = agent_command(agent)
        .args(["status", "--json", "--state-dir"])
        .arg(state)
        .output()
        .ok()?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    find_key(&json, key)?.as_u64()?.try_into().ok()
}

fn find_key<'a>(value: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match value {
        serde_json::Value::Object(map) => map
            .get(key)
            .filter(|v| !v.is_null())
            .or_else(|| map.values().find_map(|v| find_key(v, key))),
        serde_json::Value::Array(items) => items.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}

/// The release binary: size in bytes, `file`'s word on it, and whether `ldd` finds it
/// static.
#[derive(Debug)]
pub struct Binary {
    pub bytes: u64,
    pub file: String,
    pub is_static: bool,
}

pub fn binary(path: &Path) -> anyhow::Result<Binary> {
    let bytes = path
        .metadata()
        .with_context(|| format!("no {}", path.display()))?
        .len();
    let file = Command::new("file")
        .arg("-bL")
        .arg(path)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|err| format!("(file failed: {err})"));
    let ldd = Command::new("ldd")
        .arg(path)
        .output()
        .context("could not run ldd")?;
    let ldd = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    let is_static = ldd.contains("not a dynamic executable") || ldd.contains("statically linked");
    Ok(Binary {
        bytes,
        file,
        is_static,
    })
}
