//! Replacing a file whole: the new contents go to a temporary file of this process's
//! own next to it, which is then renamed over it, so a reader sees the old contents or
//! the new, never half of them. Every file the agent writes for another process to read
//! goes through [`replace`]: the developer's `launch.json` (and its backup) and the
//! session status records.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The permissions the new file gets.
#[derive(Debug, Clone)]
pub enum Permissions {
    /// These bits less the umask, as for any new file.
    New(u32),
    /// The mode and owner of the file being replaced (its metadata): the mode exactly
    /// (the umask does not apply), the owner where this process may give it (root
    /// replacing a user's file leaves it the user's; anyone else keeps their own).
    Keep(fs::Metadata),
}

/// Whether the contents reach the disk before the rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fsync` first: a file the user keeps, which a crash right after the rename must not
    /// leave empty.
    Synced,
    /// No `fsync`: a record that lives in `/run` or `/tmp` and means nothing after a
    /// crash, written at every change of a session's state.
    Unsynced,
}

/// Writes `bytes` to `path` by way of a temporary file in the same folder (hidden, named
/// after `path` and this process: `.<name>.amlx-tmp.<pid>`), renamed over `path`.
///
/// The folder may be shared by every user (a sessions directory of mode 1777), so the
/// temporary file is always created afresh and never through a link: a leftover at its
/// name (a crashed writer that had our PID, or a planted link) is removed first. When
/// anything fails the temporary file is removed and `path` is as it was.
pub fn replace(
    path: &Path,
    bytes: &[u8],
    permissions: Permissions,
    durability: Durability,
) -> anyhow::Result<()> {
    replace_if(path, bytes, permissions, durability, || Ok(true)).map(|_| ())
}

/// [`replace`], renaming only when `still` says so once the new contents are written
/// (and synced), right before the rename: a merge that read `path` checks nobody wrote
/// it meanwhile. `Ok(false)`: not replaced, the temporary file removed, `path` as it is.
pub fn replace_if(
    path: &Path,
    bytes: &[u8],
    permissions: Permissions,
    durability: Durability,
    still: impl FnOnce() -> io::Result<bool>,
) -> anyhow::Result<bool> {
    let tmp = temporary_name(path)?;
    let written = write_new(&tmp, bytes, &permissions, durability)
        .with_context(|| format!("could not write {}", tmp.display()))
        .and_then(|()| {
            still().with_context(|| format!("could not look at {} again", path.display()))
        })
        .and_then(|go| {
            if go {
                fs::rename(&tmp, path)
                    .with_context(|| format!("could not replace {}", path.display()))?;
            }
            Ok(go)
        });
    if !matches!(written, Ok(true)) {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// `.<name>.amlx-tmp.<pid>` next to `path`.
fn temporary_name(path: &Path) -> anyhow::Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".amlx-tmp.{}", std::process::id()));
    Ok(path.with_file_name(tmp))
}

/// Creates `tmp` afresh (removing whatever is at its name, never following a link) and
/// writes `bytes`.
fn write_new(
    tmp: &Path,
    bytes: &[u8],
    permissions: &Permissions,
    durability: Durability,
) -> io::Result<()> {
    match fs::remove_file(tmp) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let mode = match permissions {
        Permissions::New(mode) => *mode,
        Permissions::Keep(kept) => kept.permissions().mode(),
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(tmp)?;
    file.write_all(bytes)?;
    if let Permissions::Keep(kept) = permissions {
        use std::os::unix::fs::MetadataExt as _;
        // Only root can give a file away; for anyone else the file stays theirs (as a
        // new one would), so a refusal is no failure. Before the mode: a chown clears
        // set-id bits.
        if kept.uid() != nix::unistd::geteuid().as_raw()
            || kept.gid() != nix::unistd::getegid().as_raw()
        {
            let _ = std::os::unix::fs::fchown(&file, Some(kept.uid()), Some(kept.gid()));
        }
        file.set_permissions(kept.permissions())?;
    }
    if durability == Durability::Synced {
        file.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names in `dir` other than `keep`.
    fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| !keep.contains(&n.as_str()))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn replaces_the_contents_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("launch.json");
        for (text, durability) in [
            ("first", Durability::Synced),
            ("second", Durability::Unsynced),
        ] {
            replace(&path, text.as_bytes(), Permissions::New(0o644), durability).expect("replace");
            assert_eq!(fs::read_to_string(&path).expect("read"), text);
        }
        assert_eq!(others(dir.path(), &["launch.json"]), Vec::<String>::new());
    }

    /// The temporary name hides from listings (status records skip dot files) and says whose.
    #[test]
    fn the_temporary_name_is_hidden_and_ours() {
        let tmp = temporary_name(Path::new("/d/1-2.json")).expect("a file name");
        let name = tmp
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with(".1-2.json.amlx-tmp."), "{name}");
        assert_eq!(tmp.parent(), Some(Path::new("/d")));
        assert!(temporary_name(Path::new("/")).is_err(), "no file name");
    }

    /// A link planted at the temporary name (a shared sessions directory) is replaced,
    /// never written through.
    #[test]
    fn a_planted_link_is_not_followed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").expect("write");
        let path = dir.path().join("1-2.json");
        let tmp = temporary_name(&path).expect("name");
        std::os::unix::fs::symlink(&victim, &tmp).expect("symlink");
        replace(
            &path,
            b"record",
            Permissions::New(0o644),
            Durability::Unsynced,
        )
        .expect("write");
        assert_eq!(fs::read_to_string(&victim).expect("read"), "keep");
        assert_eq!(fs::read_to_string(&path).expect("read"), "record");
        assert_eq!(
            others(dir.path(), &["victim", "1-2.json"]),
            Vec::<String>::new()
        );
    }

    /// A failed rename (a folder where the file goes) leaves the folder as it was and no
    /// temporary file behind.
    #[test]
    fn a_failure_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("launch.json");
        fs::create_dir(&path).expect("a folder in the way");
        fs::write(path.join("inside"), "x").expect("write");
        let err = replace(&path, b"{}", Permissions::New(0o644), Durability::Synced)
            .expect_err("cannot rename over a folder");
        assert!(format!("{err:#}").contains("could not replace"), "{err:#}");
        assert!(path.is_dir());
        assert_eq!(others(dir.path(), &["launch.json"]), Vec::<String>::new());
    }

    #[test]
    fn kept_permissions_are_exact_and_new_ones_pass_the_umask() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("launch.json");
        fs::write(&path, "old").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        let kept = fs::metadata(&path).expect("stat");
        replace(&path, b"a", Permissions::Keep(kept), Durability::Synced).expect("replace");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Group-writable bits asked for: what is left is the umask's business, never more.
        replace(&path, b"b", Permissions::New(0o664), Durability::Synced).expect("replace");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode & !0o664, 0, "{mode:o}");
        assert_eq!(fs::read_to_string(&path).expect("read"), "b");
    }

    /// Root replacing a user's file (`sudo amlx-agent run` in their project) leaves it the
    /// user's: it became root's, and the user could no longer save their own launch.json.
    /// Anyone else keeps the file as a new one of theirs.
    #[test]
    fn a_kept_file_keeps_its_owner_where_this_process_may_give_it() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("launch.json");
        fs::write(&path, "old").expect("write");
        let root = nix::unistd::geteuid().is_root();
        let nobody = 65534;
        if root {
            std::os::unix::fs::chown(&path, Some(nobody), Some(nobody)).expect("chown");
        }
        let kept = fs::metadata(&path).expect("stat");
        let group = kept.gid();
        replace(&path, b"new", Permissions::Keep(kept), Durability::Synced).expect("replace");
        let now = fs::metadata(&path).expect("stat");
        let owner = if root {
            nobody
        } else {
            nix::unistd::geteuid().as_raw()
        };
        assert_eq!((now.uid(), now.gid()), (owner, group));
        assert_eq!(fs::read_to_string(&path).expect("read"), "new");
    }

    /// The condition is asked right before the rename: no, and `path` is as it was, with
    /// no temporary file left; an error is an error, with the same clean-up.
    #[test]
    fn replace_if_renames_only_when_the_condition_still_holds() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("launch.json");
        fs::write(&path, "theirs").expect("write");
        let perms = || Permissions::New(0o644);
        let done = replace_if(&path, b"ours", perms(), Durability::Synced, || Ok(false))
            .expect("no error");
        assert!(!done);
        assert_eq!(fs::read_to_string(&path).expect("read"), "theirs");
        let err = replace_if(&path, b"ours", perms(), Durability::Synced, || {
            Err(io::Error::other("gone"))
        })
        .expect_err("the condition failed");
        assert!(format!("{err:#}").contains("could not look at"), "{err:#}");
        assert_eq!(fs::read_to_string(&path).expect("read"), "theirs");
        assert_eq!(others(dir.path(), &["launch.json"]), Vec::<String>::new());
        assert!(replace_if(&path, b"ours", perms(), Durability::Synced, || Ok(true)).expect("ok"));
        assert_eq!(fs::read_to_string(&path).expect("read"), "ours");
    }
}
