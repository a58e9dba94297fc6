//! The user documentation stays true: `docs/*.md` and `launcher-shims/README.md`.
//!
//! - No page points into the project workspace (`../shared`): the docs stand alone.
//! - Every shell command in a ```sh / ```bash / ```console block is either run here
//!   ([`RUN`], offline: help, `detect` with launcher variables, the shims with the real
//!   `mpiexec`, `openssl`, a `curl` against a loopback `relay serve` this test starts) or
//!   mapped to the existing test that exercises it ([`EXERCISED_BY`]; the named test
//!   must exist). A command with neither fails, naming the page and line.
//! - Every message quoted in the troubleshooting tables occurs verbatim in the agent's or
//!   the shims' source, `{…}` standing for a value filled in at run time.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::util::{self, DEADLINE};

/// Pages besides `docs/*.md`.
const EXTRA_PAGES: &[&str] = &["launcher-shims/README.md"];

/// Where the pages install the shims; replaced by the repository's `launcher-shims/`.
const DOC_SHIMS_DIR: &str = "/opt/amlx/launcher-shims";
/// The relay address the pages use (`relay serve`'s default); replaced by the address of
/// the loopback relay this test starts on port 0.
const DOC_RELAY_ADDR: &str = "127.0.0.1:9351";
/// The placeholder the troubleshooting tables use for a run-time value.
const PLACEHOLDER: &str = "{…}";
/// Fewest rows the troubleshooting page's message table must have.
const MIN_TROUBLESHOOTING_ROWS: usize = 15;
/// Longest one documented command may take here (`mpiexec` starting debugpy included).
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// Commands this test runs, and a text their stdout or stderr must contain.
const RUN: &[(&str, &str)] = &[
    ("amlx-agent launch-json --ranks 0", ""),
    (
        "amlx-agent launch-json --post-mortem",
        // The port is the port base minus one: this test runs with a port range of its own.
        "relay listen --forward any=127.0.0.1:",
    ),
    (
        "mpiexec -n 4 amlx-agent detect --json --debug --ranks 0",
        "\"reason\":\"rank 0 matches --ranks 0\"",
    ),
    (
        "python3 -c 'import site; print(site.getsitepackages()[0])'",
        "-packages",
    ),
    (
        "AZ_BATCH_IS_CURRENT_NODE_MASTER=false amlx-agent detect --debug --ranks master",
        "this is not the master node (--ranks master)",
    ),
    (
        "RANK=3 LOCAL_RANK=1 WORLD_SIZE=8 GROUP_RANK=1 TORCHELASTIC_RUN_ID=job amlx-agent detect --debug --ranks 3",
        "rank 3 matches --ranks 3",
    ),
    (
        "SLURM_JOB_ID=42 SLURM_STEP_ID=0 SLURM_PROCID=5 SLURM_LOCALID=1 SLURM_NTASKS=8 amlx-agent detect",
        "launcher:         slurm",
    ),
    (
        "K_MPI_JOB_ROLE=launcher amlx-agent detect --debug",
        "a Kubeflow MPIJob pod process is not an MPI rank",
    ),
    (
        r#"PATH=/opt/amlx/launcher-shims/bin:$PATH AMLX_DEBUG=1 AMLX_RANKS=1 AMLX_DEBUG_MODE=direct AMLX_NODE_IP=127.0.0.1 mpiexec -n 2 python3 -c 'import os; print("%(AMLX_RANK)s %(AMLX_DEBUG_TARGET)s" % os.environ)'"#,
        "1 true",
    ),
    (
        r#"AMLX_DEBUG=1 AMLX_RANKS=1 PYTHONPATH=/opt/amlx/launcher-shims/python python3 -c 'import os; assert os.environ["AMLX_AGENT_PID"] == str(os.getpid()); print(os.environ["AMLX_AGENT_PROCESS"])'"#,
        "replace",
    ),
    (
        "OMPI_COMM_WORLD_RANK=3 OMPI_COMM_WORLD_LOCAL_RANK=3 OMPI_COMM_WORLD_SIZE=8 amlx-agent detect --debug --ranks 0,3",
        "rank 3 matches --ranks 0,3",
    ),
    (
        "amlx-agent launch-json --ranks 0-3 --output -",
        "amlx: all ranks",
    ),
    ("install -m 600 /dev/null relay.cs", ""),
    ("amlx-agent launch-json --ranks 0-1", ""),
    ("openssl rand -base64 32", "="),
    (
        "amlx-agent detect --debug -- python -m torch.distributed.run train.py",
        "torchrun starts the job's workers",
    ),
    (
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 -subj /CN=relay.example -addext subjectAltName=DNS:relay.example -addext basicConstraints=critical,CA:FALSE -keyout key.pem -out cert.pem",
        "",
    ),
    ("curl -fsS 'http://127.0.0.1:9351/$status'", "{"),
    (
        r#"AMLX_SHIM=off AMLX_DEBUG=1 PYTHONPATH=/opt/amlx/launcher-shims/python python3 -c 'import os; print(os.environ.get("AMLX_AGENT_PID", "not wrapped"))'"#,
        "not wrapped",
    ),
    (
        r#"PATH=/opt/amlx/launcher-shims/bin:$PATH AMLX_DEBUG=1 AMLX_RANKS=1 python3 -c 'import os; print(os.environ["AMLX_AGENT_PROCESS"])'"#,
        "replace",
    ),
];

/// Commands that need a cluster, a long-running server or VS Code, and the existing test
/// (`path::name`, under `tests/`) that runs the same thing.
const EXERCISED_BY: &[(&str, &str)] = &[
    (
        "amlx-agent run -- python train.py",
        "run.rs::run_debugs_the_users_step_on_this_machine_and_returns_its_exit_code",
    ),
    (
        "amlx-agent run --ranks-count 4 --ranks all -- python train.py",
        "run.rs::run_with_four_ranks_attaches_four_sessions_through_the_compound",
    ),
    (
        "amlx-agent run -t docker --image my-training:latest --agent-binary ./amlx-agent-static -- python train.py",
        "containers/run.rs::run_in_docker_hits_a_breakpoint_through_the_relay_and_leaves_no_container",
    ),
    (
        "amlx-agent run -t remotevm -- python train.py",
        "ssh.rs::run_over_ssh_copies_the_agent_once_and_the_breakpoint_hits_through_the_reverse_forward",
    ),
    (
        "amlx-agent run --external-relay -- python train.py",
        "run.rs::an_external_relay_from_the_settings_carries_the_session_and_a_send_only_key_is_refused",
    ),
    (
        "mpiexec -n 4 amlx-agent exec --post-mortem -- python train.py",
        "session/post_mortem.rs::the_rank_that_raises_stops_at_the_raising_frame_under_mpiexec",
    ),
    (
        "amlx-agent relay listen --forward any=127.0.0.1:5677",
        "session/post_mortem.rs::the_rank_that_raises_stops_at_the_raising_frame_under_mpiexec",
    ),
    (
        "export AMLX_POST_MORTEM=1 AMLX_POST_MORTEM_TIMEOUT=30m",
        "shims/parallel_run_step.rs::the_worker_whose_run_raises_gets_the_only_post_mortem_session",
    ),
    (
        "amlx-agent run --ranks-count 4 --ranks 0 --post-mortem -- python train.py",
        "run.rs::run_with_post_mortem_hands_the_crashed_rank_to_vscode",
    ),
    (
        "amlx-agent targets list",
        "run.rs::targets_list_shows_where_each_is_defined_and_reports_an_unreachable_one",
    ),
    (
        "amlx-agent demo",
        "demo.rs::the_demo_prints_how_to_attach_runs_the_step_times_out_and_leaves_nothing_running",
    ),
    (
        "amlx-agent demo --ranks-count 1 --attach-timeout 10m",
        "demo.rs::stop_signals_to_the_demo_stop_the_waiting_step_and_everything_else",
    ),
    (
        "amlx-agent demo --vscode-port 5690 --dir ./amlx-demo",
        "demo.rs::vscode_attaching_during_the_demo_hits_a_breakpoint_in_the_example_step",
    ),
    (
        "amlx-agent relay listen --hc debug --ports 5678",
        "session/connect_mode.rs::a_breakpoint_hits_through_the_relay_and_the_step_exits_0",
    ),
    (
        "amlx-agent relay listen --hc debug --ports 5678,5679",
        "relay/tunnels.rs::port_names_pick_targets_and_unknown_names_are_refused",
    ),
    (
        "mpiexec -n 4 amlx-agent exec --debug --ranks 0 -- python train.py",
        "session/mpi.rs::ranks_0_stops_only_rank_0_while_ranks_1_to_3_run_to_their_end",
    ),
    (
        "mpiexec -n 4 amlx-agent exec --debug --ranks all -- python train.py",
        "session/mpi.rs::ranks_all_attaches_four_debuggers_through_the_launch_json_compound",
    ),
    (
        "amlx-agent relay listen --connection-string-file relay.cs --ports 5678",
        "relay/errors.rs::connection_string_file_is_read_and_loose_permissions_warned",
    ),
    (
        "AMLX_RELAY_CONNECTION_STRING_FILE=/etc/amlx/relay.cs mpiexec -n 4 amlx-agent exec --debug -- python train.py",
        "exec.rs::relay_credentials_from_a_file_reach_the_relay",
    ),
    (
        "amlx-agent relay connect --hc debug --bind 127.0.0.1:5678 --port-name 5678",
        "session/modes.rs::listen_mode_holds_the_step_until_the_developer_attaches_through_relay_connect",
    ),
    (
        "amlx-agent relay serve --config relay.toml --tls-cert cert.pem --tls-key key.pem",
        "relay/tunnels.rs::sixteen_mib_each_way_over_tls",
    ),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository root")
}

/// Every page, as (path relative to the repository, text).
fn pages() -> Vec<(String, String)> {
    let root = repo();
    let mut names: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.expect("docs/ entry").file_name())
        .filter_map(|name| name.to_str().map(str::to_owned))
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    names.sort();
    names.extend(EXTRA_PAGES.iter().map(|p| (*p).to_owned()));
    names
        .into_iter()
        .map(|name| {
            let text = std::fs::read_to_string(root.join(&name))
                .unwrap_or_else(|err| panic!("cannot read {name}: {err}"));
            (name, text)
        })
        .collect()
}

/// One shell command of a page.
#[derive(Debug)]
struct DocCommand {
    page: String,
    line: usize,
    text: String,
}

/// The commands of ```sh / ```bash / ```shell / ```console blocks: in `console` blocks
/// only lines after a `$ ` prompt; elsewhere every line that is not blank or a comment.
/// A trailing `\` joins the next line.
fn commands(page: &str, text: &str) -> Vec<DocCommand> {
    let mut found = Vec::new();
    let mut block: Option<String> = None;
    let mut pending: Option<DocCommand> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(fence) = line.strip_prefix("```") {
            block = match block {
                Some(_) => None,
                None => Some(fence.trim().to_owned()),
            };
            continue;
        }
        let Some(lang) = block.as_deref() else {
            continue;
        };
        if !matches!(lang, "sh" | "bash" | "shell" | "console") {
            continue;
        }
        let words = match (&mut pending, lang) {
            (Some(_), _) => line,
            (None, "console") => match line.strip_prefix("$ ") {
                Some(rest) => rest,
                None => continue,
            },
            (None, _) if line.is_empty() || line.starts_with('#') => continue,
            (None, _) => line,
        };
        let (words, continues) = match words.strip_suffix('\\') {
            Some(head) => (head.trim_end(), true),
            None => (words, false),
        };
        let command = pending.get_or_insert_with(|| DocCommand {
            page: page.to_owned(),
            line: index + 1,
            text: String::new(),
        });
        if !command.text.is_empty() {
            command.text.push(' ');
        }
        command.text.push_str(words);
        if !continues {
            found.extend(pending.take());
        }
    }
    found.extend(pending);
    found
}

fn all_commands() -> Vec<DocCommand> {
    pages()
        .into_iter()
        .chain([readme_run_section()])
        .flat_map(|(page, text)| commands(&page, &text))
        .collect()
}

#[test]
fn pages_stand_alone() {
    for (page, text) in pages() {
        for (index, line) in text.lines().enumerate() {
            assert!(
                !line.contains("../shared"),
                "{page}:{}: links to ../shared; the docs must stand alone",
                index + 1
            );
        }
    }
}

/// The README's `run` section (up to the next heading of its level): its commands count
/// as a page of their own.
fn readme_run_section() -> DocCommandPage {
    let text = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let start = text
        .find("### `amlx-agent run")
        .expect("the README has a `run` section");
    let rest = text.get(start..).unwrap_or_default();
    let end = rest
        .get(4..)
        .and_then(|after| after.find("\n## ").or_else(|| after.find("\n### ")))
        .map_or(rest.len(), |at| at + 4);
    (
        "README.md (run section)".to_owned(),
        rest.get(..end).unwrap_or(rest).to_owned(),
    )
}

/// A page's name and text.
type DocCommandPage = (String, String);

#[test]
fn the_readme_run_section_shows_only_tested_commands() {
    let (page, text) = readme_run_section();
    let found = commands(&page, &text);
    assert!(
        found.len() >= 6,
        "the run section shows its commands: {found:?}"
    );
    for command in found {
        assert!(
            EXERCISED_BY.iter().any(|(c, _)| *c == command.text)
                || RUN.iter().any(|(c, _)| *c == command.text),
            "README.md's run section shows `{}` (line {} of the section), which no test \
             runs: add it to RUN or EXERCISED_BY in tests/docs.rs",
            command.text,
            command.line
        );
    }
}

#[test]
fn every_doc_command_is_run_here_or_exercised_by_a_named_test() {
    let found = all_commands();
    assert!(!found.is_empty(), "no shell commands found in the docs");
    let mut problems = Vec::new();
    for command in &found {
        let run = RUN.iter().any(|(c, _)| *c == command.text);
        let mapped = EXERCISED_BY.iter().any(|(c, _)| *c == command.text);
        if !run && !mapped {
            problems.push(format!(
                "{}:{}: `{}` is neither run by tests/docs.rs (RUN) nor mapped to a test (EXERCISED_BY)",
                command.page, command.line, command.text
            ));
        }
    }
    for (command, test) in EXERCISED_BY {
        let (file, name) = test
            .split_once("::")
            .unwrap_or_else(|| panic!("{test:?} is not FILE::TEST"));
        let source = std::fs::read_to_string(repo().join("tests").join(file)).unwrap_or_default();
        if !source.contains(&format!("fn {name}(")) {
            problems.push(format!(
                "`{command}` is mapped to {test}, which does not exist"
            ));
        }
    }
    for (command, _) in RUN.iter().chain(EXERCISED_BY) {
        if !found.iter().any(|c| c.text == *command) {
            problems.push(format!(
                "`{command}` is listed here but no page has it any more"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A loopback `relay serve` on port 0 for the commands that talk to one.
struct Relay {
    child: Child,
    addr: String,
}

impl Relay {
    fn start(dir: &Path) -> Relay {
        let config = dir.join("relay.toml");
        std::fs::write(
            &config,
            "[relay.server]\n[[relay.server.keys]]\nname = \"docs\"\nkey = \"docs-test-key\"\n",
        )
        .expect("write relay.toml");
        let mut child = util::agent()
            .args(["--config"])
            .arg(&config)
            .args(["relay", "serve", "--listen", "127.0.0.1:0", "--insecure-ws"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("relay serve starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ws://").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(DEADLINE)
            .expect("relay serve prints its address");
        Relay { child, addr }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn runnable_doc_commands_succeed_and_print_what_the_docs_say() {
    let relay_dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(relay_dir.path());
    let shims = repo().join("launcher-shims");
    let agent_dir = util::agent_bin()
        .parent()
        .expect("the agent has a folder")
        .to_owned();
    let path = std::env::join_paths([agent_dir, util::python_scripts_dir()].into_iter().chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH entries without ':'");
    let (first, last) = util::free_port_range(8);
    let mut ran = 0;
    for (page, text) in pages() {
        // One folder per page: its commands run in order, like a reader would.
        let dir = tempfile::tempdir().expect("tempdir");
        for command in commands(&page, &text) {
            let Some((_, expected)) = RUN.iter().find(|(c, _)| *c == command.text) else {
                continue;
            };
            let mut script = command
                .text
                .replace(DOC_SHIMS_DIR, &shims.to_string_lossy())
                .replace(DOC_RELAY_ADDR, &relay.addr);
            if script.contains("mpiexec") {
                // Hydra's SIGPIPE race with ranks that end at once (`util::mpiexec_command`).
                script.insert_str(0, "trap '' PIPE; ");
            }
            let out = util::output_within(
                util::clean(Command::new("bash"))
                    .args(["-c", &script])
                    .current_dir(dir.path())
                    .env("PATH", &path)
                    .env("HOME", dir.path())
                    .env("NO_COLOR", "1")
                    .env("AMLX_LOCK_DIR", dir.path().join("locks"))
                    .env("AMLX_STATE_DIR", dir.path().join("state"))
                    .env("AMLX_PORT_RANGE", format!("{first}-{last}")),
                COMMAND_DEADLINE,
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "{page}:{}: `{}` failed ({}):\n{stdout}\n{stderr}",
                command.line,
                command.text,
                out.status
            );
            assert!(
                stdout.contains(expected) || stderr.contains(expected),
                "{page}:{}: `{}` did not print {expected:?}:\n{stdout}\n{stderr}",
                command.line,
                command.text
            );
            ran += 1;
        }
    }
    assert!(
        ran >= RUN.len(),
        "ran {ran} commands, RUN lists {}",
        RUN.len()
    );
}

/// Source text the messages come from, with string continuations undone: Rust's `\` at a
/// line end (and the next line's indentation), Python's adjacent literals split over
/// lines, and Rust's escaped quotes.
fn message_sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir)
            .expect("read_dir")
            .map(Result::unwrap)
        {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let root = repo();
    let mut files = Vec::new();
    walk(&root.join("agent/src"), &mut files);
    walk(&root.join("launcher-shims/bin"), &mut files);
    walk(&root.join("launcher-shims/python"), &mut files);
    files
        .into_iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(&path).ok()?;
            Some((path, normalise_source(&text)))
        })
        .collect()
}

fn normalise_source(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            // Rust: `\` at a line end continues the string after the next indentation.
            ('\\', Some('\n')) => {
                chars.next();
                while chars.next_if(|c| c.is_whitespace()).is_some() {}
            }
            // Rust: an escaped quote is a quote in the message.
            ('\\', Some('"')) => {
                out.push('"');
                chars.next();
            }
            // Python: `"abc "` and `"def"` on the next line are one literal.
            ('"', Some('\n')) => {
                let mut lookahead = chars.clone();
                lookahead.next();
                while lookahead.next_if(|c| c.is_whitespace()).is_some() {}
                if lookahead.peek() == Some(&'"') {
                    lookahead.next();
                    chars = lookahead;
                } else {
                    out.push(c);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// The quoted messages (first column) of every table row under a `## Messages` heading.
fn quoted_messages(page: &str, text: &str) -> Vec<(usize, String)> {
    let mut in_section = false;
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if let Some(heading) = line.strip_prefix("## ") {
            in_section = heading.trim() == "Messages";
            continue;
        }
        let Some(row) = line.strip_prefix("| ") else {
            continue;
        };
        if !in_section {
            continue;
        }
        let message = if let Some(rest) = row.strip_prefix("``") {
            rest.split_once("``").map(|(m, _)| m)
        } else if let Some(rest) = row.strip_prefix('`') {
            rest.split_once('`').map(|(m, _)| m)
        } else {
            None
        };
        match message {
            Some(m) => found.push((index + 1, m.to_owned())),
            None if row.starts_with("message ") || row.starts_with("---") => {}
            None => panic!(
                "{page}:{}: a message row without a quoted message",
                index + 1
            ),
        }
    }
    found
}

/// Whether `message`'s fixed parts occur in `source` in order, close together.
fn occurs(message: &str, source: &str) -> bool {
    /// Longest gap a placeholder may stand for in the source (a format argument).
    const MAX_GAP: usize = 120;
    let parts: Vec<&str> = message.split(PLACEHOLDER).collect();
    let first = parts[0];
    let mut start = 0;
    while let Some(found) = source.get(start..).and_then(|rest| rest.find(first)) {
        let begin = start + found;
        let mut at = begin + first.len();
        let all = parts[1..].iter().all(|part| {
            let window_end = (at + MAX_GAP + part.len()).min(source.len());
            let window = source.get(at..window_end).unwrap_or("");
            match window.find(part) {
                Some(offset) if !part.is_empty() => {
                    at += offset + part.len();
                    true
                }
                _ => part.is_empty(),
            }
        });
        if all {
            return true;
        }
        // On past this match, to the next character (a message that starts with a
        // placeholder matches everywhere, and a byte step could land inside a `…`).
        let next_char = source[begin..].chars().next().map_or(1, char::len_utf8);
        start = begin + first.len().max(next_char);
    }
    false
}

#[test]
fn every_troubleshooting_message_occurs_in_the_sources() {
    let sources = message_sources();
    let mut problems = Vec::new();
    let mut troubleshooting_rows = 0;
    for (page, text) in pages() {
        let messages = quoted_messages(&page, &text);
        if page == "docs/troubleshooting.md" {
            troubleshooting_rows = messages.len();
        }
        for (line, message) in messages {
            if !sources.iter().any(|(_, source)| occurs(&message, source)) {
                problems.push(format!(
                    "{page}:{line}: `{message}` occurs in no file of agent/src or launcher-shims"
                ));
            }
        }
    }
    assert!(
        troubleshooting_rows >= MIN_TROUBLESHOOTING_ROWS,
        "docs/troubleshooting.md has {troubleshooting_rows} message rows, fewer than {MIN_TROUBLESHOOTING_ROWS}"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_message_matcher_takes_placeholders_and_refuses_changed_text() {
    let source = normalise_source(
        "format!(\"no free port in {range} (lock dir {}): \\\n     {}; widen it\", a, b)\n\
         _warn(\"first half; \"\n      \"second half\")\n",
    );
    assert!(occurs(
        "no free port in {…} (lock dir {…}): {…}; widen it",
        &source
    ));
    assert!(occurs("first half; second half", &source));
    assert!(!occurs(
        "no free port in {…} (lock dir {…}): {…}; widen",
        &source.replace("widen", "grow")
    ));
    assert!(!occurs("no spare port in {…}", &source));
}
