//! Integration tests: `amlx-agent run` on an ssh target — a real OpenSSH `sshd` (Debian's
//! openssh-server) in a network namespace the test creates, key authentication only,
//! reachable from here over a veth pair; the host has no route to this machine's
//! loopback, where the run's relay listens, so the step reaches it only through the
//! SSH reverse forward. The agent is copied once, the step's breakpoint hits in VS Code
//! (the real DAP client), and Ctrl-C leaves nothing running on the host.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::demo::{MARKER_VAR, new_marker, position};
use crate::run::{Running, STEP_EXIT, STEP_LINE, launch_configs, project, run_in, start_vscode};
use crate::session::harness::SESSION_DEADLINE;
use crate::util;

/// Longest wait for sshd to accept connections.
const SSHD_DEADLINE: Duration = Duration::from_secs(30);
/// Longest Ctrl-C may take to stop the run and the step on the host (the remote stop
/// grace is 5 s).
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// The `path` of `tool`, or a failure naming the Debian package (tests/run.sh installs it).
fn require(tool: &str, package: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(tool))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("{tool} is not installed: apt-get install {package} (tests/run.sh does)")
        })
}

fn sh(program: &Path, args: &[&str]) {
    let out = util::output_bounded(Command::new(program).args(args));
    assert!(
        out.status.success(),
        "{} {} failed: {}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A remote Linux host: sshd in its own network namespace, key authentication only.
struct SshHost {
    dir: tempfile::TempDir,
    namespace: String,
    address: Ipv4Addr,
    sshd: Child,
    ip: PathBuf,
}

impl SshHost {
    fn start() -> SshHost {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let ip = require("ip", "iproute2");
        let sshd_bin = require("sshd", "openssh-server");
        let keygen = require("ssh-keygen", "openssh-client");
        let pid = std::process::id();
        let namespace = format!("amlx-ssh-{pid}-{n}");
        // Interface names are at most 15 bytes.
        let (outside, inside) = (
            format!("as{}{n}", pid % 100_000),
            format!("bs{}{n}", pid % 100_000),
        );
        let net = (200 + pid % 50, n % 250);
        let host_side = format!("10.{}.{}.1/30", net.0, net.1);
        let address = Ipv4Addr::new(
            10,
            u8::try_from(net.0).expect("octet"),
            u8::try_from(net.1).expect("octet"),
            2,
        );
        let ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", namespace.as_str(), "ip"];
            all.extend_from_slice(args);
            sh(&ip, &all);
        };
        sh(&ip, &["netns", "add", &namespace]);
        sh(
            &ip,
            &[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ],
        );
        sh(&ip, &["link", "set", &inside, "netns", &namespace]);
        sh(&ip, &["addr", "add", &host_side, "dev", &outside]);
        sh(&ip, &["link", "set", &outside, "up"]);
        ns(&["addr", "add", &format!("{address}/30"), "dev", &inside]);
        ns(&["link", "set", &inside, "up"]);
        ns(&["link", "set", "lo", "up"]);

        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for key in ["host_key", "client_key"] {
            sh(
                &keygen,
                &[
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-f",
                    &d.join(key).to_string_lossy(),
                ],
            );
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))
            .expect("authorized_keys");
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).expect("host key");
        std::fs::write(d.join("known_hosts"), format!("{address} {host_pub}"))
            .expect("known_hosts");
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port 22\nListenAddress {address}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n\
                 AllowTcpForwarding yes\nGatewayPorts no\n",
                d = d.display()
            ),
        )
        .expect("sshd_config");
        std::fs::write(
            d.join("ssh_config"),
            format!(
                "Host {address}\n  User root\n  IdentityFile {d}/client_key\n  IdentitiesOnly yes\n  \
                 UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking yes\n  \
                 PasswordAuthentication no\n",
                d = d.display()
            ),
        )
        .expect("ssh_config");
        // sshd's privilege separation directory.
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let sshd = Command::new(&ip)
            .args(["netns", "exec", &namespace])
            .arg(&sshd_bin)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("sshd.log")).expect("sshd.log"))
            .spawn()
            .expect("start sshd");
        let host = SshHost {
            dir,
            namespace,
            address,
            sshd,
            ip,
        };
        util::wait_for("sshd to accept connections", SSHD_DEADLINE, || {
            TcpStream::connect_timeout(&SocketAddr::from((address, 22)), Duration::from_millis(500))
                .ok()
        });
        host
    }

    /// `.amlx/targets.toml` text for this host as target `name`, with `marker` in the
    /// step's environment and this machine's Python (debugpy, mpiexec) first on PATH.
    fn target(&self, name: &str, marker: &str) -> String {
        let d = self.dir.path();
        let path = format!(
            "{}:/usr/local/bin:/usr/bin:/bin",
            util::python_scripts_dir().display()
        );
        format!(
            "[targets.{name}]\nkind = \"ssh\"\nhost = \"{}\"\nssh_config = \"{}/ssh_config\"\n\
             remote_dir = \"{}/remote\"\nenv = {{ PATH = \"{path}\", {MARKER_VAR} = \"{marker}\" }}\n",
            self.address,
            d.display(),
            d.display()
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for SshHost {
    fn drop(&mut self) {
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
        // Deleting the namespace deletes its end of the veth pair, and with it ours.
        let _ = Command::new(&self.ip)
            .args(["netns", "del", &self.namespace])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A project whose targets file names `host` as target `vm`.
fn project_on(host: &SshHost, marker: &str) -> (tempfile::TempDir, PathBuf) {
    let (dir, project) = project();
    std::fs::create_dir(project.join(".amlx")).expect("mkdir .amlx");
    std::fs::write(
        project.join(".amlx/targets.toml"),
        host.target("vm", marker),
    )
    .expect("targets.toml");
    (dir, project)
}

#[test]
fn run_over_ssh_copies_the_agent_once_and_the_breakpoint_hits_through_the_reverse_forward() {
    let host = SshHost::start();
    let state = tempfile::tempdir().expect("tempdir");
    let marker = new_marker();
    let (_dir, project) = project_on(&host, &marker);
    let vscode_port = util::free_port_range(1).0;
    let run = Running::start(
        run_in(&project, state.path(), &marker).args([
            "-t",
            "vm",
            "--attach-timeout",
            "60s",
            "--vscode-port",
            &vscode_port.to_string(),
            "--",
            "python3",
            "step.py",
        ]),
        marker.clone(),
    );
    run.wait_instructions();
    let stdout = run.output.stdout();
    position(&stdout, "amlx-agent run: copied the agent to");
    let (configs, _) = launch_configs(&project);
    let remote_root = configs[0]["pathMappings"][0]["remoteRoot"]
        .as_str()
        .expect("remoteRoot")
        .to_owned();
    assert!(
        remote_root.starts_with(&format!("{}/remote/projects/", host.dir.path().display())),
        "{remote_root}"
    );
    let outcome = &start_vscode(&configs, &project).finish(1)[0];
    assert!(
        outcome.ok,
        "{outcome:?}\n{}\nsshd:\n{}",
        run.all(),
        host.log()
    );
    assert_eq!(outcome.line, Some(STEP_LINE));
    assert_eq!(outcome.value.as_deref(), Some("7"));
    let (code, all) = run.finish();
    assert_eq!(code, STEP_EXIT, "run returns the step's exit code\n{all}");
    position(&all, "user step rank 0 value 7");
    position(
        &all,
        "amlx-agent run: VS Code attached to rank 0; the step exited 3",
    );
    // The step's agent reached the relay at the forward's end on the host.
    position(&all, "mode connect");
    assert!(!all.contains("SharedAccessKey"), "{all}");
    assert!(
        Path::new(&remote_root).join("step.py").is_file(),
        "the project was copied"
    );

    // The step on "vm" again, with `args` before the command (a fresh marker each time).
    let run_on_vm = |args: &[&str]| {
        let marker = new_marker();
        std::fs::write(
            project.join(".amlx/targets.toml"),
            host.target("vm", &marker),
        )
        .expect("targets.toml");
        let mut cmd = run_in(&project, state.path(), &marker);
        cmd.args(["-t", "vm"]).args(args).args([
            "--attach-timeout",
            "1s",
            "--",
            "python3",
            "step.py",
        ]);
        Running::start(&mut cmd, marker).finish()
    };

    // Again, two ranks under the host's mpiexec: nothing to copy for the agent.
    let (code, all) = run_on_vm(&["--ranks-count", "2"]);
    assert_eq!(code, STEP_EXIT, "{all}");
    position(&all, "amlx-agent run: the agent is on");
    assert!(!all.contains("copied the agent"), "copied again:\n{all}");
    position(&all, "user step rank 0 value 7");
    position(&all, "user step rank 1 value 17");

    // A copy cut short (a Ctrl-C during it once left one under the agent's own name, and
    // every later run took it and crashed): it is not taken for the agent, and is copied
    // anew.
    let remote = host.dir.path().join("remote");
    let copied: Vec<PathBuf> = std::fs::read_dir(&remote)
        .expect("the remote folder")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("agent-"))
        })
        .collect();
    let [agent] = copied.as_slice() else {
        panic!("one agent on the host: {copied:?}");
    };
    let full = std::fs::metadata(agent).expect("stat").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(agent)
        .expect("open the agent")
        .set_len(full / 3)
        .expect("truncate");
    let (code, all) = run_on_vm(&[]);
    assert_eq!(code, STEP_EXIT, "{all}");
    position(&all, "amlx-agent run: copied the agent to");
    position(&all, "user step rank 0 value 7");
    assert_eq!(std::fs::metadata(agent).expect("stat").len(), full);
}

#[test]
fn ctrl_c_stops_the_step_on_the_host_and_targets_list_checks_reachability() {
    let host = SshHost::start();
    let state = tempfile::tempdir().expect("tempdir");
    let marker = new_marker();
    let (_dir, project) = project_on(&host, &marker);
    let mut run = Running::start(
        run_in(&project, state.path(), &marker).args([
            "-t",
            "vm",
            "--attach-timeout",
            "10m",
            "--vscode-port",
            &util::free_port_range(1).0.to_string(),
            "--",
            "python3",
            "step.py",
        ]),
        marker.clone(),
    );
    util::wait_for(
        "the remote step to wait for VS Code",
        SESSION_DEADLINE,
        || {
            run.output
                .stdout()
                .contains("is waiting for VS Code")
                .then_some(())
        },
    );
    assert!(
        !crate::demo::processes_with(&marker).is_empty(),
        "the step runs on the host"
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(run.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("Ctrl-C the run");
    let status = util::wait_within(&mut run.child, STOP_DEADLINE);
    assert!(!status.success(), "{}", run.all());
    // Every process on the host carrying the marker (the step, its agent's sidecar) ends.
    let deadline = std::time::Instant::now() + STOP_DEADLINE;
    loop {
        let left = crate::demo::processes_with(&marker);
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left running on the host: {left:?}\n{}",
            run.all()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    position(&run.all(), "stopped before a debugger attached");

    // `targets list`: the host answers; a port nobody listens on is reported.
    let mut targets = host.target("vm", &marker);
    targets.push_str(&format!(
        "\n[targets.down]\nkind = \"ssh\"\nhost = \"{}\"\nport = 2\nssh_config = \"{}/ssh_config\"\n",
        host.address,
        host.dir.path().display()
    ));
    std::fs::write(project.join(".amlx/targets.toml"), targets).expect("targets.toml");
    let out = util::output_bounded(
        util::agent()
            .current_dir(&project)
            .args(["targets", "list"]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    position(&stdout, &format!("vm  ssh  {}", host.address));
    position(&stdout, "reachable: ");
    position(&stdout, &format!("down  ssh  {}:2", host.address));
    position(&stdout, "UNREACHABLE: ");
}

/// A Docker engine inside the ssh host's network namespace, so `--network host`
/// containers share the host's network and its end of the relay's reverse forward,
/// holding the example image copied from the suite's engine; stopped when dropped.
struct HostEngine(Option<crate::containers::engine::Engine>);

/// Longest wait for the image copy into the host's engine.
const IMAGE_COPY_DEADLINE: Duration = Duration::from_secs(180);

impl HostEngine {
    fn start(ssh_host: &SshHost) -> HostEngine {
        use crate::containers::engine::{EXAMPLE_IMAGE, Engine, engine};
        let suite = engine();
        let host_engine = Engine::start_in(Some(&ssh_host.namespace));
        let archive = tempfile::NamedTempFile::new().expect("image archive");
        let archive = archive.path().to_string_lossy().into_owned();
        suite.ok(
            &["save", "-o", &archive, EXAMPLE_IMAGE],
            IMAGE_COPY_DEADLINE,
        );
        host_engine.ok(&["load", "-q", "-i", &archive], IMAGE_COPY_DEADLINE);
        HostEngine(Some(host_engine))
    }

    fn engine(&self) -> &crate::containers::engine::Engine {
        self.0.as_ref().expect("running until dropped")
    }

    /// Names of the containers the host's engine still has.
    fn containers(&self) -> String {
        let out = self
            .engine()
            .ok(&["ps", "-a", "--format", "{{.Names}}"], IMAGE_COPY_DEADLINE);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for HostEngine {
    fn drop(&mut self) {
        if let Some(engine) = self.0.take() {
            engine.stop();
        }
    }
}

#[test]
fn run_over_ssh_with_an_image_runs_the_step_in_docker_on_the_host() {
    use crate::containers::engine::{EXAMPLE_IMAGE, static_binary};
    let host = SshHost::start();
    let engine = HostEngine::start(&host);
    let state = tempfile::tempdir().expect("tempdir");
    let marker = new_marker();
    let (_dir, project) = project();
    std::fs::create_dir(project.join(".amlx")).expect("mkdir .amlx");
    // The host's shell reaches its engine through DOCKER_HOST (the step gets it too).
    let targets = host.target("vm", &marker).replace(
        "env = { ",
        &format!("env = {{ DOCKER_HOST = \"{}\", ", engine.engine().host()),
    );
    std::fs::write(project.join(".amlx/targets.toml"), targets).expect("targets.toml");
    let run = Running::start(
        run_in(&project, state.path(), &marker)
            .args(["-t", "vm", "--image", EXAMPLE_IMAGE, "--agent-binary"])
            .arg(static_binary())
            .args([
                "--attach-timeout",
                "60s",
                "--vscode-port",
                &util::free_port_range(1).0.to_string(),
                "--",
                "python3",
                "step.py",
            ]),
        marker,
    );
    run.wait_instructions();
    let stdout = run.output.stdout();
    position(
        &stdout,
        &format!("of {EXAMPLE_IMAGE} on {} over SSH", host.address),
    );
    let (configs, _) = launch_configs(&project);
    assert_eq!(
        configs[0]["pathMappings"][0]["remoteRoot"],
        "/workspace",
        "{}",
        run.all()
    );
    let outcome = &start_vscode(&configs, &project).finish(1)[0];
    assert!(outcome.ok, "{outcome:?}\n{}", run.all());
    assert_eq!(outcome.line, Some(STEP_LINE));
    assert_eq!(outcome.value.as_deref(), Some("7"));
    let (code, all) = run.finish();
    assert_eq!(code, STEP_EXIT, "{all}");
    position(
        &all,
        "amlx-agent run: VS Code attached to rank 0; the step exited 3",
    );
    assert_eq!(
        engine.containers(),
        "",
        "a container was left on the host\n{all}"
    );
}

/// Every process carrying `marker` (on the host, which shares this machine's process
/// table) ends within [`STOP_DEADLINE`].
fn nothing_left(marker: &str, context: &dyn Fn() -> String) {
    let deadline = std::time::Instant::now() + STOP_DEADLINE;
    loop {
        let left = crate::demo::processes_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left running on the host: {left:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Review regression: a terminal's Ctrl-C reaches the whole foreground process group,
/// the `ssh` client included. It must not kill ssh first (exit 255, the step's own code
/// lost); and a step that leaves a background process holding the connection's output
/// must not keep `run` waiting for it.
#[test]
fn terminal_ctrl_c_and_a_leftover_daemon_keep_the_steps_exit_code_over_ssh() {
    use std::os::unix::process::CommandExt as _;
    let host = SshHost::start();
    let state = tempfile::tempdir().expect("tempdir");

    // Ctrl-C at a terminal: SIGINT to run's whole process group.
    let marker = new_marker();
    let (_dir, project) = project_on(&host, &marker);
    let mut run = Running::start(
        run_in(&project, state.path(), &marker)
            .args([
                "-t",
                "vm",
                "--attach-timeout",
                "10m",
                "--vscode-port",
                &util::free_port_range(1).0.to_string(),
                "--",
                "python3",
                "step.py",
            ])
            .process_group(0),
        marker.clone(),
    );
    util::wait_for(
        "the remote step to wait for VS Code",
        SESSION_DEADLINE,
        || {
            run.output
                .stdout()
                .contains("is waiting for VS Code")
                .then_some(())
        },
    );
    let group = nix::unistd::Pid::from_raw(i32::try_from(run.child.id()).expect("pid"));
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGINT).expect("Ctrl-C");
    let status = util::wait_within(&mut run.child, STOP_DEADLINE);
    // Stopped by Ctrl-C, `run` exits as a shell reports it: 128 + 2 (SIGINT), neither
    // ssh's own 255 nor the remote step's 143 (it was stopped with SIGTERM).
    assert_eq!(status.code(), Some(130), "{}", run.all());
    nothing_left(&marker, &|| run.all());

    // A step that exits 5 and leaves a background process behind.
    let marker = new_marker();
    let (_dir, project) = project_on(&host, &marker);
    let started = std::time::Instant::now();
    let mut run = Running::start(
        run_in(&project, state.path(), &marker).args([
            "-t",
            "vm",
            "--attach-timeout",
            "1s",
            "--",
            "sh",
            "-c",
            "(sleep 600 &); exit 5",
        ]),
        marker.clone(),
    );
    let status = util::wait_within(&mut run.child, SESSION_DEADLINE);
    assert_eq!(status.code(), Some(5), "{}", run.all());
    assert!(
        started.elapsed() < SESSION_DEADLINE,
        "run waited for the step's leftover: {:?}",
        started.elapsed()
    );
    nothing_left(&marker, &|| run.all());
}
