//! Integration tests: `exec` — exit codes, start errors, PATH lookup, the exported
//! variables and replace mode keeping the PID, in both process modes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::util::{self, output_bounded};

/// Both process modes, as `exec` flags.
const MODES: [&str; 2] = ["--replace", "--supervise"];

/// `amlx-agent exec <mode> -- <step...>`.
fn exec(mode: &str, step: &[&str]) -> Command {
    let mut cmd = util::agent();
    cmd.args(["exec", mode, "--"]).args(step);
    cmd
}

/// Environment variables of one table row.
type Vars<'a> = &'a [(&'a str, &'a str)];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the agent failed with `code` and said so in exactly one stderr line.
fn assert_start_error(out: &Output, code: i32, reason: &str, what: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{what}: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{what}: one line, got {stderr:?}"
    );
    assert!(
        stderr.starts_with("amlx-agent: cannot run '"),
        "{what}: {stderr}"
    );
    assert!(
        stderr.contains(&format!("{reason} (exit {code})")),
        "{what}: {stderr}"
    );
}

fn write_file(path: &Path, content: &str, mode: u32) {
    fs::write(path, content).expect("write file");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn exit_code_passes_through_in_both_modes() {
    for mode in MODES {
        for code in [0, 7, 255] {
            let out = output_bounded(&mut exec(mode, &["sh", "-c", &format!("exit {code}")]));
            assert_eq!(out.status.code(), Some(code), "{mode} exit {code}");
        }
    }
}

#[test]
fn missing_command_exits_127_with_one_line() {
    for mode in MODES {
        let out = output_bounded(&mut exec(mode, &["amlx-test-no-such-command"]));
        assert_start_error(&out, 127, "command not found", mode);
        assert!(text(&out.stderr).contains("'amlx-test-no-such-command'"));

        let out = output_bounded(&mut exec(mode, &["/nonexistent/amlx-step"]));
        assert_start_error(&out, 127, "no such file or directory", mode);
    }
}

/// A debug target whose command cannot start: 127 and the one line, and nothing else. The
/// sidecar used to read the agent's own end of the session as "the step closed the
/// descriptors it was started with while still running" and warn about that.
#[test]
fn a_debug_target_whose_command_is_missing_exits_127_without_a_false_warning() {
    let locks = tempfile::tempdir().expect("tempdir");
    let (start, end) = util::free_port_range(4);
    for mode in MODES {
        let mut cmd = util::agent();
        cmd.args(["exec", mode, "--debug", "--rank", "0", "--mode", "direct"])
            .args(["--node-ip", "127.0.0.1", "--lock-dir"])
            .arg(locks.path())
            .env("AMLX_STATE_DIR", locks.path().join("state"))
            .args(["--port-range", &format!("{start}-{end}")])
            .args(["--", "amlx-test-no-such-command"]);
        let out = output_bounded(&mut cmd);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(127), "{mode}: {stderr}");
        assert!(stderr.contains("command not found"), "{mode}: {stderr}");
        assert!(
            !stderr.contains("closed the descriptors"),
            "{mode}: {stderr}"
        );
    }
}

#[test]
fn non_executable_file_or_directory_exits_126() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("plain.sh");
    write_file(&plain, "#!/bin/sh\necho should-not-run\n", 0o644);
    let plain = plain.to_str().expect("utf-8 temp path");
    let dir_path = dir.path().to_str().expect("utf-8 temp path");
    for mode in MODES {
        let out = output_bounded(&mut exec(mode, &[plain]));
        assert_start_error(&out, 126, "permission denied", mode);
        assert!(out.stdout.is_empty());

        let out = output_bounded(&mut exec(mode, &[dir_path]));
        assert_start_error(&out, 126, "is a directory", mode);

        // Found in PATH but not executable: 126 like a shell, not 127.
        let out = output_bounded(exec(mode, &["plain.sh"]).env("PATH", dir.path()));
        assert_start_error(&out, 126, "permission denied", mode);
    }
}

#[test]
fn path_lookup_argv0_and_scripts_without_shebang() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_file(
        &dir.path().join("amlx-hello"),
        "#!/bin/sh\necho \"hello $1\"\n",
        0o755,
    );
    write_file(
        &dir.path().join("amlx-no-shebang"),
        "echo \"no shebang $1\"\n",
        0o755,
    );
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for mode in MODES {
        let out = output_bounded(exec(mode, &["amlx-hello", "x"]).env("PATH", &path));
        assert_eq!(
            text(&out.stdout),
            "hello x\n",
            "{mode}: {}",
            text(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0));

        // The kernel refuses it (ENOEXEC); like execvp and shells, /bin/sh runs it.
        let out = output_bounded(exec(mode, &["amlx-no-shebang", "y"]).env("PATH", &path));
        assert_eq!(
            text(&out.stdout),
            "no shebang y\n",
            "{mode}: {}",
            text(&out.stderr)
        );

        // argv[0] is passed on as typed, not as the resolved path.
        let out = output_bounded(&mut exec(
            mode,
            &["sh", "-c", "tr '\\0' ' ' < /proc/$$/cmdline"],
        ));
        assert!(
            text(&out.stdout).starts_with("sh -c "),
            "{mode}: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn exported_variables_arrive_in_both_modes() {
    for mode in MODES {
        let out = output_bounded(&mut exec(
            mode,
            &[
                "sh",
                "-c",
                "echo \"active=$AMLX_AGENT_ACTIVE target=$AMLX_DEBUG_TARGET rank=${AMLX_RANK-unset}\"",
            ],
        ));
        assert_eq!(
            text(&out.stdout),
            "active=1 target=false rank=\n",
            "{mode}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn replace_mode_keeps_the_pid_and_is_the_default() {
    for mode in [Some("--replace"), None] {
        let mut cmd = util::agent();
        cmd.arg("exec");
        cmd.args(mode);
        cmd.args(["--", "sh", "-c", "echo $$"]);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn agent");
        let pid = child.id();
        let status = util::wait_bounded(&mut child);
        let mut stdout = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().expect("piped stdout"), &mut stdout)
            .expect("read stdout");
        assert!(status.success(), "{mode:?}");
        assert_eq!(stdout.trim(), pid.to_string(), "{mode:?}: same PID");
    }
}

#[test]
fn sigkill_gives_137_in_both_modes() {
    let kill_self = ["sh", "-c", "kill -9 $$"];

    // Replace: the agent process itself is the step, so it dies of SIGKILL...
    let out = output_bounded(&mut exec("--replace", &kill_self));
    assert_eq!(out.status.signal(), Some(9), "replace: died of SIGKILL");
    // ...which a shell reports as 137.
    let out = output_bounded(
        Command::new("sh")
            .args([
                "-c",
                r#""$AGENT" exec --replace -- sh -c 'kill -9 $$'; echo $?"#,
            ])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AGENT", util::agent_bin()),
    );
    assert_eq!(text(&out.stdout), "137\n");

    // Supervise: the agent survives the step and exits 128+9.
    let out = output_bounded(&mut exec("--supervise", &kill_self));
    assert_eq!(out.status.code(), Some(137), "supervise: exit code 137");
}

/// The whole set of exported variables, for a non-target and for a target.
#[test]
fn every_exported_variable_reaches_the_step() {
    const SHOW: &str = "echo \"active=$AMLX_AGENT_ACTIVE rank=$AMLX_RANK local=$AMLX_LOCAL_RANK \
        world=$AMLX_WORLD_SIZE ip=$AMLX_NODE_IP target=$AMLX_DEBUG_TARGET \
        port=${AMLX_DEBUG_PORT-unset} mode=${AMLX_DEBUG_MODE-unset}\"";
    let locks = tempfile::tempdir().expect("tempdir");
    let (start, end) = util::free_port_range(4);
    let range = format!("{start}-{end}");
    let run = |extra: &[&str]| {
        let mut cmd = util::agent();
        cmd.args([
            "exec",
            "--rank",
            "1",
            "--local-rank",
            "1",
            "--world-size",
            "2",
        ])
        .args(["--node-ip", "127.0.0.1", "--lock-dir"])
        .arg(locks.path())
        .env("AMLX_STATE_DIR", locks.path().join("state"))
        .args(["--port-range", &range])
        .args(extra)
        .args(["--", "sh", "-c", SHOW]);
        let out = output_bounded(&mut cmd);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert_eq!(
        run(&[]),
        "active=1 rank=1 local=1 world=2 ip=127.0.0.1 target=false port=unset mode=unset\n"
    );
    assert_eq!(
        run(&["--debug", "--ranks", "1", "--mode", "direct"]),
        format!(
            "active=1 rank=1 local=1 world=2 ip=127.0.0.1 target=true port={} mode=direct\n",
            start + 1
        )
    );
}

/// A mistyped or unknown option before the command is a usage error (exit 2, the option
/// named, a close match suggested), never the command: the step does not run.
#[test]
fn unknown_options_before_the_command_are_usage_errors() {
    const STEP: [&str; 3] = ["sh", "-c", "echo step-ran"];
    // (options before the step, with `--`?, the option named, the suggestion if any)
    let cases: &[(&[&str], bool, &str, Option<&str>)] = &[
        (&["--debgu"], true, "--debgu", Some("--debug")),
        (&["--debgu"], false, "--debgu", Some("--debug")),
        (
            &["--rank", "0", "--debgu"],
            true,
            "--debgu",
            Some("--debug"),
        ),
        (
            &["--port-rang", "1-2"],
            true,
            "--port-rang",
            Some("--port-range"),
        ),
        (&["--superivse"], true, "--superivse", Some("--supervise")),
        (&["--no-debgu"], false, "--no-debgu", Some("--no-debug")),
        (
            &["--insecure-wss"],
            true,
            "--insecure-wss",
            Some("--insecure-ws"),
        ),
        // The connection string itself is never a flag (`ps` shows argv).
        (
            &["--connection-string", "Endpoint=sb://x/"],
            true,
            "--connection-string",
            Some("--connection-string-file"),
        ),
        (&["--no-such-option"], true, "--no-such-option", None),
        (&["-x"], true, "-x", None),
    ];
    for (options, dashes, named, suggested) in cases {
        let mut cmd = util::agent();
        cmd.arg("exec").args(*options);
        if *dashes {
            cmd.arg("--");
        }
        let out = output_bounded(cmd.args(STEP));
        let stderr = text(&out.stderr);
        let what = format!("{options:?} (-- {dashes})");
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(out.stdout.is_empty(), "{what}: the step ran");
        assert!(
            stderr.contains(&format!("unexpected argument '{named}'")),
            "{what}: {stderr}"
        );
        if let Some(suggested) = suggested {
            assert!(
                stderr.contains(&format!("similar argument exists: '{suggested}'")),
                "{what}: {stderr}"
            );
        }
        assert!(!stderr.contains("Endpoint=sb://"), "{what}: argv echoed");
    }
}

/// Everything after the command is the step's: its own `--debug`, `--foo` and `-x`,
/// with or without `--` before the command.
#[test]
fn options_after_the_command_belong_to_the_step() {
    const SHOW_ARGS: &str = "printf '%s|' \"$@\"";
    let cases: &[(&[&str], &str)] = &[
        (
            &["--", "sh", "-c", SHOW_ARGS, "0", "--debug", "--foo"],
            "--debug|--foo|",
        ),
        (
            &["sh", "-c", SHOW_ARGS, "0", "--debgu", "-x", "--"],
            "--debgu|-x|--|",
        ),
        (
            &["--ranks", "0", "sh", "-c", SHOW_ARGS, "0", "--lr", "0.1"],
            "--lr|0.1|",
        ),
        (
            &["--", "sh", "-c", SHOW_ARGS, "0", "--", "--no-debug"],
            "--|--no-debug|",
        ),
    ];
    for (args, want) in cases {
        let out = output_bounded(util::agent().arg("exec").args(*args));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), *want, "{args:?}");
    }
}

/// `exec --connection-string-file F` and `AMLX_RELAY_CONNECTION_STRING_FILE=F` (like the
/// relay commands, with `--insecure-ws` or `AMLX_RELAY_INSECURE_WS`) reach a real `relay
/// serve`: the sidecar's sender is let in and told nobody listens yet, and the step runs
/// to its end when the attach timeout passes. Without credentials the log says so.
#[test]
fn relay_credentials_from_a_file_reach_the_relay() {
    use crate::session::harness::{DeveloperSide, SESSION_DEADLINE, port_range, step_py};
    let developer = DeveloperSide::relay_only("debug");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("relay.cs");
    write_file(&file, &developer.connection_string(), 0o600);
    let file = file.to_str().expect("utf-8 temp path").to_owned();
    // The Hybrid Connection from `--hc` when the connection string names none.
    let without_entity = dir.path().join("no-entity.cs");
    let connection = developer.connection_string();
    let (namespace_and_key, _) = connection
        .rsplit_once(";EntityPath=")
        .expect("the harness names the Hybrid Connection");
    write_file(&without_entity, namespace_and_key, 0o600);
    let without_entity = without_entity.to_str().expect("utf-8 temp path").to_owned();
    // (flags, environment, what the log must say)
    let cases: [(&[&str], Vars<'_>, &str); 5] = [
        (
            &["--connection-string-file", &file, "--insecure-ws"],
            &[],
            "no listener on the Hybrid Connection yet",
        ),
        (
            &[],
            &[
                ("AMLX_RELAY_CONNECTION_STRING_FILE", &file),
                ("AMLX_RELAY_INSECURE_WS", "true"),
            ],
            "no listener on the Hybrid Connection yet",
        ),
        (
            &["--connection-string-file", &without_entity, "--hc", "debug"],
            &[("AMLX_RELAY_INSECURE_WS", "1")],
            "no listener on the Hybrid Connection yet",
        ),
        (
            &["--connection-string-file", &without_entity, "--insecure-ws"],
            &[],
            "no Hybrid Connection name",
        ),
        (&["--insecure-ws"], &[], "no relay credentials"),
    ];
    for (flags, vars, want) in cases {
        let locks = tempfile::tempdir().expect("tempdir");
        let (_, _, range) = port_range(4);
        let mut cmd = util::agent();
        cmd.envs(vars.iter().copied())
            .env("AMLX_LOCK_DIR", locks.path())
            .env("AMLX_STATE_DIR", locks.path().join("state"))
            .env("NO_COLOR", "1")
            .env("STEP_EXIT_CODE", "5")
            .args([
                "exec",
                "--debug",
                "--attach-timeout",
                "2s",
                "--port-range",
                &range,
            ])
            .args(flags)
            .args(["--", "python3"])
            .arg(step_py());
        let out = util::output_within(&mut cmd, SESSION_DEADLINE);
        let stderr = text(&out.stderr);
        let what = format!("{flags:?} {vars:?}");
        assert_eq!(out.status.code(), Some(5), "{what}: {stderr}");
        assert!(
            text(&out.stdout).contains("done total 6"),
            "{what}: {stderr}"
        );
        assert!(stderr.contains(want), "{what}: want {want:?} in\n{stderr}");
        assert!(
            !stderr.contains(&developer.connection_string()),
            "{what}: the connection string reached the log"
        );
    }
}

/// The step's prior-art arguments sit below the environment and the flags: `--no-debug`
/// (or `AMLX_DEBUG=0`) means never whatever `--is-debug` says, and an explicit port range
/// beats the step's `--debug-port`; the log says which step argument was ignored.
#[test]
fn prior_art_step_arguments_sit_below_the_environment_and_the_flags() {
    const SHOW: &str = "echo \"target=$AMLX_DEBUG_TARGET port=${AMLX_DEBUG_PORT-unset}\"";
    let locks = tempfile::tempdir().expect("tempdir");
    let (start, end) = util::free_port_range(2);
    let range = format!("{start}-{end}");
    let (step_port, _) = util::free_port_range(1);
    let step_port_text = step_port.to_string();
    let step_args: &[&str] = &["--is-debug", "true", "--debug-port", &step_port_text];
    let range_var: Vars<'_> = &[("AMLX_PORT_RANGE", &range)];
    // (agent flags, environment, expected output, what the log says)
    let cases: Vec<(Vec<&str>, Vars<'_>, String, Option<String>)> = vec![
        (vec![], &[], format!("target=true port={step_port}"), None),
        (
            vec!["--no-debug"],
            &[],
            "target=false port=unset".to_owned(),
            Some("ignoring the step's --is-debug true: --no-debug wins".to_owned()),
        ),
        (
            vec!["--no-debug"],
            &[("AMLX_DEBUG", "1")],
            "target=false port=unset".to_owned(),
            Some("--no-debug wins".to_owned()),
        ),
        (
            vec![],
            &[("AMLX_DEBUG", "0")],
            "target=false port=unset".to_owned(),
            Some("ignoring the step's --is-debug true: AMLX_DEBUG wins".to_owned()),
        ),
        (
            vec!["--port-range", &range],
            &[],
            format!("target=true port={start}"),
            Some(format!(
                "ignoring the step's --debug-port {step_port}: --port-range {range} wins"
            )),
        ),
        (
            vec![],
            range_var,
            format!("target=true port={start}"),
            Some(format!(
                "ignoring the step's --debug-port {step_port}: AMLX_PORT_RANGE {range} wins"
            )),
        ),
    ];
    for (flags, vars, want, note) in cases {
        let mut cmd = util::agent();
        cmd.args(["exec", "--mode", "direct", "--inject", "none", "--lock-dir"])
            .arg(locks.path())
            .env("AMLX_STATE_DIR", locks.path().join("state"))
            .envs(vars.iter().copied())
            .args(&flags)
            .args(["--", "sh", "-c", SHOW, "step.py"])
            .args(step_args);
        let out = output_bounded(&mut cmd);
        let stderr = text(&out.stderr);
        let what = format!("{flags:?} {vars:?}");
        assert_eq!(out.status.code(), Some(0), "{what}: {stderr}");
        assert_eq!(text(&out.stdout).trim(), want, "{what}: {stderr}");
        match note {
            Some(note) => assert!(stderr.contains(&note), "{what}: want {note:?} in\n{stderr}"),
            None => assert!(!stderr.contains("ignoring the step's"), "{what}: {stderr}"),
        }
    }
}

/// A debug target logs a good deal before it runs the step; with stderr a closed pipe
/// (the launcher's log collector gone) those lines are lost, and the step still runs
/// with its own exit code, in both modes.
#[test]
fn a_closed_stderr_loses_log_lines_not_the_step() {
    let locks = tempfile::tempdir().expect("tempdir");
    let (start, end) = util::free_port_range(4);
    let range = format!("{start}-{end}");
    for mode in MODES {
        let mut child = util::agent()
            .args([
                "exec", mode, "--debug", "--mode", "direct", "--inject", "none",
            ])
            .args(["--node-ip", "127.0.0.1", "--lock-dir"])
            .arg(locks.path())
            .env("AMLX_STATE_DIR", locks.path().join("state"))
            .args(["--port-range", &range, "--attach-timeout", "1s"])
            .args(["--", "sh", "-c", "exit 7"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the agent");
        // Nobody reads stderr any more: every write to it fails with EPIPE.
        drop(child.stderr.take());
        let status = util::wait_bounded(&mut child);
        assert_eq!(status.code(), Some(7), "{mode}: {status:?}");
    }
}

/// The agent in front of a launcher debugs none of its workers: with debugging on, the
/// log says so at the default level and names where the agent goes instead; without,
/// it says nothing. The launcher runs as given either way, with its exit code.
#[test]
fn a_launcher_under_the_agent_is_named_with_where_the_agent_goes_instead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let launcher = dir.path().join("torchrun");
    write_file(&launcher, "#!/bin/sh\necho launched\nexit 4\n", 0o755);
    for (debug, says) in [(true, true), (false, false)] {
        let mut cmd = util::agent();
        cmd.arg("exec");
        if debug {
            cmd.arg("--debug");
        }
        cmd.arg("--").arg(&launcher);
        let out = output_bounded(&mut cmd);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{stderr}");
        assert_eq!(text(&out.stdout).trim(), "launched");
        assert_eq!(
            stderr.contains("not a debug target: torchrun starts the job's workers"),
            says,
            "debug {debug}: {stderr}"
        );
        assert_eq!(
            stderr.contains("the agent goes after the launcher"),
            says,
            "debug {debug}: {stderr}"
        );
    }
}

/// A Python 2 step (`python2 step.py`, here a stand-in that prints what it was given)
/// as a debug target or under `--post-mortem`: it runs with its own arguments and exit
/// code, unchanged. The agent added `-Xfrozen_modules=off` and its Python 3 launcher, and
/// Python 2 refused both (usage error, or an ImportError before the step ran).
#[test]
fn a_python_2_step_runs_as_it_is() {
    use crate::session::harness::{SESSION_DEADLINE, port_range};
    let dir = tempfile::tempdir().expect("tempdir");
    let python2 = dir.path().join("python2.7");
    std::fs::write(&python2, "#!/bin/sh\necho \"args: $*\"\nexit 7\n").expect("write");
    std::fs::set_permissions(
        &python2,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let (_, _, range) = port_range(4);
    let debug = [
        "--debug",
        "--mode",
        "direct",
        "--node-ip",
        "127.0.0.1",
        "--attach-timeout",
        "1s",
        "--port-range",
        &range,
    ];
    for flags in [&debug[..], &["--post-mortem"][..]] {
        let mut cmd = util::agent();
        cmd.env("AMLX_LOCK_DIR", dir.path().join("locks"))
            .env("AMLX_STATE_DIR", dir.path().join("state"))
            .arg("exec")
            .args(flags)
            .arg("--")
            .arg(&python2)
            .args(["step.py", "--lr", "0.1"]);
        let out = util::output_within(&mut cmd, SESSION_DEADLINE);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(7), "{flags:?}: {stderr}");
        assert_eq!(
            text(&out.stdout).trim(),
            "args: step.py --lr 0.1",
            "{flags:?}: {stderr}"
        );
    }
}

/// A debug target whose own command line fits the kernel's limit but not with the
/// debugger's bootstrap added (~9 KB of environment): the step runs without a debugger
/// and the log says why. It failed to start ("Argument list too long", exit 126). The
/// limit is made small (a quarter of a 512 KiB stack limit: 128 KiB) so a 125,000-byte
/// argument sits between the two.
#[test]
fn a_command_line_the_bootstrap_pushes_past_arg_max_runs_without_a_debugger() {
    use crate::session::harness::{SESSION_DEADLINE, port_range};
    let dir = tempfile::tempdir().expect("tempdir");
    let python3 = dir.path().join("python3");
    fs::write(&python3, "#!/bin/sh\necho \"ran with $# args\"\n").expect("write");
    fs::set_permissions(&python3, fs::Permissions::from_mode(0o755)).expect("chmod");
    let big = "x".repeat(125_000);
    for mode in ["--replace", "--supervise"] {
        let (_, _, range) = port_range(4);
        let mut cmd = Command::new(util::agent_bin());
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("AMLX_LOCK_DIR", dir.path().join("locks"))
            .env("AMLX_STATE_DIR", dir.path().join("state"))
            .args([
                "exec",
                mode,
                "--debug",
                "--mode",
                "direct",
                "--node-ip",
                "127.0.0.1",
            ])
            .args(["--attach-timeout", "1s", "--port-range", &range, "--"])
            .arg(&python3)
            .args(["step.py", &big]);
        // SAFETY: between fork and exec only setrlimit, which is async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                let limit = 512 << 10;
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_STACK,
                    limit,
                    limit,
                )
                .map_err(std::io::Error::from)
            });
        }
        let out = util::output_within(&mut cmd, SESSION_DEADLINE);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{mode}: {stderr}");
        assert_eq!(
            text(&out.stdout).trim(),
            "ran with 2 args",
            "{mode}: {stderr}"
        );
        assert!(
            stderr.contains("too long for the kernel (E2BIG"),
            "{mode}: {stderr}"
        );
    }
}

/// A debug target whose program cannot be found: 127 and the reason, with no port
/// reserved, no sidecar and no "debug port" announced for a step that never starts.
#[test]
fn a_debug_target_that_cannot_start_sets_up_no_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let locks = dir.path().join("locks");
    for program in ["/nonexistent/amlx-step", "no-such-command-amlx"] {
        let mut cmd = util::agent();
        cmd.env("AMLX_STATE_DIR", dir.path().join("state"))
            .args([
                "exec",
                "--debug",
                "--mode",
                "direct",
                "--node-ip",
                "127.0.0.1",
            ])
            .arg("--lock-dir")
            .arg(&locks)
            .args(["--", program]);
        let out = output_bounded(&mut cmd);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(127), "{program}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot run '{program}'")),
            "{stderr}"
        );
        assert!(!stderr.contains("debug port"), "{program}: {stderr}");
    }
    assert!(
        !locks.exists() || fs::read_dir(&locks).expect("read").next().is_none(),
        "a port was reserved"
    );
}
