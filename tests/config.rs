//! Integration tests: `config` — errors name file, line and key; secrets never printed.
//!
//! `exec` logs a config error and still runs the step (exit 0), so each test checks both
//! the message on stderr and the step's own output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::util;

/// Longest any one agent run may take here (it never waits for a debugger).
const RUN_DEADLINE: Duration = Duration::from_secs(60);
/// What the step prints, to prove it ran.
const STEP_MARK: &str = "amlx-config-test-step-ran";
/// A fake connection string; its key must never be printed.
const SECRET_KEY: &str = "SUPERSECRETKEY123=";

fn connection_string() -> String {
    format!("Endpoint=sb://127.0.0.1:1/;SharedAccessKeyName=k;SharedAccessKey={SECRET_KEY}")
}

/// Runs `cmd` to completion within `RUN_DEADLINE` (killed and failed otherwise).
fn run_bounded(mut cmd: Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent starts");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(RUN_DEADLINE) {
        Ok(output) => output.expect("agent output"),
        Err(_) => {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits"));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("agent still running after {RUN_DEADLINE:?}");
        }
    }
}

/// A temp dir holding `agent.toml` with `text`, plus a lock dir for debug ports.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("agent.toml"), text).expect("write config");
        std::fs::create_dir(dir.path().join("locks")).expect("lock dir");
        Fixture { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    /// `exec --config FILE --debug ... -- sh -c 'echo STEP_MARK'`, bounded: a random high
    /// port range and this test's own lock dir, no debugger injection, a short attach
    /// timeout, in case a later session setup gets that far.
    fn exec(&self, extra: &[&str]) -> Command {
        let base: u16 = rand::random_range(20_000..60_000);
        let mut cmd = util::agent();
        cmd.arg("exec")
            .arg("--config")
            .arg(self.config())
            .arg("--lock-dir")
            .arg(self.dir.path().join("locks"))
            .arg("--port-range")
            .arg(format!("{base}-{}", base + 9))
            .args(["--debug", "--inject", "none", "--attach-timeout", "1s"])
            .args(extra)
            .args(["--", "sh", "-c", &format!("echo {STEP_MARK}")]);
        cmd
    }
}

/// Environment variables of one table row.
type Vars<'a> = &'a [(&'a str, &'a str)];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The step ran and exec exited 0 although the config was bad; returns stderr.
fn assert_step_ran(output: &Output) -> String {
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    assert!(
        stdout.contains(STEP_MARK),
        "step did not run; stderr: {stderr}"
    );
    stderr
}

fn expect_error(config: &str, want: impl Fn(&Path) -> String) {
    let fixture = Fixture::new(config);
    let stderr = assert_step_ran(&run_bounded(fixture.exec(&[])));
    let want = want(&fixture.config());
    assert!(stderr.contains(&want), "want {want:?} in stderr: {stderr}");
}

#[test]
fn malformed_config_names_file_and_line() {
    expect_error("[debug]\nenabled = true\nattach_timeout = 10m\n", |path| {
        format!(
            "config error: {}:3: malformed TOML: string values must be quoted",
            path.display()
        )
    });
}

#[test]
fn unknown_key_names_file_line_and_key() {
    expect_error("# test\n[debug]\nenabled = true\n\nrank = 3\n", |path| {
        format!(
            "config error: {}:5: unknown key debug.rank (known keys: enabled, ranks, ",
            path.display()
        )
    });
}

#[test]
fn bad_value_names_file_line_and_key() {
    expect_error("[debug]\nattach_timeout = \"10 parsecs\"\n", |path| {
        format!(
            "config error: {}:2: debug.attach_timeout: invalid duration \"10 parsecs\" \
             (expected e.g. 30s, 10m)",
            path.display()
        )
    });
}

#[test]
fn bad_variable_and_bad_flag_are_named() {
    let fixture = Fixture::new("");
    let mut cmd = fixture.exec(&[]);
    cmd.env("AMLX_MAX_TARGETS_PER_NODE", "many");
    let stderr = assert_step_ran(&run_bounded(cmd));
    assert!(
        stderr.contains("config error: AMLX_MAX_TARGETS_PER_NODE: invalid target count \"many\""),
        "{stderr}"
    );
    let stderr = assert_step_ran(&run_bounded(fixture.exec(&["--ranks", "3-1"])));
    assert!(
        stderr.contains("config error: --ranks: invalid rank spec \"3-1\""),
        "{stderr}"
    );
}

/// A variable that is not UTF-8 is a config error naming it, never quoting its value (it
/// may be a secret): the step still runs. Before, `AMLX_RELAY_HC` was read by clap, which
/// refused the whole command line (the step never ran), and the others were silently
/// taken as unset.
#[test]
fn a_variable_that_is_not_utf8_is_named_and_the_step_still_runs() {
    use std::os::unix::ffi::OsStrExt as _;
    let fixture = Fixture::new("");
    let garbage = std::ffi::OsStr::from_bytes(b"secret\xff\xfe");
    for name in [
        "AMLX_RELAY_HC",
        "AMLX_RELAY_CONNECTION_STRING",
        "AMLX_RELAY_CA_FILE",
        "AMLX_ATTACH_TIMEOUT",
        "AMLX_DEBUG",
    ] {
        let mut cmd = fixture.exec(&[]);
        cmd.env(name, garbage);
        let stderr = assert_step_ran(&run_bounded(cmd));
        assert!(
            stderr.contains(&format!(
                "config error: {name} is set to a value that is not valid UTF-8"
            )),
            "{name}: {stderr}"
        );
        assert!(
            !stderr.contains("secret"),
            "{name}: the value is not shown: {stderr}"
        );
    }
}

#[test]
fn missing_config_file_is_named() {
    let fixture = Fixture::new("");
    std::fs::remove_file(fixture.config()).expect("remove config");
    let stderr = assert_step_ran(&run_bounded(fixture.exec(&[])));
    let want = format!(
        "config error: --config: cannot read {}",
        fixture.config().display()
    );
    assert!(stderr.contains(&want), "{stderr}");
}

#[test]
fn exec_never_prints_a_secret() {
    let secret_config = format!("[relay]\nconnection_string = \"{}\"\n", connection_string());
    let configs = [
        // Valid: the settings are logged at debug level, masked.
        secret_config.clone(),
        // Unterminated string around the secret.
        format!("[relay]\nconnection_string = \"{}\n", connection_string()),
        // Unquoted secret.
        format!("[relay]\nconnection_string = {}\n", connection_string()),
        // Secret under a misspelt key, and a bad value next to it.
        format!("[relay]\nconnection_strin = \"{}\"\n", connection_string()),
        format!("{secret_config}[debug]\nranks = \"x\"\n"),
        // Secret as a bare line.
        format!("{}\n", connection_string()),
        // A key that is too long, and one of the wrong type.
        format!(
            "[[relay.server.keys]]\nname = \"k\"\nkey = \"{SECRET_KEY}{}\"\n",
            "x".repeat(300)
        ),
        format!(
            "[relay]\nconnection_string = [\"{}\"]\n",
            connection_string()
        ),
    ];
    for config in &configs {
        let fixture = Fixture::new(config);
        for with_env in [false, true] {
            let mut cmd = fixture.exec(&["-vv"]);
            if with_env {
                cmd.env("AMLX_RELAY_CONNECTION_STRING", connection_string());
            }
            let output = run_bounded(cmd);
            let stderr = assert_step_ran(&output);
            let all = format!("{}{stderr}", text(&output.stdout));
            assert!(
                !all.contains(SECRET_KEY) && !all.contains("SUPERSECRET"),
                "secret printed for config {config:?} (env: {with_env}):\n{all}"
            );
            // The run got far enough to matter: settings or an error were logged.
            assert!(
                stderr.contains("configuration loaded") || stderr.contains("config error"),
                "{stderr}"
            );
        }
    }
    // With a valid config the loaded settings are logged, secret masked.
    let fixture = Fixture::new(&secret_config);
    let stderr = assert_step_ran(&run_bounded(fixture.exec(&["-vv"])));
    assert!(stderr.contains("connection_string: Some(***)"), "{stderr}");
}

/// A config file is read with a bound: `/dev/zero` fails fast naming the file and the
/// limit; a FIFO (which would block) and a directory are named for what they are. `exec`
/// still runs the step (a bad config never stops training); `status` fails.
#[test]
fn config_files_that_are_too_big_or_not_files_fail_fast() {
    /// Far below the time it would take to fill memory from /dev/zero.
    const FAST: Duration = Duration::from_secs(10);
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let cases: [(&Path, &str); 3] = [
        (
            Path::new("/dev/zero"),
            "cannot read /dev/zero: it is larger than the 1024 KiB limit for config files",
        ),
        (&fifo, "it is a FIFO or socket, not a regular file"),
        (dir.path(), "it is a directory, not a file"),
    ];
    for (path, want) in cases {
        let started = std::time::Instant::now();
        let out = util::output_within(util::agent().arg("status").arg("--config").arg(path), FAST);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", path.display());
        assert!(
            stderr.contains(&format!(
                "config error: --config: cannot read {}",
                path.display()
            )) && stderr.contains(want),
            "{}: want {want:?} in {stderr}",
            path.display()
        );
        let mut exec = util::agent();
        exec.arg("exec").arg("--config").arg(path).args([
            "--",
            "sh",
            "-c",
            &format!("echo {STEP_MARK}"),
        ]);
        let stderr = assert_step_ran(&util::output_within(&mut exec, FAST));
        assert!(stderr.contains(want), "exec {}: {stderr}", path.display());
        assert!(started.elapsed() < FAST, "{}: slow", path.display());
    }
}

/// `launch-json` takes its port base and mode from the same layered settings as `exec`
/// (`AMLX_PORT_RANGE`, `[debug] mode`), flags still winning.
#[test]
fn launch_json_uses_the_layered_settings() {
    let fixture = Fixture::new("[ports]\nrange = \"6100-6199\"\n[debug]\nmode = \"listen\"\n");
    let run = |extra: &[&str], vars: &[(&str, &str)]| {
        let mut cmd = util::agent();
        cmd.arg("--config")
            .arg(fixture.config())
            .args(["launch-json", "--ranks", "0-1", "--output", "-"])
            .args(extra)
            .envs(vars.iter().copied());
        let out = run_bounded(cmd);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let json = text(&out.stdout);
        // Each configuration names its port; connect to it (listen) or listen on it.
        let ports: Vec<u16> = (6000..6300)
            .filter(|p| json.contains(&format!("\"port\": {p}")))
            .collect();
        (ports, json.contains("\"connect\""))
    };
    // (flags, environment) -> (ports, VS Code connects)
    let cases: [(&[&str], Vars<'_>, Vec<u16>, bool); 4] = [
        (&[], &[], vec![6100, 6101], true),
        (
            &[],
            &[("AMLX_PORT_RANGE", "6200-6299")],
            vec![6200, 6201],
            true,
        ),
        (&["--port-base", "6010"], &[], vec![6010, 6011], true),
        (
            &["--mode", "connect"],
            &[("AMLX_DEBUG_MODE", "listen")],
            vec![6100, 6101],
            false,
        ),
    ];
    for (extra, vars, ports, connects) in cases {
        assert_eq!(run(extra, vars), (ports, connects), "{extra:?} {vars:?}");
    }
}
