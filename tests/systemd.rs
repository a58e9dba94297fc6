//! The units in `systemd/` under systemd's own tools: `systemd-analyze verify` and
//! `security`, the manager's test mode (`systemd --test`, which loads units as the
//! manager would and dumps them with every specifier expanded), `systemctl --root`, and
//! the relay started with the exact command line its unit expands to. Needs the tools of
//! the `systemd` package (`apt-get install systemd`), never a running systemd; sends no
//! network traffic (the relay binds 127.0.0.1 and nobody connects).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::util::{self, DEADLINE};

/// Where the units reference the binary; tests point copies at the binary under test.
const INSTALLED_BIN: &str = "/usr/local/bin/amlx-agent";
/// Highest `systemd-analyze security` exposure the relay unit may have.
const MAX_EXPOSURE: f64 = 2.0;
const RELAY_UNIT: &str = "amlx-relay.service";
const LISTEN_TEMPLATE: &str = "amlx-relay-listen@.service";
/// The README's example instance and its escaped unit name.
const PORTS: &str = "5678,5679";
const LISTEN_INSTANCE: &str = "amlx-relay-listen@5678\\x2c5679.service";
/// Where systemd puts a system service's credentials (`%d`).
const RELAY_CREDENTIALS: &str = "/run/credentials/amlx-relay.service";
/// The unprivileged user the manager's test mode runs as when the tests run as root
/// (`systemd --test` refuses root): `nobody`.
const NOBODY: u32 = 65534;

/// Every command in a ```sh block of systemd/README.md, and the test that runs it.
/// Commands that need a running systemd run in their offline form (`systemctl --root`).
const README_COMMANDS: &[(&str, &str)] = &[
    (
        "install -D -m 0600 agent.toml /etc/amlx/agent.toml",
        "relay_unit_serves_tls_from_its_credentials",
    ),
    (
        "install -D -m 0600 relay-cert.pem /etc/amlx/relay-cert.pem",
        "relay_unit_serves_tls_from_its_credentials",
    ),
    (
        "install -D -m 0600 relay-key.pem /etc/amlx/relay-key.pem",
        "relay_unit_serves_tls_from_its_credentials",
    ),
    (
        "install -D -m 0644 systemd/amlx-relay.service /etc/systemd/system/amlx-relay.service",
        "systemctl_enables_both_units",
    ),
    (
        "systemd-analyze verify /etc/systemd/system/amlx-relay.service",
        "relay_unit_passes_systemd_analyze_verify",
    ),
    (
        "systemd-analyze security --offline=true /etc/systemd/system/amlx-relay.service",
        "relay_unit_exposure_is_at_most_2_0",
    ),
    (
        "systemctl enable --now amlx-relay.service",
        "systemctl_enables_both_units (offline: --root, no --now)",
    ),
    (
        "systemd-escape 5678,5679",
        "systemd_escape_names_the_instance",
    ),
    (
        "systemd-escape --template=amlx-relay-listen@.service 5678,5679",
        "systemd_escape_names_the_instance",
    ),
    (
        "install -D -m 0600 relay.env ~/.config/amlx/relay.env",
        "listen_unit_gives_the_agent_the_unescaped_ports",
    ),
    (
        "install -D -m 0644 systemd/amlx-relay-listen@.service ~/.config/systemd/user/amlx-relay-listen@.service",
        "listen_unit_passes_systemd_analyze_verify_user",
    ),
    (
        "systemd-analyze verify --user ~/.config/systemd/user/amlx-relay-listen@.service",
        "listen_unit_passes_systemd_analyze_verify_user",
    ),
    (
        "systemctl --user enable --now \"$(systemd-escape --template=amlx-relay-listen@.service 5678,5679)\"",
        "systemctl_enables_both_units (offline: --root --global, no --now)",
    ),
];

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn unit_text(name: &str) -> String {
    let path = repo_file(&format!("systemd/{name}"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A tool of the `systemd` package; a missing one fails the test with the fix.
fn systemd_tool(name: &str) -> PathBuf {
    let path_dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_dirs)
        .chain(["/usr/bin", "/bin", "/usr/lib/systemd", "/lib/systemd"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found: these tests need systemd's tools, `apt-get install systemd`")
        })
}

fn run(cmd: &mut Command) -> Output {
    util::output_within(cmd, DEADLINE)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `unit`'s text with the binary path pointed at the binary under test, so that
/// `verify` (which checks the executable exists) and the runs test what ships.
fn with_test_binary(unit: &str) -> String {
    assert_eq!(
        unit.matches(INSTALLED_BIN).count(),
        1,
        "one ExecStart on {INSTALLED_BIN}"
    );
    unit.replace(INSTALLED_BIN, &util::agent_bin().to_string_lossy())
}

fn mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The exposure number of `systemd-analyze security --offline=true FILE`.
fn exposure(unit_file: &Path) -> f64 {
    let out = run(Command::new(systemd_tool("systemd-analyze"))
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit_file));
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level for"))
        .unwrap_or_else(|| {
            panic!(
                "no exposure line ({:?}):\n{stdout}{}",
                out.status,
                text(&out.stderr)
            )
        });
    let number = line
        .rsplit_once(": ")
        .and_then(|(_, rest)| rest.split_whitespace().next());
    number
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"))
}

/// What the manager (`--user` or `--system`) makes of `unit` when `files` (name, text)
/// are in a unit directory searched before the standard ones: `systemd --test` loads
/// them, expands every specifier and dumps each unit. Returns (dump, home directory).
fn manager_dump(
    scope: &str,
    files: &[(&str, &str)],
    unit: &str,
) -> (String, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (units, runtime, home) = (
        dir.path().join("units"),
        dir.path().join("run"),
        dir.path().join("home"),
    );
    for d in [&units, &runtime, &home] {
        std::fs::create_dir(d).expect("mkdir");
    }
    for (name, body) in files {
        std::fs::write(units.join(name), body).expect("write unit");
        mode(&units.join(name), 0o644);
    }
    let mut cmd = if nix::unistd::geteuid().is_root() {
        // Test mode refuses root: run it as nobody, who must reach the files.
        mode(dir.path(), 0o755);
        mode(&units, 0o755);
        for d in [&runtime, &home] {
            std::os::unix::fs::chown(d, Some(NOBODY), Some(NOBODY)).expect("chown");
        }
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
            "--clear-groups",
        ]);
        cmd.arg(systemd_tool("systemd"));
        cmd
    } else {
        Command::new(systemd_tool("systemd"))
    };
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &home)
        .env("XDG_RUNTIME_DIR", &runtime)
        // The trailing colon appends the manager's standard unit directories.
        .env("SYSTEMD_UNIT_PATH", format!("{}:", units.display()))
        .args(["--test", scope, "--log-target=console", "--no-pager"])
        .arg(format!("--unit={unit}"));
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "systemd --test {scope} failed: {}",
        text(&out.stderr)
    );
    (text(&out.stdout), home, dir)
}

/// The dump's section of one unit.
fn unit_block<'a>(dump: &'a str, unit: &str) -> &'a str {
    let head = format!("\t-> Unit {unit}:\n");
    let start = dump
        .find(&head)
        .unwrap_or_else(|| panic!("{unit} not in the dump"));
    let body = &dump[start + head.len()..];
    &body[..body.find("\t-> Unit ").unwrap_or(body.len())]
}

/// Values of `key: value` lines of a unit block.
fn values<'a>(block: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}: ");
    block
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix(&prefix))
        .collect()
}

fn one_value<'a>(block: &'a str, key: &str) -> &'a str {
    match values(block, key).as_slice() {
        [v] => v,
        other => panic!("expected one {key}, got {other:?} in:\n{block}"),
    }
}

#[test]
fn systemd_escape_names_the_instance() {
    // README: `systemd-escape 5678,5679`
    let out = run(Command::new(systemd_tool("systemd-escape")).arg(PORTS));
    assert_eq!(
        text(&out.stdout).trim(),
        "5678\\x2c5679",
        "{}",
        text(&out.stderr)
    );
    // README: `systemd-escape --template=amlx-relay-listen@.service 5678,5679`
    let out = run(Command::new(systemd_tool("systemd-escape"))
        .arg(format!("--template={LISTEN_TEMPLATE}"))
        .arg(PORTS));
    assert_eq!(
        text(&out.stdout).trim(),
        LISTEN_INSTANCE,
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn relay_unit_passes_systemd_analyze_verify() {
    // README: `systemd-analyze verify /etc/systemd/system/amlx-relay.service`, on a copy
    // whose ExecStart names the binary under test (verify checks it exists).
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = dir.path().join(RELAY_UNIT);
    std::fs::write(&unit, with_test_binary(&unit_text(RELAY_UNIT))).expect("write unit");
    let out = run(Command::new(systemd_tool("systemd-analyze"))
        .args(["verify", "--no-pager"])
        .arg(&unit));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && said.is_empty(),
        "{:?}:\n{said}",
        out.status
    );
}

#[test]
fn listen_unit_passes_systemd_analyze_verify_user() {
    // README: `install -D -m 0644 systemd/amlx-relay-listen@.service
    // ~/.config/systemd/user/amlx-relay-listen@.service` and `systemd-analyze verify --user`
    // on it (HOME a temp dir), then on the instance the README enables.
    let dir = tempfile::tempdir().expect("temp dir");
    let (home, runtime) = (dir.path().join("home"), dir.path().join("run"));
    std::fs::create_dir_all(&runtime).expect("mkdir");
    let source = dir.path().join(LISTEN_TEMPLATE);
    std::fs::write(&source, with_test_binary(&unit_text(LISTEN_TEMPLATE))).expect("write unit");
    let installed = home.join(".config/systemd/user").join(LISTEN_TEMPLATE);
    let out = run(Command::new("install")
        .args(["-D", "-m", "0644"])
        .arg(&source)
        .arg(&installed));
    assert!(out.status.success(), "install: {}", text(&out.stderr));
    for unit in [installed.clone(), installed.with_file_name(LISTEN_INSTANCE)] {
        let out = run(Command::new(systemd_tool("systemd-analyze"))
            .env("HOME", &home)
            // The user manager needs its runtime directory, even offline.
            .env("XDG_RUNTIME_DIR", &runtime)
            .args(["verify", "--user", "--no-pager"])
            .arg(&unit));
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            out.status.success() && said.is_empty(),
            "{}: {:?}:\n{said}",
            unit.display(),
            out.status
        );
    }
}

#[test]
fn relay_unit_exposure_is_at_most_2_0() {
    // README: `systemd-analyze security --offline=true /etc/systemd/system/amlx-relay.service`
    let score = exposure(&repo_file(&format!("systemd/{RELAY_UNIT}")));
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} > {MAX_EXPOSURE}: a hardening line was lost"
    );
    // The number is read, not a verdict: an unhardened unit must read above the bound.
    let dir = tempfile::tempdir().expect("temp dir");
    let bare = dir.path().join(RELAY_UNIT);
    std::fs::write(
        &bare,
        "[Service]\nExecStart=/usr/local/bin/amlx-agent relay serve\n",
    )
    .expect("write");
    let bare_score = exposure(&bare);
    assert!(
        bare_score > MAX_EXPOSURE,
        "an unhardened unit scored {bare_score}"
    );
}

#[test]
fn listen_unit_gives_the_agent_the_unescaped_ports() {
    // (why, ExecStart arguments, expected command line)
    let cases = [
        (
            "%I: unescaped",
            "relay listen --ports %I",
            "relay listen --ports 5678,5679",
        ),
        (
            "%i would pass the escape",
            "relay listen --ports %i",
            "relay listen --ports \"5678\\\\x2c5679\"",
        ),
    ];
    let shipped = unit_text(LISTEN_TEMPLATE);
    for (why, args, want) in cases {
        let unit = shipped.replace("relay listen --ports %I", args);
        let (dump, home, _dir) =
            manager_dump("--user", &[(LISTEN_TEMPLATE, &unit)], LISTEN_INSTANCE);
        let block = unit_block(&dump, LISTEN_INSTANCE);
        assert_eq!(
            one_value(block, "Command Line"),
            format!("{INSTALLED_BIN} {want}"),
            "{why}"
        );
        // README: `install -D -m 0600 relay.env ~/.config/amlx/relay.env` is the file it reads.
        let env_file = home.join(".config/amlx/relay.env");
        assert_eq!(
            one_value(block, "EnvironmentFile"),
            env_file.to_string_lossy(),
            "{why}"
        );
    }
}

#[test]
fn listen_unit_is_ordered_only_after_units_the_user_manager_has() {
    // (why, unit text, whether every unit it depends on or is ordered after loads)
    let shipped = unit_text(LISTEN_TEMPLATE);
    let network = shipped.replace("[Service]", "After=network-online.target\n\n[Service]");
    let cases = [
        ("as shipped", shipped.as_str(), true),
        ("network-online.target", network.as_str(), false),
    ];
    for (why, unit, want) in cases {
        let (dump, _home, _dir) =
            manager_dump("--user", &[(LISTEN_TEMPLATE, unit)], LISTEN_INSTANCE);
        let block = unit_block(&dump, LISTEN_INSTANCE);
        let missing: Vec<&str> = ["After", "Requires", "Wants", "BindsTo", "Requisite"]
            .iter()
            .flat_map(|key| values(block, key))
            .map(|v| v.split(" (").next().unwrap_or(v))
            .filter(|dep| one_value(unit_block(&dump, dep), "Unit Load State") != "loaded")
            .collect();
        assert_eq!(
            missing.is_empty(),
            want,
            "{why}: units the user manager lacks: {missing:?}"
        );
    }
}

/// The relay's command line as the system manager expands it (`%d` and all).
fn relay_command_line() -> Vec<String> {
    let (dump, _home, _dir) = manager_dump(
        "--system",
        &[(RELAY_UNIT, &unit_text(RELAY_UNIT))],
        RELAY_UNIT,
    );
    let line = one_value(unit_block(&dump, RELAY_UNIT), "Command Line").to_owned();
    assert!(
        !line.contains(['"', '\'', '\\', '%', '$']),
        "quoting or unexpanded parts: {line}"
    );
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn relay_unit_serves_tls_from_its_credentials() {
    let argv = relay_command_line();
    assert_eq!(argv.first().map(String::as_str), Some(INSTALLED_BIN));
    let dir = tempfile::tempdir().expect("temp dir");
    let (etc, creds) = (dir.path().join("root"), dir.path().join("credentials"));
    std::fs::create_dir(&creds).expect("mkdir");
    // The sources, installed as the README says (README: the three `install -D -m 0600`
    // lines, under a temp root).
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let sources = [
        ("agent.toml", "[relay.server]\nlisten = \"127.0.0.1:0\"\n[[relay.server.keys]]\nname = \"agent\"\nkey = \"k\"\n".to_owned()),
        ("relay-cert.pem", cert.cert.pem()),
        ("relay-key.pem", cert.signing_key.serialize_pem()),
    ];
    for (name, body) in &sources {
        let staged = dir.path().join(name);
        std::fs::write(&staged, body).expect("write source");
        let out = run(Command::new("install")
            .args(["-D", "-m", "0600"])
            .arg(&staged)
            .arg(etc.join("etc/amlx").join(name)));
        assert!(out.status.success(), "install: {}", text(&out.stderr));
    }
    // What LoadCredential=ID:PATH does at start: copy PATH to the credentials dir as ID.
    let loaded: Vec<String> = unit_text(RELAY_UNIT)
        .lines()
        .filter_map(|l| l.strip_prefix("LoadCredential="))
        .map(|spec| {
            let (id, path) = spec.split_once(':').expect("LoadCredential=ID:PATH");
            std::fs::copy(etc.join(path.trim_start_matches('/')), creds.join(id))
                .unwrap_or_else(|e| panic!("credential {id} from {path}: {e}"));
            id.to_owned()
        })
        .collect();
    for id in ["agent.toml", "tls-cert.pem", "tls-key.pem"] {
        assert!(
            loaded.iter().any(|l| l == id),
            "LoadCredential of {id} missing: {loaded:?}"
        );
    }
    let args: Vec<String> = argv[1..]
        .iter()
        .map(|a| a.replace(RELAY_CREDENTIALS, &creds.to_string_lossy()))
        .collect();
    let mut child = util::agent()
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the unit's command line");
    let stderr = child.stderr.take().expect("piped stderr");
    let lines = util::line_channel(stderr);
    let mut seen = Vec::new();
    let bound = loop {
        match lines.recv_timeout(DEADLINE) {
            Ok(line) if line.starts_with("relay serve: listening on ") => break Some(line),
            Ok(line) => seen.push(line),
            Err(_) => break None,
        }
    };
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let status = util::wait_bounded(&mut child);
    let bound =
        bound.unwrap_or_else(|| panic!("relay did not start ({status}):\n{}", seen.join("\n")));
    assert!(bound.contains("wss://127.0.0.1:"), "{bound}");
    assert!(
        status.success(),
        "SIGTERM must drain and exit 0, got {status}"
    );
}

#[test]
fn systemctl_enables_both_units() {
    // README: `install -D -m 0644 systemd/amlx-relay.service /etc/systemd/system/…`, then
    // `systemctl enable --now amlx-relay.service` and `systemctl --user enable --now
    // "$(systemd-escape --template=…)"` in their offline forms: `--root` (and `--global`
    // for a user unit) link the units without a running manager; --now would start them.
    let root = tempfile::tempdir().expect("temp dir");
    let system = root.path().join("etc/systemd/system");
    let user = root.path().join("etc/systemd/user");
    for (unit, dir) in [(RELAY_UNIT, &system), (LISTEN_TEMPLATE, &user)] {
        let out = run(Command::new("install")
            .args(["-D", "-m", "0644"])
            .arg(repo_file(&format!("systemd/{unit}")))
            .arg(dir.join(unit)));
        assert!(out.status.success(), "install: {}", text(&out.stderr));
    }
    let escape = run(Command::new(systemd_tool("systemd-escape"))
        .arg(format!("--template={LISTEN_TEMPLATE}"))
        .arg(PORTS));
    let instance = text(&escape.stdout).trim().to_owned();
    let root_flag = format!("--root={}", root.path().display());
    for scope in [vec![RELAY_UNIT], vec!["--global", instance.as_str()]] {
        let out = run(Command::new(systemd_tool("systemctl"))
            .arg(&root_flag)
            .arg("enable")
            .args(&scope));
        assert!(
            out.status.success(),
            "systemctl enable {scope:?}: {}",
            text(&out.stderr)
        );
    }
    let relay_link = system.join("multi-user.target.wants").join(RELAY_UNIT);
    let listen_link = user.join("default.target.wants").join(LISTEN_INSTANCE);
    for link in [relay_link, listen_link] {
        assert!(
            link.symlink_metadata().is_ok(),
            "{} not created",
            link.display()
        );
    }
}

#[test]
fn every_readme_command_is_exercised() {
    let readme = std::fs::read_to_string(repo_file("systemd/README.md")).expect("read README");
    assert!(!readme.contains("../shared"), "the README must stand alone");
    let mut in_sh = false;
    let mut commands = Vec::new();
    for line in readme.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            l if in_sh && !l.is_empty() && !l.starts_with('#') => commands.push(l.to_owned()),
            _ => {}
        }
    }
    let unknown: Vec<&String> = commands
        .iter()
        .filter(|c| !README_COMMANDS.iter().any(|(known, _)| known == c))
        .collect();
    assert!(
        unknown.is_empty(),
        "README commands no test runs (add them to README_COMMANDS and a test): {unknown:?}"
    );
    let stale: Vec<&str> = README_COMMANDS
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| !commands.iter().any(|known| known == c))
        .collect();
    assert!(
        stale.is_empty(),
        "README_COMMANDS not in the README: {stale:?}"
    );
}
