//! The post-mortem hook's text and launcher: what a step's interpreter runs before the
//! step when `--post-mortem` is on (see `hook.py` next to this file).

/// The `-c` program of a hooked step: runs the hook's text, from the environment, in a
/// namespace of its own (the step's `__main__` starts as Python's would).
pub const LAUNCHER: &str =
    "import os;exec(os.environ.pop('AMLX_POST_MORTEM_HOOK'),{'__name__':'amlx_post_mortem'})";

/// The variable that carries the hook's text to the step's interpreter (popped at once,
/// so no child of the step sees it).
pub const HOOK_VAR: &str = "AMLX_POST_MORTEM_HOOK";

/// The variable that carries the crash-time part (`session.py`), compiled by the hook only
/// when something raises (popped at once too).
pub const SESSION_VAR: &str = "AMLX_POST_MORTEM_SESSION";

/// The fixed part of the hook.
const TEXT: &str = include_str!("hook.py");

/// The crash-time part, as it is.
pub const SESSION_TEXT: &str = include_str!("session.py");

/// The hook's text for this helper command line; `spawn_worker`: the process is a
/// multiprocessing spawn worker (its `run()` failures are caught by multiprocessing,
/// not by `sys.excepthook`, and are hooked there).
///
/// ```
/// let text = amlx_agent::post_mortem::hook::text(&["/a".into(), "post-mortem".into()], false);
/// assert!(text.starts_with("AMLX_HELPER_ARGV = [\"/a\",\"post-mortem\"]\nAMLX_SPAWN_WORKER = False\n"));
/// ```
pub fn text(helper_argv: &[String], spawn_worker: bool) -> String {
    // JSON string literals of UTF-8 text are Python string literals too.
    let argv = serde_json::to_string(helper_argv).unwrap_or_else(|_| "[]".to_owned());
    let spawn_worker = if spawn_worker { "True" } else { "False" };
    format!("AMLX_HELPER_ARGV = {argv}\nAMLX_SPAWN_WORKER = {spawn_worker}\n{TEXT}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_text_fills_in_exactly_the_two_values() {
        for name in ["AMLX_HELPER_ARGV", "AMLX_SPAWN_WORKER"] {
            assert!(super::TEXT.contains(name), "{name} is used by hook.py");
            assert!(
                !super::TEXT.contains(&format!("{name} =")),
                "{name} is set only here"
            );
        }
        assert!(super::LAUNCHER.contains(super::HOOK_VAR));
        assert!(super::TEXT.contains(super::SESSION_VAR));
        assert!(super::SESSION_TEXT.contains("def run_session("));
    }
}
