//! Reading the small files a user names (config files, connection strings, certificates
//! and keys): regular files only, and never more than a bound, so a mistaken
//! `/dev/zero` cannot fill memory and a FIFO cannot block the agent for good.

use std::io::Read as _;
use std::os::unix::fs::FileTypeExt as _;
use std::path::Path;

/// Reads `path`, at most `limit` bytes; the error says what is wrong (missing, a
/// directory, a device, a FIFO, too big) without the file's name, which the caller adds.
/// `kind` names the files for the size error ("config files").
///
/// Directories, FIFOs, sockets and block devices are refused before they are opened:
/// opening a FIFO blocks until a writer comes. A character device is read under the
/// bound (`/dev/null` is empty; `/dev/zero` ends at the bound).
pub fn read(path: &Path, limit: u64, kind: &str) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    let file_type = meta.file_type();
    if file_type.is_dir() {
        return Err("it is a directory, not a file".to_owned());
    }
    if file_type.is_fifo() || file_type.is_socket() {
        return Err("it is a FIFO or socket, not a regular file".to_owned());
    }
    // Character devices are read under the bound like files: `--config /dev/null` is the
    // usual way to say "no file", and `/dev/zero` ends at the bound.
    if !file_type.is_file() && !file_type.is_char_device() {
        return Err("it is a block device, not a regular file".to_owned());
    }
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    // One byte past the limit tells "exactly at the limit" from "over it".
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if u64::try_from(bytes.len()).map_or(true, |n| n > limit) {
        let bound = if limit >= 1024 {
            format!("{} KiB", limit / 1024)
        } else {
            format!("{limit} bytes")
        };
        return Err(format!("it is larger than the {bound} limit for {kind}"));
    }
    Ok(bytes)
}

/// Warns when group or others may read `path`, a file holding a secret (`what` names it:
/// "connection string file"): it is still used. Nothing is said when it cannot be looked
/// at; reading it says why.
pub fn warn_if_others_may_read(path: &Path, what: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "{what} {} is readable by group or others; chmod 600 it",
            path.display()
        );
    }
}

/// [`read`] of a text file: the bytes must be UTF-8.
pub fn read_text(path: &Path, limit: u64, kind: &str) -> Result<String, String> {
    let bytes = read(path, limit, kind)?;
    String::from_utf8(bytes).map_err(|e| format!("it is not UTF-8 text ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"0123456789").expect("write");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let latin1 = dir.path().join("latin1");
        std::fs::write(&latin1, b"caf\xe9").expect("write");
        let cases: [(&Path, u64, Result<&str, &str>); 8] = [
            (&file, 10, Ok("0123456789")),
            (
                &file,
                9,
                Err("it is larger than the 9 bytes limit for test files"),
            ),
            (dir.path(), 10, Err("it is a directory, not a file")),
            (&fifo, 10, Err("it is a FIFO or socket, not a regular file")),
            (
                Path::new("/dev/zero"),
                10,
                Err("it is larger than the 10 bytes limit"),
            ),
            (Path::new("/dev/null"), 10, Ok("")),
            (
                &dir.path().join("missing"),
                10,
                Err("No such file or directory (os error 2)"),
            ),
            (&latin1, 10, Err("it is not UTF-8 text")),
        ];
        for (path, limit, want) in cases {
            let got = read_text(path, limit, "test files");
            match want {
                Ok(text) => assert_eq!(got.as_deref(), Ok(text), "{}", path.display()),
                Err(start) => {
                    let err = got.expect_err(start);
                    assert!(err.starts_with(start), "{}: {err}", path.display());
                }
            }
        }
    }
}
