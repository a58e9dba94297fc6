//! Integration tests: `ports` — node-unique debug ports under real concurrency, `kill -9`,
//! unrelated listeners, an exhausted range, and `ports list`.
//!
//! Every test has its own temp lock dir and a random free port window (`free_port_range`),
//! so tests run in parallel with each other and with other test binaries.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::{agent, free_port_range, output_within, wait_for};

/// Generous: 64 debug-build agents start on a small machine shared with other tests.
const STARTUP: Duration = Duration::from_secs(120);
/// How long a released or killed step may take to go away.
const EXIT: Duration = Duration::from_secs(60);
/// Bound for one short agent run (`ports list`, a step that only echoes).
const SHORT_RUN: Duration = Duration::from_secs(60);

/// A step that writes its debug port to `$OUT/<pid>.port` (atomically, via rename) and then
/// waits for `$OUT/release`, bounded (1200 × 0.1 s), so a failed test never leaves it behind.
const HOLDING_STEP: &str = r#"echo "$AMLX_DEBUG_PORT" > "$OUT/$$.tmp" && mv "$OUT/$$.tmp" "$OUT/$$.port"
i=0; while [ ! -e "$OUT/release" ] && [ "$i" -lt 1200 ]; do sleep 0.1; i=$((i+1)); done"#;

/// One simulated node: a lock dir, a port window and the agents started on it.
struct Node {
    _tmp: tempfile::TempDir,
    lock_dir: PathBuf,
    out: PathBuf,
    start: u16,
    end: u16,
    children: Vec<Child>,
}

impl Node {
    fn new(ports: u16) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let lock_dir = tmp.path().join("locks");
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).expect("out dir");
        let (start, end) = free_port_range(ports);
        Node {
            _tmp: tmp,
            lock_dir,
            out,
            start,
            end,
            children: Vec::new(),
        }
    }

    fn range(&self) -> String {
        format!("{}-{}", self.start, self.end)
    }

    /// `amlx-agent exec --debug --ranks all` on this node, no rank variables, then `sh -c step`.
    /// Direct mode on loopback: these tests are about reservations, not the relay.
    fn exec(&self, extra: &[&str], step: &str) -> Command {
        let mut cmd = agent();
        cmd.args(["exec", "--debug", "--ranks", "all", "--mode", "direct"])
            .args(["--node-ip", "127.0.0.1", "--lock-dir"])
            .arg(&self.lock_dir)
            .args(["--port-range", &self.range()])
            .args(extra)
            .args(["--", "sh", "-c", step])
            .env("OUT", &self.out);
        cmd
    }

    /// Starts a step that holds its reservation until [`Node::release`]; returns its pid
    /// (the agent's pid is the step's: replace mode execs in place).
    fn start_holder(&mut self) -> u32 {
        let n = self.children.len();
        let stderr = File::create(self.out.join(format!("agent-{n}.stderr"))).expect("stderr file");
        let child = self
            .exec(&[], HOLDING_STEP)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn amlx-agent");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// The port the step with `pid` was given, once it has written it.
    fn port_of(&self, pid: u32) -> u16 {
        let path = self.out.join(format!("{pid}.port"));
        let text = wait_for(&format!("{}", path.display()), STARTUP, || {
            std::fs::read_to_string(&path).ok()
        });
        text.trim().parse().unwrap_or_else(|_| {
            panic!(
                "step {pid} got no debug port ({text:?}); agent stderr:\n{}",
                self.stderrs()
            )
        })
    }

    fn stderrs(&self) -> String {
        (0..self.children.len())
            .filter_map(|n| {
                std::fs::read_to_string(self.out.join(format!("agent-{n}.stderr"))).ok()
            })
            .collect()
    }

    /// `ports list --json` for this node, parsed (it must be one JSON document).
    fn list(&self) -> Value {
        let out = output_within(
            agent()
                .args(["ports", "list", "--json", "--lock-dir"])
                .arg(&self.lock_dir),
            SHORT_RUN,
        );
        assert!(
            out.status.success(),
            "ports list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("ports list --json prints one JSON document")
    }

    /// `ports list --json` once none of `ports` is live, waiting at most [`EXIT`]. The
    /// keeper lets a step's lock go when it sees the step's pidfd close, which on a loaded
    /// machine can come a scheduling slice after the test has reaped the step; a lock
    /// still held after [`EXIT`] outlived its step.
    fn list_once_let_go(&self, ports: &BTreeSet<u16>) -> Value {
        wait_for(
            &format!("the locks of {ports:?} to be let go (locks outliving their steps)"),
            EXIT,
            || {
                let list = self.list();
                ports_in(&list, "live").is_disjoint(ports).then_some(list)
            },
        )
    }

    fn release(&self) {
        File::create(self.out.join("release")).expect("release file");
    }

    /// Waits (bounded) for every started agent and returns whether each exited with 0.
    fn wait_all(&mut self) -> Vec<bool> {
        let children = std::mem::take(&mut self.children);
        children
            .into_iter()
            .map(|child| reap(child).success())
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A failing test must not leave holders behind.
        self.release();
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for `child` to exit within [`EXIT`].
fn reap(mut child: Child) -> std::process::ExitStatus {
    wait_for("a step to exit", EXIT, || {
        child.try_wait().expect("try_wait")
    })
}

/// The ports in `list[key]` (`"live"` or `"stale"`).
fn ports_in(list: &Value, key: &str) -> BTreeSet<u16> {
    list[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not an array in {list}"))
        .iter()
        .map(|e| {
            e["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .expect("port")
        })
        .collect()
}

#[test]
fn sixty_four_processes_started_at_once_get_distinct_ports() {
    const PROCS: usize = 64;
    let mut node = Node::new(PROCS as u16);
    let pids: Vec<u32> = (0..PROCS).map(|_| node.start_holder()).collect();
    let ports: Vec<u16> = pids.iter().map(|pid| node.port_of(*pid)).collect();

    let distinct: BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), PROCS, "ports handed out twice: {ports:?}");
    assert!(
        distinct.iter().all(|p| (node.start..=node.end).contains(p)),
        "{ports:?}"
    );

    let list = node.list();
    assert_eq!(ports_in(&list, "live"), distinct, "{list:#}");
    for entry in list["live"].as_array().expect("live") {
        let pid = entry["pid"].as_u64().expect("pid") as u32;
        let port = entry["port"].as_u64().expect("port") as u16;
        let i = pids
            .iter()
            .position(|p| *p == pid)
            .expect("the holder is one of ours");
        assert_eq!(ports[i], port, "record of {pid}");
        assert_eq!(entry["holder_running"], true, "{entry}");
    }

    node.release();
    assert!(
        node.wait_all().iter().all(|ok| *ok),
        "a step failed:\n{}",
        node.stderrs()
    );
    let list = node.list_once_let_go(&distinct);
    assert_eq!(ports_in(&list, "stale"), distinct);
}

#[test]
fn kill_9_of_a_holder_frees_its_port_for_the_next_process() {
    let mut node = Node::new(4);
    let first = node.start_holder();
    let first_port = node.port_of(first);
    let second = node.start_holder();
    assert_ne!(node.port_of(second), first_port);

    // The step (same pid as the agent, which exec'd into it) holds the lock: kill it.
    let mut victim = node.children.remove(0);
    victim.kill().expect("kill -9 the first step");
    reap(victim);
    wait_for("the killed step's lock to be free", EXIT, || {
        ports_in(&node.list(), "stale")
            .contains(&first_port)
            .then_some(())
    });

    let third = node.start_holder();
    assert_eq!(
        node.port_of(third),
        first_port,
        "the freed port is reserved again"
    );
    assert_eq!(ports_in(&node.list(), "live").len(), 2);
}

/// Replace mode: a child the step starts and leaves running does not keep the step's
/// port. Before, the lock was the step's own descriptor, kept across execve and so
/// inherited by every child the step forked: `ports list` showed the port live ("held by
/// a child that inherited the lock") until that child exited. The session's keeper now
/// holds it, for exactly the step's life.
#[test]
fn a_child_the_step_leaves_running_does_not_keep_its_port() {
    let node = Node::new(2);
    let step = r#"sleep 120 </dev/null >/dev/null 2>&1 & echo $! > "$OUT/left"
echo "$AMLX_DEBUG_PORT" > "$OUT/port""#;
    let out = output_within(&mut node.exec(&[], step), SHORT_RUN);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |name: &str| {
        std::fs::read_to_string(node.out.join(name))
            .unwrap_or_default()
            .trim()
            .parse::<u32>()
            .unwrap_or_else(|_| panic!("the step wrote no {name}"))
    };
    let left = read("left");
    let _end_it = KillOnDrop(left);
    let port = u16::try_from(read("port")).expect("a port");
    wait_for("the step's port to be free", EXIT, || {
        (!ports_in(&node.list(), "live").contains(&port)).then_some(())
    });
    assert!(
        std::path::Path::new(&format!("/proc/{left}")).exists(),
        "the child the step left running still runs"
    );
}

/// Kills a process when dropped (a test that fails leaves nothing behind).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[test]
fn a_port_an_unrelated_program_listens_on_is_skipped() {
    let node = Node::new(3);
    let _unrelated = TcpListener::bind(("127.0.0.1", node.start)).expect("bind the first port");
    // (extra args, expected offset from the range start)
    let cases: &[(&[&str], u16)] = &[(&[], 1), (&["--rank", "0"], 1), (&["--rank", "2"], 2)];
    for (extra, offset) in cases {
        let out = output_within(
            &mut node.exec(extra, r#"echo "$AMLX_DEBUG_PORT""#),
            SHORT_RUN,
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout.trim(),
            (node.start + offset).to_string(),
            "{extra:?}"
        );
    }
    let all: BTreeSet<u16> = (node.start..=node.end).collect();
    let list = node.list_once_let_go(&all);
    assert!(
        ports_in(&list, "stale").contains(&node.start),
        "probed lock released: {list:#}"
    );
}

#[test]
fn exhausted_range_still_runs_the_step_and_says_why() {
    let mut node = Node::new(2);
    let _unrelated = TcpListener::bind(("127.0.0.1", node.end)).expect("bind the last port");
    let holder = node.start_holder();
    assert_eq!(node.port_of(holder), node.start);

    let step = r#"echo "ran target=$AMLX_DEBUG_TARGET port=$AMLX_DEBUG_PORT""#;
    let out = output_within(&mut node.exec(&[], step), SHORT_RUN);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the step must run: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ran target=false port="
    );
    for needle in [
        node.range(),
        node.lock_dir.display().to_string(),
        format!("pid {holder}"),
        "1 busy with unrelated programs".to_owned(),
        "--port-range".to_owned(),
    ] {
        assert!(
            stderr.contains(&needle),
            "stderr lacks {needle:?}:\n{stderr}"
        );
    }
}

#[test]
fn ports_list_table_and_missing_directory() {
    let mut node = Node::new(2);
    let missing = output_within(
        agent()
            .args(["ports", "list", "--lock-dir"])
            .arg(&node.lock_dir),
        SHORT_RUN,
    );
    assert!(missing.status.success());
    let text = String::from_utf8_lossy(&missing.stdout);
    assert!(text.contains("nothing is reserved"), "{text}");
    assert!(
        !node.lock_dir.exists(),
        "ports list must not create the lock dir"
    );
    // Something else under that name is named as such, not called missing.
    let file = node.out.join("not-a-dir");
    File::create(&file).expect("a regular file");
    let listed = output_within(
        agent().args(["ports", "list", "--lock-dir"]).arg(&file),
        SHORT_RUN,
    );
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains("is a regular file"), "{text}");

    let holder = node.start_holder();
    let port = node.port_of(holder);
    let table = output_within(
        agent()
            .args(["ports", "list", "--lock-dir"])
            .arg(&node.lock_dir),
        SHORT_RUN,
    );
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("1 live reservation"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with(&port.to_string()))
        .unwrap_or_else(|| panic!("no row for {port}:\n{text}"));
    assert!(
        row.contains(&holder.to_string()) && row.contains("sh …"),
        "{row}"
    );
}

/// Files anyone may plant in a shared lock directory: a FIFO, a lock file another user
/// left closed to others (root's 0600, as a kill between create and chmod did), and a
/// live record saying year 10000 with terminal escapes in its command. `ports list`
/// neither hangs (the FIFO), panics (the date), nor passes the escapes on; a reserver of
/// another user skips the two bad ports (it had refused the whole directory) and the
/// step gets the third.
#[test]
fn hostile_files_in_the_lock_directory_cost_only_their_own_ports() {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::new(3);
    let top = node.lock_dir.parent().expect("temp dir");
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::create_dir(&node.lock_dir).expect("lock dir");
    std::fs::set_permissions(&node.lock_dir, std::fs::Permissions::from_mode(0o1777))
        .expect("chmod 1777");
    let lock = |port: u16| node.lock_dir.join(format!("{port}.lock"));
    nix::unistd::mkfifo(
        &lock(node.start),
        nix::sys::stat::Mode::from_bits_truncate(0o666),
    )
    .expect("mkfifo");
    std::fs::write(lock(node.start + 1), b"").expect("root's file");
    std::fs::set_permissions(lock(node.start + 1), std::fs::Permissions::from_mode(0o600))
        .expect("chmod 600");
    // A live record (we hold its lock) that no formatter can write as a date.
    let forged = lock(node.start + 2);
    std::fs::write(
        &forged,
        br#"{"pid":1,"rank":0,"command":"\u001b[2J\nforged row\r","since":253402300800}"#,
    )
    .expect("forged record");
    let held = File::open(&forged).expect("open forged");
    held.try_lock().expect("hold the forged lock");

    let out = output_within(
        agent()
            .args(["ports", "list", "--lock-dir"])
            .arg(&node.lock_dir),
        SHORT_RUN,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}{errors}");
    assert!(text.contains("@253402300800"), "{text}");
    assert!(
        !text.contains('\u{1b}') && !text.contains("\nforged row"),
        "{text}"
    );
    assert!(text.contains("a FIFO"), "{text}");
    drop(held);

    // Another user: the FIFO and root's closed file cost their ports, not the directory.
    let run = output_within(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_amlx-agent"))
            .args(["exec", "--debug", "--ranks", "all", "--mode", "direct"])
            .args(["--node-ip", "127.0.0.1", "--lock-dir"])
            .arg(&node.lock_dir)
            .args(["--port-range", &node.range()])
            .args(["--", "sh", "-c", "echo \"port=$AMLX_DEBUG_PORT\""]),
        SHORT_RUN,
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("port={}", node.start + 2)),
        "{stdout}{stderr}"
    );
}

/// A user who may not listen on privileged ports with a range that starts among them
/// (below `net.ipv4.ip_unprivileged_port_start`, 1024 unless changed): the range goes on
/// to the first unprivileged port and up, and no lock file is left for a port this user
/// cannot use. The first privileged port ended the search with "Permission denied (os
/// error 13): Permission denied (os error 13)", and its lock file stayed. Run as root
/// (setpriv drops to nobody), as the suite is.
#[test]
fn a_range_across_1024_skips_the_privileged_ports_for_an_ordinary_user() {
    let first_free: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(1024);
    // Four privileged ports, then room (a container that sets 0 has none to skip).
    let start = first_free.max(5) - 4;
    let range = format!("{start}-{}", start + 80);
    let dir = tempfile::tempdir().expect("tempdir");
    let locks = dir.path().join("ports");
    std::fs::create_dir(&locks).expect("mkdir");
    std::fs::set_permissions(&locks, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
        .expect("chmod");
    let run = output_within(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_amlx-agent"))
            .args([
                "exec",
                "--debug",
                "--mode",
                "direct",
                "--node-ip",
                "127.0.0.1",
            ])
            .args(["--inject", "none", "--port-range", &range, "--lock-dir"])
            .arg(&locks)
            .args(["--", "sh", "-c", "echo \"port=$AMLX_DEBUG_PORT\""]),
        SHORT_RUN,
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}{stderr}");
    let port: u16 = stdout
        .trim()
        .strip_prefix("port=")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no debug port: {stdout}{stderr}"));
    assert!(
        (first_free.max(start)..=start + 80).contains(&port),
        "{stdout}{stderr}"
    );
    let below: Vec<String> = std::fs::read_dir(&locks)
        .expect("read")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name.strip_suffix(".lock")
                .and_then(|p| p.parse::<u16>().ok())
                .is_some_and(|p| p < 1024)
        })
        .collect();
    assert!(
        below.is_empty(),
        "lock files for privileged ports: {below:?}"
    );
}
