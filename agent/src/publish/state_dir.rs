//! Where session records live: the state directory a session writes to (`/run/amlx`,
//! `$XDG_RUNTIME_DIR/amlx` or `/tmp/amlx-<uid>`, the first usable, or the configured
//! one) and every directory `status` reads, other users' private ones included.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::status_file::{SESSIONS_DIR, SYSTEM_STATE_DIR};
use crate::role::Env;

/// The state directory a session writes its record to: `explicit` (flag,
/// `AMLX_STATE_DIR` or `[node] state_dir`, already layered by the caller), else the first
/// of `/run/amlx`, `$XDG_RUNTIME_DIR/amlx`, `/tmp/amlx-<uid>` whose `sessions`
/// directory can be created and written. Created if missing.
///
/// The same order as the port lock directory, with the same sharing: a `sessions`
/// directory we create in `/run/amlx` or an explicit directory is world-writable and
/// sticky (every user's step records itself where `status` looks first; nobody can
/// remove another user's record); the per-user fallbacks are private, and
/// [`record_dirs`] finds them for `status`.
pub fn state_dir(explicit: Option<&Path>, env: &dyn Env) -> anyhow::Result<PathBuf> {
    if let Some(dir) = explicit {
        fs::create_dir_all(dir)
            .with_context(|| format!("could not create the state directory {}", dir.display()))?;
        prepare_sessions_dir(dir, SHARED_SESSIONS_MODE).map_err(|why| {
            anyhow::anyhow!("could not use the state directory {}: {why}", dir.display())
        })?;
        return Ok(dir.to_path_buf());
    }
    let uid = nix::unistd::getuid().as_raw();
    let mut candidates = vec![(PathBuf::from(SYSTEM_STATE_DIR), None)];
    if let Some(runtime) = env.var("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        candidates.push((Path::new(&runtime).join("amlx"), Some(uid)));
    }
    // In world-writable /tmp, only a directory we own is ours (no squatting). A fixed
    // /tmp, not $TMPDIR, so `status` of another user finds it (like the lock directory).
    candidates.push((private_tmp_dir(uid), Some(uid)));
    first_usable(&candidates)
}

/// Mode of a `sessions` directory shared by the node's users: everyone may add a record,
/// the sticky bit keeps each record its writer's.
const SHARED_SESSIONS_MODE: u32 = 0o1777;
/// Mode of a per-user state directory and its `sessions` directory.
const PRIVATE_DIR_MODE: u32 = 0o700;
/// Where each user's per-user fallback lives (`/tmp/amlx-<uid>`, shared with the lock
/// directory's `/tmp/amlx-<uid>/ports`).
const TMP_DIR_PREFIX: &str = "/tmp/amlx-";
/// Where systemd puts each user's `$XDG_RUNTIME_DIR` (`/run/user/<uid>`).
const USER_RUNTIME_ROOT: &str = "/run/user";

fn private_tmp_dir(uid: u32) -> PathBuf {
    PathBuf::from(format!("{TMP_DIR_PREFIX}{uid}"))
}

/// The first candidate directory whose `sessions` directory can be created and written
/// (and, when an owner uid is given, that is owned by it; such a directory is private).
fn first_usable(candidates: &[(PathBuf, Option<u32>)]) -> anyhow::Result<PathBuf> {
    let mut tried = Vec::new();
    for (dir, owner) in candidates {
        match usable_dir(dir, *owner) {
            Ok(()) => return Ok(dir.clone()),
            Err(why) => tried.push(format!("{}: {why}", dir.display())),
        }
    }
    anyhow::bail!(
        "no usable state directory (set --state-dir or AMLX_STATE_DIR): {}",
        tried.join("; ")
    )
}

/// Creates `dir` if needed, checks it is a directory (owned by `owner`), and prepares
/// its `sessions` directory: shared without an owner, private with one.
fn usable_dir(dir: &Path, owner: Option<u32>) -> Result<(), String> {
    match owner {
        Some(_) => crate::ports::lockdir::ensure_dir(dir, PRIVATE_DIR_MODE)?,
        None => fs::create_dir_all(dir).map_err(|e| e.to_string())?,
    }
    let meta = fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("not a directory".to_owned());
    }
    if let Some(uid) = owner
        && meta.uid() != uid
    {
        return Err(format!("owned by uid {}, not {uid}", meta.uid()));
    }
    let mode = match owner {
        Some(_) => PRIVATE_DIR_MODE,
        None => SHARED_SESSIONS_MODE,
    };
    prepare_sessions_dir(dir, mode)
}

/// Creates `<dir>/sessions` with `mode` if missing and checks we can add records to it.
fn prepare_sessions_dir(dir: &Path, mode: u32) -> Result<(), String> {
    let sessions = dir.join(SESSIONS_DIR);
    crate::ports::lockdir::ensure_dir(&sessions, mode)?;
    let rwx = nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK;
    nix::unistd::access(&sessions, rwx)
        .map_err(|e| format!("{} is not writable: {e}", sessions.display()))
}

/// Every state directory a session record can be in, for readers; nothing is created.
///
/// `explicit` alone when given (a configured directory has no fallback, as for writers).
/// Else `/run/amlx`, this user's `$XDG_RUNTIME_DIR/amlx`, and for every user the
/// per-user fallbacks a step running as them may have used: `/run/user/<uid>/amlx` and
/// `/tmp/amlx-<uid>`, each only when owned by that uid (a directory someone else created
/// under another user's name is not that user's) and readable by us (root reads all).
pub fn record_dirs(explicit: Option<&Path>, env: &dyn Env) -> Vec<PathBuf> {
    if let Some(dir) = explicit {
        return vec![dir.to_path_buf()];
    }
    let mut dirs = vec![PathBuf::from(SYSTEM_STATE_DIR)];
    if let Some(runtime) = env.var("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        dirs.push(Path::new(&runtime).join("amlx"));
    }
    dirs.extend(per_user_dirs(Path::new(USER_RUNTIME_ROOT), "", "amlx"));
    let (tmp, prefix) = TMP_DIR_PREFIX
        .rsplit_once('/')
        .expect("the prefix is an absolute path");
    dirs.extend(per_user_dirs(Path::new(tmp), prefix, ""));
    let mut seen = std::collections::HashSet::new();
    dirs.into_iter()
        .filter(|dir| dir.is_dir())
        .filter(|dir| seen.insert(fs::canonicalize(dir).unwrap_or_else(|_| dir.clone())))
        .collect()
}

/// `<root>/<prefix><uid>[/<leaf>]` for every entry of `root` named `<prefix><uid>` whose
/// directory (the leaf, when given) belongs to that uid and that we may read.
fn per_user_dirs(root: &Path, prefix: &str, leaf: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let uid: u32 = name.to_str()?.strip_prefix(prefix)?.parse().ok()?;
            let dir = if leaf.is_empty() {
                entry.path()
            } else {
                entry.path().join(leaf)
            };
            let meta = fs::symlink_metadata(&dir).ok()?;
            let readable = nix::unistd::access(
                &dir,
                nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::X_OK,
            )
            .is_ok();
            (meta.is_dir() && meta.uid() == uid && readable).then_some(dir)
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_usable_skips_files_and_foreign_owners() {
        let root = tempfile::tempdir().expect("temp dir");
        let file = root.path().join("a-file");
        fs::write(&file, "").expect("file");
        let not_ours = root.path().join("not-ours");
        let ours = root.path().join("nested").join("ours");
        let me = nix::unistd::getuid().as_raw();
        let candidates = [
            (file.clone(), None),
            (not_ours.clone(), Some(me.wrapping_add(1))),
            (ours.clone(), Some(me)),
        ];
        assert_eq!(first_usable(&candidates).expect("one is usable"), ours);
        let err = first_usable(&candidates[..2]).expect_err("none usable");
        let text = format!("{err:#}");
        assert!(text.contains("AMLX_STATE_DIR"), "{text}");
        assert!(text.contains("a-file"), "{text}");
        assert!(text.contains("owned by uid"), "{text}");
    }

    #[test]
    fn explicit_state_dir_wins_and_is_created() {
        let root = tempfile::tempdir().expect("temp dir");
        let wanted = root.path().join("x").join("y");
        let env = std::collections::HashMap::new();
        assert_eq!(state_dir(Some(&wanted), &env).expect("explicit"), wanted);
        assert!(wanted.is_dir());
    }

    /// A shared candidate (no owner) gets a world-writable sticky `sessions` directory, so
    /// every user's step can record itself where `status` looks first; a per-user one stays
    /// private.
    #[test]
    fn shared_state_dirs_have_a_sticky_sessions_dir_and_private_ones_do_not() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().expect("temp dir");
        let me = nix::unistd::getuid().as_raw();
        let cases = [
            (root.path().join("shared"), None, 0o1777),
            (root.path().join("private"), Some(me), 0o700),
        ];
        for (dir, owner, mode) in cases {
            let got = first_usable(&[(dir.clone(), owner)]).expect("usable");
            assert_eq!(got, dir);
            let sessions = fs::metadata(dir.join(SESSIONS_DIR)).expect("sessions dir created");
            assert_eq!(sessions.permissions().mode() & 0o7777, mode, "{owner:?}");
        }
        let explicit = root.path().join("explicit");
        let env = std::collections::HashMap::new();
        state_dir(Some(&explicit), &env).expect("explicit");
        let sessions = fs::metadata(explicit.join(SESSIONS_DIR)).expect("created");
        assert_eq!(sessions.permissions().mode() & 0o7777, 0o1777);
    }

    /// Readers find every user's per-user directory by name, but only when that user owns it.
    #[test]
    fn per_user_dirs_are_found_by_name_and_owner() {
        let root = tempfile::tempdir().expect("temp dir");
        let me = nix::unistd::getuid().as_raw();
        let other = me.wrapping_add(1);
        for name in [
            format!("amlx-{me}"),
            format!("amlx-{other}"),
            "amlx-abc".to_owned(),
            format!("amlx-{me}x"),
            format!("other-{me}"),
        ] {
            fs::create_dir(root.path().join(name)).expect("mkdir");
        }
        fs::write(root.path().join("amlx-12345678"), "").expect("a file, not a dir");
        // (prefix, leaf) -> the directories found; `amlx-<other>` is ours, so it is a squat.
        let found = per_user_dirs(root.path(), "amlx-", "");
        assert_eq!(found, [root.path().join(format!("amlx-{me}"))]);

        let runtime = tempfile::tempdir().expect("temp dir");
        for uid in [me, other] {
            fs::create_dir_all(runtime.path().join(uid.to_string()).join("amlx")).expect("mkdir");
        }
        let found = per_user_dirs(runtime.path(), "", "amlx");
        assert_eq!(found, [runtime.path().join(me.to_string()).join("amlx")]);
        assert!(per_user_dirs(&root.path().join("missing"), "", "amlx").is_empty());
    }
}
