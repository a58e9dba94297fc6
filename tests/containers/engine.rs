//! The real Docker engine the container tests share: a private `dockerd`
//! (tests/containers/dockerd.sh) started once per test run, the images built once in it
//! from the static binary, and containers that are removed whatever the test does.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use crate::util;

/// Longest wait for the private engine to answer (dockerd.sh's own bound plus a margin).
const ENGINE_START_DEADLINE: Duration = Duration::from_secs(150);
/// Longest a `docker` client command may take (build, import, run of a short step).
pub const DOCKER_DEADLINE: Duration = Duration::from_secs(120);
/// Longest wait for a test's own engine to stop (dockerd.sh's 30 s bound and a margin).
const ENGINE_STOP_DEADLINE: Duration = Duration::from_secs(60);
/// Longest wait for the static build: seconds when tests/containers/setup.sh built it,
/// about 5 minutes on 2 cores from a cold cache.
const STATIC_BUILD_DEADLINE: Duration = Duration::from_secs(20 * 60);
/// Longest wait for the Python base root filesystem (debootstrap, when not cached).
const PYTHON_BASE_DEADLINE: Duration = Duration::from_secs(20 * 60);

/// The agent image (FROM scratch), as docker/README.md names it.
pub const AGENT_IMAGE: &str = "amlx-agent";
/// The debootstrapped Python base the example image is built on.
pub const PYTHON_BASE_IMAGE: &str = "amlx-python-base";
/// The example training image (ENTRYPOINT: the agent).
pub const EXAMPLE_IMAGE: &str = "amlx-example";
/// debugpy in the example image: the version of tests/requirements.txt, so the DAP
/// client's adapter (the host's debugpy) and the debuggee agree.
const DEBUGPY: &str = "debugpy==1.8.22";

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository root exists")
}

/// The path of `tool`; fails naming the Debian package when it is not installed.
pub fn require(tool: &str, package: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(tool))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("{tool} is not installed: apt-get install {package} (tests/containers/setup.sh does)")
        })
}

/// Runs a script of this repository (bounded) and returns the last line of its stdout.
fn script_output(script: &str, timeout: Duration) -> String {
    let out = util::output_within(Command::new("bash").arg(repo().join(script)), timeout);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed ({:?}):\n{}{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().last().unwrap_or_default().trim().to_owned()
}

/// The static (musl) release binary, built (or found up to date) once per test run.
pub fn static_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        require("musl-gcc", "musl-tools");
        PathBuf::from(script_output(
            "docker/build-static.sh",
            STATIC_BUILD_DEADLINE,
        ))
    })
}

/// The engine of this test run, once started.
static ENGINE: OnceLock<Engine> = OnceLock::new();

/// The private engine and its images, started and built by the first test that needs it.
pub fn engine() -> &'static Engine {
    ENGINE.get_or_init(|| {
        let engine = Engine::start();
        engine.build_images();
        engine
    })
}

/// A `dockerd` of this test run. Never dropped (it lives in a static): dockerd.sh stops
/// it when this process ends and closes `keeper`'s stdin.
#[derive(Debug)]
pub struct Engine {
    /// The engine's directory: data root, exec root, socket, logs; dockerd.sh removes it.
    dir: PathBuf,
    /// dockerd.sh, waiting for EOF on its stdin (our end of the pipe is `_keeper.stdin`).
    keeper: Child,
    /// `unix://<dir>/docker.sock`.
    host: String,
}

impl Engine {
    fn start() -> Engine {
        Engine::start_in(None)
    }

    /// A private engine, in the network namespace `namespace` (its name under
    /// /run/netns) when given, so `--network host` containers share that namespace.
    pub fn start_in(namespace: Option<&str>) -> Engine {
        require("dockerd", "docker.io");
        require("docker", "docker.io");
        // In /tmp, short: containerd's socket path must fit a sockaddr_un (108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("amlx-dockerd-")
            .tempdir_in("/tmp")
            .expect("engine directory in /tmp")
            .keep();
        // nsenter, not `ip netns exec`: that one also remounts /sys for the namespace,
        // which hides the cgroup hierarchy dockerd needs.
        let mut keeper = match namespace {
            Some(namespace) => {
                let mut cmd = Command::new(require("nsenter", "util-linux"));
                cmd.arg(format!("--net=/run/netns/{namespace}")).arg("bash");
                cmd
            }
            None => Command::new("bash"),
        };
        let mut keeper = keeper
            .arg(repo().join("tests/containers/dockerd.sh"))
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own group: Ctrl-C on the test run reaches it only as EOF, so it cleans up.
            .process_group(0)
            .spawn()
            .expect("bash runs tests/containers/dockerd.sh");
        let stdout = keeper.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(ENGINE_START_DEADLINE).unwrap_or_else(|_| {
            panic!(
                "the test Docker engine did not start within {ENGINE_START_DEADLINE:?}; \
                 its logs: {}/dockerd-*.log",
                dir.display()
            )
        });
        assert!(
            line.starts_with("ready "),
            "the test Docker engine did not start: {line}"
        );
        eprintln!(
            "containers: private dockerd in {} ({})",
            dir.display(),
            line.trim()
        );
        let host = format!("unix://{}", dir.join("docker.sock").display());
        Engine { dir, keeper, host }
    }

    /// The engine's socket address (`unix://…`), for a client elsewhere (a host's shell).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Stops the engine (EOF on dockerd.sh's stdin: it stops dockerd and removes its
    /// directory) and waits for that, bounded; for engines a test starts for itself.
    pub fn stop(mut self) {
        drop(self.keeper.stdin.take());
        let _ = util::wait_within(&mut self.keeper, ENGINE_STOP_DEADLINE);
    }

    /// A `docker` client command for this engine only (its own config directory, the
    /// classic builder: no buildx plugin needed).
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        self.client_env(&mut cmd);
        cmd
    }

    /// Points `cmd` (a `docker` client, or a program that runs one) at this engine.
    pub fn client_env(&self, cmd: &mut Command) {
        cmd.env("DOCKER_HOST", &self.host)
            .env("DOCKER_CONFIG", self.dir.join("client"))
            .env("DOCKER_BUILDKIT", "0")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY");
    }

    /// Runs `docker ARGS` (bounded) and fails with its output when it fails.
    pub fn ok(&self, args: &[&str], timeout: Duration) -> Output {
        let out = util::output_within(self.docker().args(args), timeout);
        assert!(
            out.status.success(),
            "docker {} failed ({:?}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The images of docker/README.md, made the way it says, in this engine.
    fn build_images(&self) {
        let repo = repo();
        static_binary();
        // `docker build -f docker/Dockerfile.prebuilt -t amlx-agent target/docker-context`
        let context = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| repo.join("target"), PathBuf::from)
            .join("docker-context");
        self.ok(
            &[
                "build",
                "-q",
                "-f",
                &repo.join("docker/Dockerfile.prebuilt").to_string_lossy(),
                "-t",
                AGENT_IMAGE,
                &context.to_string_lossy(),
            ],
            DOCKER_DEADLINE,
        );
        // `docker import "$(bash docker/python-base.sh)" amlx-python-base`
        require("debootstrap", "debootstrap");
        let tarball = script_output("docker/python-base.sh", PYTHON_BASE_DEADLINE);
        self.ok(&["import", &tarball, PYTHON_BASE_IMAGE], DOCKER_DEADLINE);
        // `python3 -m pip download ... -d docker/example/wheels debugpy==1.8.22`
        let wheels = repo.join("docker/example/wheels");
        let out = util::output_within(
            Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args([
                    "--no-deps",
                    "--only-binary=:all:",
                    "--python-version",
                    "3.11",
                ])
                .args(["--platform", "manylinux2014_x86_64", "-d"])
                .arg(&wheels)
                .arg(DEBUGPY),
            DOCKER_DEADLINE,
        );
        assert!(
            out.status.success(),
            "pip download {DEBUGPY} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // `docker build --build-arg BASE=amlx-python-base -t amlx-example docker/example`
        self.ok(
            &[
                "build",
                "-q",
                "--build-arg",
                &format!("BASE={PYTHON_BASE_IMAGE}"),
                "-t",
                EXAMPLE_IMAGE,
                &repo.join("docker/example").to_string_lossy(),
            ],
            DOCKER_DEADLINE,
        );
    }
}

/// A uniquely named container, removed (`docker rm -f`) when dropped, even on panic.
#[derive(Debug)]
pub struct Container {
    pub name: String,
}

impl Container {
    /// A fresh name; nothing runs until [`Container::run`] or [`Container::start`].
    pub fn new(what: &str) -> Container {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Container {
            name: format!("amlx-{what}-{}-{n}", std::process::id()),
        }
    }

    /// `docker run --name NAME ARGS` in the foreground: the client's exit code is the
    /// container's (bounded).
    pub fn run(&self, args: &[&str], timeout: Duration) -> Output {
        let mut cmd = engine().docker();
        cmd.args(["run", "--name", &self.name]).args(args);
        util::output_within(&mut cmd, timeout)
    }

    /// `docker run -d --name NAME ARGS`.
    pub fn start(&self, args: &[&str]) {
        self.start_cmd(args, |_| {});
    }

    /// [`Container::start`] with the client command adjusted: environment to pass with
    /// `-e NAME`, which keeps secrets out of argv.
    pub fn start_cmd(&self, args: &[&str], adjust: impl FnOnce(&mut Command)) {
        let mut cmd = engine().docker();
        cmd.args(["run", "-d", "--name", &self.name]).args(args);
        adjust(&mut cmd);
        let out = util::output_within(&mut cmd, DOCKER_DEADLINE);
        assert!(
            out.status.success(),
            "docker run {} failed ({:?}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The container's output so far (stdout and stderr together).
    pub fn logs(&self) -> String {
        let out = engine().ok(&["logs", &self.name], DOCKER_DEADLINE);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Waits (bounded by `timeout`) until the logs contain `needle`; returns the logs.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        util::wait_for(
            &format!("{needle:?} in {}'s log", self.name),
            timeout,
            || {
                let logs = self.logs();
                logs.contains(needle).then_some(logs)
            },
        )
    }

    /// The exit code once the container has stopped; `None` when it still runs after
    /// `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> Option<i32> {
        let mut child = engine()
            .docker()
            .args(["wait", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn docker wait");
        let deadline = std::time::Instant::now() + timeout;
        while matches!(child.try_wait(), Ok(None)) {
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("docker wait output");
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    /// The exit code once the container has stopped; fails with its log after `timeout`.
    pub fn exit_code(&self, timeout: Duration) -> i32 {
        self.wait_exit(timeout).unwrap_or_else(|| {
            panic!(
                "{} did not exit within {timeout:?}; its log:\n{}",
                self.name,
                self.logs()
            )
        })
    }
}

impl Drop for Container {
    /// `docker rm -f`, bounded; never panics (it runs while a failed test unwinds).
    fn drop(&mut self) {
        let Some(engine) = ENGINE.get() else { return };
        let Ok(mut child) = engine
            .docker()
            .args(["rm", "-f", "-v", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            return;
        };
        let deadline = std::time::Instant::now() + DOCKER_DEADLINE;
        while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
