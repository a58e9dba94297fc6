//! A port's lock file: its name, opening it safely in a shared directory, probing whether
//! someone holds it, and reading/writing the holder record inside.
//!
//! Locks are taken with std's `File::try_lock` / `try_lock_shared` (stable since Rust 1.89,
//! `flock(2)` on Linux) rather than the `fs2` crate: no extra dependency, and `flock` has
//! exactly the semantics we rely on — the lock belongs to the open file description, is
//! released by the kernel when the last descriptor to it closes (so `kill -9` never leaks a
//! port), and survives `execve` when the descriptor is inherited. The unit test
//! `a_second_open_in_the_same_process_conflicts` pins the one property that would break
//! silently if std ever switched to POSIX record locks.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Name of the guard file serialising slot-limited scans (never a port).
pub const GUARD_FILE: &str = ".guard";

/// Suffix of a port's lock file: `<port>.lock`.
pub const LOCK_SUFFIX: &str = ".lock";

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
    // O_NONBLOCK: a FIFO planted under a lock file's name must not block the open (it
    // is refused as no plain file below); on a plain file the flag changes nothing.
    let flags = (nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits();
    // Readable by all from the start: killed before the chmod below, a file left 0600 by
    // root would be closed to every other user (flock needs only a read-only open).
    let created = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(flags)
        .open(path);
    let created = created.map_err(|e| named_refusal(path, e));
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
                    .custom_flags(flags)
                    .open(path)
                    .map_err(|e| named_refusal(path, e))
            };
            match open(true) {
                Ok(file) => (file, true),
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => match open(false) {
                    Ok(file) => (file, false),
                    // This file only, not the directory: its port is unusable, the others
                    // are not (the caller tells the two apart by the error's kind).
                    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                        return Err(io::Error::other(format!(
                            "{} cannot be opened by this user ({e}); remove it",
                            path.display()
                        )));
                    }
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.file_type().is_file() || meta.nlink() != 1 {
        return Err(io::Error::other(format!(
            "{} is not a plain lock file ({}, {} links); remove it",
            path.display(),
            file_kind(&meta.file_type()),
            meta.nlink()
        )));
    }
    Ok(LockFile { file, writable })
}

/// Opens a file of a directory anyone may write to, read-only, for reading a record:
/// no link is followed, a FIFO does not block the open (O_NONBLOCK), and anything but a
/// regular file is refused as `<what it is>, not <what>; remove it`.
pub fn open_shared_read_only(path: &Path, what: &str) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(path)
        .map_err(|e| match refused_as(&e) {
            Some(kind) => io::Error::other(format!("{kind}, not {what}; remove it")),
            None => e,
        })?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(io::Error::other(format!(
            "{}, not {what}; remove it",
            file_kind(&kind)
        )));
    }
    Ok(file)
}

/// An open refused because of what is at `path` (a link, which O_NOFOLLOW refuses; a
/// directory) says so and how to fix it, as any other thing that is not a plain lock file
/// does; other errors are returned as they are.
fn named_refusal(path: &Path, err: io::Error) -> io::Error {
    match refused_as(&err) {
        Some(what) => io::Error::other(format!(
            "{} is not a plain lock file ({what}); remove it",
            path.display()
        )),
        None => err,
    }
}

/// What an open's error says is at the path, when it refused because of that: a link
/// (O_NOFOLLOW) or a directory (opened for writing).
fn refused_as(err: &io::Error) -> Option<&'static str> {
    match err.raw_os_error() {
        Some(nix::libc::ELOOP) => Some("a symbolic link"),
        Some(nix::libc::EISDIR) => Some("a directory"),
        _ => None,
    }
}

/// What a file is, in words, for messages.
pub fn file_kind(kind: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_file() {
        "a regular file"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
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

    /// Anyone may create files in a shared lock directory: a FIFO under a lock file's
    /// name is refused at once, saying what it is, both by a reserver (which opens it
    /// read-write) and by the scan of `ports list` and of slot-limited reservations (which
    /// opens it read-only, and blocked there for ever).
    #[test]
    fn a_fifo_under_a_lock_name_is_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = lock_path(dir.path(), 5678);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o666))
            .expect("mkfifo");
        let (tx, rx) = std::sync::mpsc::channel();
        let scanned = dir.path().to_path_buf();
        std::thread::spawn(move || {
            let opened = open_lock_file(&path).map(|_| ());
            let _ = tx.send((opened, super::super::listing::scan(&scanned)));
        });
        let (opened, listing) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("returned within 10 s");
        let err = opened.expect_err("a FIFO is no lock file");
        assert!(err.to_string().contains("a FIFO"), "{err}");
        assert!(err.to_string().contains("remove it"), "{err}");
        let listing = listing.expect("the directory is listed");
        assert_eq!(listing.unreadable.len(), 1, "{listing:?}");
        assert!(
            listing.unreadable[0].error.contains("a FIFO"),
            "{listing:?}"
        );
    }

    /// A link or a folder under a lock file's name is named as such, with the fix, like a
    /// FIFO: it said "Too many levels of symbolic links (os error 40)" or "Is a directory
    /// (os error 21)".
    #[test]
    fn a_link_or_a_folder_under_a_lock_name_is_named_with_the_fix() {
        let dir = tempfile::tempdir().expect("temp dir");
        let link = lock_path(dir.path(), 5678);
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &link).expect("symlink");
        let folder = lock_path(dir.path(), 5679);
        fs::create_dir(&folder).expect("mkdir");
        for (path, what) in [(&link, "a symbolic link"), (&folder, "a directory")] {
            let err = open_lock_file(path).expect_err("no lock file");
            let text = err.to_string();
            assert!(text.contains(what) && text.contains("remove it"), "{text}");
        }
        let err = open_shared_read_only(&link, "a lock file").expect_err("a link");
        assert!(
            err.to_string()
                .contains("a symbolic link, not a lock file; remove it"),
            "{err}"
        );
        assert!(
            !dir.path().join("elsewhere").exists(),
            "the link was not followed"
        );
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
