//! The launch.json file on disk: read only when it is a regular file of a sane size,
//! merged under a lock on its folder (two `run`s of one project may write at once), and
//! replaced through a temporary file of this process's own, removed again on failure.

use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{LaunchSpec, NEW_FILE, merge};
use crate::atomic_file::{self, Durability, Permissions};

/// The largest launch.json merged into: far past any real one (a few KiB; 40,000
/// configurations are ~10 MiB), and a bound on what a file (or `/dev/zero` behind a
/// symlink) can make the agent read.
pub const MAX_LAUNCH_JSON_BYTES: u64 = 64 * 1024 * 1024;

/// How long a writer waits for another one (a second `run` of the same project) to
/// finish with the same launch.json.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Pause between two attempts at the folder's lock.
const LOCK_RETRY: Duration = Duration::from_millis(20);

/// A new launch.json's permission bits before the umask, as an editor makes a file.
const NEW_FILE_MODE: u32 = 0o666;

/// What [`write()`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The file did not exist.
    Created,
    /// The file changed; its previous content is in `backup`.
    Updated { backup: PathBuf },
    /// The file already held exactly these entries; not touched.
    Unchanged,
}

/// Creates or merges into `path`; keeps the previous content in `<path>.bak` when it
/// changes. Refuses anything but a regular file (or a symlink to one): a FIFO, a
/// terminal or a device would be read for ever, or replaced by a regular file.
pub fn write(path: &Path, spec: &LaunchSpec) -> anyhow::Result<WriteOutcome> {
    // Write through a symlinked launch.json (dotfiles) instead of replacing the link.
    let resolved;
    let path = if path.is_symlink() {
        resolved = std::fs::canonicalize(path)
            .with_context(|| format!("could not resolve the symlink {}", path.display()))?;
        resolved.as_path()
    } else {
        path
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Err(err) = std::fs::create_dir_all(dir) {
        // A file where the folder goes (a stray `.vscode` file): say which, and what to do.
        if dir.exists() && !dir.is_dir() {
            anyhow::bail!(
                "{} is not a folder, and launch.json goes in it: rename or remove it",
                dir.display()
            );
        }
        return Err(err).with_context(|| format!("could not create {}", dir.display()));
    }
    let _lock = lock_folder(dir)?;
    let Some(old) = read_existing(path)? else {
        let text = merge(NEW_FILE, spec).expect("the built-in file is a JSON object");
        replace_file(path, &text, None)?;
        return Ok(WriteOutcome::Created);
    };
    let base = if old.trim().is_empty() {
        NEW_FILE
    } else {
        &old
    };
    let text = merge(base, spec).with_context(|| {
        format!(
            "{} was left unchanged: cannot merge into it",
            path.display()
        )
    })?;
    if text == old {
        return Ok(WriteOutcome::Unchanged);
    }
    let backup = backup_path(path);
    replace_file(&backup, &old, None)
        .with_context(|| format!("could not write the backup {}", backup.display()))?;
    let permissions = std::fs::metadata(path).ok().map(|m| m.permissions());
    replace_file(path, &text, permissions)?;
    Ok(WriteOutcome::Updated { backup })
}

/// `launch.json` → `launch.json.bak`.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".bak");
    path.with_file_name(name)
}

/// The current text of `path` (None: there is none), refusing what is not a regular
/// file, larger than [`MAX_LAUNCH_JSON_BYTES`], or not UTF-8. Opened without blocking
/// and judged by the opened file itself, so nothing swapped in between can hold it.
fn read_existing(path: &Path) -> anyhow::Result<Option<String>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("could not read {}", path.display())),
    };
    let meta = file
        .metadata()
        .with_context(|| format!("could not read {}", path.display()))?;
    if let Some(kind) = not_regular(&meta.file_type()) {
        bail!(
            "{} is {kind}, not a regular file: launch.json must be a file (remove it, or \
             name a file; `launch-json -o -` prints to stdout)",
            path.display()
        );
    }
    let mut bytes = Vec::new();
    // One byte past the limit tells "exactly at the limit" from "over it".
    file.take(MAX_LAUNCH_JSON_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("could not read {}", path.display()))?;
    if u64::try_from(bytes.len()).map_or(true, |n| n > MAX_LAUNCH_JSON_BYTES) {
        bail!(
            "{} is larger than {} MiB, more than any launch.json amlx-agent merges into; \
             it was left unchanged",
            path.display(),
            MAX_LAUNCH_JSON_BYTES / (1024 * 1024)
        );
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))
}

/// What a file that is not a regular one is, in words (None: a regular file).
fn not_regular(kind: &std::fs::FileType) -> Option<&'static str> {
    if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_char_device() {
        Some("a character device (a terminal, /dev/null, ...)")
    } else if kind.is_block_device() {
        Some("a block device")
    } else {
        Some("not a regular file")
    }
}

/// Takes the exclusive lock of `dir` (flock on the folder itself: no lock file left
/// behind), waiting at most [`LOCK_WAIT`] for another writer.
fn lock_folder(dir: &Path) -> anyhow::Result<nix::fcntl::Flock<File>> {
    use nix::fcntl::{Flock, FlockArg};
    let deadline = Instant::now() + LOCK_WAIT;
    let mut folder =
        File::open(dir).with_context(|| format!("could not open the folder {}", dir.display()))?;
    loop {
        match Flock::lock(folder, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((file, nix::errno::Errno::EWOULDBLOCK | nix::errno::Errno::EINTR))
                if Instant::now() < deadline =>
            {
                folder = file;
                std::thread::sleep(LOCK_RETRY);
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => bail!(
                "another amlx-agent has been writing a launch.json in {} for {}; try again \
                 once it is done",
                dir.display(),
                humantime::format_duration(LOCK_WAIT)
            ),
            Err((_, err)) => {
                return Err(err).with_context(|| format!("could not lock {}", dir.display()));
            }
        }
    }
}

/// Replaces `path` whole with `text`, synced to disk first (the developer keeps this
/// file): with `permissions` when it had some, else as any new file.
fn replace_file(
    path: &Path,
    text: &str,
    permissions: Option<std::fs::Permissions>,
) -> anyhow::Result<()> {
    let permissions = permissions.map_or(Permissions::New(NEW_FILE_MODE), Permissions::Keep);
    atomic_file::replace(path, text.as_bytes(), permissions, Durability::Synced)
}
