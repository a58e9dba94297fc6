//! Integration tests: supervise mode — signal forwarding to the step's process group,
//! reaping orphans (as a subreaper and as PID 1 of a PID namespace), exit codes, the
//! signal state the step inherits, and the terminal; and tini parity, one table row per
//! catchable signal (which reach the step, which the supervisor consumes, none orphans).
//!
//! Steps announce readiness by creating a file after installing their traps; the test
//! polls for it (bounded) before sending a signal. Every loop in a step script is bounded.

use std::fs;
use std::path::Path;
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
fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    util::processes()
        .filter(|pid| util::command_line(*pid).contains(&needle))
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

// ---------------------------------------------------------------------------------------
// tini parity: every catchable signal, one row each.
// ---------------------------------------------------------------------------------------

/// A python step for the signal tables, started as `python3 -c STEP MODE DIR`.
///
/// - `record`: blocks every catchable signal and takes them with `sigtimedwait`, appending
///   each number it receives to `DIR/received` (one line each), so nothing it receives
///   can stop or kill it;
/// - `default`: every catchable signal at its default action and none blocked, so a
///   forwarded signal does to the step what it would do to any program.
///
/// Either way it writes its pid to `DIR/ready` once set up, exits 0 when `DIR/done`
/// appears, and 99 after 30 s without it (bounded). Core dumps are off (RLIMIT_CORE 0):
/// several rows kill it with a core-dumping signal.
const SIGNAL_STEP: &str = r#"
import os, resource, signal, sys, time
mode, d = sys.argv[1], sys.argv[2]
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
catchable = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}
if mode == 'record':
    signal.pthread_sigmask(signal.SIG_BLOCK, catchable)
else:
    for sig in catchable:
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
with open(os.path.join(d, 'ready.tmp'), 'w') as f:
    f.write(str(os.getpid()))
os.rename(os.path.join(d, 'ready.tmp'), os.path.join(d, 'ready'))
deadline = time.monotonic() + 30
while not os.path.exists(os.path.join(d, 'done')):
    if time.monotonic() > deadline:
        sys.exit(99)
    if mode == 'record':
        info = signal.sigtimedwait(catchable, 0.01)
        if info is not None:
            with open(os.path.join(d, 'received'), 'a') as f:
                f.write('%d\n' % info.si_signo)
    else:
        time.sleep(0.01)
"#;

/// Where a signal sent to the supervisor goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Forwarded to the step's process group.
    Forwarded,
    /// Taken by the supervisor itself, never forwarded (the reason is in [`ROUTES`]).
    Consumed,
}

/// What a signal's default action does to the step (signal(7)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DefaultAction {
    /// Term or Core: the step dies of it.
    Dies,
    /// Ign: nothing happens.
    Ignored,
    /// Stop: the step stops until SIGCONT.
    Stops,
}

/// Every catchable signal 1..=31 (SIGKILL and SIGSTOP cannot be caught, so they act on
/// the agent itself and are not rows), the supervisor's route for it, and its default
/// action. Consumed, and why: SIGCHLD is the supervisor's own (it reaps on it); SIGTTIN
/// and SIGTTOU are ignored by the supervisor exactly as tini ignores them, so that after
/// handing the terminal to the step's group neither a log line nor `tcsetpgrp` can stop
/// the agent (the step still gets its inherited disposition for both).
const ROUTES: [(Signal, Route, DefaultAction); 29] = {
    use DefaultAction::{Dies, Ignored, Stops};
    use Route::{Consumed, Forwarded};
    [
        (Signal::SIGHUP, Forwarded, Dies),
        (Signal::SIGINT, Forwarded, Dies),
        (Signal::SIGQUIT, Forwarded, Dies),
        (Signal::SIGILL, Forwarded, Dies),
        (Signal::SIGTRAP, Forwarded, Dies),
        (Signal::SIGABRT, Forwarded, Dies),
        (Signal::SIGBUS, Forwarded, Dies),
        (Signal::SIGFPE, Forwarded, Dies),
        (Signal::SIGUSR1, Forwarded, Dies),
        (Signal::SIGSEGV, Forwarded, Dies),
        (Signal::SIGUSR2, Forwarded, Dies),
        (Signal::SIGPIPE, Forwarded, Dies),
        (Signal::SIGALRM, Forwarded, Dies),
        (Signal::SIGTERM, Forwarded, Dies),
        (Signal::SIGSTKFLT, Forwarded, Dies),
        (Signal::SIGCHLD, Consumed, Ignored),
        (Signal::SIGCONT, Forwarded, Ignored),
        (Signal::SIGTSTP, Forwarded, Stops),
        (Signal::SIGTTIN, Consumed, Stops),
        (Signal::SIGTTOU, Consumed, Stops),
        (Signal::SIGURG, Forwarded, Ignored),
        (Signal::SIGXCPU, Forwarded, Dies),
        (Signal::SIGXFSZ, Forwarded, Dies),
        (Signal::SIGVTALRM, Forwarded, Dies),
        (Signal::SIGPROF, Forwarded, Dies),
        (Signal::SIGWINCH, Forwarded, Ignored),
        (Signal::SIGIO, Forwarded, Dies),
        (Signal::SIGPWR, Forwarded, Dies),
        (Signal::SIGSYS, Forwarded, Dies),
    ]
};

/// One row of the table: a signal number (real-time ones are not `Signal`s) and a name.
#[derive(Debug, Clone)]
struct Row {
    signo: i32,
    name: String,
    route: Route,
    default: DefaultAction,
}

/// The last real-time signal: forwarded, deadly by default, and delivered after every
/// other pending signal (standard signals first, then real-time ones by number), so its
/// arrival proves every signal sent before it has been dealt with.
fn barrier() -> i32 {
    nix::libc::SIGRTMAX()
}

/// [`ROUTES`] plus three real-time signals (forwarded, deadly by default).
fn rows() -> Vec<Row> {
    let rtmin = nix::libc::SIGRTMIN();
    let mut rows: Vec<Row> = ROUTES
        .iter()
        .map(|&(signal, route, default)| Row {
            signo: signal as i32,
            name: signal.as_str().to_owned(),
            route,
            default,
        })
        .collect();
    for (signo, name) in [
        (rtmin, "SIGRTMIN".to_owned()),
        (rtmin + 1, "SIGRTMIN+1".to_owned()),
        (barrier(), "SIGRTMAX".to_owned()),
    ] {
        rows.push(Row {
            signo,
            name,
            route: Route::Forwarded,
            default: DefaultAction::Dies,
        });
    }
    assert_eq!(
        rows.iter()
            .filter(|row| row.signo <= 31)
            .map(|row| row.signo)
            .collect::<Vec<_>>(),
        (1..=31).filter(|&n| n != 9 && n != 19).collect::<Vec<_>>(),
        "the table covers every catchable signal 1..=31, in order"
    );
    rows
}

/// The agent supervising [`SIGNAL_STEP`], set up and ready.
struct SignalStep {
    dir: tempfile::TempDir,
    /// The agent, or `unshare` running it as PID 1 of a new PID namespace.
    agent: Child,
    /// The agent's pid (in the test's PID namespace), where signals are sent.
    agent_pid: i32,
    /// The step's pid (in the test's PID namespace).
    step: i32,
}

impl SignalStep {
    /// `amlx-agent exec --supervise -- python3 -c SIGNAL_STEP MODE DIR`.
    fn start(mode: &str) -> SignalStep {
        let mut cmd = util::agent();
        cmd.args(["exec", "--supervise", "--"]);
        SignalStep::launch(cmd, mode, false)
    }

    /// The same with the agent as PID 1 of a new PID namespace (its default: supervise).
    fn start_as_pid1(mode: &str) -> SignalStep {
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--mount-proc"])
            .arg(util::agent_bin())
            .args(["exec", "--"]);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("AMLX_") {
                cmd.env_remove(key);
            }
        }
        SignalStep::launch(cmd, mode, true)
    }

    fn launch(mut cmd: Command, mode: &str, under_unshare: bool) -> SignalStep {
        let dir = tempfile::tempdir().expect("tempdir");
        cmd.args(["python3", "-c", SIGNAL_STEP, mode])
            .arg(dir.path());
        let mut agent = spawn(&mut cmd);
        wait_for_text(&dir.path().join("ready"));
        assert!(
            agent.try_wait().expect("try_wait").is_none(),
            "agent running"
        );
        let mut agent_pid = pid_of(&agent);
        if under_unshare {
            agent_pid = only_child(agent_pid, "unshare runs the agent");
        }
        let step = only_child(agent_pid, "the agent runs the step");
        SignalStep {
            dir,
            agent,
            agent_pid,
            step,
        }
    }

    fn send(&self, signo: i32) {
        assert!(
            send_raw(self.agent_pid, signo),
            "send signal {signo} to the agent"
        );
    }

    /// Signal numbers the step has recorded so far (record mode).
    fn received(&self) -> Vec<i32> {
        let text = fs::read_to_string(self.dir.path().join("received")).unwrap_or_default();
        // Only complete lines: the step may be mid-write.
        text.split_inclusive('\n')
            .filter(|line| line.ends_with('\n'))
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }

    /// The step's scheduler state (`R`, `S`, `T`, `Z`…), `None` once it is gone.
    fn step_state(&self) -> Option<char> {
        process_state(self.step)
    }

    fn agent_running(&mut self) -> bool {
        self.agent.try_wait().expect("try_wait").is_none()
    }

    /// Tells the step to exit 0 and returns the agent's exit status.
    fn finish(mut self) -> std::process::ExitStatus {
        fs::write(self.dir.path().join("done"), "").expect("write done marker");
        wait_bounded(&mut self.agent)
    }
}

/// `kill(pid, signo)` for any signal number, real-time ones included (nix's `kill`
/// takes only the standard `Signal`s).
#[allow(unsafe_code)]
fn send_raw(pid: i32, signo: i32) -> bool {
    // SAFETY: kill takes two integers and touches no memory of ours.
    unsafe { nix::libc::kill(pid, signo) == 0 }
}

/// The one child of `parent` (polled: it may not be there yet).
fn only_child(parent: i32, what: &str) -> i32 {
    util::wait_for(what, util::DEADLINE, || {
        let children: Vec<i32> = util::children_of(u32::try_from(parent).ok()?)
            .into_iter()
            .filter_map(|(pid, _)| i32::try_from(pid).ok())
            .collect();
        match children[..] {
            [child] => Some(child),
            _ => None,
        }
    })
}

/// A process's state letter from `/proc/<pid>/stat`, `None` when it does not exist.
fn process_state(pid: i32) -> Option<char> {
    amlx_agent::publish::holder::read_stat(u32::try_from(pid).ok()?).map(|stat| stat.state)
}

/// Waits for `path` to exist and returns its content.
fn wait_for_text(path: &Path) -> String {
    util::wait_for(&format!("{}", path.display()), util::DEADLINE, || {
        fs::read_to_string(path).ok()
    })
}

/// Acceptance: every catchable signal sent to the supervisor either reaches the step or
/// is consumed as documented in [`ROUTES`] (SIGCHLD, SIGTTIN, SIGTTOU), and neither the
/// agent nor the step dies or stops of it. The step records what it receives; after each
/// signal the test sends [`barrier`], and once the barrier has arrived the signal sent
/// before it must have arrived too, or never will.
#[test]
fn every_catchable_signal_reaches_the_step_or_is_consumed_as_documented() {
    let mut failures = Vec::new();
    for row in rows() {
        let mut step = SignalStep::start("record");
        step.send(row.signo);
        step.send(barrier());
        wait_until(
            &format!("{}: the barrier reaches the step", row.name),
            || step.received().contains(&barrier()),
        );
        let reached = step.received().contains(&row.signo);
        let want = row.route == Route::Forwarded;
        if reached != want {
            failures.push(format!(
                "{} ({}): reached the step: {reached}, expected {want}",
                row.name, row.signo
            ));
        }
        let agent_running = step.agent_running();
        let step_state = step.step_state();
        if !agent_running || matches!(step_state, None | Some('Z' | 'T')) {
            failures.push(format!(
                "{}: agent running {agent_running}, step state {step_state:?}",
                row.name
            ));
        }
        let status = step.finish();
        if status.code() != Some(0) {
            failures.push(format!("{}: agent ended {status:?}", row.name));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Acceptance: no signal leaves an orphan. With the step at default dispositions, after
/// each signal either both keep running (the barrier then kills the step, and the agent
/// reports 128+SIGRTMAX, which proves it was alive to forward it), or the step died of
/// the signal and the agent exited with 128+N right after, never the agent alone. The
/// synchronous signals (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGABRT, SIGSYS) sent
/// with `kill` are forwarded like the rest, where tini dies of them and orphans its child.
#[test]
fn no_signal_leaves_an_orphan_step() {
    let mut failures = Vec::new();
    for row in rows() {
        let mut step = SignalStep::start("default");
        step.send(row.signo);
        let survives = row.route == Route::Consumed || row.default != DefaultAction::Dies;
        if row.route == Route::Forwarded && row.default == DefaultAction::Stops {
            // The step stops, the agent does not; SIGCONT through the agent resumes it.
            wait_until(&format!("{}: the step stops", row.name), || {
                step.step_state() == Some('T')
            });
            if !step.agent_running() || process_state(step.agent_pid) == Some('T') {
                failures.push(format!("{}: the agent stopped or exited", row.name));
            }
            step.send(Signal::SIGCONT as i32);
            wait_until(&format!("{}: SIGCONT resumes the step", row.name), || {
                step.step_state() != Some('T')
            });
        }
        let want = if survives {
            step.send(barrier());
            128 + barrier()
        } else {
            128 + row.signo
        };
        let pid = step.step;
        let status = wait_bounded(&mut step.agent);
        if status.code() != Some(want) {
            failures.push(format!(
                "{} ({}): agent ended {status:?}, expected exit code {want}",
                row.name, row.signo
            ));
        }
        if process_state(pid).is_some() {
            failures.push(format!("{}: step {pid} outlived the agent", row.name));
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

fn pid_of(agent: &Child) -> i32 {
    i32::try_from(agent.id()).expect("pid fits i32")
}

/// SIGTSTP / SIGCONT behave like tini's. Decided from tini's source: tini blocks every
/// signal but the synchronous ones and SIGTTIN / SIGTTOU, takes them with
/// `sigtimedwait` and forwards all but SIGCHLD, so SIGTSTP stops the child and never
/// tini itself, and SIGCONT (forwarded like any other) resumes the child; SIGTTIN and
/// SIGTTOU tini sets to "ignore" for itself and restores in the child. Here: SIGTSTP to
/// the agent stops the step's group while the agent keeps running (and keeps reaping:
/// the stop is not mistaken for an exit), SIGCONT to the agent resumes the step, which
/// then finishes normally with the agent's exit code its own.
#[test]
fn sigtstp_stops_the_step_not_the_agent_and_sigcont_resumes_it() {
    let mut step = SignalStep::start("default");
    step.send(Signal::SIGTSTP as i32);
    wait_until("the step stops", || step.step_state() == Some('T'));
    assert!(step.agent_running(), "the agent keeps running");
    assert_ne!(
        process_state(step.agent_pid),
        Some('T'),
        "the agent is not stopped"
    );
    step.send(Signal::SIGCONT as i32);
    wait_until("the step resumes", || {
        !matches!(step.step_state(), Some('T') | None)
    });
    assert_eq!(step.finish().code(), Some(0));
}

/// Acceptance: an ignored SIGPIPE stays ignored in the step (`trap '' PIPE; amlx-agent
/// exec -- …`), and a default one stays default, in replace and supervise mode alike
/// (Rust's runtime ignores SIGPIPE before `main` and `Command` resets it: the agent
/// records the inherited disposition first). Read from the step's own `SigIgn`, bit 13.
#[test]
fn an_ignored_sigpipe_stays_ignored_in_the_step_in_both_modes() {
    const SIGPIPE_BIT: u64 = 1 << (Signal::SIGPIPE as u32 - 1);
    for mode in ["--replace", "--supervise"] {
        for (trap, want_ignored) in [("trap '' PIPE", true), ("trap - PIPE", false)] {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(format!(
                    r#"{trap}; exec "$0" exec {mode} -- grep '^SigIgn:' /proc/self/status"#
                ))
                .arg(util::agent_bin());
            let out = output_bounded(&mut cmd);
            let stdout = text(&out.stdout);
            let mask = stdout
                .trim()
                .strip_prefix("SigIgn:")
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .unwrap_or_else(|| panic!("{mode} {trap}: {stdout}{}", text(&out.stderr)));
            assert_eq!(
                mask & SIGPIPE_BIT != 0,
                want_ignored,
                "{mode} after `{trap}`: step SigIgn {mask:#x}"
            );
            assert_eq!(out.status.code(), Some(0), "{mode} {trap}");
        }
    }
}

/// As PID 1 of a PID namespace (a container's ENTRYPOINT) the kernel drops any signal
/// from outside the namespace that init neither handles nor blocks, so `docker kill -s
/// ALRM` and the like used to vanish. The supervisor blocks and forwards them: each
/// reaches the step, sent from outside the namespace like an orchestrator would.
#[test]
fn as_pid1_signals_from_outside_reach_the_step() {
    let sent = [
        ("SIGALRM", Signal::SIGALRM as i32),
        ("SIGURG", Signal::SIGURG as i32),
        ("SIGPIPE", Signal::SIGPIPE as i32),
        ("SIGSEGV", Signal::SIGSEGV as i32),
        ("SIGTSTP", Signal::SIGTSTP as i32),
        ("SIGRTMIN", nix::libc::SIGRTMIN()),
    ];
    let step = SignalStep::start_as_pid1("record");
    for (_, signo) in sent {
        step.send(signo);
    }
    step.send(barrier());
    wait_until("the barrier reaches the step", || {
        step.received().contains(&barrier())
    });
    let received = step.received();
    for (name, signo) in sent {
        assert!(
            received.contains(&signo),
            "{name} reached the step: {received:?}"
        );
    }
    assert_eq!(step.finish().code(), Some(0));
}

/// A command that cannot run, with stderr a pipe nobody reads any more: the supervisor
/// exits 127 as it says it would. Its one-line reason was written with `eprintln!`, which
/// panicked on the broken pipe: exit 101.
#[test]
fn a_step_that_cannot_run_exits_127_even_with_stderr_gone() {
    let (read, write) = nix::unistd::pipe().expect("pipe");
    drop(read);
    let mut cmd = crate::util::agent();
    cmd.args(["exec", "--supervise", "--", "/nonexistent/amlx-step"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(write));
    let mut child = cmd.spawn().expect("spawn the agent");
    let status = wait_bounded(&mut child);
    assert_eq!(status.code(), Some(127), "{status:?}");
}

/// As PID 1 with `--debug`, a SIGTERM while the debug session is set up (`docker stop`
/// during the relay check; here a relay that accepts and never answers, so the setup
/// waits out its bound): it reaches the step once it starts. PID 1 had default handlers
/// until the supervisor blocked its signals after the setup, so the kernel dropped the
/// signal and the step ran to its end.
#[test]
fn as_pid1_a_sigterm_during_the_debug_setup_reaches_the_step() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let relay = silent.local_addr().expect("address");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(util::agent_bin())
        .args(["exec", "--debug", "--rank", "0", "--mode", "connect", "--insecure-ws"])
        .args(["--attach-timeout", "3s", "--lock-dir"])
        .arg(dir.path().join("locks"))
        .args(["--", "sh", "-c"])
        .arg("echo started; i=0; while [ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); done; echo ran-to-its-end")
        .env("AMLX_STATE_DIR", dir.path().join("state"))
        .env(
            "AMLX_RELAY_CONNECTION_STRING",
            format!("Endpoint=sb://{relay}/;SharedAccessKeyName=k;SharedAccessKey=a2V5;EntityPath=hc"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AMLX_") && key != "AMLX_STATE_DIR" {
            cmd.env_remove(key);
        }
    }
    let mut unshare = spawn(&mut cmd);
    // The agent (PID 1 inside) forks its session's keeper during the setup: once it has
    // one, the setup is under way and the step not started.
    let agent = util::wait_for("the agent as PID 1", util::DEADLINE, || {
        util::children_of(unshare.id()).first().map(|&(pid, _)| pid)
    });
    util::wait_for("the debug session's keeper", util::DEADLINE, || {
        (!util::children_of(agent).is_empty()).then_some(())
    });
    let started = std::time::Instant::now();
    kill(
        Pid::from_raw(i32::try_from(agent).expect("pid fits")),
        Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = wait_bounded(&mut unshare);
    let took = started.elapsed();
    let mut stdout = String::new();
    let _ = std::io::Read::read_to_string(&mut unshare.stdout.take().expect("stdout"), &mut stdout);
    assert!(
        !stdout.contains("ran-to-its-end"),
        "the SIGTERM was lost: {stdout}"
    );
    assert_eq!(status.code(), Some(143), "{status:?} {stdout}");
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
}
