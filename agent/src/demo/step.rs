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

/// Writes the example step into `dir`; returns its path. A file of that name that is not
/// the example step (the user's own `train.py` in the `--dir` they gave) is never
/// overwritten: that is an error naming it.
pub fn write_step(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(STEP_FILE);
    match std::fs::symlink_metadata(&path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(err).with_context(|| format!("could not look at {}", path.display()));
        }
        Ok(meta) => {
            // Bounded: the example is small, and a file much larger is not it.
            let ours = meta.is_file()
                && meta.len() == EXAMPLE_STEP.len() as u64
                && std::fs::read(&path).is_ok_and(|text| text == EXAMPLE_STEP.as_bytes());
            anyhow::ensure!(
                ours,
                "{} already exists and is not the demo's example step; the demo does not \
                 overwrite it: give --dir an empty or new folder (or leave --dir out for a \
                 temporary one)",
                path.display()
            );
            return Ok(path);
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("could not create the example step {}", path.display()))?;
    std::io::Write::write_all(&mut file, EXAMPLE_STEP.as_bytes())
        .with_context(|| format!("could not write the example step {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_the_example_is_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_step(dir.path()).expect("a new folder");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), EXAMPLE_STEP);
        // The example itself, from an earlier demo: used again.
        assert_eq!(write_step(dir.path()).expect("the example again"), path);
        for theirs in ["# my training code\n", ""] {
            std::fs::write(&path, theirs).expect("write");
            let err = write_step(dir.path()).expect_err("must refuse");
            assert!(
                format!("{err:#}").contains("does not overwrite it"),
                "{err:#}"
            );
            assert_eq!(std::fs::read_to_string(&path).expect("read"), theirs);
        }
        std::fs::remove_file(&path).expect("remove");
        std::fs::create_dir(&path).expect("a folder named train.py");
        assert!(write_step(dir.path()).is_err());
    }

    #[test]
    fn the_breakpoint_line_is_code_in_the_loop() {
        assert!(breakpoint_line() > 1);
        assert_eq!(breakpoint_code(), "loss = loss * 0.9");
    }
}
