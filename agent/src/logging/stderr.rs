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
//! A pipe or a terminal is written through a second open file of it (reopened through
//! `/proc`), non-blocking there, so no write can block however the reader behaves (a
//! terminal with a little room left blocked a whole line's write until the line fit);
//! the step's own stderr, the same pipe or terminal through the inherited open file,
//! stays blocking. A socket is written with `MSG_DONTWAIT`, which asks the same of one
//! call only. A file never holds a write for long.

use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::socket::MsgFlags;

use crate::poll_deadline::poll_timeout;

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
        self.write_line_as(fd, Kind::Other, line, bound)
    }

    /// [`BoundedLog::write_line`] to a descriptor of this kind.
    fn write_line_as(
        &self,
        fd: BorrowedFd<'_>,
        kind: Kind,
        line: &[u8],
        bound: Duration,
    ) -> Written {
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
            match write_all_by(fd, kind, note.as_bytes(), deadline) {
                Written::Whole => {}
                other => {
                    // Still to be reported, with this line.
                    self.lost.fetch_add(lost, Ordering::Relaxed);
                    return self.count(other);
                }
            }
        }
        match write_all_by(fd, kind, line, deadline) {
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
fn write_all_by(fd: BorrowedFd<'_>, kind: Kind, mut bytes: &[u8], deadline: Instant) -> Written {
    while !bytes.is_empty() {
        match room_by(fd, deadline) {
            Room::Some => {}
            Room::None => return Written::Lost,
            Room::Gone => return Written::Gone,
        }
        let piece = bytes.get(..WHOLE_WRITE).unwrap_or(bytes);
        let written = match kind {
            Kind::Socket => nix::sys::socket::send(
                fd.as_raw_fd(),
                piece,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ),
            Kind::Other => nix::unistd::write(fd, piece),
        };
        match written {
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            // No room after all (another writer took it, or a non-blocking open file):
            // wait again, within the same deadline.
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(_) => return Written::Gone,
        }
    }
    Written::Whole
}

/// How a descriptor is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A socket: each send is non-blocking by itself.
    Socket,
    /// Anything else: a non-blocking open file, or one that does not block for long.
    Other,
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
        let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
        match poll(&mut fds, poll_timeout(left)) {
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

/// How this process's stderr is written: through a non-blocking open file of it of our
/// own (a pipe, a FIFO, a terminal), as a socket, or as it is (a file, or what could not
/// be reopened). The reopened file is close-on-exec: the step never inherits it.
enum Destination {
    Reopened(OwnedFd),
    Socket,
    AsItIs,
}

static DESTINATION: OnceLock<Destination> = OnceLock::new();

/// What fd 2 is, looked at once, at the first line written (a non-target that logs
/// nothing pays nothing).
fn destination() -> Destination {
    use nix::sys::stat::{SFlag, fstat};
    let Ok(stat) = fstat(io::stderr().as_fd()) else {
        return Destination::AsItIs;
    };
    let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    if kind == SFlag::S_IFSOCK {
        return Destination::Socket;
    }
    if kind != SFlag::S_IFIFO && kind != SFlag::S_IFCHR {
        return Destination::AsItIs;
    }
    reopen_nonblocking(io::stderr().as_fd()).map_or(Destination::AsItIs, Destination::Reopened)
}

/// A new open file of the pipe or terminal `fd` is (through `/proc`), non-blocking and
/// close-on-exec: its flags are not those of `fd`'s open file, which others share.
fn reopen_nonblocking(fd: BorrowedFd<'_>) -> Option<OwnedFd> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::Mode;
    // O_NOCTTY: a terminal opened again must not become this process's controlling one.
    open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
        OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .ok()
}

/// Writes one whole line (newline included) to this process's stderr, bounded as the
/// module says.
pub fn write_line(line: &[u8]) -> Written {
    match DESTINATION.get_or_init(destination) {
        Destination::Reopened(fd) => {
            STDERR.write_line_as(fd.as_fd(), Kind::Other, line, STDERR_WAIT_BOUND)
        }
        Destination::Socket => {
            STDERR.write_line_as(io::stderr().as_fd(), Kind::Socket, line, STDERR_WAIT_BOUND)
        }
        Destination::AsItIs => {
            STDERR.write_line_as(io::stderr().as_fd(), Kind::Other, line, STDERR_WAIT_BOUND)
        }
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

    /// A terminal with a little room left: poll says there is room, and a blocking write
    /// of a longer line waited until all of it fit, for ever when nobody reads. Through
    /// the reopened, non-blocking open file it is bounded.
    #[test]
    fn a_terminal_with_a_little_room_left_costs_one_bounded_wait() {
        let pty = nix::pty::openpty(None, None).expect("a pty");
        let terminal = reopen_nonblocking(pty.slave.as_fd()).expect("reopened");
        // Fill the terminal, then let its reader take a little and stop.
        while nix::unistd::write(&terminal, b"x").is_ok() {}
        let mut some = [0u8; 1];
        let _ = nix::unistd::read(&pty.master, &mut some);
        // The terminal frees room in a chunk a moment later; most of it is taken again.
        let mut room = [PollFd::new(terminal.as_fd(), PollFlags::POLLOUT)];
        let _ = poll(&mut room, poll_timeout(Duration::from_secs(5)));
        let _ = nix::unistd::write(&terminal, &[b'x'; 500]);
        let log = BoundedLog::new();
        let bound = Duration::from_millis(200);
        let started = Instant::now();
        let line = [b'y'; 3000];
        assert_eq!(
            log.write_line(terminal.as_fd(), &line, bound),
            Written::Lost
        );
        let waited = started.elapsed();
        assert!(waited < 10 * bound, "waited {waited:?}");
        // The terminal's own open file is still blocking: only ours is not.
        let flags = nix::fcntl::fcntl(&pty.slave, nix::fcntl::FcntlArg::F_GETFL).expect("flags");
        assert!(
            !nix::fcntl::OFlag::from_bits_truncate(flags).contains(nix::fcntl::OFlag::O_NONBLOCK)
        );
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
