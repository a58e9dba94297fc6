//! The demo's example step (docker/example/train.py, embedded): written into the demo's
//! folder, with the line worth a breakpoint.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The example training step: dependency-free, about a second long once released.
pub const EXAMPLE_STEP: &str = include_str!("../../../docker/example/train.py");
/// The file name the step is written under.
pub const STEP_FILE: &str = "train.py";
/// The comment that marks the line worth a breakpoint in [`EXAMPLE_STEP`].
const BREAKPOINT_MARKER: &str = "# breakpoint:";

/// The 1-based line of the example step that carries the breakpoint marker.
///
/// ```
/// let line = amlx_agent::demo::breakpoint_line();
/// let text = amlx_agent::demo::EXAMPLE_STEP.lines().nth(line as usize - 1).unwrap();
/// assert!(text.contains("# breakpoint:"));
/// ```
pub fn breakpoint_line() -> u32 {
    EXAMPLE_STEP
        .lines()
        .position(|line| line.contains(BREAKPOINT_MARKER))
        .and_then(|index| u32::try_from(index + 1).ok())
        .expect("docker/example/train.py marks one line with `# breakpoint:`")
}

/// That line's code, without the marker comment (for the instructions).
pub fn breakpoint_code() -> &'static str {
    let line = EXAMPLE_STEP
        .lines()
        .nth(breakpoint_line() as usize - 1)
        .expect("breakpoint_line is a line of the step");
    line.split('#').next().unwrap_or(line).trim()
}

/// Writes the example step into `dir`; returns its path.
pub fn write_step(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(STEP_FILE);
    std::fs::write(&path, EXAMPLE_STEP)
        .with_context(|| format!("could not write the example step {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breakpoint_line_is_code_in_the_loop() {
        assert!(breakpoint_line() > 1);
        assert_eq!(breakpoint_code(), "loss = loss * 0.9");
    }
}
