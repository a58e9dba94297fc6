//! Table-driven tests for the injection plan and the debugpy rewrite.

use std::collections::HashMap;
use std::net::Ipv6Addr;

use super::*;

fn argv(words: &[&str]) -> Vec<OsString> {
    words.iter().map(OsString::from).collect()
}

fn joined(words: &[OsString]) -> String {
    command_line(words)
}

fn no_env() -> HashMap<String, String> {
    HashMap::new()
}

fn under_debugpy() -> HashMap<String, String> {
    HashMap::from([(DEBUGPY_RUNNING.to_owned(), "true".to_owned())])
}

#[test]
fn mode_parses_and_prints() {
    for (text, mode) in [
        ("auto", InjectMode::Auto),
        ("debugpy", InjectMode::Debugpy),
        (" None ", InjectMode::None),
    ] {
        assert_eq!(text.parse::<InjectMode>(), Ok(mode));
        assert_eq!(mode.to_string(), text.trim().to_ascii_lowercase());
    }
    assert!("pdb".parse::<InjectMode>().is_err());
}

#[test]
fn plan_by_mode_and_command() {
    enum Want {
        Inject,
        Skip(Skip),
        Error(&'static str),
    }
    let not_python = |p: &str| {
        Skip::NotInjectable(NotInjectable::NotPython {
            program: p.to_owned(),
        })
    };
    type Case<'a> = (InjectMode, &'a [&'a str], HashMap<String, String>, Want);
    let cases: Vec<Case<'_>> = vec![
        (
            InjectMode::Auto,
            &["python3", "s.py"],
            no_env(),
            Want::Inject,
        ),
        (
            InjectMode::Debugpy,
            &["python3", "-m", "m"],
            no_env(),
            Want::Inject,
        ),
        (
            InjectMode::None,
            &["python3", "s.py"],
            no_env(),
            Want::Skip(Skip::Disabled),
        ),
        (
            InjectMode::None,
            &["bash"],
            under_debugpy(),
            Want::Skip(Skip::Disabled),
        ),
        (
            InjectMode::Auto,
            &["bash", "x.sh"],
            no_env(),
            Want::Skip(not_python("bash")),
        ),
        (
            InjectMode::Auto,
            &["python3"],
            no_env(),
            Want::Skip(Skip::NotInjectable(NotInjectable::NoTarget)),
        ),
        (
            InjectMode::Debugpy,
            &["torchrun", "s.py"],
            no_env(),
            Want::Error(
                "cannot run `torchrun s.py` under debugpy: torchrun is not a Python interpreter; use --inject none",
            ),
        ),
        (
            InjectMode::Debugpy,
            &["python3", "-"],
            no_env(),
            Want::Error("standard input"),
        ),
        (
            InjectMode::Auto,
            &["python3", "s.py"],
            under_debugpy(),
            Want::Skip(Skip::AlreadyDebugged),
        ),
        (
            InjectMode::Debugpy,
            &["python3", "s.py"],
            under_debugpy(),
            Want::Error("DEBUGPY_RUNNING=true"),
        ),
        (
            InjectMode::Auto,
            &["python3", "s.py"],
            HashMap::from([(DEBUGPY_RUNNING.to_owned(), "false".to_owned())]),
            Want::Inject,
        ),
    ];
    for (mode, words, env, want) in cases {
        let result = plan(mode, &argv(words), &env);
        match (want, result) {
            (Want::Inject, Ok(Plan::Debugpy(_))) => {}
            (Want::Skip(expected), Ok(Plan::Unchanged(skip))) => {
                assert_eq!(skip, expected, "{mode} {words:?}");
            }
            (Want::Error(text), Err(err)) => {
                let message = err.to_string();
                assert!(message.contains(text), "{mode} {words:?}: {message}");
                assert!(!message.contains('\n'), "one line: {message}");
            }
            (_, other) => panic!("{mode} {words:?}: unexpected {other:?}"),
        }
    }
}

/// The rewritten command line, shown as the `python -m debugpy …` command it amounts to:
/// the bootstrap launcher pair is replaced by `-m debugpy` and the debugpy arguments the
/// bootstrap puts in front of the target.
fn rewritten(words: &[&str], endpoint: Endpoint, options: DebugpyOptions) -> String {
    let python = python_argv::parse(&argv(words)).expect("a Python command");
    let injected = rewrite(&python, &endpoint, &options).expect("rewrites");
    let launcher = injected
        .argv
        .windows(2)
        .position(|pair| pair[0] == "-c" && pair[1] == bootstrap::LAUNCHER)
        .expect("the bootstrap launcher");
    let mut shown = injected.argv.clone();
    let debugpy: Vec<OsString> = ["-m", "debugpy"]
        .into_iter()
        .map(OsString::from)
        .chain(injected.debugpy_args.iter().map(OsString::from))
        .collect();
    shown.splice(launcher..launcher + 2, debugpy);
    joined(&shown)
}

#[test]
fn rewrite_by_mode() {
    let node = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 4)));
    let v6 = Some(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7)));
    let wait = DebugpyOptions {
        wait_for_client: true,
        ..DebugpyOptions::default()
    };
    let follow_children = DebugpyOptions {
        sub_process: true,
        ..DebugpyOptions::default()
    };
    let at = |mode, node_ip| Endpoint {
        mode,
        port: 5678,
        node_ip,
    };
    let tail = "--configure-subProcess false s.py --lr 0.1";
    let cases: Vec<(Endpoint, DebugpyOptions, String)> = vec![
        (
            at(DebugMode::Connect, node),
            DebugpyOptions::default(),
            format!("python3 -Xfrozen_modules=off -m debugpy --connect 127.0.0.1:5678 {tail}"),
        ),
        (
            at(DebugMode::Connect, None),
            wait,
            format!("python3 -Xfrozen_modules=off -m debugpy --connect 127.0.0.1:5678 {tail}"),
        ),
        (
            at(DebugMode::Listen, node),
            DebugpyOptions::default(),
            format!("python3 -Xfrozen_modules=off -m debugpy --listen 127.0.0.1:5678 {tail}"),
        ),
        (
            at(DebugMode::Listen, None),
            wait,
            format!("python3 -Xfrozen_modules=off -m debugpy --listen 127.0.0.1:5678 --wait-for-client {tail}"),
        ),
        (
            at(DebugMode::Direct, node),
            wait,
            format!("python3 -Xfrozen_modules=off -m debugpy --listen 10.0.0.4:5678 --wait-for-client {tail}"),
        ),
        (
            at(DebugMode::Direct, v6),
            DebugpyOptions::default(),
            format!("python3 -Xfrozen_modules=off -m debugpy --listen [fd00::7]:5678 {tail}"),
        ),
        (
            at(DebugMode::Connect, None),
            follow_children,
            "python3 -Xfrozen_modules=off -m debugpy --connect 127.0.0.1:5678 --configure-subProcess true s.py --lr 0.1".to_owned(),
        ),
    ];
    for (endpoint, options, expected) in cases {
        assert_eq!(
            rewritten(&["python3", "s.py", "--lr", "0.1"], endpoint, options),
            expected,
            "{endpoint:?} {options:?}"
        );
    }
}

#[test]
fn rewrite_keeps_interpreter_options_and_targets() {
    let endpoint = Endpoint {
        mode: DebugMode::Connect,
        port: 6000,
        node_ip: None,
    };
    let debugpy = "-m debugpy --connect 127.0.0.1:6000 --configure-subProcess false";
    let off = "-Xfrozen_modules=off";
    let cases: Vec<(&[&str], String)> = vec![
        (
            &["python", "-u", "-B", "s.py"],
            format!("python -u -B {off} {debugpy} s.py"),
        ),
        (
            &["python", "-uB", "-W", "error", "s.py"],
            format!("python -uB -W error {off} {debugpy} s.py"),
        ),
        (
            &["python", "-X", "frozen_modules=on", "s.py", "a"],
            format!("python -X frozen_modules=on {debugpy} s.py a"),
        ),
        (
            &["python", "-Xfrozen_modules=off", "s.py"],
            format!("python {off} {debugpy} s.py"),
        ),
        (
            &["python", "-m", "pkg.mod", "--x", "1"],
            format!("python {off} {debugpy} -m pkg.mod --x 1"),
        ),
        (
            &["python", "-um", "pkg"],
            format!("python -u {off} {debugpy} -m pkg"),
        ),
        (
            &["python", "-mpkg", "a"],
            format!("python {off} {debugpy} -m pkg a"),
        ),
        (
            &["python", "-c", "print(1)", "a"],
            format!("python {off} {debugpy} -c print(1) a"),
        ),
        (
            &["python", "-Bcpass"],
            format!("python -B {off} {debugpy} -c pass"),
        ),
        (
            &["python", "--", "s.py", "--", "x"],
            format!("python {off} {debugpy} s.py -- x"),
        ),
        (
            &["env", "A=1", "/venv/bin/python3.11", "-I", "s.py"],
            format!("env A=1 /venv/bin/python3.11 -I {off} {debugpy} s.py"),
        ),
    ];
    for (words, expected) in cases {
        assert_eq!(
            rewritten(words, endpoint, DebugpyOptions::default()),
            expected,
            "{words:?}"
        );
    }
}

#[test]
fn rewrite_exports_the_breakpoint_hook() {
    let python = python_argv::parse(&argv(&["python3", "s.py"])).expect("parses");
    let endpoint = Endpoint {
        mode: DebugMode::Listen,
        port: 1,
        node_ip: None,
    };
    let options = DebugpyOptions {
        report_fd: Some(9),
        ..DebugpyOptions::default()
    };
    let injected = rewrite(&python, &endpoint, &options).expect("rewrites");
    assert_eq!(
        injected.env[0],
        ("PYTHONBREAKPOINT".into(), "debugpy.breakpoint".into())
    );
    // The bootstrap text rides along, with the debugpy arguments and the report pipe.
    let (key, text) = &injected.env[1];
    assert_eq!(key, bootstrap::BOOTSTRAP_VAR);
    let text = text.to_string_lossy();
    assert!(text.starts_with("AMLX_REPORT_FD = 9\n"), "{text}");
    assert!(text.contains(r#"["--listen","127.0.0.1:1","--configure-subProcess","false"]"#));
}

#[test]
fn direct_mode_needs_the_node_ip() {
    let python = python_argv::parse(&argv(&["python3", "s.py"])).expect("parses");
    let endpoint = Endpoint {
        mode: DebugMode::Direct,
        port: 5678,
        node_ip: None,
    };
    let err = rewrite(&python, &endpoint, &DebugpyOptions::default()).expect_err("no node IP");
    assert!(matches!(err, InjectError::NoNodeIp), "{err}");
}
