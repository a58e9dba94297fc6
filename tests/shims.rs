//! Integration tests: the launcher shims (issue 8) — the `sitecustomize` hook and the
//! `python`, `mpirun`/`mpiexec`, `torchrun` and entrypoint shims, with real interpreters,
//! real multiprocessing, the real `mpiexec` and a real DAP client.

mod guard;
mod hostile;
mod parallel_run_step;
mod review;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util;

/// The repository's `launcher-shims/` folder.
pub fn shims_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../launcher-shims")
        .canonicalize()
        .expect("launcher-shims/ exists")
}

/// `PATH` with the agent under test first (the shims find `amlx-agent` there), then
/// `first` when given (a shim folder), then the runner's own `PATH`.
pub fn path_with(first: Option<&Path>) -> OsString {
    let agent_dir = util::agent_bin()
        .parent()
        .expect("the agent binary has a folder")
        .to_owned();
    let mut dirs: Vec<PathBuf> = vec![agent_dir];
    dirs.extend(first.map(Path::to_owned));
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).expect("PATH entries without ':'")
}

/// `program` with the runner's launcher and AMLX variables removed, the agent under test
/// on `PATH` and the Python hook enabled the documented way: its folder on `PYTHONPATH`.
pub fn with_python_hook(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = util::clean(Command::new(program));
    cmd.env("PATH", path_with(None))
        .env("PYTHONPATH", shims_dir().join("python"))
        .env("NO_COLOR", "1");
    cmd
}

/// One JSON object per line of `file` (a missing file is no lines yet).
pub fn json_lines(file: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}
