//! Ends the debugpy adapters a finished step leaves behind.
//!
//! `debugpy.listen()` starts its adapter as a child of the step, and the adapter waits for
//! the step's debug server to connect before it waits for it to go
//! (`servers.wait_until_disconnected`). A step killed in between (an MPI abort, an OOM
//! kill, `kill -9` while debugpy starts) leaves an adapter that never exits: it keeps the
//! debug port and the step's stdout and stderr, which a launcher may wait on for EOF.
//! Once the step is gone, the keeper ends every adapter that carries the step's
//! `AMLX_AGENT_PID`: nobody can debug a step that no longer exists.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::process::lineage::AGENT_PID_VAR;

/// Most of a process's command line read (an adapter's is a few hundred bytes).
const MAX_CMDLINE_BYTES: u64 = 16 * 1024;

/// Most of a process's environment read (where `AMLX_AGENT_PID` is looked for).
const MAX_ENVIRON_BYTES: u64 = 1024 * 1024;

/// SIGKILLs every debugpy adapter whose environment names `agent_pid` as its agent, and
/// returns their pids. Processes it may not read are skipped.
pub fn end_orphans(agent_pid: u32) -> Vec<u32> {
    let marker = format!("{AGENT_PID_VAR}={agent_pid}");
    let mut ended = Vec::new();
    for pid in crate::publish::holder::pids() {
        let dir = Path::new("/proc").join(pid.to_string());
        let is_adapter = read_capped(&dir.join("cmdline"), MAX_CMDLINE_BYTES)
            .is_some_and(|cmdline| is_debugpy_adapter(&cmdline));
        if !is_adapter {
            continue;
        }
        let ours = read_capped(&dir.join("environ"), MAX_ENVIRON_BYTES).is_some_and(|environ| {
            environ
                .split(|b| *b == 0)
                .any(|var| var == marker.as_bytes())
        });
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        if ours && kill(Pid::from_raw(raw), Signal::SIGKILL).is_ok() {
            ended.push(pid);
        }
    }
    ended
}

/// Whether a NUL-separated command line is debugpy's adapter serving a `listen()`:
/// `python …/debugpy/adapter --for-server <port> …` (or `-m debugpy.adapter`).
pub fn is_debugpy_adapter(cmdline: &[u8]) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let adapter = args.iter().any(|arg| {
        let arg = arg.strip_suffix(b"/").unwrap_or(arg);
        arg.ends_with(b"debugpy/adapter") || arg == b"debugpy.adapter"
    });
    adapter && args.iter().any(|arg| *arg == b"--for-server")
}

/// Up to `cap` bytes of a `/proc` file; `None` when it cannot be read.
fn read_capped(path: &Path, cap: u64) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)
        .ok()?
        .take(cap)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_debugpys_adapter_by_its_command_line() {
        let cases: &[(&[u8], bool)] = &[
            (
                b"/venv/bin/python3\0/venv/lib/python3.11/site-packages/debugpy/adapter\0--for-server\x0054609\x00--host\x00127.0.0.1\0",
                true,
            ),
            (b"python3\0-m\0debugpy.adapter\0--for-server\x001\0", true),
            (b"python3\0/x/debugpy/adapter/\0--for-server\x001\0", true),
            // An adapter VS Code started itself (no --for-server): not a step's.
            (b"python3\0/x/debugpy/adapter\0--port\x001\0", false),
            (b"python3\0step.py\0--for-server\0", false),
            (b"python3\0/x/debugpy/adapterx\0--for-server\0", false),
            (b"", false),
            (b"\0\0\0", false),
        ];
        for (cmdline, want) in cases {
            assert_eq!(
                is_debugpy_adapter(cmdline),
                *want,
                "{}",
                String::from_utf8_lossy(cmdline)
            );
        }
    }

    #[test]
    fn ends_nothing_for_an_agent_pid_nobody_names() {
        assert!(end_orphans(u32::MAX).is_empty());
    }
}
