//! The sidecar's side of its link to the keeper: the keeper's PID, and the socket pair
//! over which the sidecar hands the keeper debugpy's sockets and port, so that the keeper
//! can still release a waiting step when the sidecar dies or is stopped.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use nix::unistd::Pid;

/// What the sidecar knows about its keeper.
#[derive(Debug)]
pub(super) struct KeeperLink {
    pub(super) pid: Pid,
    /// The sidecar's end of the socket pair descriptors are shared over.
    pub(super) channel: Option<OwnedFd>,
}

/// Set once in the sidecar, right after its fork.
pub(super) static KEEPER: OnceLock<KeeperLink> = OnceLock::new();

/// The keeper's PID, in the sidecar (None in any other process).
pub fn keeper_pid() -> Option<u32> {
    KEEPER.get().map(|link| link.pid.as_raw().unsigned_abs())
}

/// What the sidecar hands its keeper over their channel (connect mode), so that the
/// keeper can still release a step that waits in pydevd when the sidecar dies or is
/// stopped: debugpy's wait has no bound of its own, and closing its socket would leave
/// it hung for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    /// The socket debugpy connects to, right after the bind: a connection the sidecar
    /// never accepted (it was stopped, or died first) waits there, and the keeper's
    /// copy keeps it listening, so debugpy's connect succeeds whatever became of the
    /// sidecar.
    Listener,
    /// debugpy's connection, right after the accept.
    Debuggee,
}

impl Shared {
    /// The one byte that travels with the descriptor.
    pub fn tag(self) -> u8 {
        match self {
            Shared::Listener => b'l',
            Shared::Debuggee => b'd',
        }
    }

    /// The kind a received tag names (None: not one of ours).
    pub fn from_tag(tag: u8) -> Option<Shared> {
        [Shared::Listener, Shared::Debuggee]
            .into_iter()
            .find(|kind| kind.tag() == tag)
    }
}

/// Hands the keeper a duplicate of `fd` (see [`Shared`]). Call it right after the bind
/// or the accept. A no-op (with a debug log) when this process has no keeper.
pub fn share_with_keeper(what: Shared, fd: BorrowedFd<'_>) {
    let Some(channel) = KEEPER.get().and_then(|link| link.channel.as_ref()) else {
        tracing::debug!("no keeper to share {what:?} with");
        return;
    };
    let fds = [fd.as_raw_fd()];
    let tag = [what.tag()];
    let message = [IoSlice::new(&tag)];
    let sent = sendmsg::<()>(
        channel.as_raw_fd(),
        &message,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    );
    if let Err(err) = sent {
        tracing::warn!("could not share debugpy's {what:?} socket with the keeper: {err}");
    }
}

/// The tag of the message that tells the keeper debugpy's port (two bytes, big-endian,
/// after it; no descriptor): direct mode lets debugpy's adapter pick its loopback port,
/// which only the step's bootstrap report says, and the keeper needs it to release the
/// step at the deadline after a sidecar death.
pub const DEBUGPY_PORT_TAG: u8 = b'p';

/// Tells the keeper the port debugpy's adapter listens on (see [`DEBUGPY_PORT_TAG`]). A
/// no-op (with a debug log) when this process has no keeper.
pub fn tell_keeper_debugpy_port(port: u16) {
    let Some(channel) = KEEPER.get().and_then(|link| link.channel.as_ref()) else {
        tracing::debug!("no keeper to tell debugpy's port {port}");
        return;
    };
    let [high, low] = port.to_be_bytes();
    let bytes = [DEBUGPY_PORT_TAG, high, low];
    let message = [IoSlice::new(&bytes)];
    let sent = sendmsg::<()>(
        channel.as_raw_fd(),
        &message,
        &[],
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    );
    if let Err(err) = sent {
        tracing::warn!("could not tell the keeper debugpy's port {port}: {err}");
    }
}
