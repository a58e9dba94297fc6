//! Shared test plumbing: the agent binary with a clean environment, and tool lookup.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// Path of the `amlx-agent` binary under test.
pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_amlx-agent"))
}

/// Variables that would leak the test runner's own role or settings into the agent.
const LEAKY_PREFIXES: &[&str] = &[
    "AMLX_",
    "OMPI_",
    "PMI_",
    "PMIX_",
    "MPI_",
    "MV2_",
    "SLURM_",
    "HOROVOD_",
    "AZ_BATCH",
    "TORCHELASTIC_",
    "PET_",
    "K_MPI_",
];
const LEAKY_NAMES: &[&str] = &[
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "NODE_RANK",
    "CROSS_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "RUST_LOG",
];

/// `amlx-agent` with every rank/launcher/AMLX variable removed from its environment.
pub fn agent() -> Command {
    let mut cmd = Command::new(agent_bin());
    for (key, _) in std::env::vars_os() {
        let key_str = key.to_string_lossy();
        if LEAKY_PREFIXES.iter().any(|p| key_str.starts_with(p))
            || LEAKY_NAMES.contains(&key_str.as_ref())
        {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// The directory pip installs console scripts into (where the `mpich` wheel puts `mpiexec`).
pub fn python_scripts_dir() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .expect("python3 runs (install it, or run tests/run.sh)");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// `mpiexec` from the `mpich` wheel; panics with the fix when it is missing.
pub fn mpiexec() -> PathBuf {
    let candidate = python_scripts_dir().join("mpiexec");
    assert!(
        candidate.exists(),
        "{} not found: install the test dependencies with `python3 -m pip install -r tests/requirements.txt` (tests/run.sh does)",
        candidate.display()
    );
    candidate
}
