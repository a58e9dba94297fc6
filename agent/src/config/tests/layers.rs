//! Precedence (flag > env > file > default), environment and flag errors, discovery,
//! and the example config.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::super::*;
use super::{FILE, SECRET, env, from_file};

/// Owned flag structs, borrowed by `Flags`.
#[derive(Default)]
struct Args {
    log_format: Option<LogFormat>,
    policy: PolicyArgs,
    ports: PortArgs,
    node: NodeArgs,
    session: SessionArgs,
    relay: RelayClientArgs,
    max_tunnels: Option<String>,
    spare_tunnels: Option<String>,
    state_dir: Option<PathBuf>,
    step: Option<StepHints>,
}

impl Args {
    fn flags(&self) -> Flags<'_> {
        Flags {
            config: None,
            log_format: self.log_format,
            policy: Some(&self.policy),
            ports: Some(&self.ports),
            node: Some(&self.node),
            session: Some(&self.session),
            state_dir: self.state_dir.as_deref(),
            relay: Some(&self.relay),
            max_tunnels: self.max_tunnels.as_ref(),
            spare_tunnels: self.spare_tunnels.as_ref(),
            step: self.step.as_ref(),
        }
    }
}

/// One key through every layer: what each layer sets and what the result reads as.
struct Case {
    file: &'static str,
    env: (&'static str, &'static str),
    /// `None` for keys without a flag (secrets, the Hybrid Connection name).
    flag: Option<fn(&mut Args)>,
    get: fn(&Settings) -> String,
    /// Expected value with only defaults, then as set by file, env, flag (if any).
    want: [&'static str; 4],
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

fn precedence_cases() -> Vec<Case> {
    vec![
        Case {
            file: "[debug]\nenabled = true",
            env: ("AMLX_DEBUG", "off"),
            flag: Some(|a| a.policy.debug = true),
            get: |s| s.policy.enabled.to_string(),
            want: ["false", "true", "false", "true"],
        },
        Case {
            file: "[debug]\nranks = \"all\"",
            env: ("AMLX_RANKS", "1-3"),
            flag: Some(|a| a.policy.ranks = s("master")),
            get: |s| s.policy.ranks.to_string(),
            want: ["0", "all", "1-3", "master"],
        },
        Case {
            file: "[debug]\nmax_targets_per_node = 2",
            env: ("AMLX_MAX_TARGETS_PER_NODE", "3"),
            flag: Some(|a| a.policy.max_targets_per_node = s("4")),
            get: |s| format!("{:?}", s.policy.max_targets_per_node),
            want: ["None", "Some(2)", "Some(3)", "Some(4)"],
        },
        Case {
            file: "[ports]\nrange = \"6000-6099\"",
            env: ("AMLX_PORT_RANGE", "7000-7099"),
            flag: Some(|a| a.ports.port_range = s("8000-8099")),
            get: |s| s.ports.range.to_string(),
            want: ["5678-5777", "6000-6099", "7000-7099", "8000-8099"],
        },
        Case {
            file: "[ports]\nlock_dir = \"/f\"",
            env: ("AMLX_LOCK_DIR", "/e"),
            flag: Some(|a| a.ports.lock_dir = Some("/g".into())),
            get: |s| format!("{:?}", s.ports.lock_dir),
            want: ["None", "Some(\"/f\")", "Some(\"/e\")", "Some(\"/g\")"],
        },
        Case {
            file: "[node]\nip = \"10.0.0.1\"",
            env: ("AMLX_NODE_IP", "10.0.0.2"),
            flag: Some(|a| a.node.node_ip = Some(IpAddr::from([10, 0, 0, 3]))),
            get: |s| format!("{:?}", s.node_ip),
            want: ["None", "Some(10.0.0.1)", "Some(10.0.0.2)", "Some(10.0.0.3)"],
        },
        Case {
            file: "[debug]\nmode = \"listen\"",
            env: ("AMLX_DEBUG_MODE", "direct"),
            flag: Some(|a| a.session.mode = s("listen")),
            get: |s| s.session.mode.to_string(),
            want: ["connect", "listen", "direct", "listen"],
        },
        Case {
            file: "[debug]\non_debug_failure = \"fail\"",
            env: ("AMLX_ON_DEBUG_FAILURE", "continue"),
            flag: Some(|a| a.session.on_debug_failure = s("fail")),
            get: |s| s.session.on_failure.to_string(),
            want: ["continue", "fail", "continue", "fail"],
        },
        Case {
            file: "[debug]\nattach_timeout = \"30s\"",
            env: ("AMLX_ATTACH_TIMEOUT", "45s"),
            flag: Some(|a| a.session.attach_timeout = s("2m")),
            get: |s| format!("{:?}", s.session.attach_timeout),
            want: ["600s", "30s", "45s", "120s"],
        },
        Case {
            file: "[debug]\ninject = \"debugpy\"",
            env: ("AMLX_INJECT", "none"),
            flag: Some(|a| a.session.inject = s("debugpy")),
            get: |s| s.session.inject.to_string(),
            want: ["auto", "debugpy", "none", "debugpy"],
        },
        Case {
            file: "[debug]\nwait_for_client = true",
            env: ("AMLX_WAIT_FOR_CLIENT", "no"),
            flag: Some(|a| a.session.wait_for_client = true),
            get: |s| s.session.wait_for_client.to_string(),
            want: ["false", "true", "false", "true"],
        },
        Case {
            file: "[log]\nformat = \"json\"",
            env: ("AMLX_LOG_FORMAT", "text"),
            flag: Some(|a| a.log_format = Some(LogFormat::Json)),
            get: |s| format!("{:?}", s.log_format),
            want: ["None", "Some(Json)", "Some(Text)", "Some(Json)"],
        },
        Case {
            file: "[relay]\nhybrid_connection = \"from-file\"",
            env: ("AMLX_RELAY_HC", "from-env"),
            flag: Some(|a| a.relay.hc = s("from-flag")),
            get: |s| format!("{:?}", s.relay.hybrid_connection),
            want: [
                "None",
                "Some(\"from-file\")",
                "Some(\"from-env\")",
                "Some(\"from-flag\")",
            ],
        },
        Case {
            file: "[relay]\nconnection_string_file = \"/f\"",
            env: ("AMLX_RELAY_CONNECTION_STRING_FILE", "/e"),
            flag: Some(|a| a.relay.connection_string_file = Some("/g".into())),
            get: |s| format!("{:?}", s.relay.connection_string_file),
            want: ["None", "Some(\"/f\")", "Some(\"/e\")", "Some(\"/g\")"],
        },
        Case {
            file: "[relay]\nca_file = \"/f.pem\"",
            env: ("AMLX_RELAY_CA_FILE", "/e.pem"),
            flag: Some(|a| a.relay.ca_file = Some("/g.pem".into())),
            get: |s| format!("{:?}", s.relay.ca_file),
            want: [
                "None",
                "Some(\"/f.pem\")",
                "Some(\"/e.pem\")",
                "Some(\"/g.pem\")",
            ],
        },
        Case {
            file: "[relay]\ninsecure_ws = true",
            env: ("AMLX_RELAY_INSECURE_WS", "false"),
            flag: Some(|a| a.relay.insecure_ws = true),
            get: |s| s.relay.insecure_ws.to_string(),
            want: ["false", "true", "false", "true"],
        },
        Case {
            file: "[relay]\nmax_tunnels = 5000",
            env: ("AMLX_RELAY_MAX_TUNNELS", "10"),
            flag: Some(|a| a.max_tunnels = s("7")),
            get: |s| s.relay.max_tunnels.to_string(),
            want: ["256", "5000", "10", "7"],
        },
        Case {
            file: "[relay]\nspare_tunnels = 2",
            env: ("AMLX_RELAY_SPARE_TUNNELS", "8"),
            flag: Some(|a| a.spare_tunnels = s("1")),
            get: |s| s.relay.spare_tunnels.to_string(),
            want: ["0", "2", "8", "1"],
        },
        Case {
            file: "[node]\nstate_dir = \"/f\"",
            env: ("AMLX_STATE_DIR", "/e"),
            flag: Some(|a| a.state_dir = Some("/g".into())),
            get: |s| format!("{:?}", s.state_dir),
            want: ["None", "Some(\"/f\")", "Some(\"/e\")", "Some(\"/g\")"],
        },
        Case {
            file: "[relay]\nconnection_string = \"Endpoint=sb://file/\"",
            env: ("AMLX_RELAY_CONNECTION_STRING", "Endpoint=sb://env/"),
            flag: None,
            get: |s| {
                format!(
                    "{:?}",
                    s.relay.connection_string.as_ref().map(Secret::expose)
                )
            },
            want: [
                "None",
                "Some(\"Endpoint=sb://file/\")",
                "Some(\"Endpoint=sb://env/\")",
                "",
            ],
        },
    ]
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    for case in precedence_cases() {
        // Every subset of the three layers: the highest one present wins.
        for mask in 0..8u8 {
            let (use_file, use_env, use_flag) = (mask & 1 != 0, mask & 2 != 0, mask & 4 != 0);
            let mut args = Args::default();
            let use_flag = use_flag && case.flag.is_some();
            if let (true, Some(set_flag)) = (use_flag, case.flag) {
                set_flag(&mut args);
            }
            let vars = if use_env { env(&[case.env]) } else { env(&[]) };
            let file = use_file.then(|| (Path::new(FILE), case.file));
            let got = layer(&args.flags(), &vars, file).expect(case.file);
            let layer_index = if use_flag {
                3
            } else if use_env {
                2
            } else if use_file {
                1
            } else {
                0
            };
            assert_eq!(
                (case.get)(&got),
                case.want[layer_index],
                "{} with file={use_file} env={use_env} flag={use_flag}",
                case.env.0
            );
        }
    }
}

#[test]
fn no_debug_beats_everything_and_empty_variables_are_unset() {
    let mut args = Args::default();
    args.policy.debug = true;
    args.policy.no_debug = true;
    let vars = env(&[("AMLX_DEBUG", "1")]);
    let got = layer(
        &args.flags(),
        &vars,
        Some((Path::new(FILE), "[debug]\nenabled = true")),
    );
    assert!(!got.expect("valid").policy.enabled);

    let empty = env(&[
        ("AMLX_DEBUG", ""),
        ("AMLX_RANKS", " "),
        ("AMLX_PORT_RANGE", ""),
        ("AMLX_ATTACH_TIMEOUT", ""),
        ("AMLX_RELAY_CONNECTION_STRING", ""),
        ("AMLX_CONFIG", ""),
    ]);
    let text = "[debug]\nenabled = true\nranks = \"all\"";
    let got = layer(&Flags::default(), &empty, Some((Path::new(FILE), text))).expect("valid");
    assert!(got.policy.enabled);
    assert_eq!(got.policy.ranks.to_string(), "all");
    assert_eq!(got.relay.connection_string, None);
    assert_eq!(got.session.attach_timeout, DEFAULT_ATTACH_TIMEOUT);
}

/// Credentials in either form (inline or a file): the highest layer giving any wins and
/// drops both forms below it; within one layer the file wins.
#[test]
fn credentials_of_either_form_layer_as_one_setting() {
    const INLINE_FILE: &str = "[relay]\nconnection_string = \"Endpoint=sb://file/\"";
    const PATH_FILE: &str = "[relay]\nconnection_string_file = \"/cfg.cs\"";
    const BOTH_FILE: &str = "[relay]\nconnection_string = \"Endpoint=sb://file/\"\nconnection_string_file = \"/cfg.cs\"";
    // (config file, environment, --connection-string-file) -> (inline, file) after layering
    type Row = (
        &'static str,
        &'static [(&'static str, &'static str)],
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
    );
    let rows: &[Row] = &[
        ("", &[], None, None, None),
        (INLINE_FILE, &[], None, Some("Endpoint=sb://file/"), None),
        (PATH_FILE, &[], None, None, Some("/cfg.cs")),
        (BOTH_FILE, &[], None, None, Some("/cfg.cs")),
        (
            PATH_FILE,
            &[("AMLX_RELAY_CONNECTION_STRING", "Endpoint=sb://env/")],
            None,
            Some("Endpoint=sb://env/"),
            None,
        ),
        (
            INLINE_FILE,
            &[("AMLX_RELAY_CONNECTION_STRING_FILE", "/env.cs")],
            None,
            None,
            Some("/env.cs"),
        ),
        (
            "",
            &[
                ("AMLX_RELAY_CONNECTION_STRING", "Endpoint=sb://env/"),
                ("AMLX_RELAY_CONNECTION_STRING_FILE", "/env.cs"),
            ],
            None,
            None,
            Some("/env.cs"),
        ),
        (
            INLINE_FILE,
            &[("AMLX_RELAY_CONNECTION_STRING", "Endpoint=sb://env/")],
            Some("/flag.cs"),
            None,
            Some("/flag.cs"),
        ),
        (
            "",
            &[("AMLX_RELAY_CONNECTION_STRING_FILE", " ")],
            None,
            None,
            None,
        ),
    ];
    for (file, vars, flag, inline, path) in rows {
        let mut args = Args::default();
        args.relay.connection_string_file = flag.map(PathBuf::from);
        let got = layer(&args.flags(), &env(vars), Some((Path::new(FILE), file)))
            .expect("valid")
            .relay;
        assert_eq!(
            (
                got.connection_string.as_ref().map(Secret::expose),
                got.connection_string_file.as_deref(),
            ),
            (*inline, path.map(Path::new)),
            "file {file:?} env {vars:?} flag {flag:?}"
        );
    }
}

/// The step's prior-art arguments sit above the config file and below the environment
/// and the flags; each one overruled leaves a note naming the winner.
#[test]
fn step_arguments_sit_between_the_file_and_the_environment() {
    let step = StepHints {
        debug: Some(true),
        debug_port: Some(5699),
        hybrid_connection: Some("from-step".into()),
    };
    type Row = (
        &'static str,
        &'static [(&'static str, &'static str)],
        fn(&mut Args),
        bool,
        &'static str,
        &'static str,
        &'static [&'static str],
    );
    // (file, env, flags) -> (debug on, port range, hc, what the notes name)
    let rows: &[Row] = &[
        (
            "[debug]\nenabled = false\n[ports]\nrange = \"6000-6009\"",
            &[],
            |_| {},
            true,
            "5699-5699",
            "from-step",
            &[],
        ),
        (
            "",
            &[],
            |a| a.policy.no_debug = true,
            false,
            "5699-5699",
            "from-step",
            &["ignoring the step's --is-debug true: --no-debug wins"],
        ),
        (
            "",
            &[("AMLX_DEBUG", "0")],
            |_| {},
            false,
            "5699-5699",
            "from-step",
            &["ignoring the step's --is-debug true: AMLX_DEBUG wins"],
        ),
        (
            "",
            &[("AMLX_DEBUG", "1")],
            |a| a.policy.no_debug = true,
            false,
            "5699-5699",
            "from-step",
            &["--is-debug true: --no-debug wins"],
        ),
        (
            "",
            &[],
            |a| a.ports.port_range = s("7000-7009"),
            true,
            "7000-7009",
            "from-step",
            &["ignoring the step's --debug-port 5699: --port-range 7000-7009 wins"],
        ),
        (
            "",
            &[
                ("AMLX_PORT_RANGE", "7100-7109"),
                ("AMLX_RELAY_HC", "env-hc"),
            ],
            |_| {},
            true,
            "7100-7109",
            "env-hc",
            &[
                "--debug-port 5699: AMLX_PORT_RANGE 7100-7109 wins",
                "--debug-relay-connection-name \"from-step\": AMLX_RELAY_HC wins",
            ],
        ),
        (
            "",
            &[],
            |a| {
                a.policy.no_debug = true;
                a.ports.port_range = s("7000-7009");
                a.relay.hc = s("flag-hc");
            },
            false,
            "7000-7009",
            "flag-hc",
            &[
                "--no-debug wins",
                "--port-range 7000-7009 wins",
                "--hc wins",
            ],
        ),
    ];
    for (file, vars, set_flags, debug, range, hc, notes) in rows {
        let mut args = Args {
            step: Some(step.clone()),
            ..Args::default()
        };
        set_flags(&mut args);
        let got = layer(&args.flags(), &env(vars), Some((Path::new(FILE), file))).expect("valid");
        let what = format!("file {file:?} env {vars:?}: {:?}", got.notes);
        assert_eq!(got.policy.enabled, *debug, "{what}");
        assert_eq!(got.ports.range.to_string(), *range, "{what}");
        assert_eq!(got.relay.hybrid_connection.as_deref(), Some(*hc), "{what}");
        assert_eq!(got.notes.len(), notes.len(), "{what}");
        for (note, want) in got.notes.iter().zip(*notes) {
            assert!(note.contains(want), "{want:?} not in {note:?}");
        }
    }
}

#[test]
fn env_errors_name_the_variable() {
    let cases: &[(&str, &str, &str)] = &[
        ("AMLX_DEBUG", "maybe", "invalid switch \"maybe\""),
        ("AMLX_RANKS", "x", "invalid rank spec \"x\""),
        (
            "AMLX_MAX_TARGETS_PER_NODE",
            "-2",
            "invalid target count \"-2\"",
        ),
        ("AMLX_PORT_RANGE", "70000", "invalid port range \"70000\""),
        ("AMLX_NODE_IP", "host", "invalid IP address \"host\""),
        ("AMLX_DEBUG_MODE", "x", "invalid debug mode \"x\""),
        ("AMLX_ON_DEBUG_FAILURE", "x", "invalid failure policy \"x\""),
        (
            "AMLX_ATTACH_TIMEOUT",
            "10 parsecs",
            "invalid duration \"10 parsecs\"",
        ),
        ("AMLX_INJECT", "x", "invalid inject mode \"x\""),
        ("AMLX_WAIT_FOR_CLIENT", "x", "invalid switch \"x\""),
        ("AMLX_LOG_FORMAT", "x", "invalid log format \"x\""),
        ("AMLX_RELAY_MAX_TUNNELS", "0", "invalid tunnel count \"0\""),
        (
            "AMLX_RELAY_SPARE_TUNNELS",
            "-1",
            "invalid spare tunnel count \"-1\"",
        ),
    ];
    for (name, value, want) in cases {
        let err = layer(&Flags::default(), &env(&[(name, value)]), None).expect_err(name);
        let err = err.to_string();
        assert!(
            err.starts_with(&format!("config error: {name}: {want}")),
            "{err}"
        );
    }
}

#[test]
fn flag_errors_name_the_flag() {
    type SetFlag = fn(&mut Args);
    let cases: &[(SetFlag, &str)] = &[
        (
            |a| a.policy.ranks = s("1-"),
            "--ranks: invalid rank spec \"1-\"",
        ),
        (
            |a| a.policy.max_targets_per_node = s("none"),
            "--max-targets-per-node: invalid target count \"none\"",
        ),
        (
            |a| a.ports.port_range = s("a-b"),
            "--port-range: invalid port range \"a-b\"",
        ),
        (
            |a| a.session.mode = s("x"),
            "--mode: invalid debug mode \"x\"",
        ),
        (
            |a| a.session.on_debug_failure = s("x"),
            "--on-debug-failure: invalid failure policy \"x\"",
        ),
        (
            |a| a.session.attach_timeout = s("10 parsecs"),
            "--attach-timeout: invalid duration \"10 parsecs\"",
        ),
        (
            |a| a.session.inject = s("x"),
            "--inject: invalid inject mode \"x\"",
        ),
        (
            |a| a.max_tunnels = s("many"),
            "--max-tunnels: invalid tunnel count \"many\"",
        ),
        (
            |a| a.spare_tunnels = s("9"),
            "--spare-tunnels: invalid spare tunnel count \"9\" (expected a whole number from 0 to 8)",
        ),
    ];
    for (set_flag, want) in cases {
        let mut args = Args::default();
        set_flag(&mut args);
        let err = layer(&args.flags(), &env(&[]), None)
            .expect_err(want)
            .to_string();
        assert!(err.starts_with(&format!("config error: {want}")), "{err}");
    }
}

/// The example file with every `#key = value` / `#[table]` line switched on.
fn uncommented(example: &str) -> String {
    example
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if !rest.starts_with([' ', '#']) && !rest.is_empty() => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const EXAMPLE: &str = include_str!("../../../../config.example.toml");

#[test]
fn example_config_states_the_defaults() {
    let mut got = from_file(EXAMPLE);
    assert_eq!(got.source.take().as_deref(), Some(Path::new(FILE)));
    assert_eq!(got.log_format, Some(LogFormat::Text));
    got.log_format = None;
    assert_eq!(got, Settings::default());
}

#[test]
fn example_config_commented_settings_are_valid() {
    let text = uncommented(EXAMPLE);
    assert_ne!(
        text, EXAMPLE,
        "the example shows optional settings commented out"
    );
    let got = from_file(&text);
    assert_eq!(got.policy.max_targets_per_node, Some(1));
    assert!(got.ports.lock_dir.is_some() && got.node_ip.is_some());
    // Both credential forms are in the example; within one layer the file wins.
    assert!(got.relay.connection_string_file.is_some() && got.relay.ca_file.is_some());
    assert_eq!(got.relay.connection_string, None);
    let server = &got.relay.server;
    assert!(server.tls.is_some());
    assert_eq!(server.keys.len(), 2);
    assert!(!format!("{got:?}").contains(SECRET));
    let names: Vec<&str> = got.targets.keys().map(String::as_str).collect();
    assert_eq!(names, ["box", "remotevm"]);
}

#[test]
fn discovery_flag_then_variable_then_default() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, ranks: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("[debug]\nranks = \"{ranks}\"\n")).expect("write config");
        path
    };
    let (flag_file, env_file, default_file) = (
        write("flag.toml", "1"),
        write("env.toml", "2"),
        write("default.toml", "3"),
    );
    let missing = dir.path().join("missing.toml");
    let env_path = env_file.display().to_string();
    let ranks = |config: Option<&Path>, vars: &HashMap<String, String>, default: &Path| {
        let flags = Flags {
            config,
            ..Flags::default()
        };
        load_with_default(&flags, vars, default).map(|s| (s.policy.ranks.to_string(), s.source))
    };
    let with_env = env(&[(ENV_CONFIG, &env_path)]);
    let no_env = HashMap::new();
    // (--config, environment, default path) -> (ranks read, file named as the source)
    let show = |r: Result<(String, Option<PathBuf>), ConfigError>| {
        let (ranks, source) = r.expect("loads");
        (ranks, source.map(|p| p.display().to_string()))
    };
    let name = |p: &Path| Some(p.display().to_string());
    let cases = [
        (
            ranks(Some(&flag_file), &with_env, &default_file),
            "1",
            name(&flag_file),
        ),
        (ranks(None, &with_env, &default_file), "2", name(&env_file)),
        (
            ranks(None, &no_env, &default_file),
            "3",
            name(&default_file),
        ),
        (ranks(None, &no_env, &missing), "0", None),
    ];
    for (got, want, source) in cases {
        assert_eq!(show(got), (want.to_owned(), source));
    }
    // Named files must exist.
    let err = ranks(Some(&missing), &HashMap::new(), &default_file).expect_err("missing --config");
    assert!(err.to_string().starts_with(&format!(
        "config error: --config: cannot read {}",
        missing.display()
    )));
    let vars = env(&[(ENV_CONFIG, &missing.display().to_string())]);
    let err = ranks(None, &vars, &default_file).expect_err("missing AMLX_CONFIG");
    assert!(err.to_string().starts_with(&format!(
        "config error: AMLX_CONFIG: cannot read {}",
        missing.display()
    )));
}
