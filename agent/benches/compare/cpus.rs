//! Which CPUs the processes of a measurement may run on. With every process of a round
//! trip on one CPU no wake-up crosses CPUs, and what is left is the programs' own work and
//! the kernel's, which is what the two-CPU figure hides under the wake-ups.

use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// The bench process and `pids` (every thread of each) on one CPU until dropped, then back
/// on the CPUs the bench was allowed at the start. `None` when the bench has one CPU only.
#[derive(Debug)]
pub struct OneCpu {
    pids: Vec<u32>,
    /// `Cpus_allowed_list` of the bench at the start (`0-1`).
    allowed: String,
}

impl OneCpu {
    pub fn pin(pids: &[u32]) -> anyhow::Result<Option<OneCpu>> {
        let status =
            std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
        let allowed = status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .map(|list| list.trim().to_owned())
            .context("no Cpus_allowed_list in /proc/self/status")?;
        // The first CPU of a list such as `0-1,4`.
        let first = allowed
            .split([',', '-'])
            .next()
            .filter(|cpu| !cpu.is_empty())
            .with_context(|| format!("Cpus_allowed_list {allowed:?} names no CPU"))?
            .to_owned();
        if first == allowed {
            return Ok(None);
        }
        let mut all = vec![std::process::id()];
        all.extend_from_slice(pids);
        // Restores whatever was pinned if a later pin fails.
        let pinned = OneCpu { pids: all, allowed };
        for &pid in &pinned.pids {
            set(pid, &first)?;
        }
        Ok(Some(pinned))
    }
}

impl Drop for OneCpu {
    fn drop(&mut self) {
        for &pid in &self.pids {
            if let Err(err) = set(pid, &self.allowed) {
                eprintln!("bench: could not give {pid} its CPUs back: {err:#}");
            }
        }
    }
}

/// `taskset -a -p -c CPUS PID`: every thread of `pid`, and threads they start later.
fn set(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("could not run taskset (util-linux)")?;
    if !status.success() {
        bail!("taskset -a -p -c {cpus} {pid} failed: {status}");
    }
    Ok(())
}
