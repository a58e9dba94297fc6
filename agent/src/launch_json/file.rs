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
    write_observed(path, spec, &mut |_| {})
}

/// [`write()`], calling `after_read` each time the file has been read (tests play an
/// editor saving the file there).
fn write_observed(
    path: &Path,
    spec: &LaunchSpec,
    after_read: &mut dyn FnMut(&Path),
) -> anyhow::Result<WriteOutcome> {
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
    // The folder's lock keeps other amlx-agents out, not an editor: what was read is
    // replaced only if it is still what is on disk, else the merge is done again.
    for _ in 0..MERGE_TRIES {
        let existing = read_existing(path)?;
        after_read(path);
        let Some((old, read)) = existing else {
            let text = merge(NEW_FILE, spec).expect("the built-in file is a JSON object");
            if replace_file_if(path, &text, None, None)? {
                return Ok(WriteOutcome::Created);
            }
            continue;
        };
        if old.trim().is_empty() && settle_left(&read).is_some() {
            // An empty file this young is most likely an editor's save under way (it
            // truncates, then writes): read it again once it has settled or changed.
            let read = Some(Version::of(&read));
            while settle_left_of(path).is_some() && Version::still_at(read, path)? {
                std::thread::sleep(SETTLE_POLL);
            }
            continue;
        }
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
        // The backup as the file was: the same mode and owner.
        atomic_file::replace(
            &backup,
            old.as_bytes(),
            Permissions::Keep(read.clone()),
            Durability::Synced,
        )
        .with_context(|| format!("could not write the backup {}", backup.display()))?;
        let version = Version::of(&read);
        if replace_file_if(path, &text, Some(read), Some(version))? {
            return Ok(WriteOutcome::Updated { backup });
        }
    }
    bail!(
        "{} kept changing while amlx-agent merged its entries into it ({MERGE_TRIES} tries); \
         it was left as it is: try again once it is saved",
        path.display()
    )
}

/// How many times a merge is done again when launch.json changed between its read and
/// its replacement (an editor saving it meanwhile).
const MERGE_TRIES: usize = 5;

/// How old an empty launch.json must be before it is taken as empty: a younger one is
/// waited on (at most this long) and read again, as an editor that saves in place
/// truncates the file first and writes it a moment later.
const EMPTY_SETTLE: Duration = Duration::from_secs(2);

/// Between two looks at an empty file that is settling.
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// How long an empty file last modified as `meta` says is still to be waited on, if at all.
fn settle_left(meta: &std::fs::Metadata) -> Option<Duration> {
    let age = meta.modified().ok()?.elapsed().ok()?;
    EMPTY_SETTLE.checked_sub(age).filter(|left| !left.is_zero())
}

/// [`settle_left`] of the file at `path` now (None: settled, or nothing there).
fn settle_left_of(path: &Path) -> Option<Duration> {
    settle_left(&std::fs::metadata(path).ok()?)
}

/// One version of a file on disk: a write in place changes its size or its times, a
/// replacement its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    dev: u64,
    ino: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Version {
    fn of(meta: &std::fs::Metadata) -> Version {
        use std::os::unix::fs::MetadataExt as _;
        Version {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether `path` holds this version (`expected` None: whether nothing is there).
    fn still_at(expected: Option<Version>, path: &Path) -> std::io::Result<bool> {
        let now = match std::fs::metadata(path) {
            Ok(meta) => Some(Version::of(&meta)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => return Err(err),
        };
        Ok(now == expected)
    }
}

/// `launch.json` → `launch.json.bak`.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".bak");
    path.with_file_name(name)
}

/// The current text of `path` and the metadata of the file read (None: there is none),
/// refusing what is not a regular file, larger than [`MAX_LAUNCH_JSON_BYTES`], or not
/// UTF-8. Opened without blocking and judged by the opened file itself, so nothing swapped
/// in between can hold it.
fn read_existing(path: &Path) -> anyhow::Result<Option<(String, std::fs::Metadata)>> {
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
    let text = String::from_utf8(bytes).map_err(|err| {
        let at = err.utf8_error().valid_up_to();
        let line = 1 + err
            .as_bytes()
            .iter()
            .take(at)
            .filter(|&&b| b == b'\n')
            .count();
        anyhow::anyhow!(
            "{} is not UTF-8 text (at byte {at}, line {line}); it was left unchanged: save it \
                 as UTF-8 (as VS Code does) and run again",
            path.display()
        )
    })?;
    Ok(Some((text, meta)))
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
/// file), if `path` still holds `expected` right before the rename: with the mode and
/// owner of `kept` (the file it replaces), else as any new file. `Ok(false)`: it changed.
fn replace_file_if(
    path: &Path,
    text: &str,
    kept: Option<std::fs::Metadata>,
    expected: Option<Version>,
) -> anyhow::Result<bool> {
    let permissions = kept.map_or(Permissions::New(NEW_FILE_MODE), Permissions::Keep);
    atomic_file::replace_if(
        path,
        text.as_bytes(),
        permissions,
        Durability::Synced,
        || Version::still_at(expected, path),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch_json::{DebugTarget, LaunchSpec};

    fn spec() -> LaunchSpec {
        LaunchSpec {
            mode: crate::session::DebugMode::Connect,
            host: "127.0.0.1".to_owned(),
            targets: vec![DebugTarget {
                rank: Some(0),
                port: 5678,
            }],
            local_root: "${workspaceFolder}".to_owned(),
            remote_root: ".".to_owned(),
            post_mortem_port: None,
        }
    }

    const USERS: &str = "{\n  \"version\": \"0.2.0\",\n  \"configurations\": [\n    {\"name\": \"mine\", \"type\": \"node\", \"request\": \"launch\"}\n  ]\n}\n";

    /// An editor saves launch.json between the merge's read and its rename (here: the
    /// user's configuration written into a file that was empty when read, as an editor
    /// that saves in place truncates first). The merge is done again on what was saved:
    /// before, the editor's save was lost and the backup was empty.
    #[test]
    fn a_save_between_the_read_and_the_rename_is_merged_not_lost() {
        for first in ["", "{\"configurations\": []}"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("launch.json");
            std::fs::write(&path, first).expect("write");
            let mut saves = 0;
            let outcome = write_observed(&path, &spec(), &mut |path| {
                if saves == 0 {
                    std::fs::write(path, USERS).expect("the editor's save");
                }
                saves += 1;
            })
            .expect("merged");
            let text = std::fs::read_to_string(&path).expect("read");
            assert!(
                text.contains("\"mine\""),
                "{first:?}: the save was lost:\n{text}"
            );
            assert!(text.contains("amlx: rank 0"), "{first:?}: {text}");
            assert_eq!(saves, 2, "{first:?}: read once more");
            let WriteOutcome::Updated { backup } = outcome else {
                panic!("{first:?}: {outcome:?}");
            };
            assert_eq!(std::fs::read_to_string(backup).expect("backup"), USERS);
        }
    }

    /// An editor that saves in place truncates first and writes a moment later: an empty
    /// file that young is read again once it has settled, not taken as empty (the
    /// merge's file then replaced the editor's, whose write went to the old inode).
    #[test]
    fn a_freshly_emptied_file_is_read_again_once_it_has_settled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("launch.json");
        std::fs::write(&path, "").expect("truncated");
        let editor = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(500));
                let mut file = OpenOptions::new().write(true).open(&path).expect("open");
                std::io::Write::write_all(&mut file, USERS.as_bytes()).expect("the write");
            })
        };
        let started = Instant::now();
        write(&path, &spec()).expect("merged");
        editor.join().expect("editor");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.contains("\"mine\"") && text.contains("amlx: rank 0"),
            "{text}"
        );
        assert!(
            started.elapsed() < EMPTY_SETTLE * 2,
            "{:?}",
            started.elapsed()
        );
        // An empty file that has long been so is simply empty (back-dated by two bounds).
        let old = dir.path().join("old.json");
        std::fs::write(&old, "").expect("write");
        let long_ago = std::time::SystemTime::now() - EMPTY_SETTLE * 2;
        File::options()
            .write(true)
            .open(&old)
            .expect("open")
            .set_modified(long_ago)
            .expect("back-date");
        let started = Instant::now();
        write(&old, &spec()).expect("merged");
        assert!(
            started.elapsed() < EMPTY_SETTLE,
            "waited on an old empty file"
        );
    }

    /// A launch.json that is not UTF-8 is refused with where and what to do, untouched.
    #[test]
    fn a_file_that_is_not_utf8_is_refused_saying_where() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("launch.json");
        let bytes = b"{\n  \"configurations\": [],\n  \"x\": \"caf\xe9\"\n}\n";
        std::fs::write(&path, bytes).expect("write");
        let err = write(&path, &spec()).expect_err("not UTF-8");
        let text = format!("{err:#}");
        assert!(text.contains("at byte 37, line 3"), "{text}");
        assert!(text.contains("save it as UTF-8"), "{text}");
        assert_eq!(std::fs::read(&path).expect("read"), bytes);
    }

    /// A file that keeps changing under every try is left as the last writer made it,
    /// and the error says so; a file that appears after "none there" is not clobbered.
    #[test]
    fn a_file_that_keeps_changing_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("launch.json");
        std::fs::write(&path, "{}").expect("write");
        let mut n = 0;
        let err = write_observed(&path, &spec(), &mut |path| {
            n += 1;
            std::fs::write(path, format!("{{\"edit\": {n}}}")).expect("save");
        })
        .expect_err("gives up");
        assert!(format!("{err:#}").contains("kept changing"), "{err:#}");
        assert_eq!(n, MERGE_TRIES);
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("{{\"edit\": {MERGE_TRIES}}}")
        );

        let created = dir.path().join("new.json");
        let mut once = false;
        write_observed(&created, &spec(), &mut |path| {
            if !once && !path.exists() {
                std::fs::write(path, USERS).expect("someone else creates it");
            }
            once = true;
        })
        .expect("merged");
        let text = std::fs::read_to_string(&created).expect("read");
        assert!(
            text.contains("\"mine\"") && text.contains("amlx: rank 0"),
            "{text}"
        );
    }
}
