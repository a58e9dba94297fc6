//! The lock directory: which one (explicit, else `/run/amlx/ports`, then
//! `$XDG_RUNTIME_DIR/amlx/ports`, then `/tmp/amlx-<uid>/ports`) and creating it with modes
//! that let every user and container on the node share it.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The node-wide default, shared by every user and container on the node.
pub const SYSTEM_LOCK_DIR: &str = "/run/amlx/ports";

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
    /// This user only; with `check_parent_owner` the parent must be ours and not writable
    /// by others (`/tmp/amlx-<uid>`, which someone else could have created first).
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
/// it, with a file of this process's own that it removes again. The error says what
/// failed, for [`LockDirError`]. Not with the guard file: only slot-limited reservers use
/// it, and a FIFO another user planted at its name disabled debugging for every target
/// on the node.
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
    // A random name: PIDs repeat across the node's containers (every entrypoint agent is
    // PID 1), and a probe another user's crashed agent left behind cannot be removed in
    // a sticky folder. Afresh and never through a link.
    let mut last = None;
    for _ in 0..PROBE_TRIES {
        let probe = path.join(format!(".probe.{:016x}", rand::random::<u64>()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&probe)
        {
            Ok(_) => {
                let _ = fs::remove_file(&probe);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(format!("cannot create files in it ({e})")),
        }
    }
    Err(format!(
        "cannot create files in it ({})",
        last.map_or_else(String::new, |e| e.to_string())
    ))
}

/// Names the write check tries before giving up (each random: a clash means a planted
/// file, or a very unlucky draw).
const PROBE_TRIES: usize = 4;

/// Creates `dir` (and missing parents, with default modes) and, only when we created the
/// leaf, sets `mode` on it exactly (mkdir's mode is cut by the umask). Shared with the
/// status records' directories.
pub(crate) fn ensure_dir(dir: &Path, mode: u32) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::lockfile::{GUARD_FILE, open_lock_file};

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

    /// Any user who may write a shared lock folder can plant a FIFO (or a link, or a
    /// folder) named `.guard`: the folder stays usable for every reservation, which
    /// needs no guard unless slots are limited.
    #[test]
    fn a_planted_guard_does_not_make_the_folder_unusable() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ports");
        fs::create_dir(&dir).expect("mkdir");
        nix::unistd::mkfifo(
            &dir.join(GUARD_FILE),
            nix::sys::stat::Mode::from_bits_truncate(0o666),
        )
        .expect("mkfifo");
        assert_eq!(lock_dir(Some(&dir)), Ok(dir.clone()));
        let names: Vec<_> = fs::read_dir(&dir)
            .expect("read")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [GUARD_FILE], "the check leaves nothing behind");
    }

    #[test]
    fn explicit_dir_is_created_shared_and_has_no_fallback() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a/b/ports");
        assert_eq!(lock_dir(Some(&dir)), Ok(dir.clone()));
        let mode = fs::metadata(&dir).expect("created").mode() & 0o7777;
        assert_eq!(mode, SHARED_DIR_MODE);
        assert_eq!(
            fs::read_dir(&dir).expect("read").count(),
            0,
            "the check leaves nothing behind"
        );
        drop(open_lock_file(&dir.join("5678.lock")).expect("a lock file"));
        let lock = fs::metadata(dir.join("5678.lock")).expect("lock created");
        assert_eq!(lock.mode() & 0o777, 0o666, "files in a 1777 dir are 0666");

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
        assert_eq!(found.candidates, std::slice::from_ref(&dir));
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
}
