//! Post-mortem sessions: the process that raises an unhandled exception, and only that
//! one, becomes debuggable at the frame that raised, for a bounded time, then exits as it
//! would have without the agent.
//!
//! Three parts, in three processes:
//! 1. `exec --post-mortem` rewrites a Python step ([`rewrite`]) so its interpreter runs
//!    [`hook`]'s text first: unhandled-exception hooks (main thread, `threading`, a
//!    multiprocessing worker's `run()`), then the target exactly as Python would run it.
//!    No debugger is loaded until something raises.
//! 2. On an exception the hook starts the helper, `amlx-agent post-mortem` with the same
//!    options as the `exec` in front of it ([`helper_argv`]), tells it what raised
//!    ([`crash`]), and waits (bounded) to hear whether there is a session.
//! 3. The helper (`commands::post_mortem`) claims one of the node's post-mortem slots
//!    ([`slots`]), reserves a port, opens the relay path and publishes the session in
//!    the `post-mortem` state; it ends the session at the deadline, which releases the
//!    hook. Everything the helper and the hook say goes to the process's stdout: its
//!    stderr stays exactly what Python writes.

pub mod crash;
pub mod hook;
pub mod slots;

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::time::Duration;

use crate::inject::python_argv::{PythonCommand, Target};

/// How long a post-mortem session waits for a developer unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How many post-mortem sessions a node holds at once unless configured otherwise: when
/// ranks crash together (a collective error cascades), the first one is debugged.
pub const DEFAULT_MAX_PER_NODE: u32 = 1;

/// The helper's subcommand.
pub const HELPER_SUBCOMMAND: &str = "post-mortem";

/// The marker multiprocessing gives a spawned worker's command line.
const SPAWN_WORKER_MARKER: &[u8] = b"--multiprocessing-fork";

/// What the step's environment says to the `exec` in front of its Python children (the
/// launcher shims bring them back without this agent's flags): post-mortem is on, with
/// this timeout and node limit.
///
/// ```
/// let env = amlx_agent::post_mortem::step_env(std::time::Duration::from_secs(90), 2);
/// let text: Vec<String> = env.iter().map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy())).collect();
/// assert_eq!(text, ["AMLX_POST_MORTEM=1", "AMLX_POST_MORTEM_TIMEOUT=1m 30s", "AMLX_POST_MORTEM_MAX=2"]);
/// ```
pub fn step_env(timeout: Duration, max_per_node: u32) -> Vec<(OsString, OsString)> {
    vec![
        ("AMLX_POST_MORTEM".into(), "1".into()),
        (
            "AMLX_POST_MORTEM_TIMEOUT".into(),
            humantime::format_duration(timeout).to_string().into(),
        ),
        (
            "AMLX_POST_MORTEM_MAX".into(),
            max_per_node.to_string().into(),
        ),
    ]
}

/// Why a Python command is left alone (no hook), or `Ok` to hook it. The hook runs a
/// script's source as Python would; what Python runs another way — a directory or zip
/// with `__main__.py`, a compiled `.pyc`, a script it cannot open (it reports that
/// itself, with its own exit code) — runs exactly as given.
pub fn hookable(python: &PythonCommand) -> Result<(), &'static str> {
    let Target::Script(script) = &python.target else {
        return Ok(());
    };
    if script.as_bytes() == b"-" {
        return Err("the script is read from stdin");
    }
    let path = Path::new(script);
    let compiled = path.extension().is_some_and(|ext| {
        ["pyc", "pyo", "pyz", "zip"]
            .iter()
            .any(|known| ext.eq_ignore_ascii_case(known))
    });
    if compiled {
        return Err("the script is compiled or a zip archive");
    }
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(_) => return Err("Python cannot open the script either (it says so itself)"),
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err("the script is not a regular file (a directory with __main__.py?)");
    }
    let mut start = [0u8; 4];
    let read = std::io::Read::read(&mut file, &mut start).unwrap_or(0);
    if start.get(..read) == Some(b"PK\x03\x04".as_slice()) {
        return Err("the script is a zip archive");
    }
    Ok(())
}

/// The step's command line and environment additions with the hook installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hooked {
    pub argv: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
}

/// Rewrites `python <options> <target> <args>` into `python <options> -c <LAUNCHER>
/// <target> <args>`, the hook's text in [`hook::HOOK_VAR`].
///
/// ```
/// use amlx_agent::inject::python_argv;
/// use amlx_agent::post_mortem::{self, hook};
/// let argv = ["python3", "-u", "step.py", "--lr", "0.1"].map(Into::into);
/// let python = python_argv::parse(&argv).unwrap();
/// let hooked = post_mortem::rewrite(&python, &["/bin/amlx-agent".into(), "post-mortem".into()]);
/// assert_eq!(
///     hooked.argv.join(" ".as_ref()).to_string_lossy(),
///     format!("python3 -u -c {} step.py --lr 0.1", hook::LAUNCHER)
/// );
/// ```
pub fn rewrite(python: &PythonCommand, helper_argv: &[String]) -> Hooked {
    let mut argv: Vec<OsString> = python.prefix.clone();
    argv.push(python.interpreter.clone());
    argv.extend(python.options.iter().cloned());
    argv.extend(["-c", hook::LAUNCHER].map(OsString::from));
    match &python.target {
        Target::Script(script) => argv.push(script.clone()),
        Target::Module(module) => argv.extend(["-m".into(), module.clone()]),
        Target::Code(code) => argv.extend(["-c".into(), code.clone()]),
    }
    argv.extend(python.args.iter().cloned());
    let spawn_worker = python
        .args
        .iter()
        .any(|word| word.as_bytes() == SPAWN_WORKER_MARKER);
    Hooked {
        argv,
        env: vec![
            (
                hook::HOOK_VAR.into(),
                hook::text(helper_argv, spawn_worker).into(),
            ),
            (hook::SESSION_VAR.into(), hook::SESSION_TEXT.into()),
        ],
    }
}

/// The helper's command line: `agent` and this agent's own words, with the `exec`
/// subcommand replaced by [`HELPER_SUBCOMMAND`] and the step's command (the last
/// `command_len` words, and a `--` before them) left out, so the helper resolves exactly
/// the settings this `exec` did. `None` when a word is not UTF-8 (the hook's text holds
/// them as Python strings) or the line has no `exec`.
///
/// ```
/// use amlx_agent::post_mortem::helper_argv;
/// let args = ["amlx-agent", "-v", "exec", "--post-mortem", "--mode", "listen", "--", "python3", "x.py"]
///     .map(Into::into);
/// assert_eq!(
///     helper_argv("/opt/amlx-agent".as_ref(), &args, 2).unwrap().join(" "),
///     "/opt/amlx-agent -v post-mortem --post-mortem --mode listen"
/// );
/// ```
pub fn helper_argv(agent: &Path, args: &[OsString], command_len: usize) -> Option<Vec<String>> {
    let options_end = args.len().checked_sub(command_len)?;
    let mut words = args.get(1..options_end)?.to_vec();
    if words.last().is_some_and(|word| word == "--") {
        words.pop();
    }
    let exec = words.iter().position(|word| word == "exec")?;
    let mut argv = vec![agent.to_str()?.to_owned()];
    for (index, word) in words.iter().enumerate() {
        if index == exec {
            argv.push(HELPER_SUBCOMMAND.to_owned());
        } else {
            argv.push(word.to_str()?.to_owned());
        }
    }
    Some(argv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::python_argv;

    fn words(text: &[&str]) -> Vec<OsString> {
        text.iter().map(OsString::from).collect()
    }

    #[test]
    fn every_target_shape_keeps_its_words_after_the_launcher() {
        let cases: &[(&[&str], &str, bool)] = &[
            (&["python3", "x.py", "a"], "x.py a", false),
            (
                &["python3", "-m", "pkg.mod", "--x"],
                "-m pkg.mod --x",
                false,
            ),
            (&["python3", "-c", "print(1)", "y"], "-c print(1) y", false),
            (
                &[
                    "/usr/bin/python3",
                    "-c",
                    "from multiprocessing.spawn import spawn_main; spawn_main()",
                    "--multiprocessing-fork",
                ],
                "-c from multiprocessing.spawn import spawn_main; spawn_main() --multiprocessing-fork",
                true,
            ),
            (
                &["env", "A=1", "python", "-X", "dev", "s.py"],
                "s.py",
                false,
            ),
        ];
        for (argv, tail, spawn_worker) in cases {
            let python = python_argv::parse(&words(argv)).expect("python");
            let hooked = rewrite(&python, &["agent".into()]);
            let line = hooked.argv.join(std::ffi::OsStr::new(" "));
            let line = line.to_string_lossy();
            let (head, rest) = line.split_once(hook::LAUNCHER).expect("the launcher");
            assert!(head.ends_with("-c "), "{line}");
            assert_eq!(rest.trim_start(), *tail, "{argv:?}");
            let text = &hooked.env[0].1;
            let marker = if *spawn_worker {
                "AMLX_SPAWN_WORKER = True"
            } else {
                "AMLX_SPAWN_WORKER = False"
            };
            assert!(text.to_string_lossy().contains(marker), "{argv:?}");
        }
    }

    #[test]
    fn only_what_python_runs_as_source_is_hooked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        std::fs::write(at("ok.py"), "print(1)\n").expect("write");
        std::fs::write(at("app.pyz"), "PK\x03\x04").expect("write");
        std::fs::write(at("zipped"), "PK\x03\x04rest").expect("write");
        std::fs::write(at("x.pyc"), [0u8; 16]).expect("write");
        std::fs::create_dir(at("pkg")).expect("mkdir");
        let cases: Vec<(Vec<String>, bool)> = vec![
            (vec!["python3".into(), at("ok.py")], true),
            (vec!["python3".into(), "-m".into(), "pkg".into()], true),
            (vec!["python3".into(), "-c".into(), "1/0".into()], true),
            (vec!["python3".into(), at("missing.py")], false),
            (vec!["python3".into(), at("pkg")], false),
            (vec!["python3".into(), at("app.pyz")], false),
            (vec!["python3".into(), at("zipped")], false),
            (vec!["python3".into(), at("x.pyc")], false),
            (vec!["python3".into(), "-".into()], false),
        ];
        for (argv, want) in cases {
            let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
            let Ok(python) = python_argv::parse(&argv) else {
                assert!(!want, "{argv:?} is not even Python");
                continue;
            };
            assert_eq!(hookable(&python).is_ok(), want, "{argv:?}");
        }
    }

    #[test]
    fn the_helper_line_is_the_exec_line_without_the_step() {
        let agent = Path::new("/a");
        let cases: &[(&[&str], usize, Option<&str>)] = &[
            (
                &["amlx-agent", "exec", "--", "python3", "x.py"],
                2,
                Some("/a post-mortem"),
            ),
            (
                &["amlx-agent", "exec", "python3", "x.py"],
                2,
                Some("/a post-mortem"),
            ),
            (
                &[
                    "amlx-agent",
                    "--config",
                    "c.toml",
                    "exec",
                    "--post-mortem-timeout",
                    "3s",
                    "--",
                    "python3",
                    "x.py",
                ],
                2,
                Some("/a --config c.toml post-mortem --post-mortem-timeout 3s"),
            ),
            (&["amlx-agent", "run", "x"], 1, None),
            (&["amlx-agent"], 5, None),
        ];
        for (args, command_len, want) in cases {
            let got = helper_argv(agent, &words(args), *command_len).map(|argv| argv.join(" "));
            assert_eq!(got.as_deref(), *want, "{args:?}");
        }
        use std::os::unix::ffi::OsStringExt as _;
        let not_utf8 = vec![
            OsString::from("amlx-agent"),
            OsString::from("exec"),
            OsString::from("--state-dir"),
            OsString::from_vec(vec![0xff]),
            OsString::from("python3"),
        ];
        assert_eq!(helper_argv(agent, &not_utf8, 1), None);
    }
}
