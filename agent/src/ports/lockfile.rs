//! The lock directory and its files: where it is, creating it with the right modes, opening
//! a port's lock file safely and probing whether someone holds it.
//!
//! Locks are taken with std's `File::try_lock` / `try_lock_shared` (stable since Rust 1.89,
//! `flock(2)` on Linux) rather than the `fs2` crate: no extra dependency, and `flock` has
//! exactly the semantics we rely on — the lock belongs to the open file description, is
//! released by the kernel when the last descriptor to it closes (so `kill -9` never leaks a
//! port), and survives `execve` when the descriptor is inherited. The unit test
//! `a_second_open_in_the_same_process_conflicts` pins the one property that would break
//! silently if std ever switched to POSIX record locks.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The node-wide default, shared by every user and container on the node.
pub const SYSTEM_LOCK_DIR: &str = "/run/amlx/ports";

/// Name of the guard file serialising slot-limited scans (never a port).
pub const GUARD_FILE: &str = ".guard";

/// Suffix of a port's lock file: `<port>.lock`.
pub const LOCK_SUFFIX: &str = ".lock";

/// Mode of a shared lock directory we create: world-writable so every user and container
/// on the node can reserve, sticky so nobody can delete another user's lock files.
const SHARED_DIR_MODE: u32 = 0o1777;

/// Mode of a per-user lock directory we create (`$XDG_RUNTIME_DIR/...`, `/tmp/amlx-<uid>`).
const PRIVATE_DIR_MODE: u32 = 0o700;

/// The directory candidates, in order, with why each could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LockDirError {
    /// Each directory tried and why it failed, in order.
    pub tried: Vec<(PathBuf, String)>,
}

impl fmt::Display for LockDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no usable debug-port lock directory (tried ")?;
        for (i, (path, why)) in self.tried.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{}: {why}", path.display())?;
        }
        f.write_str("); point --lock-dir or AMLX_LOCK_DIR at a writable directory")
    }
}

/// Who a lock directory is shared with, which decides the mode we create it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sharing {
    /// Every user and container on the node (explicit dir, `/run/amlx/ports`).
    Node,
    /// This user only; `owned_parent` must be ours and not writable by others
    /// (`/tmp/amlx-<uid>`, which someone else could have created first).
    User { check_parent_owner: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    path: PathBuf,
    sharing: Sharing,
}

/// The default candidates: `/run/amlx/ports`, `$XDG_RUNTIME_DIR/amlx/ports` (when set and
/// absolute), `/tmp/amlx-<uid>/ports`.
fn default_candidates(xdg_runtime_dir: Option<&OsStr>, uid: u32) -> Vec<Candidate> {
    let mut out = vec![Candidate {
        path: PathBuf::from(SYSTEM_LOCK_DIR),
        sharing: Sharing::Node,
    }];
    if let Some(xdg) = xdg_runtime_dir.map(Path::new).filter(|p| p.is_absolute()) {
        out.push(Candidate {
            path: xdg.join("amlx").join("ports"),
            sharing: Sharing::User {
                check_parent_owner: false,
            },
        });
    }
    out.push(Candidate {
        path: PathBuf::from(format!("/tmp/amlx-{uid}")).join("ports"),
        sharing: Sharing::User {
            check_parent_owner: true,
        },
    });
    out
}

fn candidates(explicit: Option<&Path>) -> Vec<Candidate> {
    match explicit {
        Some(path) => vec![Candidate {
            path: path.to_path_buf(),
            sharing: Sharing::Node,
        }],
        None => default_candidates(
            std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
            nix::unistd::getuid().as_raw(),
        ),
    }
}

/// The lock directory: `explicit`, else the documented fallbacks (`/run/amlx/ports`,
/// `$XDG_RUNTIME_DIR/amlx/ports`, `/tmp/amlx-<uid>/ports`): the first that can be created
/// and written. An explicit directory has no fallback.
pub fn lock_dir(explicit: Option<&Path>) -> Result<PathBuf, LockDirError> {
    let mut tried = Vec::new();
    for candidate in candidates(explicit) {
        match prepare(&candidate) {
            Ok(()) => return Ok(candidate.path),
            Err(why) => tried.push((candidate.path, why)),
        }
    }
    Err(LockDirError { tried })
}

/// Where `ports list` looks, without creating anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockDirLookup {
    /// The directory reservations would be in, when one exists.
    pub dir: Option<PathBuf>,
    /// Every candidate considered, in order (for "nothing reserved: none of ... exists").
    pub candidates: Vec<PathBuf>,
}

/// Resolves the lock directory like [`lock_dir`] but never creates one: the first existing
/// candidate this user can write (the one `reserve` would pick), else the first existing.
pub fn find_lock_dir(explicit: Option<&Path>) -> LockDirLookup {
    let candidates: Vec<PathBuf> = candidates(explicit).into_iter().map(|c| c.path).collect();
    let existing: Vec<&PathBuf> = candidates.iter().filter(|p| p.is_dir()).collect();
    let writable = existing.iter().find(|p| {
        use nix::unistd::{AccessFlags, access};
        access(p.as_path(), AccessFlags::W_OK | AccessFlags::X_OK).is_ok()
    });
    let dir = writable.or(existing.first()).map(|p| p.to_path_buf());
    LockDirLookup { dir, candidates }
}

/// Creates `candidate` if missing (with its mode) and checks that files can be created in
/// it by creating the guard file. The error says what failed, for [`LockDirError`].
fn prepare(candidate: &Candidate) -> Result<(), String> {
    let path = &candidate.path;
    if let Sharing::User {
        check_parent_owner: true,
    } = candidate.sharing
    {
        let parent = path.parent().expect("/tmp/amlx-<uid>/ports has a parent");
        ensure_dir(parent, PRIVATE_DIR_MODE)?;
        check_private(parent)?;
    }
    let mode = match candidate.sharing {
        Sharing::Node => SHARED_DIR_MODE,
        Sharing::User { .. } => PRIVATE_DIR_MODE,
    };
    ensure_dir(path, mode)?;
    open_lock_file(&path.join(GUARD_FILE))
        .map(drop)
        .map_err(|e| format!("cannot create files in it ({e})"))
}

/// Creates `dir` (and missing parents, with default modes) and, only when we created the
/// leaf, sets `mode` on it exactly (mkdir's mode is cut by the umask).
fn ensure_dir(dir: &Path, mode: u32) -> Result<(), String> {
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {} ({e})", parent.display()))?;
    }
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot set mode {mode:o} on {} ({e})", dir.display())),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(format!("{} exists and is not a directory", dir.display()))
        }
        Err(e) => Err(format!("cannot create {} ({e})", dir.display())),
    }
}

/// A per-user directory in a shared place (`/tmp`) must be ours, a real directory, and not
/// writable by others: otherwise someone created it first to read or steer our files.
fn check_private(dir: &Path) -> Result<(), String> {
    let meta =
        fs::symlink_metadata(dir).map_err(|e| format!("cannot stat {} ({e})", dir.display()))?;
    let uid = nix::unistd::getuid().as_raw();
    if !meta.file_type().is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if meta.uid() != uid {
        return Err(format!(
            "{} belongs to uid {}, not to us (uid {uid})",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by others (mode {:o})",
            dir.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// The lock file of `port` in `dir`.
pub fn lock_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("{port}{LOCK_SUFFIX}"))
}

/// The port a lock file name stands for (`5678.lock` → 5678); `None` for anything else.
pub fn port_of(file_name: &OsStr) -> Option<u16> {
    let name = file_name.to_str()?;
    let digits = name.strip_suffix(LOCK_SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|p| *p != 0)
}

/// An open lock file.
#[derive(Debug)]
pub struct LockFile {
    pub file: File,
    /// False when only a read-only open was allowed (a file another user created without
    /// group/other write): it still locks (flock needs no write access), but the record
    /// cannot be updated.
    pub writable: bool,
}

/// Opens (creating if missing) a lock file without following symlinks, checking it is a
/// plain file with one link: a shared sticky directory lets anyone plant `5678.lock`, and
/// we truncate what we lock, so it must never be someone's other file.
///
/// New files get mode 0644 plus group/other write when the directory grants them, so
/// whoever may create lock files may also take over a free one and write its record.
pub fn open_lock_file(path: &Path) -> io::Result<LockFile> {
    let nofollow = nix::fcntl::OFlag::O_NOFOLLOW.bits();
    let created = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nofollow)
        .open(path);
    let (file, writable) = match created {
        Ok(file) => {
            let mode = file_mode_for_dir(path.parent().unwrap_or(Path::new(".")));
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            (file, true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let open = |write| {
                OpenOptions::new()
                    .read(true)
                    .write(write)
                    .custom_flags(nofollow)
                    .open(path)
            };
            match open(true) {
                Ok(file) => (file, true),
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => (open(false)?, false),
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.file_type().is_file() || meta.nlink() != 1 {
        return Err(io::Error::other(format!(
            "{} is not a plain lock file (type {:?}, {} links); remove it",
            path.display(),
            meta.file_type(),
            meta.nlink()
        )));
    }
    Ok(LockFile { file, writable })
}

/// 0644, plus group/other write when the directory is group/other writable.
fn file_mode_for_dir(dir: &Path) -> u32 {
    let dir_mode = fs::metadata(dir).map(|m| m.mode()).unwrap_or(0o700);
    0o644 | (dir_mode & 0o022)
}

/// Whether someone holds a lock file's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// Held: a live reservation.
    Held,
    /// Free: the file is left over from a holder that is gone.
    Free,
}

/// Probes `file` with a non-blocking *shared* lock, released at once; never blocks.
///
/// A shared probe never excludes another prober, but for its instant it does make a
/// concurrent exclusive `try_lock` fail; reservers then just take the next port.
pub fn lock_state(file: &File) -> io::Result<LockState> {
    match file.try_lock_shared() {
        Ok(()) => {
            file.unlock()?;
            Ok(LockState::Free)
        }
        Err(TryLockError::WouldBlock) => Ok(LockState::Held),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Reads the whole lock file from the start (a record is small).
pub fn read_record(file: &File) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    /// Records are far smaller; a bigger file is not ours and only its start is read.
    const MAX_RECORD_BYTES: usize = 64 * 1024;
    let mut buf = vec![0; MAX_RECORD_BYTES];
    let mut len = 0;
    while len < buf.len() {
        match file.read_at(&mut buf[len..], len as u64)? {
            0 => break,
            n => len += n,
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// Replaces the lock file's content with `bytes` (called only while holding the lock).
pub fn write_record(file: &File, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.set_len(0)?;
    file.write_all_at(bytes, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_candidates_in_order() {
        let with_xdg = default_candidates(Some(OsStr::new("/run/user/1000")), 1000);
        let paths: Vec<_> = with_xdg.iter().map(|c| c.path.clone()).collect();
        assert_eq!(
            paths,
            [
                PathBuf::from("/run/amlx/ports"),
                PathBuf::from("/run/user/1000/amlx/ports"),
                PathBuf::from("/tmp/amlx-1000/ports"),
            ]
        );
        for xdg in [None, Some(OsStr::new("relative/dir")), Some(OsStr::new(""))] {
            let paths: Vec<_> = default_candidates(xdg, 7)
                .into_iter()
                .map(|c| c.path)
                .collect();
            assert_eq!(
                paths,
                [
                    PathBuf::from("/run/amlx/ports"),
                    PathBuf::from("/tmp/amlx-7/ports")
                ],
                "{xdg:?}"
            );
        }
    }

    #[test]
    fn explicit_dir_is_created_shared_and_has_no_fallback() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a/b/ports");
        assert_eq!(lock_dir(Some(&dir)), Ok(dir.clone()));
        let mode = fs::metadata(&dir).expect("created").mode() & 0o7777;
        assert_eq!(mode, SHARED_DIR_MODE);
        let guard = fs::metadata(dir.join(GUARD_FILE)).expect("guard created");
        assert_eq!(guard.mode() & 0o777, 0o666, "files in a 1777 dir are 0666");

        let file = tmp.path().join("not-a-dir");
        fs::write(&file, b"").expect("write");
        let err = lock_dir(Some(&file)).expect_err("a file is not a lock dir");
        assert_eq!(err.tried.len(), 1);
        let text = err.to_string();
        assert!(
            text.contains("not-a-dir") && text.contains("--lock-dir"),
            "{text}"
        );
    }

    #[test]
    fn find_lock_dir_never_creates() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("missing");
        let found = find_lock_dir(Some(&dir));
        assert_eq!(found.dir, None);
        assert_eq!(found.candidates, [dir.clone()]);
        assert!(!dir.exists());
        assert_eq!(find_lock_dir(Some(tmp.path())).dir, Some(tmp.path().into()));
    }

    #[test]
    fn private_parent_must_be_ours_and_closed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("amlx-x");
        ensure_dir(&dir, PRIVATE_DIR_MODE).expect("create");
        assert_eq!(check_private(&dir), Ok(()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = check_private(&dir).expect_err("world-writable");
        assert!(err.contains("writable by others"), "{err}");
    }

    #[test]
    fn port_file_names() {
        let cases: &[(&str, Option<u16>)] = &[
            ("5678.lock", Some(5678)),
            ("65535.lock", Some(65535)),
            ("0.lock", None),
            ("65536.lock", None),
            (".guard", None),
            ("+5.lock", None),
            (".lock", None),
            ("5678.lock.tmp", None),
            ("5678", None),
        ];
        for (name, want) in cases {
            assert_eq!(port_of(OsStr::new(name)), *want, "{name}");
        }
        assert_eq!(
            port_of(lock_path(Path::new("/x"), 5678).file_name().expect("name")),
            Some(5678)
        );
    }

    #[test]
    fn a_second_open_in_the_same_process_conflicts() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = lock_path(tmp.path(), 4000);
        let a = open_lock_file(&path).expect("open a");
        let b = open_lock_file(&path).expect("open b");
        a.file.try_lock().expect("first lock");
        assert!(matches!(b.file.try_lock(), Err(TryLockError::WouldBlock)));
        assert_eq!(lock_state(&b.file).expect("probe"), LockState::Held);
        drop(a);
        assert_eq!(lock_state(&b.file).expect("probe"), LockState::Free);
        b.file.try_lock().expect("free after the holder closed");
    }

    #[test]
    fn refuses_symlinks_and_hard_links() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"precious").expect("write");
        let link = lock_path(tmp.path(), 4001);
        std::os::unix::fs::symlink(&victim, &link).expect("symlink");
        assert!(open_lock_file(&link).is_err(), "symlink followed");
        let hard = lock_path(tmp.path(), 4002);
        fs::hard_link(&victim, &hard).expect("hard link");
        let err = open_lock_file(&hard).expect_err("hard link accepted");
        assert!(err.to_string().contains("not a plain lock file"), "{err}");
        assert_eq!(fs::read(&victim).expect("read"), b"precious");
    }

    #[test]
    fn record_write_replaces_content() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let lock = open_lock_file(&lock_path(tmp.path(), 4003)).expect("open");
        write_record(&lock.file, b"a much longer first record").expect("write");
        write_record(&lock.file, b"short").expect("write");
        assert_eq!(read_record(&lock.file).expect("read"), b"short");
    }
}
