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
