//! Integration tests: the command line teaches (`--help` on every level, `--version`).

use crate::util::agent;

fn stdout_of(args: &[&str]) -> String {
    let out = agent().args(args).output().expect("agent runs");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn top_level_help_lists_every_command() {
    let help = stdout_of(&["--help"]);
    for command in ["exec", "detect", "ports", "relay"] {
        assert!(
            help.contains(command),
            "--help does not list {command}:\n{help}"
        );
    }
    for global in [
        "--config",
        "--log-format",
        "--verbose",
        "--quiet",
        "--version",
    ] {
        assert!(
            help.contains(global),
            "--help does not list {global}:\n{help}"
        );
    }
}

#[test]
fn every_subcommand_help_has_examples() {
    for args in [
        &["exec", "--help"][..],
        &["detect", "--help"][..],
        &["ports", "list", "--help"][..],
        &["ports", "--help"][..],
        &["relay", "--help"][..],
        &["relay", "serve", "--help"][..],
        &["relay", "listen", "--help"][..],
        &["relay", "connect", "--help"][..],
        &["status", "--help"][..],
        &["launch-json", "--help"][..],
        &["demo", "--help"][..],
    ] {
        let help = stdout_of(args);
        assert!(
            help.contains("Examples:"),
            "{args:?} has no examples:\n{help}"
        );
        assert!(
            help.contains("amlx-agent"),
            "{args:?} examples do not show the command:\n{help}"
        );
    }
}

#[test]
fn version_names_the_binary() {
    let version = stdout_of(&["--version"]);
    assert!(version.starts_with("amlx-agent "), "{version}");
}

#[test]
fn exec_help_documents_the_policy_and_process_flags() {
    let help = stdout_of(&["exec", "--help"]);
    for flag in [
        "--debug",
        "--no-debug",
        "--ranks",
        "--max-targets-per-node",
        "--port-range",
        "--lock-dir",
        "--rank",
        "--local-rank",
        "--world-size",
        "--replace",
        "--supervise",
        "AMLX_DEBUG",
    ] {
        assert!(help.contains(flag), "exec --help lacks {flag}");
    }
}

/// `exec --help` has a Relay section with the relay commands' flags and says how to give
/// credentials (never a flag), with an example.
#[test]
fn exec_help_has_a_relay_section_with_credentials() {
    let help = stdout_of(&["exec", "--help"]);
    let relay = help
        .split_once("\nRelay:\n")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("exec --help has no Relay section:\n{help}"));
    for needle in [
        "--hc",
        "AMLX_RELAY_HC",
        "--connection-string-file",
        "AMLX_RELAY_CONNECTION_STRING_FILE",
        "--ca-file",
        "AMLX_RELAY_CA_FILE",
        "--insecure-ws",
        "AMLX_RELAY_INSECURE_WS",
        "Relay credentials",
        "AMLX_RELAY_CONNECTION_STRING,",
        "[relay] connection_string",
        "never from a command-line argument",
        "amlx-agent exec --debug --connection-string-file",
    ] {
        assert!(
            relay.contains(needle),
            "exec --help lacks {needle}:\n{help}"
        );
    }
    assert!(
        !help.contains("--connection-string "),
        "the connection string must not be a flag:\n{help}"
    );
}

/// Commands that print, with stdout a pipe nobody reads any more (`amlx-agent status |
/// head -1` once head has gone): `println!` panicked ("failed printing to stdout: Broken
/// pipe", exit 101). Each now fails with a one-line error and exit code 1.
#[test]
fn a_stdout_nobody_reads_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let cases: [&[&str]; 5] = [
        &["status"],
        &["status", "--json"],
        &["targets", "list", "--no-check"],
        &["launch-json", "--ranks", "0", "--output", "launch.json"],
        &["ports", "list"],
    ];
    for args in cases {
        let (read, write) = nix::unistd::pipe().expect("pipe");
        drop(read);
        let mut cmd = agent();
        // As a Python parent, a CI runner or `nohup` leave it: with SIGPIPE's default
        // action the agent just ends, as every Unix tool does.
        crate::util::ignore_sigpipe(&mut cmd);
        let stderr_file = tempfile::tempfile().expect("stderr file");
        let mut child = cmd
            .current_dir(dir.path())
            .env("AMLX_STATE_DIR", &state)
            .env("AMLX_LOCK_DIR", dir.path().join("locks"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(write))
            .stderr(stderr_file.try_clone().expect("clone"))
            .spawn()
            .expect("spawn");
        let status = crate::util::wait_within(&mut child, crate::util::DEADLINE);
        let stderr = {
            use std::io::{Read as _, Seek as _};
            let mut file = stderr_file;
            let mut text = String::new();
            file.rewind().expect("rewind");
            file.read_to_string(&mut text).expect("read stderr");
            text
        };
        assert_eq!(status.code(), Some(1), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.contains("Broken pipe"), "{args:?}: {stderr}");
    }
}

/// Port and process-count values no run can use are usage errors (exit 2) that say what
/// a good value is, before anything starts. `--vscode-port 0` was an error with exit 1
/// after the work had begun.
#[test]
fn impossible_ports_and_rank_counts_are_usage_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&[&str], &str); 17] = [
        (
            &["relay", "listen", "--ports", "5678,0"],
            "0 is not in 1..=65535",
        ),
        (
            &["run", "--vscode-port", "0", "--", "true"],
            "0 is not a port VS Code can listen on; pick one like 5678",
        ),
        (
            &["run", "--vscode-port", "70000", "--", "true"],
            "a port is a number from 1 to 65535",
        ),
        (
            &["demo", "--vscode-port", "0"],
            "0 is not a port VS Code can listen on",
        ),
        (
            &[
                "launch-json",
                "--ranks",
                "0",
                "--post-mortem",
                "--post-mortem-port",
                "0",
            ],
            "0 is not a port VS Code can listen on",
        ),
        (&["run", "--ranks-count", "0", "--", "true"], "1..=64"),
        (&["run", "--ranks-count", "65", "--", "true"], "1..=64"),
        (&["demo", "--ranks-count", "65"], "1..=64"),
        (
            &["relay", "connect", "--spare-tunnels", "-1"],
            "unexpected argument '-1'",
        ),
        // debugpy listened there and the step waited for a debugger nobody could send.
        (
            &["exec", "--node-ip", "255.255.255.255", "--", "true"],
            "the broadcast address: a debugger cannot connect to it",
        ),
        (
            &["exec", "--node-ip", "ff02::1", "--", "true"],
            "node IP ff02::1 is a multicast address",
        ),
        // An empty directory named the current one: records landed where the step started.
        (
            &["exec", "--lock-dir", "", "--", "true"],
            "an empty path names no directory",
        ),
        (
            &["status", "--state-dir", ""],
            "an empty path names no directory",
        ),
        // A token's expiry and renewal are clock arithmetic: these panicked.
        (
            &["relay", "listen", "--token-ttl", "18446744073709551615s"],
            "longer than 100 years",
        ),
        (
            &["relay", "connect", "--token-ttl", "9223372036854775808s"],
            "longer than 100 years",
        ),
        (
            &["exec", "--token-ttl", "0s", "--", "true"],
            "a token lives at least 1s",
        ),
        (
            &["relay", "listen", "--token-ttl", "500ms"],
            "a token lives at least 1s",
        ),
    ];
    for (args, expected) in cases {
        let mut cmd = agent();
        cmd.current_dir(dir.path()).args(args);
        let out = crate::util::output_bounded(&mut cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // The help gives the range before anyone gets it wrong.
    for command in ["run", "demo"] {
        let help = stdout_of(&[command, "--help"]);
        assert!(
            help.contains("Processes to start (1 to 64)"),
            "{command}:\n{help}"
        );
    }
    assert!(
        std::fs::read_dir(dir.path())
            .expect("read dir")
            .next()
            .is_none(),
        "nothing was written"
    );
}

/// A spare tunnel count out of range is a config error (exit 1) naming where it came from
/// and the range, from the flag as from the environment, before anything connects.
#[test]
fn a_spare_tunnel_count_out_of_range_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&[&str], Option<&str>, &str); 3] = [
        (
            &["--spare-tunnels", "9"],
            None,
            "--spare-tunnels: invalid spare tunnel count \"9\"",
        ),
        (
            &["--spare-tunnels", "one"],
            None,
            "--spare-tunnels: invalid spare tunnel count \"one\"",
        ),
        (
            &[],
            Some("12"),
            "AMLX_RELAY_SPARE_TUNNELS: invalid spare tunnel count \"12\"",
        ),
    ];
    for (args, env, expected) in cases {
        let mut cmd = agent();
        cmd.current_dir(dir.path())
            .args(["relay", "connect", "--hc", "debug", "--bind", "127.0.0.1:0"])
            .args(args);
        if let Some(value) = env {
            cmd.env("AMLX_RELAY_SPARE_TUNNELS", value);
        }
        let out = crate::util::output_bounded(&mut cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains(expected) && stderr.contains("(expected a whole number from 0 to 8)"),
            "{args:?} {env:?}: {stderr}"
        );
    }
}

/// Files named for a secret, a CA or `relay serve`'s certificate and key are read only
/// when they are regular files within a size bound: `/dev/zero` grew the process by
/// gigabytes and a FIFO blocked it for good.
#[test]
fn secret_and_certificate_files_must_be_small_regular_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let fifo = fifo.to_str().expect("UTF-8 temp path");
    let big = dir.path().join("big.pem");
    std::fs::write(&big, vec![b'A'; 5 * 1024 * 1024]).expect("write");
    let big = big.to_str().expect("UTF-8 temp path");
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "[relay.server]\n[[relay.server.keys]]\nname = \"k\"\n\
         key = \"0123456789abcdef0123456789abcdef\"\nrights = [\"listen\", \"send\"]\n",
    )
    .expect("write");
    let config = config.to_str().expect("UTF-8 temp path");
    let connect = [
        "relay",
        "connect",
        "--bind",
        "127.0.0.1:0",
        "--port-name",
        "p",
    ];
    let serve = [
        "relay",
        "serve",
        "--config",
        config,
        "--listen",
        "127.0.0.1:0",
    ];
    let cases: Vec<(Vec<&str>, &str)> = [
        (
            &connect[..],
            &["--connection-string-file", "/dev/zero"][..],
            "connection string file /dev/zero: it is larger than the 64 KiB limit",
        ),
        (
            &connect[..],
            &["--connection-string-file", fifo][..],
            "it is a FIFO or socket",
        ),
        (
            &connect[..],
            &["--ca-file", "/dev/zero"][..],
            "CA file /dev/zero: it is larger than the 4096 KiB limit",
        ),
        (
            &connect[..],
            &["--ca-file", big][..],
            "larger than the 4096 KiB limit for CA files",
        ),
        (
            &serve[..],
            &["--tls-cert", "/dev/zero", "--tls-key", "/dev/zero"][..],
            "TLS certificate /dev/zero: it is larger than the 4096 KiB limit",
        ),
        (
            &serve[..],
            &["--tls-cert", big, "--tls-key", fifo][..],
            "larger than the 4096 KiB limit for certificate files",
        ),
    ]
    .into_iter()
    .map(|(command, args, want)| ([command, args].concat(), want))
    .collect();
    for (args, want) in cases {
        let mut cmd = agent();
        cmd.current_dir(dir.path()).args(&args).env(
            "AMLX_RELAY_CONNECTION_STRING",
            "Endpoint=sb://127.0.0.1:1/;SharedAccessKeyName=k;SharedAccessKey=x;EntityPath=hc",
        );
        let out = crate::util::output_bounded(&mut cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

/// Two targets under one port name: the second could never be reached, so `relay listen`
/// refuses to start and names both (exit 1, before it connects).
#[test]
fn a_port_name_forwarded_twice_is_refused() {
    let cases: [&[&str]; 2] = [
        &[
            "--forward",
            "dbg=127.0.0.1:5678",
            "--forward",
            "dbg=127.0.0.1:5679",
        ],
        &["--ports", "5678", "--forward", "5678=127.0.0.1:6000"],
    ];
    for args in cases {
        let mut cmd = agent();
        cmd.args(["relay", "listen", "--insecure-ws"])
            .args(args)
            .env(
                "AMLX_RELAY_CONNECTION_STRING",
                "Endpoint=sb://127.0.0.1:1/;SharedAccessKeyName=k;SharedAccessKey=x;EntityPath=hc",
            );
        let out = crate::util::output_bounded(&mut cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("is forwarded twice"), "{args:?}: {stderr}");
    }
}
