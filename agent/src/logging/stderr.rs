//! Where every agent process writes its log: the process's stderr, written so that a
//! stderr with no room (a pipe its reader stopped emptying, a terminal held by Ctrl-S)
//! holds the process at most [`STDERR_WAIT_BOUND`] once, never for ever.
//!
//! Why it matters: the agent writes lines the bare step would not have written, before
//! the step starts (a target's reservation, its relay) and beside it (the sidecar, the
//! keeper). A launcher that captures the job's stderr into a pipe and stopped reading it
//! would otherwise hang a debug target before its first instruction, where the same
//! step without the agent runs to its end. So the first line that finds no room waits
//! for some up to the bound; after that the log is lossy for the rest of the process:
//! each line is written if there is room at that moment and counted as lost if not,
//! and the next line written says how many were lost.
//!
//! A pipe is written through a second open file of it (reopened through `/proc`),
//! non-blocking there, so no write can block however the reader behaves; the step's
//! own stderr, the same pipe through the inherited open file, stays blocking. Other
//! kinds (files, terminals, sockets) are written once `poll` says there is room.

use std::io;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// The longest a process waits, once, for room in its stderr; after that, lines that
/// find no room are lost (and counted) instead of waited for.
pub const STDERR_WAIT_BOUND: Duration = Duration::from_secs(1);

/// The most bytes one `write` is given: a pipe with room for any of them takes that many
/// whole (`PIPE_BUF`), so a line of the log is not torn by another process's writes.
const WHOLE_WRITE: usize = 4096;

/// A log destination that waits for room at most once: the state behind [`Stderr`]
/// (and, in tests, behind any descriptor).
#[derive(Debug)]
pub struct BoundedLog {
    /// Set once a write found no room within the bound: no write waits any more.
    gave_up: AtomicBool,
    /// Lines lost since the last one written.
    lost: AtomicU64,
}

/// What became of one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// All of it, after the note about lost lines if there were any.
    Whole,
    /// None of it, or part of it (the rest did not fit in time): counted as lost.
    Lost,
    /// The descriptor is gone (closed, a pipe without a reader): nothing more to do.
    Gone,
}

impl BoundedLog {
    /// A log that has not waited yet.
    pub const fn new() -> BoundedLog {
        BoundedLog {
            gave_up: AtomicBool::new(false),
            lost: AtomicU64::new(0),
        }
    }

    /// From now on, lines that find no room are lost at once: for a process whose log
    /// must never hold it (the post-mortem session, which has a deadline of its own).
    pub fn never_wait(&self) {
        self.gave_up.store(true, Ordering::Relaxed);
    }

    /// Lines lost so far and not yet reported by a written line.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Writes `line` (one whole log line, its newline included) to `fd`, waiting for room
    /// at most `bound` unless an earlier line already waited in vain.
    pub fn write_line(&self, fd: BorrowedFd<'_>, line: &[u8], bound: Duration) -> Written {
        let wait = if self.gave_up.load(Ordering::Relaxed) {
            Duration::ZERO
        } else {
            bound
        };
        let deadline = Instant::now() + wait;
        let lost = self.lost.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let note = format!(
                "amlx-agent: {lost} log line(s) were not written here: stderr had no room \
                 for {}s (a pipe its reader stopped emptying?)\n",
                STDERR_WAIT_BOUND.as_secs()
            );
            match write_all_by(fd, note.as_bytes(), deadline) {
                Written::Whole => {}
                other => {
                    // Still to be reported, with this line.
                    self.lost.fetch_add(lost, Ordering::Relaxed);
                    return self.count(other);
                }
            }
        }
        match write_all_by(fd, line, deadline) {
            Written::Whole => Written::Whole,
            other => self.count(other),
        }
    }

    fn count(&self, outcome: Written) -> Written {
        if outcome == Written::Lost {
            self.gave_up.store(true, Ordering::Relaxed);
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }
}

impl Default for BoundedLog {
    fn default() -> BoundedLog {
        BoundedLog::new()
    }
}

/// Writes all of `bytes` to `fd` in whole-write pieces, each once there is room, giving
/// up at `deadline` (at once when it has passed, if there is no room).
fn write_all_by(fd: BorrowedFd<'_>, mut bytes: &[u8], deadline: Instant) -> Written {
    while !bytes.is_empty() {
        match room_by(fd, deadline) {
            Room::Some => {}
            Room::None => return Written::Lost,
            Room::Gone => return Written::Gone,
        }
        let piece = bytes.get(..WHOLE_WRITE).unwrap_or(bytes);
        match nix::unistd::write(fd, piece) {
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            // No room after all (another writer took it, or a non-blocking open file):
            // wait again, within the same deadline.
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(_) => return Written::Gone,
        }
    }
    Written::Whole
}

enum Room {
    Some,
    None,
    Gone,
}

/// Waits until `fd` has room for a write, at most until `deadline`.
fn room_by(fd: BorrowedFd<'_>, deadline: Instant) -> Room {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::from(u16::try_from(left.as_millis()).unwrap_or(u16::MAX));
        let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
        match poll(&mut fds, timeout) {
            Ok(0) => {
                if left.is_zero() {
                    return Room::None;
                }
            }
            Ok(_) => {
                let events = fds[0].revents().unwrap_or(PollFlags::empty());
                return if events.intersects(PollFlags::POLLNVAL | PollFlags::POLLERR) {
                    Room::Gone
                } else {
                    // POLLOUT, or POLLHUP (no reader: the write says EPIPE).
                    Room::Some
                };
            }
            Err(Errno::EINTR) => {}
            Err(_) => return Room::Gone,
        }
    }
}

/// This process's log (fd 2), lossy after one bounded wait.
static STDERR: BoundedLog = BoundedLog::new();

/// A non-blocking open file of this process's stderr when it is a pipe (`None`: not a
/// pipe, or it could not be reopened: fd 2 itself is written). Close-on-exec: the step never inherits it.
static REOPENED_PIPE: OnceLock<Option<OwnedFd>> = OnceLock::new();

/// fd 2 opened again, non-blocking, when it is a pipe or FIFO (a new open file of the
/// same pipe: its flags are not the step's).
fn reopen_pipe() -> Option<OwnedFd> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::{Mode, SFlag, fstat};
    let stat = fstat(io::stderr().as_fd()).ok()?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFIFO {
        return None;
    }
    open(
        "/proc/self/fd/2",
        OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

/// Writes one whole line (newline included) to this process's stderr, bounded as the
/// module says.
pub fn write_line(line: &[u8]) -> Written {
    match REOPENED_PIPE.get_or_init(reopen_pipe) {
        Some(pipe) => STDERR.write_line(pipe.as_fd(), line, STDERR_WAIT_BOUND),
        None => STDERR.write_line(io::stderr().as_fd(), line, STDERR_WAIT_BOUND),
    }
}

/// Writes `text` and a newline to this process's stderr, bounded as the module says:
/// for the few lines printed outside the log (an error chain, a line scripts wait for).
pub fn say(text: &str) {
    let mut line = String::with_capacity(text.len() + 1);
    line.push_str(text);
    line.push('\n');
    let _ = write_line(line.as_bytes());
}

/// From now on this process's log never waits for room (see [`BoundedLog::never_wait`]).
pub fn never_wait() {
    STDERR.never_wait();
}

/// The log's writer for `tracing_subscriber`: one whole formatted line per `write`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

impl io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A lost line is not an error to the formatter: it would only retry or report it.
        let _ = write_line(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Stderr {
        Stderr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    /// A pipe whose write end is full (blocking, as a step's stderr is).
    fn full_pipe() -> (std::fs::File, OwnedFd) {
        let (read, write) = nix::unistd::pipe().expect("a pipe");
        let flags = nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_GETFL).expect("flags");
        let nonblocking =
            nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETFL(nonblocking)).expect("set");
        while nix::unistd::write(&write, &[b'x'; 4096]).is_ok() {}
        let blocking = nonblocking - nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETFL(blocking)).expect("reset");
        (std::fs::File::from(read), write)
    }

    #[test]
    fn a_full_pipe_costs_one_bounded_wait_then_lines_are_counted_and_reported() {
        let (mut read, write) = full_pipe();
        let log = BoundedLog::new();
        let bound = Duration::from_millis(100);
        let started = Instant::now();
        assert_eq!(
            log.write_line(write.as_fd(), b"first\n", bound),
            Written::Lost
        );
        let waited = started.elapsed();
        assert!(waited >= bound, "waited {waited:?}");
        // Later lines do not wait at all.
        let started = Instant::now();
        for _ in 0..50 {
            assert_eq!(
                log.write_line(write.as_fd(), b"more\n", bound),
                Written::Lost
            );
        }
        assert!(started.elapsed() < bound, "{:?}", started.elapsed());
        assert_eq!(log.lost(), 51);
        // The reader empties the pipe: the next line is written after a note of the loss.
        let mut drained = vec![0u8; 1 << 20];
        let mut total = 0;
        while total < 4096 {
            total += read.read(&mut drained).expect("read");
        }
        nix::fcntl::fcntl(
            &read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .expect("nonblocking read end");
        while read.read(&mut drained).is_ok_and(|n| n > 0) {}
        assert_eq!(
            log.write_line(write.as_fd(), b"back\n", bound),
            Written::Whole
        );
        assert_eq!(log.lost(), 0);
        let n = read.read(&mut drained).expect("the note and the line");
        let text = String::from_utf8_lossy(drained.get(..n).unwrap_or_default()).into_owned();
        assert!(
            text.starts_with("amlx-agent: 51 log line(s) were not written here")
                && text.ends_with("\nback\n"),
            "{text:?}"
        );
    }

    #[test]
    fn a_pipe_with_room_is_written_whole_and_long_lines_in_pieces() {
        let (read, write) = nix::unistd::pipe().expect("a pipe");
        let log = BoundedLog::new();
        let long = vec![b'a'; 3 * WHOLE_WRITE + 7];
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            std::fs::File::from(read)
                .read_to_end(&mut all)
                .expect("read");
            all
        });
        assert_eq!(
            log.write_line(write.as_fd(), &long, STDERR_WAIT_BOUND),
            Written::Whole
        );
        assert_eq!(
            log.write_line(write.as_fd(), b"x\n", STDERR_WAIT_BOUND),
            Written::Whole
        );
        drop(write);
        let all = reader.join().expect("reader");
        assert_eq!(all.len(), long.len() + 2);
    }

    #[test]
    fn a_gone_reader_or_a_closed_descriptor_is_not_waited_for() {
        let (read, write) = nix::unistd::pipe().expect("a pipe");
        drop(read);
        let log = BoundedLog::new();
        let started = Instant::now();
        assert_eq!(
            log.write_line(write.as_fd(), b"x\n", STDERR_WAIT_BOUND),
            Written::Gone
        );
        assert!(started.elapsed() < STDERR_WAIT_BOUND);
        assert_eq!(log.lost(), 0, "nobody will read a count");
    }

    #[test]
    fn never_wait_loses_a_line_at_once() {
        let (_read, write) = full_pipe();
        let log = BoundedLog::new();
        log.never_wait();
        let started = Instant::now();
        assert_eq!(
            log.write_line(write.as_fd(), b"x\n", STDERR_WAIT_BOUND),
            Written::Lost
        );
        assert!(started.elapsed() < STDERR_WAIT_BOUND);
    }
}
