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
