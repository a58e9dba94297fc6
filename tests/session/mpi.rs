//! Debug sessions under a real `mpiexec -n 4` (the `mpich` wheel): `--ranks 0` stops only
//! rank 0 while ranks 1-3 run to their end; `--ranks all` gives four distinct ports, the
//! compound `launch-json` writes for them, and four debuggers attached at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use super::harness::{
    Attach, BREAKPOINT_LINE, DapClient, DeveloperSide, ListeningDeveloper, Outcome, VARIABLE,
    port_range, step_py,
};
use crate::relay::harness::Lines;
use crate::util;

/// Processes `mpiexec` starts.
const RANKS: u16 = 4;
/// Longest a whole MPI job may take: four debuggees and four adapters on a busy box.
const JOB_DEADLINE: Duration = Duration::from_secs(180);
/// How long the step's processes may outlive `mpiexec` (sidecars end within a second).
const LEFTOVER_GRACE: Duration = Duration::from_secs(10);
/// The developer's side of the relay listens here, beside the node's 127.0.0.1: VS Code
/// and the sidecars then use the same port numbers on one machine, as on two.
const LAPTOP_HOST: &str = "127.0.0.2";

/// Names this job's processes in their environment: they cannot be found by process
/// group (Hydra's proxy and every rank start their own session) nor by parentage (a
/// sidecar outliving its step is reparented).
const JOB_MARKER: &str = "SESSION_TEST_JOB";

/// `mpiexec -n 4 amlx-agent exec ...`; every process of the job is killed on drop.
pub(super) struct Job {
    child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
    /// `JOB_MARKER=value` in the environment of mpiexec and all it starts.
    marker: String,
}

impl Job {
    /// Runs the unchanged step on four ranks with `exec_args`, the relay settings on
    /// mpiexec's environment (Hydra hands it to every rank).
    pub fn start(developer: &DeveloperSide, locks: &Path, exec_args: &[&str]) -> Job {
        Job::start_step(developer, locks, exec_args, &step_py(), &[])
    }

    /// [`Job::start`] for another step script, with extra variables for every rank.
    pub fn start_step(
        developer: &DeveloperSide,
        locks: &Path,
        exec_args: &[&str],
        step: &Path,
        env: &[(&str, &str)],
    ) -> Job {
        let agent = developer.agent(locks);
        let mut cmd = util::mpiexec_command();
        for (key, value) in agent.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        let id = format!("{}-{}", std::process::id(), rand::random::<u64>());
        cmd.env(JOB_MARKER, &id)
            .arg("-n")
            .arg(RANKS.to_string())
            .arg(util::agent_bin())
            .arg("exec")
            .args(exec_args)
            .envs(env.iter().copied())
            .args(["--", "python3"])
            .arg(step)
            .current_dir(step_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn mpiexec");
        let stdout = Lines::from_reader(child.stdout.take().expect("piped stdout"));
        let stderr = Lines::from_reader(child.stderr.take().expect("piped stderr"));
        Job {
            child,
            stdout,
            stderr,
            marker: format!("{JOB_MARKER}={id}"),
        }
    }

    /// Waits (bounded) for a stdout line containing `needle`.
    pub(super) fn wait_stdout(&self, needle: &str) -> String {
        self.stdout
            .wait_for_from(0, needle, JOB_DEADLINE)
            .map(|(_, line)| line)
            .unwrap_or_else(|| panic!("no {needle:?} from the job:\n{}", self.dump()))
    }

    /// Waits (bounded) for mpiexec, then for every process of the job to be gone.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let end = Instant::now() + JOB_DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait mpiexec") {
                break status;
            }
            assert!(
                Instant::now() < end,
                "mpiexec still runs after {JOB_DEADLINE:?}:\n{}",
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        util::wait_for(
            "the job's processes to end with mpiexec",
            LEFTOVER_GRACE,
            || processes_with(&self.marker).is_empty().then_some(()),
        );
        status
    }

    pub fn dump(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.all().join("\n"),
            self.stderr.all().join("\n")
        )
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Bounded: a proxy may still be starting ranks while its siblings die.
        let end = Instant::now() + LEFTOVER_GRACE;
        loop {
            let left = processes_with(&self.marker);
            if left.is_empty() || Instant::now() >= end {
                break;
            }
            for pid in left {
                let _ = kill(pid, Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Live processes whose environment holds the entry `marker` (zombies have none).
fn processes_with(marker: &str) -> Vec<Pid> {
    util::processes_with_env(marker)
        .into_iter()
        .filter_map(|pid| Some(Pid::from_raw(i32::try_from(pid).ok()?)))
        .collect()
}

fn step_dir() -> PathBuf {
    step_py()
        .parent()
        .expect("step.py is in a directory")
        .to_owned()
}

/// The port each rank's startup line names: "rank R/4 ... debug port P".
fn announced_ports(stderr: &[String]) -> BTreeMap<u32, u16> {
    let mut ports = BTreeMap::new();
    for line in stderr.iter().filter(|l| l.contains("amlx-agent: rank ")) {
        let number_after = |marker: &str| {
            line.split(marker)
                .nth(1)
                .and_then(|rest| {
                    rest.split(|c: char| !c.is_ascii_digit())
                        .next()
                        .and_then(|n| n.parse::<u32>().ok())
                })
                .unwrap_or_else(|| panic!("no number after {marker:?} in {line:?}"))
        };
        let rank = number_after("amlx-agent: rank ");
        let port = u16::try_from(number_after("debug port ")).expect("a port number");
        assert!(
            line.contains(&format!("rank {rank}/{RANKS} ")),
            "world size missing: {line}"
        );
        assert!(ports.insert(rank, port).is_none(), "rank {rank} twice");
    }
    ports
}

fn assert_hit(outcome: &Outcome, rank: usize, job: &Job) {
    assert!(
        outcome.ok,
        "rank {rank}: the DAP session failed: {outcome:?}\n{}",
        job.dump()
    );
    assert_eq!(
        outcome.line,
        Some(BREAKPOINT_LINE),
        "rank {rank} stopped elsewhere"
    );
    assert_eq!(
        outcome.value.as_deref(),
        Some(VARIABLE.1),
        "rank {rank} read the wrong value"
    );
}

#[test]
fn ranks_0_stops_only_rank_0_while_ranks_1_to_3_run_to_their_end() {
    let locks = tempfile::tempdir().expect("tempdir");
    let release = locks.path().join("release-rank-0");
    let ListeningDeveloper {
        side: developer,
        client,
        debug_port: base,
        range,
    } = ListeningDeveloper::start("mpi-rank0", RANKS, |port| {
        Attach::listen(port).hold_until(&release)
    });

    let mut job = Job::start(
        &developer,
        locks.path(),
        &["--debug", "--ranks", "0", "--port-range", &range],
    );
    // Rank 0 is held at the breakpoint until `release` exists: ranks 1-3 must end first.
    for rank in 1..RANKS {
        job.wait_stdout(&format!("step.py rank {rank} done total 6"));
    }
    assert!(
        !job.stdout.all().iter().any(|l| l.contains("rank 0 done")),
        "rank 0 ran past its breakpoint:\n{}",
        job.dump()
    );
    std::fs::write(&release, b"").expect("create the release file");
    let outcome = &client.finish(1)[0];
    assert_hit(outcome, 0, &job);
    let status = job.wait_exit();
    assert!(
        status.success(),
        "mpiexec exited {status:?}:\n{}",
        job.dump()
    );
    job.wait_stdout("step.py rank 0 done total 6");

    let stderr = job.stderr.all();
    assert_eq!(
        announced_ports(&stderr),
        BTreeMap::from([(0, base)]),
        "only rank 0 is a target, on the range's first port:\n{}",
        job.dump()
    );
    assert!(
        stderr.iter().any(|l| l.contains("debug session attached")),
        "{}",
        job.dump()
    );
}

/// `launch-json --ranks 0-3 --port-base BASE` for VS Code listening on [`LAPTOP_HOST`],
/// with the workspace at the step's directory (as VS Code substitutes it).
fn launch_configs(dir: &Path, base: u16) -> Vec<Value> {
    let file = dir.join("launch.json");
    let out = util::output_bounded(
        util::agent()
            .args(["launch-json", "--ranks", "0-3", "--port-base"])
            .arg(base.to_string())
            .args(["--host", LAPTOP_HOST, "--output"])
            .arg(&file),
    );
    assert!(
        out.status.success(),
        "launch-json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).expect("launch-json wrote the file");
    // Its only comments are whole `//` lines of its own.
    let plain: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let workspace = step_dir().to_string_lossy().into_owned();
    let plain = plain.replace("${workspaceFolder}", &workspace);
    let doc: Value = serde_json::from_str(&plain).unwrap_or_else(|e| panic!("{e}:\n{text}"));
    let configs = doc["configurations"].as_array().expect("configurations");
    let names: Vec<Value> = configs.iter().map(|c| c["name"].clone()).collect();
    let ports: Vec<u64> = configs
        .iter()
        .map(|c| c["listen"]["port"].as_u64().expect("a listen port"))
        .collect();
    let expected: Vec<u64> = (0..u64::from(RANKS)).map(|r| u64::from(base) + r).collect();
    assert_eq!(ports, expected, "{text}");
    assert_eq!(
        doc["compounds"][0]["configurations"],
        Value::Array(names),
        "{text}"
    );
    configs.clone()
}

#[test]
fn ranks_all_attaches_four_debuggers_through_the_launch_json_compound() {
    let locks = tempfile::tempdir().expect("tempdir");
    let mut developer = DeveloperSide::relay_only("mpi-all");
    let (base, _, range) = port_range(RANKS);
    let configs = launch_configs(locks.path(), base);
    let sessions: Vec<Attach> = configs
        .iter()
        .map(|config| Attach {
            attach: config.clone(),
            line: BREAKPOINT_LINE,
            hold_until_file: None,
            post_mortem: false,
            terminate: false,
        })
        .collect();
    let client = DapClient::start(&sessions);
    let ports: Vec<u16> = (0..RANKS).map(|r| base + r).collect();
    for port in &ports {
        client.wait_listening(*port);
    }
    // `relay listen --forward P=127.0.0.2:P` for each rank's port.
    let forwards: Vec<String> = ports
        .iter()
        .flat_map(|p| ["--forward".to_owned(), format!("{p}={LAPTOP_HOST}:{p}")])
        .collect();
    let forwards: Vec<&str> = forwards.iter().map(String::as_str).collect();
    developer.listen = Some(
        developer
            .relay
            .listen_online(&developer.connection_string(), &forwards),
    );

    let mut job = Job::start(
        &developer,
        locks.path(),
        &["--debug", "--ranks", "all", "--port-range", &range],
    );
    let outcomes = client.finish(usize::from(RANKS));
    for (rank, outcome) in outcomes.iter().enumerate() {
        assert_hit(outcome, rank, &job);
    }
    let status = job.wait_exit();
    assert!(
        status.success(),
        "mpiexec exited {status:?}:\n{}",
        job.dump()
    );
    for rank in 0..RANKS {
        job.wait_stdout(&format!("step.py rank {rank} done total 6"));
    }
    let expected: BTreeMap<u32, u16> = ports
        .iter()
        .zip(0..)
        .map(|(port, rank)| (rank, *port))
        .collect();
    assert_eq!(
        announced_ports(&job.stderr.all()),
        expected,
        "each rank announces its own port:\n{}",
        job.dump()
    );
}

/// Listen mode with every rank a target on one Hybrid Connection: the relay spreads
/// senders across the four sidecars at random, yet `relay connect --port-name P` always
/// reaches the rank that owns P, 20 times of 20 for each rank: after each connection
/// the one new "a developer reached rank R (port P)" line in the job's log (written by
/// the sidecar that took the connection, after the preamble named its port) is that
/// rank's.
#[test]
fn listen_mode_relay_connect_reaches_the_rank_that_owns_the_port() {
    const ROUNDS: usize = 20;
    let locks = tempfile::tempdir().expect("tempdir");
    let developer = DeveloperSide::relay_only("routing");
    let (_, _, range) = port_range(RANKS);
    let job = Job::start(
        &developer,
        locks.path(),
        &[
            "--debug",
            "--ranks",
            "all",
            "--mode",
            "listen",
            "--wait-for-client",
            "--attach-timeout",
            "10m",
            "--port-range",
            &range,
        ],
    );
    let ports = util::wait_for("all four ranks to announce", JOB_DEADLINE, || {
        let ports = announced_ports(&job.stderr.all());
        (ports.len() == usize::from(RANKS)).then_some(ports)
    });
    util::wait_for("every rank's debugpy to listen", JOB_DEADLINE, || {
        ports
            .values()
            .all(|port| super::harness::is_listening(*port))
            .then_some(())
    });
    for (rank, port) in &ports {
        let (_connect, bound) = developer
            .relay
            .connect(&developer.connection_string(), &port.to_string());
        for round in 0..ROUNDS {
            let before = job.stderr.len();
            let stream = std::net::TcpStream::connect(bound).expect("relay connect");
            let reached = util::wait_for("the sidecar's log line", JOB_DEADLINE, || {
                let lines: Vec<String> = job.stderr.all()[before..]
                    .iter()
                    .filter(|line| line.contains("a developer reached rank"))
                    .cloned()
                    .collect();
                (!lines.is_empty()).then_some(lines)
            });
            let want = format!("a developer reached rank {rank} (port {port})");
            assert!(
                reached.len() == 1 && reached[0].ends_with(&want),
                "rank {rank}, round {round}: port {port} reached {reached:?}\n{}",
                job.dump()
            );
            drop(stream);
        }
    }
}
