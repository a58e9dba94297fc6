//! Table-driven tests for the CPython command-line reader.

use super::*;

fn argv(words: &[&str]) -> Vec<OsString> {
    words.iter().map(OsString::from).collect()
}

fn strings(words: &[OsString]) -> Vec<String> {
    words.iter().map(|w| lossy(w)).collect()
}

#[test]
fn interpreter_names() {
    let cases = [
        ("python", true),
        ("python3", true),
        ("python3.11", true),
        ("python3.13t", true),
        ("python2.7", true),
        ("/usr/bin/python3", true),
        ("./venv/bin/python", true),
        ("../python3.11", true),
        ("pythonw", false),
        ("pythont", false),
        ("python3.", false),
        ("python3.11.2", false),
        ("python3-config", false),
        ("ipython", false),
        ("pypy3", false),
        ("bash", false),
        ("/usr/bin/python3/", true),
        ("", false),
    ];
    for (program, expected) in cases {
        assert_eq!(
            is_python_interpreter(OsStr::new(program)),
            expected,
            "{program:?}"
        );
    }
}

/// (argv, prefix, options, flags, target, args)
type Case<'a> = (
    &'a [&'a str],
    &'a [&'a str],
    &'a [&'a str],
    &'a str,
    Target,
    &'a [&'a str],
);

fn script(s: &str) -> Target {
    Target::Script(s.into())
}
fn module(s: &str) -> Target {
    Target::Module(s.into())
}
fn code(s: &str) -> Target {
    Target::Code(s.into())
}

#[test]
fn injectable_command_lines() {
    let cases: Vec<Case<'_>> = vec![
        (&["python", "step.py"], &[], &[], "", script("step.py"), &[]),
        (
            &["python3", "step.py", "--lr", "0.1", "-m", "x"],
            &[],
            &[],
            "",
            script("step.py"),
            &["--lr", "0.1", "-m", "x"],
        ),
        (
            &["/opt/conda/bin/python3.11", "-u", "-B", "train.py", "-c"],
            &[],
            &["-u", "-B"],
            "uB",
            script("train.py"),
            &["-c"],
        ),
        (
            &["python", "-uB", "s.py"],
            &[],
            &["-uB"],
            "uB",
            script("s.py"),
            &[],
        ),
        (
            &["python", "-OO", "s.py"],
            &[],
            &["-OO"],
            "OO",
            script("s.py"),
            &[],
        ),
        (
            &["python", "-bb", "-d", "-v", "-q", "-R", "-P", "-t", "s.py"],
            &[],
            &["-bb", "-d", "-v", "-q", "-R", "-P", "-t"],
            "bbdvqRPt",
            script("s.py"),
            &[],
        ),
        (
            &["python", "-E", "-I", "-s", "-S", "-i", "s.py"],
            &[],
            &["-E", "-I", "-s", "-S", "-i"],
            "EIsSi",
            script("s.py"),
            &[],
        ),
        (
            &["python", "-W", "error", "-X", "dev", "s.py"],
            &[],
            &["-W", "error", "-X", "dev"],
            "",
            script("s.py"),
            &[],
        ),
        (
            &["python", "-Werror", "-Xfrozen_modules=off", "s.py"],
            &[],
            &["-Werror", "-Xfrozen_modules=off"],
            "",
            script("s.py"),
            &[],
        ),
        (
            &["python", "-uW", "ignore", "s.py"],
            &[],
            &["-uW", "ignore"],
            "u",
            script("s.py"),
            &[],
        ),
        (
            &["python", "-uWignore", "s.py"],
            &[],
            &["-uWignore"],
            "u",
            script("s.py"),
            &[],
        ),
        (
            &["python", "-m", "torch.distributed.run", "--nproc", "2"],
            &[],
            &[],
            "",
            module("torch.distributed.run"),
            &["--nproc", "2"],
        ),
        (
            &["python", "-mjson.tool", "f"],
            &[],
            &[],
            "",
            module("json.tool"),
            &["f"],
        ),
        (
            &["python", "-um", "pkg", "a"],
            &[],
            &["-u"],
            "u",
            module("pkg"),
            &["a"],
        ),
        (
            &["python", "-OOmpkg"],
            &[],
            &["-OO"],
            "OO",
            module("pkg"),
            &[],
        ),
        (
            &["python", "-c", "print(1)", "a", "b"],
            &[],
            &[],
            "",
            code("print(1)"),
            &["a", "b"],
        ),
        (&["python", "-cpass"], &[], &[], "", code("pass"), &[]),
        (
            &["python", "-Bc", "pass", "-x"],
            &[],
            &["-B"],
            "B",
            code("pass"),
            &["-x"],
        ),
        (
            &["python", "--check-hash-based-pycs", "never", "s.py"],
            &[],
            &["--check-hash-based-pycs", "never"],
            "",
            script("s.py"),
            &[],
        ),
        (
            &["python", "--", "s.py", "--"],
            &[],
            &[],
            "",
            script("s.py"),
            &["--"],
        ),
        (
            &["python", "-u", "--", "s.py"],
            &[],
            &["-u"],
            "u",
            script("s.py"),
            &[],
        ),
        (&["python", "dir/"], &[], &[], "", script("dir/"), &[]),
        (
            &["env", "PYTHONPATH=src", "A=b=c", "python3", "-u", "s.py"],
            &["env", "PYTHONPATH=src", "A=b=c"],
            &["-u"],
            "u",
            script("s.py"),
            &[],
        ),
        (
            &["/usr/bin/env", "python3", "s.py"],
            &["/usr/bin/env"],
            &[],
            "",
            script("s.py"),
            &[],
        ),
    ];
    for (words, prefix, options, flags, target, args) in cases {
        let parsed = parse(&argv(words)).unwrap_or_else(|e| panic!("{words:?}: {e}"));
        assert_eq!(strings(&parsed.prefix), prefix.to_vec(), "{words:?} prefix");
        assert_eq!(
            strings(&parsed.options),
            options.to_vec(),
            "{words:?} options"
        );
        assert_eq!(parsed.flags, flags.as_bytes(), "{words:?} flags");
        assert_eq!(parsed.target, target, "{words:?} target");
        assert_eq!(strings(&parsed.args), args.to_vec(), "{words:?} args");
        let interpreter_index = prefix.len();
        assert_eq!(parsed.interpreter, words[interpreter_index], "{words:?}");
    }
}

#[test]
fn not_injectable_command_lines() {
    let not_python = |p: &str| NotInjectable::NotPython { program: p.into() };
    let info = |o: &str| NotInjectable::InfoOnly { option: o.into() };
    let unknown = |o: &str| NotInjectable::UnknownOption { option: o.into() };
    let missing = |o: &str| NotInjectable::MissingArgument { option: o.into() };
    let cases: Vec<(&[&str], NotInjectable)> = vec![
        (&[], NotInjectable::Empty),
        (&["bash", "run.sh"], not_python("bash")),
        (
            &["torchrun", "--nproc-per-node", "2", "s.py"],
            not_python("torchrun"),
        ),
        (&["pythonw", "s.py"], not_python("pythonw")),
        (&["env"], not_python("env")),
        (&["env", "A=1"], not_python("env")),
        (&["env", "A=1", "bash"], not_python("bash")),
        (
            &["env", "-i", "python3", "s.py"],
            NotInjectable::EnvOption {
                option: "-i".into(),
            },
        ),
        (&["python"], NotInjectable::NoTarget),
        (&["python", "-u"], NotInjectable::NoTarget),
        (&["python", "--"], NotInjectable::NoTarget),
        (&["python", "-"], NotInjectable::Stdin),
        (&["python", "-u", "-", "arg"], NotInjectable::Stdin),
        (&["python", "--", "-"], NotInjectable::Stdin),
        (&["python", "-h"], info("-h")),
        (&["python", "-uV"], info("-V")),
        (&["python", "-?"], info("-?")),
        (&["python", "--version"], info("--version")),
        (&["python", "--help-all"], info("--help-all")),
        (&["python", "-x", "s.py"], NotInjectable::SkipFirstLine),
        (&["python", "-J", "s.py"], unknown("-J")),
        (&["python", "-uZ", "s.py"], unknown("-Z")),
        (&["python", "--foo", "s.py"], unknown("--foo")),
        (
            &["python", "--check-hash-based-pycs=never", "s.py"],
            unknown("--check-hash-based-pycs=never"),
        ),
        (&["python", "-W"], missing("-W")),
        (&["python", "-uX"], missing("-X")),
        (&["python", "-m"], missing("-m")),
        (&["python", "-c"], missing("-c")),
        (
            &["python", "--check-hash-based-pycs"],
            missing("--check-hash-based-pycs"),
        ),
        (
            &["python", "--", "-weird.py"],
            NotInjectable::DashScript {
                script: "-weird.py".into(),
            },
        ),
        (&["python", ""], NotInjectable::NoTarget),
        // Python 2: the step runs as it is (Python 2 refuses `-X`: the step did not start).
        (
            &["python2", "s.py"],
            NotInjectable::Python2 {
                program: "python2".into(),
            },
        ),
        (
            &["env", "A=1", "/usr/bin/python2.7", "-m", "m"],
            NotInjectable::Python2 {
                program: "/usr/bin/python2.7".into(),
            },
        ),
    ];
    for (words, expected) in cases {
        assert_eq!(parse(&argv(words)), Err(expected), "{words:?}");
    }
}

#[test]
fn non_utf8_words_survive() {
    let weird = OsString::from_vec(vec![b's', 0xff, b'.', b'p', b'y']);
    let words = vec![
        OsString::from("python3"),
        weird.clone(),
        OsString::from_vec(vec![0xfe]),
    ];
    let parsed = parse(&words).expect("non-UTF-8 script names are fine");
    assert_eq!(parsed.target, Target::Script(weird));
    assert_eq!(parsed.args, vec![OsString::from_vec(vec![0xfe])]);
}

#[test]
fn x_options_are_found_in_both_spellings() {
    let cases: &[(&[&str], bool)] = &[
        (&["python", "-Xfrozen_modules=off", "s.py"], true),
        (&["python", "-X", "frozen_modules=on", "s.py"], true),
        (&["python", "-X", "frozen_modules", "s.py"], true),
        (&["python", "-uX", "frozen_modules=off", "s.py"], true),
        (&["python", "-X", "dev", "s.py"], false),
        (&["python", "-W", "-Xfrozen_modules", "s.py"], false),
        (&["python", "s.py", "-Xfrozen_modules=off"], false),
    ];
    for (words, expected) in cases {
        let parsed = parse(&argv(words)).expect("parses");
        assert_eq!(
            parsed.has_x_option("frozen_modules"),
            *expected,
            "{words:?}"
        );
    }
}

#[test]
fn env_assignments_become_pairs() {
    let parsed = parse(&argv(&["env", "A=1", "B=x=y", "python", "s.py"])).expect("parses");
    let pairs: Vec<(String, String)> = parsed
        .env_assignments()
        .into_iter()
        .map(|(k, v)| (lossy(&k), lossy(&v)))
        .collect();
    assert_eq!(
        pairs,
        vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
    );
}

/// The lock record names the program and a Python step's script, never arguments or
/// code: a lock file is readable by every user and outlives the step, and
/// `--hf-token hf_SECRET` stayed in it.
#[test]
fn the_summary_names_the_program_never_its_arguments() {
    let cases: [(&[&str], &str); 7] = [
        (
            &["python3", "train.py", "--hf-token", "hf_SECRET"],
            "python3 train.py",
        ),
        (
            &[
                "/opt/conda/bin/python",
                "-u",
                "-m",
                "pkg.main",
                "--key",
                "hf_SECRET",
            ],
            "python -m pkg.main",
        ),
        (&["python3", "-c", "token='hf_SECRET'"], "python3 -c …"),
        (
            &["env", "HF_TOKEN=hf_SECRET", "python3", "t.py"],
            "python3 t.py",
        ),
        (
            &[
                "/usr/bin/torchrun",
                "--nproc-per-node",
                "2",
                "t.py",
                "hf_SECRET",
            ],
            "torchrun …",
        ),
        (&["sh"], "sh"),
        (&[], ""),
    ];
    for (words, want) in cases {
        let got = command_summary(&argv(words));
        assert_eq!(got, want, "{words:?}");
        assert!(!got.contains("SECRET"), "{words:?}");
    }
}
