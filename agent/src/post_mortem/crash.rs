//! What raised: the one line of JSON the hook sends the helper, read as untrusted bytes
//! (it comes from whatever the step's interpreter made of the exception).

use serde::Deserialize;

/// The most of the hook's line that is read; the hook sends far less.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// The most characters of any one field that are kept (the message is shown in `status`
/// and a run tag).
pub const MAX_FIELD_CHARS: usize = 500;

/// The exception that ended a process, as the hook saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Crash {
    /// The exception's type, module-qualified unless built in (`ValueError`,
    /// `torch.distributed.DistBackendError`).
    pub kind: String,
    /// `str(exception)`, on one line.
    pub message: String,
    /// The thread it reached the hook in (`MainThread`, `process 1234` for a worker).
    pub thread: String,
    /// `file:line` of the innermost frame.
    pub location: String,
    /// The process is a multiprocessing spawn worker (a ParallelRunStep worker, when the
    /// launcher is Azure Batch).
    pub spawn_worker: bool,
}

#[derive(Deserialize)]
struct Line {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    thread: String,
    #[serde(rename = "where", default)]
    location: String,
    #[serde(default)]
    spawn_worker: bool,
}

impl Crash {
    /// Reads the hook's line: the first line of `bytes` (at most [`MAX_LINE_BYTES`]),
    /// JSON; every field printable and bounded. `None` when it is not such a line.
    ///
    /// ```
    /// use amlx_agent::post_mortem::crash::Crash;
    /// let crash = Crash::parse(br#"{"type":"ValueError","message":"bad\nvalue","thread":"MainThread","where":"/s.py:4"}"#).unwrap();
    /// assert_eq!(crash.summary(), "ValueError: bad value");
    /// assert!(Crash::parse(b"\xff").is_none());
    /// ```
    pub fn parse(bytes: &[u8]) -> Option<Crash> {
        let bytes = bytes.get(..MAX_LINE_BYTES).unwrap_or(bytes);
        let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
        let line: Line = serde_json::from_slice(line).ok()?;
        let crash = Crash {
            kind: printable(&line.kind),
            message: printable(&line.message),
            thread: printable(&line.thread),
            location: printable(&line.location),
            spawn_worker: line.spawn_worker,
        };
        (!crash.kind.is_empty()).then_some(crash)
    }

    /// `Type: message` (or just the type), for the log, `status` and the run tag.
    pub fn summary(&self) -> String {
        if self.message.is_empty() {
            self.kind.clone()
        } else {
            format!("{}: {}", self.kind, self.message)
        }
    }
}

/// One line of printable text, at most [`MAX_FIELD_CHARS`] characters (cut at a
/// character, marked with `…`).
fn printable(text: &str) -> String {
    let mut out = String::new();
    for (count, c) in text.chars().enumerate() {
        if count == MAX_FIELD_CHARS {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_any_shape_are_read_without_panicking() {
        let long = format!(r#"{{"type":"E","message":"{}"}}"#, "é".repeat(5_000));
        let cases: Vec<(&[u8], Option<&str>)> = vec![
            (
                br#"{"type":"ValueError","message":"x"}"#,
                Some("ValueError: x"),
            ),
            (br#"{"type":"E"}"#, Some("E")),
            (br#"{"type":"","message":"x"}"#, None),
            (br#"{"message":"x"}"#, None),
            (
                br#"{"type":"E","message":"a\u001b[31mb\td"}"#,
                Some("E: a [31mb d"),
            ),
            (br#"{"type":"E","message":"\ud800"}"#, None),
            (b"", None),
            (b"\n{\"type\":\"E\"}", None),
            (b"[1,2]", None),
            (br#"{"type":"E","extra":1}"#, Some("E")),
            (br#"{"type":"E\u00e9\u4e2d"}"#, Some("E\u{e9}\u{4e2d}")),
        ];
        for (bytes, want) in cases {
            let got = Crash::parse(bytes).map(|c| c.summary());
            assert_eq!(got.as_deref(), want, "{:?}", String::from_utf8_lossy(bytes));
        }
        let crash = Crash::parse(long.as_bytes()).expect("long");
        assert_eq!(crash.message.chars().count(), MAX_FIELD_CHARS + 1);
        assert!(crash.message.ends_with('…'));
        let huge = [
            br#"{"type":"E","message":""#.as_slice(),
            &[b'x'; 40_000],
            b"\"}",
        ]
        .concat();
        assert_eq!(
            Crash::parse(&huge),
            None,
            "cut at MAX_LINE_BYTES: not JSON any more"
        );
    }
}
