//! Reading a step's argv as a CPython command line: interpreter, options, target, arguments.
//!
//! What is recognised, and why:
//! - The interpreter is a word whose file name is `python`, `python3`, `python3.11` or a
//!   free-threaded `python3.13t`, bare (looked up on `PATH`) or as a path. `pythonw` is a
//!   Windows GUI interpreter and `pypy3` is not a debugpy target: neither is recognised.
//! - `env [NAME=VALUE]... python ...` is recognised, because shell-less launchers
//!   (container `CMD`, job specs) write it that way; the `env` prefix and its assignments
//!   stay in front of the rewritten command. `env` with options (`-i`, `-u NAME`, `-S`) is
//!   not parsed: guessing which word is the interpreter would be worse than not injecting.
//! - Interpreter options follow CPython's getopt rules: flags combine (`-uB`), `-W`/`-X`
//!   take their argument attached (`-Wdefault`) or as the next word, and `-c`/`-m` end the
//!   options, their argument attached (`-mpkg`, `-uc CODE`) or next. `--` ends the options
//!   and is dropped from the rewrite: kept in front of `-m debugpy` it would make Python
//!   treat `-m` as the script's name.
//! - Not injectable, with a reason: no target (REPL), `-` (stdin), `-h`/`-V`/`--help*`/
//!   `--version` (print and exit), `-x` (skip the script's first line: debugpy runs the
//!   script itself and cannot honour it), unknown options, and a script name starting
//!   with `-` (debugpy would read it as one of its own switches).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// A Python command line split into the parts the debugpy rewrite needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonCommand {
    /// `env` and its `NAME=VALUE` words, when the command starts with `env`; else empty.
    pub prefix: Vec<OsString>,
    /// The interpreter word exactly as given (`python3`, `/opt/conda/bin/python`).
    pub interpreter: OsString,
    /// Interpreter options before the target, in their original order and spelling
    /// (except that a `-c`/`-m` combined with flags, like `-uc`, keeps only its flags here).
    pub options: Vec<OsString>,
    /// Single-letter flags among `options`, for the availability check (`-S`, `-I`, ...).
    pub flags: Vec<u8>,
    /// What the interpreter runs.
    pub target: Target,
    /// Arguments after the target, untouched (`sys.argv[1:]`).
    pub args: Vec<OsString>,
}

/// What the interpreter runs: the part debugpy needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `python script.py`: a file, directory or zip with `__main__.py`.
    Script(OsString),
    /// `python -m package.module`.
    Module(OsString),
    /// `python -c "code"`.
    Code(OsString),
}

/// Why a command cannot run under debugpy; the caller decides if that is an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotInjectable {
    #[error("the command is empty")]
    Empty,
    #[error("{program} is not a Python interpreter")]
    NotPython { program: String },
    #[error("`env` options ({option}) are not parsed; write the assignments as NAME=VALUE")]
    EnvOption { option: String },
    #[error("no script, -m module or -c code: an interactive interpreter is not injectable")]
    NoTarget,
    #[error("the program comes from standard input (`-`), which debugpy cannot run")]
    Stdin,
    #[error("{option} prints information and exits; there is nothing to debug")]
    InfoOnly { option: String },
    #[error("-x (skip the first line of the script) cannot be honoured under debugpy")]
    SkipFirstLine,
    #[error("unknown interpreter option {option}")]
    UnknownOption { option: String },
    #[error("interpreter option {option} needs an argument")]
    MissingArgument { option: String },
    #[error("the script name {script:?} starts with '-', which debugpy reads as a switch")]
    DashScript { script: String },
    /// Its name says Python 2 (`python2`, `python2.7`): debugpy and the post-mortem hook
    /// need Python 3, and Python 2 refuses the `-X` option the injection adds.
    #[error("{program} is Python 2, which debugpy does not support")]
    Python2 { program: String },
}

/// CPython flags that take no argument (`-t` is a no-op kept for old scripts).
const NO_ARG_FLAGS: &[u8] = b"bBdEiIOPqRsStuv";
/// CPython options whose argument is attached or the next word.
const ARG_FLAGS: &[u8] = b"WX";
/// Options that print something and exit.
const INFO_FLAGS: &[u8] = b"hV?";
/// Long options that print something and exit.
const INFO_LONG: &[&str] = &[
    "--help",
    "--version",
    "--help-env",
    "--help-xoptions",
    "--help-all",
];
/// The one long option that takes an argument (as the next word; `=` is not accepted).
const HASH_PYCS: &str = "--check-hash-based-pycs";

/// Whether `program` names a CPython interpreter: `python`, `python3`, `python3.11`,
/// `python3.13t`, bare or as a path.
pub fn is_python_interpreter(program: &OsStr) -> bool {
    let Some(name) = Path::new(program).file_name() else {
        return false;
    };
    let Some(version) = name.as_bytes().strip_prefix(b"python") else {
        return false;
    };
    let version = version.strip_suffix(b"t").unwrap_or(version);
    if version.is_empty() {
        // A bare `pythont` is not a real interpreter name.
        return name.as_bytes() == b"python";
    }
    let mut parts = version.split(|&b| b == b'.');
    let major_ok = parts
        .next()
        .is_some_and(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
    let minor_ok = parts
        .next()
        .is_none_or(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
    major_ok && minor_ok && parts.next().is_none()
}

fn is_env(program: &OsStr) -> bool {
    Path::new(program).file_name() == Some(OsStr::new("env"))
}

fn lossy(word: &OsStr) -> String {
    word.to_string_lossy().into_owned()
}

/// Splits `argv` into a [`PythonCommand`], or says why it is not an injectable Python command.
pub fn parse(argv: &[OsString]) -> Result<PythonCommand, NotInjectable> {
    let (first, _) = argv.split_first().ok_or(NotInjectable::Empty)?;
    let mut words = argv.iter().peekable();
    let mut prefix = Vec::new();
    if is_env(first) {
        prefix.extend(words.next().cloned());
        while let Some(word) = words.next_if(|w| is_env_assignment(w)) {
            prefix.push(word.clone());
        }
        if let Some(option) = words.peek().filter(|w| w.as_bytes().starts_with(b"-")) {
            return Err(NotInjectable::EnvOption {
                option: lossy(option),
            });
        }
    }
    let interpreter = words.next().ok_or_else(|| NotInjectable::NotPython {
        program: lossy(first),
    })?;
    if !is_python_interpreter(interpreter) {
        return Err(NotInjectable::NotPython {
            program: lossy(interpreter),
        });
    }
    let name = Path::new(interpreter).file_name().unwrap_or_default();
    if name.as_bytes().starts_with(b"python2") {
        return Err(NotInjectable::Python2 {
            program: lossy(interpreter),
        });
    }
    let rest: Vec<OsString> = words.cloned().collect();
    let mut parsed = parse_options(&rest)?;
    parsed.prefix = prefix;
    parsed.interpreter = interpreter.clone();
    Ok(parsed)
}

/// What a port's lock record says of a step's command: a Python step's interpreter and
/// script or module ([`PythonCommand::summary`]), else the program's name and `…` when it
/// has arguments; never the arguments themselves.
pub fn command_summary(argv: &[OsString]) -> String {
    if let Ok(python) = parse(argv) {
        return python.summary();
    }
    let name = argv
        .first()
        .and_then(|program| Path::new(program).file_name())
        .map(lossy)
        .unwrap_or_default();
    if argv.len() > 1 {
        format!("{name} …")
    } else {
        name
    }
}

/// `NAME=VALUE` as `env` reads it: a non-empty name before the first `=`.
fn is_env_assignment(word: &OsStr) -> bool {
    let bytes = word.as_bytes();
    !bytes.starts_with(b"-") && bytes.iter().position(|&b| b == b'=').is_some_and(|i| i > 0)
}

/// Parses the words after the interpreter: options, target, arguments.
fn parse_options(words: &[OsString]) -> Result<PythonCommand, NotInjectable> {
    let mut options = Vec::new();
    let mut flags = Vec::new();
    let mut i = 0;
    let target = loop {
        let Some(word) = words.get(i) else {
            return Err(NotInjectable::NoTarget);
        };
        i += 1;
        let bytes = word.as_bytes();
        if bytes == b"-" {
            return Err(NotInjectable::Stdin);
        }
        if bytes == b"--" {
            // End of options: the next word is the script, whatever it looks like.
            let script = words.get(i).ok_or(NotInjectable::NoTarget)?;
            i += 1;
            break script_target(script)?;
        }
        if let Some(long) = bytes.strip_prefix(b"--") {
            let option = format!("--{}", String::from_utf8_lossy(long));
            if INFO_LONG.contains(&option.as_str()) {
                return Err(NotInjectable::InfoOnly { option });
            }
            if option != HASH_PYCS {
                return Err(NotInjectable::UnknownOption { option });
            }
            let value = words
                .get(i)
                .ok_or(NotInjectable::MissingArgument { option })?;
            i += 1;
            options.extend([word.clone(), value.clone()]);
            continue;
        }
        let Some(letters) = bytes.strip_prefix(b"-") else {
            break script_target(word)?;
        };
        match short_options(letters, words.get(i))? {
            Chunk::Flags { consumed_next } => {
                options.push(word.clone());
                if consumed_next {
                    options.extend(words.get(i).cloned());
                    i += 1;
                }
            }
            Chunk::Target {
                flags_before,
                target,
                consumed_next,
            } => {
                if flags_before > 0 {
                    let mut kept = b"-".to_vec();
                    kept.extend_from_slice(&letters[..flags_before]);
                    options.push(OsString::from_vec(kept));
                }
                if consumed_next {
                    i += 1;
                }
                flags.extend(letters[..flags_before].iter().copied());
                break target;
            }
        }
        flags.extend(letters.iter().take_while(|b| NO_ARG_FLAGS.contains(b)));
    };
    Ok(PythonCommand {
        prefix: Vec::new(),
        interpreter: OsString::new(),
        options,
        flags,
        target,
        args: words[i.min(words.len())..].to_vec(),
    })
}

fn script_target(word: &OsString) -> Result<Target, NotInjectable> {
    match word.as_bytes() {
        b"-" => Err(NotInjectable::Stdin),
        b"" => Err(NotInjectable::NoTarget),
        bytes if bytes.starts_with(b"-") => Err(NotInjectable::DashScript {
            script: lossy(word),
        }),
        _ => Ok(Target::Script(word.clone())),
    }
}

/// One `-xyz` word: only flags (maybe one taking an argument), or flags then `-c`/`-m`.
enum Chunk {
    Flags {
        consumed_next: bool,
    },
    Target {
        flags_before: usize,
        target: Target,
        consumed_next: bool,
    },
}

fn short_options(letters: &[u8], next: Option<&OsString>) -> Result<Chunk, NotInjectable> {
    for (pos, &letter) in letters.iter().enumerate() {
        let option = || format!("-{}", letter as char);
        let attached = &letters[pos + 1..];
        match letter {
            l if NO_ARG_FLAGS.contains(&l) => {}
            l if INFO_FLAGS.contains(&l) => {
                return Err(NotInjectable::InfoOnly { option: option() });
            }
            b'x' => return Err(NotInjectable::SkipFirstLine),
            l if ARG_FLAGS.contains(&l) => {
                if !attached.is_empty() {
                    return Ok(Chunk::Flags {
                        consumed_next: false,
                    });
                }
                return match next {
                    Some(_) => Ok(Chunk::Flags {
                        consumed_next: true,
                    }),
                    None => Err(NotInjectable::MissingArgument { option: option() }),
                };
            }
            b'c' | b'm' => {
                let (value, consumed_next) = if attached.is_empty() {
                    let value = next
                        .cloned()
                        .ok_or(NotInjectable::MissingArgument { option: option() })?;
                    (value, true)
                } else {
                    (OsString::from_vec(attached.to_vec()), false)
                };
                let target = if letter == b'c' {
                    Target::Code(value)
                } else {
                    Target::Module(value)
                };
                return Ok(Chunk::Target {
                    flags_before: pos,
                    target,
                    consumed_next,
                });
            }
            _ => {
                return Err(NotInjectable::UnknownOption {
                    option: String::from_utf8_lossy(&[b'-', letter]).into_owned(),
                });
            }
        }
    }
    Ok(Chunk::Flags {
        consumed_next: false,
    })
}

impl PythonCommand {
    /// Whether an `-X name[=value]` option for `name` is among the interpreter options.
    pub fn has_x_option(&self, name: &str) -> bool {
        let mut words = self.options.iter().map(|w| w.as_bytes());
        while let Some(word) = words.next() {
            let Some(letters) = word.strip_prefix(b"-").filter(|l| !l.starts_with(b"-")) else {
                if word == HASH_PYCS.as_bytes() {
                    words.next();
                }
                continue;
            };
            let flags = letters
                .iter()
                .take_while(|b| NO_ARG_FLAGS.contains(b))
                .count();
            let Some((&letter, attached)) = letters[flags..].split_first() else {
                continue;
            };
            let value = if attached.is_empty() {
                words.next().unwrap_or_default()
            } else {
                attached
            };
            let key = value.split(|&b| b == b'=').next().unwrap_or_default();
            if letter == b'X' && key == name.as_bytes() {
                return true;
            }
        }
        false
    }

    /// The `NAME=VALUE` assignments of an `env` prefix, as environment pairs.
    pub fn env_assignments(&self) -> Vec<(OsString, OsString)> {
        self.prefix
            .iter()
            .skip(1)
            .filter_map(|word| {
                let bytes = word.as_bytes();
                let eq = bytes.iter().position(|&b| b == b'=')?;
                Some((
                    OsString::from_vec(bytes[..eq].to_vec()),
                    OsString::from_vec(bytes[eq + 1..].to_vec()),
                ))
            })
            .collect()
    }

    /// The interpreter's file name and what it runs (`python3 train.py`, `python -m
    /// pkg.main`, `python3 -c …`), without options or arguments: what a port's lock record
    /// says of the step. The record is readable by every user of the node and outlives
    /// the step, and arguments and code carry tokens (`--hf-token …`).
    pub fn summary(&self) -> String {
        let name = Path::new(&self.interpreter)
            .file_name()
            .unwrap_or(self.interpreter.as_os_str());
        let runs = match &self.target {
            Target::Script(script) => lossy(script),
            Target::Module(module) => format!("-m {}", lossy(module)),
            Target::Code(_) => "-c …".to_owned(),
        };
        format!("{} {runs}", lossy(name))
    }

    /// The interpreter with its options, for messages (`python3 -u -B`).
    pub fn display_interpreter(&self) -> String {
        std::iter::once(&self.interpreter)
            .chain(&self.options)
            .map(|w| lossy(w))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
#[path = "python_argv_tests.rs"]
mod tests;
