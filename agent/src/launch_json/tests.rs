//! Tests for target lists, generated entries and the comment-preserving merge.

use super::*;

fn spec(mode: DebugMode, ports: &[u16]) -> LaunchSpec {
    LaunchSpec {
        mode,
        host: "127.0.0.1".into(),
        targets: targets_from_ports(ports).expect("valid ports"),
        local_root: "${workspaceFolder}".into(),
        remote_root: ".".into(),
        post_mortem_port: None,
    }
}

fn ranks(spec: &str, base: u16) -> Result<Vec<(Option<u32>, u16)>, TargetError> {
    targets_from_ranks(spec, base).map(|t| t.iter().map(|t| (t.rank, t.port)).collect())
}

#[test]
fn targets_from_rank_specs() {
    assert_eq!(
        ranks("0-3", 5678),
        Ok(vec![
            (Some(0), 5678),
            (Some(1), 5679),
            (Some(2), 5680),
            (Some(3), 5681)
        ])
    );
    assert_eq!(
        ranks("5,0,2-3,3", 6000),
        Ok(vec![
            (Some(0), 6000),
            (Some(2), 6002),
            (Some(3), 6003),
            (Some(5), 6005)
        ])
    );
    assert_eq!(ranks("1", 65534), Ok(vec![(Some(1), 65535)]));
    assert_eq!(
        ranks("2", 65534),
        Err(TargetError::PortOverflow {
            rank: 2,
            base: 65534
        })
    );
    assert_eq!(
        ranks("all", 5678),
        Err(TargetError::NotExplicit("all".into()))
    );
    assert_eq!(
        ranks("master", 5678),
        Err(TargetError::NotExplicit("master".into()))
    );
    assert!(matches!(ranks("0-x", 5678), Err(TargetError::RankSpec(_))));
    assert!(matches!(
        ranks("0-4000000000", 5678),
        Err(TargetError::TooMany(_))
    ));
    assert_eq!(ranks("0-1023", 1000).map(|t| t.len()), Ok(MAX_TARGETS));
    // `--port-base 0` gave rank 0 port 0, which `--ports 0` refuses.
    assert_eq!(ranks("0-1", 0), Err(TargetError::PortZero));
    assert_eq!(ranks("1-2", 0), Ok(vec![(Some(1), 1), (Some(2), 2)]));
}

#[test]
fn targets_from_port_lists() {
    let ports = targets_from_ports(&[5679, 5678]).expect("valid");
    assert_eq!(
        ports.iter().map(|t| t.port).collect::<Vec<_>>(),
        [5679, 5678]
    );
    assert_eq!(ports[0].name(), "amlx: port 5679");
    assert_eq!(targets_from_ports(&[]), Err(TargetError::Empty));
    assert_eq!(targets_from_ports(&[0]), Err(TargetError::PortZero));
    assert_eq!(
        targets_from_ports(&[1, 2, 1]),
        Err(TargetError::DuplicatePort(1))
    );
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn configurations_follow_the_mode() {
    for (mode, side, other) in [
        (DebugMode::Connect, "listen", "connect"),
        (DebugMode::Listen, "connect", "listen"),
        (DebugMode::Direct, "connect", "listen"),
    ] {
        let mut spec = spec(mode, &[5678]);
        spec.targets[0].rank = Some(0);
        spec.host = "10.1.2.3".into();
        let config = json(&configurations(&spec)[0]);
        assert_eq!(config["name"], "amlx: rank 0 (port 5678)");
        assert_eq!(config["type"], "debugpy");
        assert_eq!(config["request"], "attach");
        assert_eq!(config[side]["host"], "10.1.2.3", "{mode}");
        assert_eq!(config[side]["port"], 5678, "{mode}");
        assert!(config.get(other).is_none(), "{mode}: {config}");
        assert_eq!(config["justMyCode"], false);
        assert_eq!(config["pathMappings"][0]["localRoot"], "${workspaceFolder}");
        assert_eq!(config["pathMappings"][0]["remoteRoot"], ".");
    }
}

#[test]
fn the_compound_lists_every_configuration() {
    let spec = spec(DebugMode::Connect, &[5678, 5680, 5679]);
    let names: Vec<serde_json::Value> = configurations(&spec)
        .iter()
        .map(|c| json(c)["name"].clone())
        .collect();
    let compound = json(&compound(&spec));
    assert_eq!(compound["name"], COMPOUND_NAME);
    assert_eq!(compound["configurations"], serde_json::Value::Array(names));
}

#[test]
fn render_is_plain_json() {
    let doc = json(&render(&spec(DebugMode::Listen, &[5678, 5679])));
    assert_eq!(doc["version"], "0.2.0");
    assert_eq!(doc["configurations"].as_array().map(Vec::len), Some(2));
    assert_eq!(doc["compounds"].as_array().map(Vec::len), Some(1));
}

const USER_FILE: &str = r#"{
    // My own settings. Keep me.
    "version": "0.2.0",
    "configurations": [
        {
            "name": "Python: current file", // inline comment
            "type": "debugpy",
            "request": "launch",
            "program": "${file}",
        },
        /* a block comment between entries */
        {
            "name": "amlx: port 1234",
            "type": "debugpy",
            "request": "attach"
        },
        {
            "name": "Tests",
            "type": "debugpy",
            "request": "launch",
            "module": "pytest"
        },
    ],
    "compounds": [
        { "name": "Mine", "configurations": ["Tests", "amlx: port 1234"] },
    ],
}
"#;

/// (what, existing file, snippets of it that must survive)
fn merge_cases() -> Vec<(&'static str, String, Vec<&'static str>)> {
    vec![
        ("user file", USER_FILE.into(), vec![
            "// My own settings. Keep me.",
            "\"name\": \"Python: current file\", // inline comment",
            "/* a block comment between entries */",
            "\"module\": \"pytest\"",
            "{ \"name\": \"Mine\", \"configurations\": [\"Tests\", \"amlx: port 1234\"] },",
        ]),
        ("CRLF", USER_FILE.replace('\n', "\r\n"), vec!["// My own settings. Keep me.\r\n"]),
        ("no compounds", "{\n  \"version\": \"0.2.0\",\n  \"configurations\": [\n    {\"name\": \"x\"}\n  ]\n}\n".into(),
            vec!["    {\"name\": \"x\"}"]),
        ("no configurations", "{\"version\": \"0.2.0\"}".into(), vec!["\"version\": \"0.2.0\""]),
        ("empty object", "{}".into(), vec![]),
        ("empty arrays", "{\n    \"configurations\": [],\n    \"compounds\": []\n}".into(), vec![]),
        ("one line", "{\"configurations\":[{\"name\":\"a\"},{\"name\":\"amlx: old\"}],\"x\":1}".into(),
            vec!["{\"name\":\"a\"}", "\"x\":1"]),
        ("only ours", "{\n    \"configurations\": [\n        {\"name\": \"amlx: rank 9 (port 9)\"}\n    ]\n}\n".into(), vec![]),
        ("ours first", "{\n    \"configurations\": [\n        {\"name\": \"amlx: a\"},\n        {\"name\": \"b\"}\n    ]\n}\n".into(),
            vec!["        {\"name\": \"b\"}"]),
        ("tabs", "{\n\t\"configurations\": [\n\t\t{\"name\": \"t\"}\n\t]\n}\n".into(),
            vec!["\t\t{\"name\": \"t\"},\n\t\t{\n\t\t\t\"name\": \"amlx: port 5678\""]),
        ("BOM and trailing comments", "\u{feff}{\"configurations\": [] /* end */}\n// bye\n".into(),
            vec!["\u{feff}", "/* end */", "// bye"]),
    ]
}

fn generated_names(text: &str, key: &str) -> Vec<String> {
    let root = jsonc::parse(text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
    match root.member(key).map(|m| &m.value) {
        Some(jsonc::Value::Array { items, .. }) => items
            .iter()
            .filter_map(|i| i.string_member("name"))
            .filter(|n| n.starts_with(NAME_PREFIX))
            .map(str::to_owned)
            .collect(),
        other => panic!("{key} is not an array: {other:?}\n{text}"),
    }
}

#[test]
fn merge_keeps_user_text_replaces_ours_and_is_idempotent() {
    let mut spec = spec(DebugMode::Connect, &[5678, 5679]);
    spec.targets[1].rank = Some(1);
    let want = vec![
        "amlx: port 5678".to_owned(),
        "amlx: rank 1 (port 5679)".to_owned(),
    ];
    for (what, existing, kept) in merge_cases() {
        let merged = merge(&existing, &spec).unwrap_or_else(|e| panic!("{what}: {e}"));
        for snippet in kept {
            assert!(
                merged.contains(snippet),
                "{what}: lost {snippet:?}:\n{merged}"
            );
        }
        assert_eq!(
            generated_names(&merged, "configurations"),
            want,
            "{what}:\n{merged}"
        );
        assert_eq!(
            generated_names(&merged, "compounds"),
            [COMPOUND_NAME],
            "{what}"
        );
        assert!(
            !merged.contains("amlx: port 1234\","),
            "{what}: stale entry kept"
        );
        assert_eq!(
            merge(&merged, &spec).as_deref(),
            Ok(merged.as_str()),
            "{what}: not idempotent"
        );
        // A different port set replaces the generated entries, and back again.
        let other = merge(&merged, &self::spec(DebugMode::Listen, &[7000])).expect("merges");
        assert_eq!(
            generated_names(&other, "configurations"),
            ["amlx: port 7000"],
            "{what}"
        );
        assert_eq!(
            merge(&other, &spec).as_deref(),
            Ok(merged.as_str()),
            "{what}: not reversible"
        );
        if existing.contains("\r\n") {
            assert!(
                !merged.replace("\r\n", "").contains('\n'),
                "{what}: mixed newlines"
            );
        }
    }
}

#[test]
fn merge_output_has_the_expected_layout() {
    let existing =
        "{\n  // two-space file\n  \"configurations\": [\n    {\"name\": \"mine\"}\n  ]\n}\n";
    let spec = LaunchSpec {
        mode: DebugMode::Listen,
        host: "127.0.0.1".into(),
        targets: vec![DebugTarget {
            rank: Some(0),
            port: 5678,
        }],
        local_root: "${workspaceFolder}".into(),
        remote_root: ".".into(),
        post_mortem_port: None,
    };
    let expected = r#"{
  // two-space file
  "configurations": [
    {"name": "mine"},
    {
      "name": "amlx: rank 0 (port 5678)",
      "type": "debugpy",
      "request": "attach",
      "connect": {
        "host": "127.0.0.1",
        "port": 5678
      },
      "pathMappings": [
        {
          "localRoot": "${workspaceFolder}",
          "remoteRoot": "."
        }
      ],
      "justMyCode": false,
      "presentation": {
        "group": "amlx",
        "order": 1
      }
    }
  ],
  "compounds": [
    {
      "name": "amlx: all ranks",
      "configurations": [
        "amlx: rank 0 (port 5678)"
      ],
      "presentation": {
        "group": "amlx",
        "order": 0
      }
    }
  ]
}
"#;
    assert_eq!(merge(existing, &spec).expect("merges"), expected);
}

#[test]
fn merge_refuses_what_it_cannot_edit() {
    let spec = spec(DebugMode::Connect, &[5678]);
    let cases = [
        ("[]", "not an object"),
        (
            "{\"configurations\": {}}",
            "\"configurations\" is not an array",
        ),
        ("{\"compounds\": 3}", "\"compounds\" is not an array"),
        ("{\n  \"a\": 1\n  \"b\": 2\n}", "line 3, column 3"),
        ("// only a comment\n", "end of the text"),
        (
            "{\"configurations\": [], \"configurations\": [{\"name\": \"b\"}]}",
            "has \"configurations\" twice",
        ),
    ];
    for (text, expected) in cases {
        let err = merge(text, &spec).expect_err(text);
        assert!(err.to_string().contains(expected), "{text:?}: {err}");
    }
}
