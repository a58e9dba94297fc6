//! Integration tests: supervise mode — signal forwarding to the step's process group,
//! reaping orphans (as a subreaper and as PID 1 of a PID namespace), exit codes, the
//! signal state the step inherits, and the terminal.
//!
//! Steps announce readiness by creating a file after installing their traps; the test
//! polls for it (bounded) before sending a signal. Every loop in a step script is bounded.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::util::{self, output_bounded, wait_bounded, wait_until};

/// Shell helper shared by step scripts: `poll COND` re-evaluates `COND` every 10 ms, at
/// most 1000 times (10 s, well inside the test's own deadline), so with a broken agent
/// the step reports what it saw instead of hanging.
const POLL_SH: &str =
    r#"poll() { i=0; while ! eval "$1" && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done; }"#;

/// `amlx-agent exec --supervise -- sh -c <script>` with `$D` = `dir`.
fn supervise(dir: &Path, script: &str) -> Command {
    let mut cmd = util::agent();
    cmd.args(["exec", "--supervise", "--", "sh", "-c"])
        .arg(format!("{POLL_SH}\n{script}"))
        .env("D", dir);
    cmd
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null()).spawn().expect("spawn agent")
}

fn signal(child: &Child, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
    kill(pid, signal).expect("send signal to the agent");
}

fn wait_for_file(path: &Path) {
    wait_until(&format!("{}", path.display()), || path.exists());
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A step that traps `sig`, creates `$D/ready`, then idles (bounded).
fn trapping_step(sig: &str, action: &str) -> String {
    format!(
        r#"trap '{action}' {sig}
: > "$D/ready"
i=0; while [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done
exit 99"#
    )
}

#[test]
fn sigterm_reaches_a_trapping_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut agent = spawn(&mut supervise(dir.path(), &trapping_step("TERM", "exit 0")));
    wait_for_file(&dir.path().join("ready"));
    signal(&agent, Signal::SIGTERM);
    assert_eq!(wait_bounded(&mut agent).code(), Some(0));
}

#[test]
fn untrapped_sigterm_gives_143() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = r#": > "$D/ready"; exec sleep 30"#;
    let mut agent = spawn(&mut supervise(dir.path(), script));
    wait_for_file(&dir.path().join("ready"));
    signal(&agent, Signal::SIGTERM);
    assert_eq!(wait_bounded(&mut agent).code(), Some(143));
}

#[test]
fn sigusr1_and_sigint_are_forwarded() {
    for (sig, signal_value, code) in [("USR1", Signal::SIGUSR1, 42), ("INT", Signal::SIGINT, 43)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = trapping_step(sig, &format!("exit {code}"));
        let mut agent = spawn(&mut supervise(dir.path(), &script));
        wait_for_file(&dir.path().join("ready"));
        signal(&agent, signal_value);
        assert_eq!(wait_bounded(&mut agent).code(), Some(code), "SIG{sig}");
    }
}

#[test]
fn signals_reach_the_steps_whole_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The step is a process group leader; a background child of it (same group) traps
    // TERM too. Both must see the one SIGTERM sent to the agent.
    let script = r#"
echo "$$ $(cut -d' ' -f5 /proc/$$/stat)" > "$D/pgid"
sh -c 'trap ": > \"$D/child-got-term\"; exit 0" TERM; : > "$D/child-ready"
       i=0; while [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done' &
trap 'wait; exit 0' TERM
poll '[ -e "$D/child-ready" ]'
: > "$D/ready"
i=0; while [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done
exit 99"#;
    let mut agent = spawn(&mut supervise(dir.path(), script));
    wait_for_file(&dir.path().join("ready"));
    signal(&agent, Signal::SIGTERM);
    assert_eq!(wait_bounded(&mut agent).code(), Some(0));
    assert!(
        dir.path().join("child-got-term").exists(),
        "grandchild got TERM"
    );
    let pgid = fs::read_to_string(dir.path().join("pgid")).expect("pgid file");
    let (pid, group) = pgid.trim().split_once(' ').expect("pid and pgid");
    assert_eq!(pid, group, "the step leads its own process group");
    assert_ne!(group, agent.id().to_string(), "not the agent's group");
}

#[test]
fn orphans_are_reparented_to_the_agent_and_reaped() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Double fork: the subshell exits at once, orphaning the grandchild, which waits for
    // `go` and exits. It must be reparented to the agent (a subreaper, not PID 1) and,
    // once it exits, reaped by it (a zombie would keep /proc/$g).
    let script = r#"
( sh -c 'echo $$ > "$D/gpid.tmp"; mv "$D/gpid.tmp" "$D/gpid"
         i=0; while [ ! -e "$D/go" ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done' & )
poll '[ -e "$D/gpid" ]'
g=$(cat "$D/gpid")
ppid() { grep '^PPid:' /proc/$g/status | cut -f2; }
poll '[ "$(ppid)" = "$PPID" ]'
echo "parent-is-agent=$([ "$(ppid)" = "$PPID" ] && echo yes || echo no)"
: > "$D/go"
poll '[ ! -e /proc/$g ]'
echo "reaped=$([ -e /proc/$g ] && echo no || echo yes)"
"#;
    let out = output_bounded(&mut supervise(dir.path(), script));
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout,
        "parent-is-agent=yes\nreaped=yes\n",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn agent_exits_with_the_step_without_waiting_for_grandchildren() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A long-lived orphaned grandchild (stdio detached), then the step exits 3.
    let script = r#"
( sh -c 'echo $$ > "$D/gpid.tmp"; mv "$D/gpid.tmp" "$D/gpid"
         i=0; while [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done' \
    </dev/null >/dev/null 2>&1 & )
poll '[ -e "$D/gpid" ]'
exit 3"#;
    let out = output_bounded(&mut supervise(dir.path(), script));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let gpid: i32 = fs::read_to_string(dir.path().join("gpid"))
        .expect("grandchild pid")
        .trim()
        .parse()
        .expect("numeric pid");
    // Not PID 1: the grandchild lives on, reparented elsewhere. Clean it up.
    let alive = kill(Pid::from_raw(gpid), Signal::SIGKILL).is_ok();
    assert!(
        alive,
        "grandchild {gpid} still running after the agent exited"
    );
}

/// Runs the agent as PID 1 of a new PID namespace (needs root / CAP_SYS_ADMIN).
fn in_pid_namespace(dir: &Path, script: &str) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(util::agent_bin())
        .args(["exec", "--", "sh", "-c"])
        .arg(format!("{POLL_SH}\n{script}"))
        .env("D", dir);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AMLX_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

#[test]
fn as_pid1_defaults_to_supervise_and_leaves_no_zombies() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Five double-forked grandchildren are orphaned to PID 1 (the agent), then told to
    // exit. After they are gone (bounded), count zombies in the whole namespace.
    let script = r#"
echo "step pid=$$ ppid=$PPID"
for n in 1 2 3 4 5; do
  ( sh -c 'echo $$ > "$D/g$0.tmp"; mv "$D/g$0.tmp" "$D/g$0"
           i=0; while [ ! -e "$D/go" ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done' $n & )
done
poll '[ -e "$D/g1" ] && [ -e "$D/g2" ] && [ -e "$D/g3" ] && [ -e "$D/g4" ] && [ -e "$D/g5" ]'
gs="$(cat "$D"/g[1-5])"
orphaned() { for g in $gs; do grep -q '^PPid:	1$' /proc/$g/status || return 1; done; }
poll orphaned
echo "orphaned to pid 1: $(orphaned && echo yes || echo no)"
: > "$D/go"
gone() { for g in $gs; do [ -e /proc/$g ] && return 1; done; return 0; }
poll gone
z=0
for f in /proc/[0-9]*/stat; do
  read -r line < "$f" 2>/dev/null || continue
  state=${line##*) }; state=${state%% *}
  [ "$state" = Z ] && z=$((z+1))
done
echo "zombies=$z"
"#;
    let out = output_bounded(&mut in_pid_namespace(dir.path(), script));
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "unshare --pid --fork --mount-proc must work (run as root): {}{}",
        stdout,
        text(&out.stderr)
    );
    // PID 1 defaults to supervise: the step is a child of the agent, not PID 1 itself.
    let first = stdout.lines().next().unwrap_or_default();
    assert!(first.ends_with(" ppid=1"), "{stdout}");
    assert!(!first.contains("pid=1 "), "{stdout}");
    assert!(stdout.contains("orphaned to pid 1: yes\n"), "{stdout}");
    assert!(stdout.ends_with("zombies=0\n"), "{stdout}");
}

#[test]
fn as_pid1_exit_takes_leftover_grandchildren_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("leftover-marker");
    // The leftover runs `sleep` in a loop with the marker path in its command line, so
    // the test can look for it from outside the namespace.
    let script = r#"
( sh -c 'i=0; while [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done' "$D/leftover-marker" \
    </dev/null >/dev/null 2>&1 & )
exit 5"#;
    let out = output_bounded(&mut in_pid_namespace(dir.path(), script));
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    wait_until("leftover grandchild to be killed", || {
        processes_mentioning(&marker).is_empty()
    });
}

/// Pids whose command line mentions `needle`.
fn processes_mentioning(needle: &Path) -> Vec<PathBuf> {
    let needle = needle.to_string_lossy().into_owned();
    fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            fs::read(path.join("cmdline"))
                .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Sets a distinctive signal state (blocked and ignored signals, SIGCHLD ignored), prints
/// its own `SigBlk`/`SigIgn`, then execs `argv[1..]`: the agent starts with that state.
const SIGNAL_STATE_WRAPPER: &str = r#"
import os, signal, sys
signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # python ignores it; start the agent clean
for sig in (signal.SIGHUP, signal.SIGUSR2, signal.SIGCHLD):
    signal.signal(sig, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM, signal.SIGALRM})
with open('/proc/self/status') as status:
    sys.stdout.write(''.join(l for l in status if l.startswith(('SigBlk', 'SigIgn'))))
sys.stdout.flush()
os.execv(sys.argv[1], sys.argv[1:])
"#;

#[test]
fn step_gets_the_signal_mask_and_ignored_signals_the_agent_received() {
    for mode in ["--replace", "--supervise"] {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", SIGNAL_STATE_WRAPPER])
            .arg(util::agent_bin())
            .args([
                "exec",
                mode,
                "--",
                "grep",
                "-E",
                "^Sig(Blk|Ign)",
                "/proc/self/status",
            ]);
        let out = output_bounded(&mut cmd);
        let stdout = text(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 4, "{mode}: {stdout}{}", text(&out.stderr));
        assert_eq!(
            lines[0..2],
            lines[2..4],
            "{mode}: step state == agent's start state"
        );
        assert_ne!(
            lines[0], "SigBlk:\t0000000000000000",
            "the wrapper blocked signals"
        );
        // The step's exit status survived SIGCHLD being ignored at start.
        assert_eq!(out.status.code(), Some(0), "{mode}");
    }
    // And a non-zero code too, with SIGCHLD ignored at start.
    let out = output_bounded(
        Command::new("python3")
            .args(["-c", SIGNAL_STATE_WRAPPER])
            .arg(util::agent_bin())
            .args(["exec", "--supervise", "--", "sh", "-c", "exit 7"]),
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
}

/// Runs `argv[1..]` on a new pseudo-terminal (session leader, foreground), types a line,
/// then ^C; prints everything the terminal showed and the exit code. All waits bounded.
const PTY_DRIVER: &str = r#"
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
seen = b''
def read_until(token, limit):
    global seen
    deadline = time.monotonic() + limit
    while token not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.05)[0]:
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                return
            if not chunk:
                return
            seen += chunk
read_until(b'ready', 10)
os.write(fd, b'hello\n')
read_until(b'got hello', 10)
os.write(fd, b'\x03')
code = 'timeout'
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        code = os.waitstatus_to_exitcode(status)
        break
    read_until(b'\0', 0.05)
else:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print(seen.decode(errors='replace'))
print('exit', code)
"#;

#[test]
fn step_gets_the_terminal_foreground() {
    // The step reads from the terminal: as a background group it would be stopped by
    // SIGTTIN. ^C then goes to the foreground group (the step): 128+SIGINT.
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PTY_DRIVER]).arg(util::agent_bin()).args([
        "exec",
        "--supervise",
        "--",
        "sh",
        "-c",
        "echo ready; read line; echo \"got $line\"; exec sleep 30",
    ]);
    let out = output_bounded(&mut cmd);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("got hello"),
        "{stdout}{}",
        text(&out.stderr)
    );
    assert!(stdout.trim_end().ends_with("exit 130"), "{stdout}");
}
