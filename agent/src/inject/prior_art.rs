//! The prior-art debug flags in a step's own arguments, read but never removed.
//!
//! Steps written for the Azure ML "debug relay" samples parse `--is-debug`, `--debug-port`
//! and `--debug-relay-connection-name` themselves, so the words must reach the step
//! unchanged; the agent only reads them as hints for the session: a settings layer above
//! the config file and below `AMLX_*` variables and flags (`config::StepHints`), so
//! `--no-debug` and an explicit `--port-range` win over them. Forms follow argparse:
//! `--flag value` and `--flag=value`, the last occurrence wins, a bare `--` ends the flags.
//! One deliberate difference: the samples declare `--is-debug` with `type=bool`, which
//! makes `--is-debug false` true; here `false`/`0` mean false.

use std::ffi::OsString;

/// What the prior-art flags asked for; `None` where a flag is absent or unreadable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriorArt {
    /// `--is-debug [true|false|1|0]`: debugging on (or off) for this process.
    /// A bare `--is-debug` means true.
    pub is_debug: Option<bool>,
    /// `--debug-port N`: the port the step expects; a preference for the reservation.
    pub debug_port: Option<u16>,
    /// `--debug-relay-connection-name NAME`: the Hybrid Connection to relay through.
    pub relay_connection_name: Option<String>,
    /// Flags that were present but unreadable, one message each, for the log.
    pub warnings: Vec<String>,
}

const IS_DEBUG: &str = "--is-debug";
const DEBUG_PORT: &str = "--debug-port";
const RELAY_NAME: &str = "--debug-relay-connection-name";

/// Reads the prior-art flags from a step's argv (the program itself is skipped).
///
/// ```
/// use amlx_agent::inject::prior_art;
/// let argv = ["python", "step.py", "--is-debug", "true", "--debug-port=5679"].map(Into::into);
/// let found = prior_art::read(&argv);
/// assert_eq!((found.is_debug, found.debug_port), (Some(true), Some(5679)));
/// ```
pub fn read(argv: &[OsString]) -> PriorArt {
    let mut found = PriorArt::default();
    let words: Vec<String> = argv
        .iter()
        .skip(1)
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    let mut i = 0;
    while let Some(word) = words.get(i) {
        i += 1;
        if word == "--" {
            break;
        }
        let (flag, attached) = match word.split_once('=') {
            Some((flag, value)) => (flag, Some(value)),
            None => (word.as_str(), None),
        };
        if ![IS_DEBUG, DEBUG_PORT, RELAY_NAME].contains(&flag) {
            continue;
        }
        // A following word is the value unless it is another option.
        let next = words.get(i).filter(|w| !w.starts_with("--"));
        if flag == IS_DEBUG {
            match attached {
                Some(value) => match parse_bool(value) {
                    Some(on) => found.is_debug = Some(on),
                    None => found.warnings.push(format!(
                        "ignoring {IS_DEBUG}={value:?}: expected true, false, 1 or 0"
                    )),
                },
                None => match next.and_then(|w| parse_bool(w)) {
                    Some(on) => {
                        found.is_debug = Some(on);
                        i += 1;
                    }
                    // Bare flag; a following non-boolean word is the step's, not ours.
                    None => found.is_debug = Some(true),
                },
            }
            continue;
        }
        let value = match attached {
            Some(value) => Some(value),
            None => next.map(|w| {
                i += 1;
                w.as_str()
            }),
        };
        let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
            found
                .warnings
                .push(format!("ignoring {flag}: it has no value"));
            continue;
        };
        if flag == DEBUG_PORT {
            match value.trim().parse::<u16>() {
                Ok(port) if port > 0 => found.debug_port = Some(port),
                _ => found.warnings.push(format!(
                    "ignoring {DEBUG_PORT} {value:?}: expected a port number 1-65535"
                )),
            }
        } else {
            found.relay_connection_name = Some(value.to_owned());
        }
    }
    found
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_words(words: &[&str]) -> PriorArt {
        let argv: Vec<OsString> = std::iter::once("python")
            .chain(words.iter().copied())
            .map(OsString::from)
            .collect();
        read(&argv)
    }

    #[test]
    fn is_debug_forms() {
        let cases: &[(&[&str], Option<bool>, usize)] = &[
            (&["s.py"], None, 0),
            (&["s.py", "--is-debug"], Some(true), 0),
            (&["s.py", "--is-debug", "true"], Some(true), 0),
            (&["s.py", "--is-debug", "True"], Some(true), 0),
            (&["s.py", "--is-debug", "1"], Some(true), 0),
            (&["s.py", "--is-debug", "false"], Some(false), 0),
            (&["s.py", "--is-debug", "FALSE"], Some(false), 0),
            (&["s.py", "--is-debug", "0"], Some(false), 0),
            (&["s.py", "--is-debug=false"], Some(false), 0),
            (&["s.py", "--is-debug=1"], Some(true), 0),
            (&["s.py", "--is-debug=maybe"], None, 1),
            (&["s.py", "--is-debug="], None, 1),
            (&["s.py", "--is-debug", "--lr", "0.1"], Some(true), 0),
            (&["s.py", "--is-debug", "data.csv"], Some(true), 0),
            (
                &["s.py", "--is-debug", "true", "--is-debug", "0"],
                Some(false),
                0,
            ),
            (&["s.py", "--", "--is-debug", "true"], None, 0),
            (&["s.py", "--is-debugger", "true"], None, 0),
            (&["s.py", "-is-debug", "true"], None, 0),
        ];
        for (words, expected, warnings) in cases {
            let found = read_words(words);
            assert_eq!(found.is_debug, *expected, "{words:?}");
            assert_eq!(
                found.warnings.len(),
                *warnings,
                "{words:?}: {:?}",
                found.warnings
            );
        }
    }

    #[test]
    fn debug_port_forms() {
        let cases: &[(&[&str], Option<u16>, usize)] = &[
            (&["--debug-port", "5679"], Some(5679), 0),
            (&["--debug-port=5680"], Some(5680), 0),
            (&["--debug-port", " 5681 "], Some(5681), 0),
            (
                &["--debug-port", "5679", "--debug-port", "6000"],
                Some(6000),
                0,
            ),
            (&["--debug-port"], None, 1),
            (&["--debug-port", "--is-debug"], None, 1),
            (&["--debug-port="], None, 1),
            (&["--debug-port", "abc"], None, 1),
            (&["--debug-port", "0"], None, 1),
            (&["--debug-port", "70000"], None, 1),
            (&["--debug-port", "-1"], None, 1),
        ];
        for (words, expected, warnings) in cases {
            let found = read_words(words);
            assert_eq!(found.debug_port, *expected, "{words:?}");
            assert_eq!(
                found.warnings.len(),
                *warnings,
                "{words:?}: {:?}",
                found.warnings
            );
        }
    }

    #[test]
    fn relay_name_forms() {
        let cases: &[(&[&str], Option<&str>, usize)] = &[
            (&["--debug-relay-connection-name", "hc1"], Some("hc1"), 0),
            (&["--debug-relay-connection-name=hc-2"], Some("hc-2"), 0),
            (&["--debug-relay-connection-name=a=b"], Some("a=b"), 0),
            (&["--debug-relay-connection-name"], None, 1),
            (
                &["--debug-relay-connection-name", "--debug-port", "1"],
                None,
                1,
            ),
            (&["--debug-relay-connection-name", ""], None, 1),
        ];
        for (words, expected, warnings) in cases {
            let found = read_words(words);
            assert_eq!(
                found.relay_connection_name.as_deref(),
                *expected,
                "{words:?}"
            );
            assert_eq!(
                found.warnings.len(),
                *warnings,
                "{words:?}: {:?}",
                found.warnings
            );
        }
    }

    #[test]
    fn all_three_together_and_the_program_is_skipped() {
        let argv: Vec<OsString> = [
            "--is-debug",
            "python",
            "step.py",
            "--is-debug",
            "true",
            "--debug-relay-connection-name",
            "hc",
            "--debug-port",
            "5700",
            "--lr",
            "0.1",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let found = read(&argv);
        assert_eq!(
            found,
            PriorArt {
                is_debug: Some(true),
                debug_port: Some(5700),
                relay_connection_name: Some("hc".into()),
                warnings: vec![],
            }
        );
    }
}
