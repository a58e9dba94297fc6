//! What the keeper holds of the sidecar's sockets in connect mode (see
//! [`Shared`]): debugpy's listening socket and its
//! current connection, received over the channel, and when to let go of them.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use nix::unistd::Pid;

use crate::session::sidecar::{DEBUGPY_PORT_TAG, Shared};

/// The sidecar's sockets the keeper holds copies of.
#[derive(Debug, Default)]
pub(super) struct Held {
    /// debugpy's current connection: the last one the sidecar shared.
    pub debuggee: Option<OwnedFd>,
    /// When the keeper got the last debugpy connection (kept after the sidecar lets go
    /// of it): the sidecar's attach timeout for it runs from about then.
    pub debuggee_since: Option<Instant>,
    /// The socket debugpy connects to. A connection the sidecar never accepted waits
    /// there; the keeper's copy keeps it listening after the sidecar is gone.
    pub listener: Option<TcpListener>,
    /// Since the first of the looks in a row that found a connection waiting unaccepted
    /// (see [`Held::unaccepted_since`]).
    pending_since: Option<Instant>,
    /// The last of those looks.
    pending_look: Option<Instant>,
    /// The port debugpy's adapter listens on, when the sidecar told it (direct mode: the
    /// adapter picks it).
    pub debugpy_port: Option<u16>,
}

/// One message from the sidecar.
enum Message {
    Descriptor(Shared, OwnedFd),
    DebugpyPort(u16),
}

impl Held {
    /// Takes every descriptor waiting on the channel.
    pub fn receive(&mut self, channel: &OwnedFd) {
        while let Some(message) = receive(channel) {
            let (kind, fd) = match message {
                Message::Descriptor(kind, fd) => (kind, fd),
                Message::DebugpyPort(port) => {
                    tracing::debug!("debugpy's adapter listens on port {port}");
                    self.debugpy_port = Some(port);
                    continue;
                }
            };
            tracing::debug!("the keeper holds debugpy's {kind:?} socket");
            match kind {
                Shared::Debuggee => {
                    self.debuggee = Some(fd);
                    self.debuggee_since = Some(Instant::now());
                    // The sidecar accepted: a later wait starts its own count.
                    self.pending_since = None;
                }
                Shared::Listener => self.listener = Some(TcpListener::from(fd)),
            }
        }
    }

    /// Lets go of everything, including what still waits on the channel: a descriptor
    /// in flight is held open by the channel as surely as one received.
    pub fn drop_all(&mut self, channel: Option<&OwnedFd>) {
        if let Some(channel) = channel {
            self.receive(channel);
        }
        *self = Held::default();
    }

    /// Whether a connection to debugpy's listening socket waits unaccepted at this look
    /// (`now`), and since when the looks in a row have seen one: a sidecar that runs
    /// accepts within microseconds, so a long wait means nobody accepts (the sidecar was
    /// stopped before debugpy connected), and debugpy waits on it for good. Looks more
    /// than `max_gap` apart are not in a row: the keeper itself did not run between them
    /// (a loaded machine), so the sidecar may not have either.
    pub fn unaccepted_since(&mut self, now: Instant, max_gap: Duration) -> Option<Instant> {
        let pending = self.debuggee.is_none() && self.listener.as_ref().is_some_and(has_pending);
        let in_a_row = self
            .pending_look
            .is_some_and(|last| now.saturating_duration_since(last) <= max_gap);
        self.pending_since = match (pending, self.pending_since) {
            (false, _) => None,
            (true, Some(since)) if in_a_row => Some(since),
            (true, _) => Some(now),
        };
        self.pending_look = self.pending_since.map(|_| now);
        self.pending_since
    }

    /// debugpy's connection to release: the one held, or one waiting unaccepted.
    pub fn take_connection(&mut self) -> Option<OwnedFd> {
        self.debuggee.take().or_else(|| {
            accept_pending(self.listener.as_ref()?)
                .map_err(|err| {
                    tracing::warn!("the keeper could not accept debugpy's connection: {err}")
                })
                .ok()
                .flatten()
        })
    }
}

/// Whether a connection waits to be accepted on `listener` (without waiting).
fn has_pending(listener: &TcpListener) -> bool {
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO) == Ok(1)
}

/// Accepts one waiting connection, without waiting (the socket is non-blocking: the
/// sidecar's runtime made it so, and the keeper's copy shares that). The connection
/// itself is blocking, as the release expects. `Ok(None)`: nothing waits.
pub(super) fn accept_pending(listener: &TcpListener) -> std::io::Result<Option<OwnedFd>> {
    loop {
        return match listener.accept() {
            Ok((stream, _)) => Ok(Some(OwnedFd::from(stream))),
            Err(err) if err.kind() == ErrorKind::WouldBlock => Ok(None),
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => Err(err),
        };
    }
}

/// Takes a message of the sidecar (a descriptor it shared, or debugpy's port), if one is
/// waiting on the channel. A message with an unknown tag is dropped (its descriptor
/// closed) and the next one looked at; the end of the channel (the sidecar gone) and an
/// empty channel both end the look.
fn receive(channel: &OwnedFd) -> Option<Message> {
    loop {
        let mut bytes = [0u8; 3];
        let mut iov = [std::io::IoSliceMut::new(&mut bytes)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let message = recvmsg::<()>(
            channel.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .ok()?;
        let len = message.bytes;
        if len == 0 {
            return None;
        }
        let mut received = None;
        for cmsg in message.cmsgs().ok()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for fd in fds {
                    // SAFETY: SCM_RIGHTS just installed this descriptor in our table;
                    // we are its only owner.
                    #[allow(unsafe_code)]
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    received = Some(owned);
                }
            }
        }
        let [tag, high, low] = bytes;
        if tag == DEBUGPY_PORT_TAG && len == 3 && received.is_none() {
            let port = u16::from_be_bytes([high, low]);
            if port != 0 {
                return Some(Message::DebugpyPort(port));
            }
        }
        match (Shared::from_tag(tag), received) {
            (Some(kind), Some(fd)) if len == 1 => {
                return Some(Message::Descriptor(kind, fd));
            }
            (kind, _) => tracing::debug!("the keeper dropped a message ({kind:?}, tag {tag})"),
        }
    }
}

/// Whether `sidecar` still has the socket `ours` refers to open (from /proc). When
/// /proc cannot say, it assumes it does: dropping our copy early is the worse mistake
/// (a step left waiting for good), keeping it a little longer only delays a close.
pub(super) fn holds_socket(sidecar: Pid, ours: BorrowedFd<'_>) -> bool {
    let Ok(stat) = nix::sys::stat::fstat(ours) else {
        return true;
    };
    let target = format!("socket:[{}]", stat.st_ino);
    let Ok(entries) = std::fs::read_dir(format!("/proc/{sidecar}/fd")) else {
        return true;
    };
    let links: Vec<_> = entries
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .collect();
    // A dying process shows no descriptors at all before its pidfd turns readable: that
    // is a sidecar being killed, not one that let go.
    links.is_empty() || links.iter().any(|link| link.as_os_str() == target.as_str())
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use super::*;

    #[test]
    fn tags_name_their_kind_and_nothing_else() {
        for kind in [Shared::Listener, Shared::Debuggee] {
            assert_eq!(Shared::from_tag(kind.tag()), Some(kind));
        }
        assert_eq!(Shared::from_tag(0), None);
        assert_eq!(Shared::from_tag(b'x'), None);
    }

    #[test]
    fn an_unaccepted_connection_counts_from_the_first_of_the_looks_in_a_row_that_saw_it() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let address = listener.local_addr().expect("address");
        let mut held = Held {
            listener: Some(listener),
            ..Held::default()
        };
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let gap = Duration::from_secs(1);
        assert_eq!(held.unaccepted_since(at(0), gap), None, "nothing waits");
        let _debugpy = TcpStream::connect(address).expect("connect");
        assert_eq!(
            held.unaccepted_since(at(200), gap),
            Some(at(200)),
            "first seen"
        );
        assert_eq!(
            held.unaccepted_since(at(400), gap),
            Some(at(200)),
            "in a row"
        );
        // The keeper did not run for 3 s: its count starts over.
        assert_eq!(
            held.unaccepted_since(at(3_400), gap),
            Some(at(3_400)),
            "a gap"
        );
        assert_eq!(
            held.unaccepted_since(at(3_600), gap),
            Some(at(3_400)),
            "in a row"
        );
        let taken = held.take_connection();
        assert!(taken.is_some(), "the waiting connection is accepted");
        assert_eq!(
            held.unaccepted_since(at(3_800), gap),
            None,
            "nothing waits any more"
        );
        let _again = TcpStream::connect(address).expect("connect");
        assert_eq!(
            held.unaccepted_since(at(4_000), gap),
            Some(at(4_000)),
            "a new wait"
        );
        assert!(held.take_connection().is_some());
        assert!(held.take_connection().is_none());
    }
}
