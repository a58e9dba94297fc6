//! Integration tests: `launch-json` through the real binary, on real files.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::util::agent;

fn launch_json(dir: &Path, args: &[&str]) -> Output {
    agent()
        .current_dir(dir)
        .arg("launch-json")
        .args(args)
        .output()
        .expect("agent runs")
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "launch-json failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Parses the generated file, whose only comments are whole `//` lines of our own.
fn parse_generated(text: &str) -> Value {
    let plain: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    serde_json::from_str(&plain).unwrap_or_else(|e| panic!("{e}:\n{text}"))
}

fn names(doc: &Value, key: &str) -> Vec<String> {
    doc[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not an array: {doc}"))
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn creates_a_new_file_with_one_configuration_per_rank_and_the_compound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stdout = ok(launch_json(dir.path(), &["--ranks", "0-3"]));
    assert!(stdout.contains("new .vscode/launch.json"), "{stdout}");
    let path = dir.path().join(".vscode/launch.json");
    let doc = parse_generated(&std::fs::read_to_string(&path).expect("written"));
    assert_eq!(doc["version"], "0.2.0");
    let configs = names(&doc, "configurations");
    assert_eq!(
        configs,
        (0..4)
            .map(|r| format!("amlx: rank {r} (port {})", 5678 + r))
            .collect::<Vec<_>>()
    );
    for (i, config) in doc["configurations"]
        .as_array()
        .expect("array")
        .iter()
        .enumerate()
    {
        // connect mode (default): VS Code listens where `relay listen` delivers debugpy.
        assert_eq!(config["listen"]["host"], "127.0.0.1");
        assert_eq!(config["listen"]["port"], 5678 + i);
        assert_eq!(config["type"], "debugpy");
        assert_eq!(config["request"], "attach");
        assert_eq!(config["pathMappings"][0]["localRoot"], "${workspaceFolder}");
        assert_eq!(config["pathMappings"][0]["remoteRoot"], ".");
    }
    assert_eq!(names(&doc, "compounds"), ["amlx: all ranks"]);
    assert_eq!(
        doc["compounds"][0]["configurations"],
        serde_json::json!(configs)
    );
    assert!(!dir.path().join(".vscode/launch.json.bak").exists());
}

#[test]
fn stdout_output_is_plain_json_and_the_compound_matches_the_ports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stdout = ok(launch_json(
        dir.path(),
        &[
            "--ports",
            "5690,5678",
            "--mode",
            "direct",
            "--host",
            "10.0.0.4",
            "--remote-root",
            "/mnt/code",
            "--output",
            "-",
        ],
    ));
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(
        names(&doc, "configurations"),
        ["amlx: port 5690", "amlx: port 5678"]
    );
    assert_eq!(
        doc["compounds"][0]["configurations"],
        serde_json::json!(["amlx: port 5690", "amlx: port 5678"])
    );
    assert_eq!(doc["configurations"][0]["connect"]["host"], "10.0.0.4");
    assert_eq!(doc["configurations"][1]["connect"]["port"], 5678);
    assert_eq!(
        doc["configurations"][0]["pathMappings"][0]["remoteRoot"],
        "/mnt/code"
    );
    assert!(
        std::fs::read_dir(dir.path())
            .expect("read dir")
            .next()
            .is_none(),
        "--output - must not write files"
    );
}

const USER_LAUNCH_JSON: &str = r#"{
    // Team settings: do not lose this comment.
    "version": "0.2.0",
    "configurations": [
        {
            "name": "Python: current file", /* inline */
            "type": "debugpy",
            "request": "launch",
            "program": "${file}",
        },
        {
            "name": "amlx: rank 7 (port 9999)",
            "type": "debugpy",
            "request": "attach",
            "listen": { "host": "127.0.0.1", "port": 9999 }
        },
    ],
    "compounds": [
        // user compound
        { "name": "Both", "configurations": ["Python: current file"] }
    ]
}
"#;

#[test]
fn merging_keeps_user_entries_and_comments_backs_up_and_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vscode = dir.path().join(".vscode");
    std::fs::create_dir(&vscode).expect("mkdir");
    let path = vscode.join("launch.json");
    let backup = vscode.join("launch.json.bak");
    std::fs::write(&path, USER_LAUNCH_JSON).expect("write user file");

    let stdout = ok(launch_json(
        dir.path(),
        &["--ranks", "0,2", "--mode", "listen"],
    ));
    assert!(stdout.contains("launch.json.bak"), "{stdout}");
    let merged = std::fs::read_to_string(&path).expect("merged");
    for kept in [
        "// Team settings: do not lose this comment.",
        "\"name\": \"Python: current file\", /* inline */",
        "\"program\": \"${file}\",",
        "// user compound",
        "{ \"name\": \"Both\", \"configurations\": [\"Python: current file\"] }",
    ] {
        assert!(merged.contains(kept), "lost {kept:?}:\n{merged}");
    }
    assert!(!merged.contains("port 9999"), "stale entry kept:\n{merged}");
    assert!(
        merged.contains("\"name\": \"amlx: rank 2 (port 5680)\""),
        "{merged}"
    );
    assert!(merged.contains("\"name\": \"amlx: all ranks\""), "{merged}");
    assert_eq!(
        std::fs::read_to_string(&backup).expect("backup"),
        USER_LAUNCH_JSON
    );

    // Same flags again: nothing changes, not even the backup.
    let stdout = ok(launch_json(
        dir.path(),
        &["--ranks", "0,2", "--mode", "listen"],
    ));
    assert!(stdout.contains("already has"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), merged);
    assert_eq!(
        std::fs::read_to_string(&backup).expect("backup"),
        USER_LAUNCH_JSON
    );

    // Other ports replace the generated entries; the user's stay.
    ok(launch_json(dir.path(), &["--ports", "6000"]));
    let replaced = std::fs::read_to_string(&path).expect("read");
    assert!(
        replaced.contains("\"name\": \"amlx: port 6000\""),
        "{replaced}"
    );
    assert!(!replaced.contains("port 5680"), "{replaced}");
    assert!(replaced.contains("// Team settings: do not lose this comment."));
    assert_eq!(std::fs::read_to_string(&backup).expect("backup"), merged);
}

#[test]
fn a_file_it_cannot_parse_is_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("launch.json");
    let broken = "{\n    \"configurations\": [\n        { \"name\": \"x\" }\n        { \"name\": \"y\" }\n    ]\n}\n";
    std::fs::write(&path, broken).expect("write");
    let output = launch_json(dir.path(), &["--ranks", "0", "--output", "launch.json"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("left unchanged"), "{stderr}");
    // Once: the syntax error was also the chain's source, and printed twice.
    assert_eq!(stderr.matches("line 4, column 9").count(), 1, "{stderr}");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), broken);
    assert!(!dir.path().join("launch.json.bak").exists());
}

/// Files in `dir` whose names say they are left over from a write (temporary files).
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".amlx-tmp"))
        .collect()
}

/// `launch-json` in `dir`, bounded (a file that is not a regular one once made it read
/// for ever).
fn launch_json_within(dir: &Path, args: &[&str]) -> Output {
    crate::util::output_within(
        agent().current_dir(dir).arg("launch-json").args(args),
        crate::util::DEADLINE,
    )
}

/// A launch.json that is not a regular file, or a symlink to one that is not: a FIFO
/// was read for ever (`run` and `launch-json` hung); a character device behind a symlink
/// was read (`/dev/zero`: until memory ran out) or replaced by a regular file (as root,
/// `-o /dev/stdout` with stdout on /dev/null turned /dev/null into a file). Each is now
/// refused at once, saying what it is, and left as it was.
#[test]
fn a_launch_json_that_is_not_a_regular_file_is_refused_and_left_alone() {
    use std::os::unix::fs::FileTypeExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    nix::unistd::mkfifo(
        &dir.path().join("fifo.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    std::os::unix::fs::symlink("/dev/null", dir.path().join("null.json")).expect("symlink");
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.json")).expect("symlink");
    std::fs::create_dir(dir.path().join("dir.json")).expect("mkdir");
    for (name, what) in [
        ("fifo.json", "is a FIFO"),
        ("null.json", "is a character device"),
        ("zero.json", "is a character device"),
        ("dir.json", "is a directory"),
    ] {
        let output = launch_json_within(dir.path(), &["--ranks", "0", "--output", name]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(what), "{name}: {stderr}");
        assert!(stderr.contains("not a regular file"), "{name}: {stderr}");
    }
    let null = std::fs::metadata("/dev/null").expect("/dev/null");
    assert!(null.file_type().is_char_device(), "/dev/null was replaced");
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
    assert!(!Path::new("/dev/null.bak").exists());
}

/// A file where the `.vscode` folder goes: the error names it and the fix (it said only
/// "could not create .vscode: File exists"), and the file is left as it was.
#[test]
fn a_vscode_that_is_a_file_is_named_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(".vscode"), "mine").expect("write");
    let output = launch_json(dir.path(), &["--ranks", "0"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(".vscode is not a folder, and launch.json goes in it: rename or remove it"),
        "{stderr}"
    );
    let kept = std::fs::read_to_string(dir.path().join(".vscode")).expect("read");
    assert_eq!(kept, "mine");
}

/// A launch.json past the size limit is refused without being read whole.
#[test]
fn a_launch_json_over_the_size_limit_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("launch.json");
    // Sparse: no disk space taken.
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(64 * 1024 * 1024 + 1).expect("set_len");
    let output = launch_json_within(dir.path(), &["--ranks", "0", "--output", "launch.json"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("larger than 64 MiB"), "{stderr}");
    assert_eq!(
        std::fs::metadata(&path).expect("still there").len(),
        64 * 1024 * 1024 + 1
    );
}

/// Writers at once on one launch.json (two `run`s of one project): they shared one
/// temporary file name and truncated each other's file, which left launch.json invalid
/// (every later run refused it) or without the user's entries. Each writer now has its
/// own temporary file and waits for the others, so the file stays valid, keeps the
/// user's entries and comments, and no temporary file is left.
#[test]
fn writers_at_once_leave_a_valid_file_with_the_users_entries() {
    const WRITERS: usize = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("launch.json");
    std::fs::write(&path, USER_LAUNCH_JSON).expect("write");
    let mut children: Vec<_> = (0..WRITERS)
        .map(|n| {
            agent()
                .current_dir(dir.path())
                .args(["launch-json", "--output", "launch.json", "--ranks"])
                .arg(format!("0-{n}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for child in &mut children {
        let status = crate::util::wait_within(child, crate::util::DEADLINE);
        assert!(status.success(), "a writer failed: {status}");
    }
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(
        text.contains("// Team settings: do not lose this comment."),
        "{text}"
    );
    assert!(text.contains("\"Python: current file\""), "{text}");
    // Still a file the merge can read: one more writer succeeds.
    let again = launch_json_within(dir.path(), &["--ranks", "0-2", "--output", "launch.json"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
}

/// `--post-mortem`: one more configuration where VS Code listens for whichever rank
/// crashes (alone: the only one, no compound), and the relay command that feeds it.
#[test]
fn post_mortem_adds_a_listening_configuration_for_any_rank() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stdout = ok(launch_json(
        dir.path(),
        &["--ranks", "0-1", "--post-mortem"],
    ));
    assert!(
        stdout.contains("relay listen --forward any=127.0.0.1:5677"),
        "{stdout}"
    );
    let text = std::fs::read_to_string(dir.path().join(".vscode/launch.json")).expect("written");
    let doc = parse_generated(&text);
    assert_eq!(
        names(&doc, "configurations"),
        [
            "amlx: rank 0 (port 5678)",
            "amlx: rank 1 (port 5679)",
            "amlx: post-mortem (any rank)"
        ]
    );
    assert_eq!(doc["configurations"][2]["listen"]["port"], 5677);
    assert_eq!(
        doc["compounds"][0]["configurations"],
        serde_json::json!(["amlx: rank 0 (port 5678)", "amlx: rank 1 (port 5679)"])
    );
    // Alone, on a port of its own; the earlier rank entries and compound are replaced.
    ok(launch_json(
        dir.path(),
        &["--post-mortem", "--post-mortem-port", "9000"],
    ));
    let text = std::fs::read_to_string(dir.path().join(".vscode/launch.json")).expect("written");
    let doc = parse_generated(&text);
    assert_eq!(
        names(&doc, "configurations"),
        ["amlx: post-mortem (any rank)"]
    );
    assert_eq!(doc["configurations"][0]["listen"]["port"], 9000);
    assert!(
        doc["compounds"].as_array().is_none_or(Vec::is_empty),
        "{text}"
    );
}

#[test]
fn bad_flags_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: &[(&[&str], &str)] = &[
        (&[], "--ports"),
        (&["--ports", "1", "--ranks", "0"], "cannot be used with"),
        (&["--ranks", "all"], "list the ranks"),
        (
            &["--ranks", "0-3", "--port-base", "65534"],
            "past port 65535",
        ),
        (&["--ports", "5678,5678"], "listed twice"),
        (
            &["--ports", "5678", "--mode", "tunnel"],
            "expected one of connect, listen, direct",
        ),
        (&["--post-mortem", "--mode", "listen"], "needs connect mode"),
        (&["--post-mortem", "--port-base", "1"], "--post-mortem-port"),
        (
            &[
                "--ranks",
                "0-1",
                "--post-mortem",
                "--post-mortem-port",
                "5679",
            ],
            "also a rank's port",
        ),
        (
            &["--ports", "5678", "--post-mortem-port", "5600"],
            "--post-mortem",
        ),
    ];
    for (args, expected) in cases {
        let output = launch_json(dir.path(), args);
        assert!(!output.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(!dir.path().join(".vscode").exists());
}

#[test]
fn help_explains_the_modes_and_shows_examples() {
    let help = ok(agent()
        .args(["launch-json", "--help"])
        .output()
        .expect("agent runs"));
    for needle in [
        "Examples:",
        "amlx-agent launch-json --ranks 0-3",
        "--ports",
        "--port-base",
        "--mode",
        "--local-root",
        "--remote-root",
        "--output",
        "launch.json.bak",
    ] {
        assert!(help.contains(needle), "help lacks {needle:?}:\n{help}");
    }
    assert!(ok(agent().arg("--help").output().expect("runs")).contains("launch-json"));
}
