//! Whether a developer is connected to a debug port, asked of the kernel without touching
//! the socket: the direct-mode watch polls this for as long as a step runs.
//!
//! The kernel's socket-diagnostics netlink interface (`NETLINK_SOCK_DIAG`, what `ss` uses)
//! is asked for established TCP sockets whose local port is the debug port, with the
//! filter run in the kernel, so nothing is formatted or copied for other sockets. The
//! kernel still walks its whole established-socket hash table (3.5 ms for both address
//! families on this 24 GiB machine, with a handful of sockets), against 11.5 ms for
//! reading `/proc/net/tcp{,6}`, which formats every socket of the network namespace as
//! text and remains the fallback for a kernel or sandbox that refuses the netlink socket.
//! Either way a poll is not free: callers poll seldom (see `session::direct`).

use std::io;
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

/// How long the kernel may take to answer one request (it answers at once; this only
/// makes the bound explicit).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// Datagrams read per request at most: the filter matches a handful of sockets, each
/// answer is one message, and a dump ends with `NLMSG_DONE`.
const MAX_DATAGRAMS: usize = 256;

/// netlink and sock_diag numbers (linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HEADER: usize = 16;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_S_GE: u8 = 2;
const INET_DIAG_BC_S_LE: u8 = 3;
const TCP_ESTABLISHED: u32 = 1;

/// Whether an established TCP connection (IPv4 or IPv6) has `port` as its local port.
pub fn established_on(port: u16) -> bool {
    match ask_kernel(port) {
        Ok(found) => found,
        Err(err) => {
            tracing::debug!("sock_diag unavailable ({err}); reading /proc/net/tcp");
            established_in_proc(port)
        }
    }
}

fn ask_kernel(port: u16) -> io::Result<bool> {
    let socket = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    let timeout = TimeVal::new(i64::try_from(ANSWER_TIMEOUT.as_secs()).unwrap_or(1), 0);
    setsockopt(&socket, sockopt::ReceiveTimeout, &timeout)?;
    let kernel = NetlinkAddr::new(0, 0);
    let mut buf = vec![0u8; 16 * 1024];
    for (seq, family) in [(1u32, libc::AF_INET), (2, libc::AF_INET6)] {
        let family = u8::try_from(family).unwrap_or_default();
        use std::os::fd::AsRawFd as _;
        sendto(
            socket.as_raw_fd(),
            &request(seq, family, port),
            &kernel,
            MsgFlags::empty(),
        )?;
        let mut found = false;
        let mut done = false;
        for _ in 0..MAX_DATAGRAMS {
            let n = recv(socket.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            let answer = read_answer(buf.get(..n).unwrap_or_default(), seq, port)?;
            found |= answer.found;
            if answer.done {
                done = true;
                break;
            }
        }
        if !done {
            return Err(io::Error::other("the kernel's answer did not end"));
        }
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A dump request for established TCP sockets of `family` whose local port is `port`.
fn request(seq: u32, family: u8, port: u16) -> Vec<u8> {
    // inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed inet_diag_sockid
    // (sport, dport, src[4], dst[4], if, cookie[2]: 48 bytes), ignored in a dump.
    let mut req = vec![family, libc::IPPROTO_TCP as u8, 0, 0];
    req.extend_from_slice(&(1u32 << TCP_ESTABLISHED).to_ne_bytes());
    req.extend_from_slice(&[0u8; 48]);
    // Bytecode: `sport >= port` then `sport <= port`; a `yes` lands on the next test (or
    // the end: accept), a `no` jumps past the end (reject). Port operands go in `no`.
    let compare = |code: u8, yes: u8, reject: u16| {
        let mut op = vec![code, yes];
        op.extend_from_slice(&reject.to_ne_bytes());
        op.extend_from_slice(&[0, 0]);
        op.extend_from_slice(&port.to_ne_bytes());
        op
    };
    let mut bytecode = compare(INET_DIAG_BC_S_GE, 8, 16 + 4);
    bytecode.extend(compare(INET_DIAG_BC_S_LE, 8, 8 + 4));
    let attr_len = 4 + bytecode.len();
    req.extend_from_slice(&u16::try_from(attr_len).unwrap_or_default().to_ne_bytes());
    req.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    req.extend(bytecode);
    let total = NLMSG_HEADER + req.len();
    let mut message = Vec::with_capacity(total);
    message.extend_from_slice(&u32::try_from(total).unwrap_or_default().to_ne_bytes());
    message.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    message.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend(req);
    message
}

/// What one datagram of the kernel's answer said.
#[derive(Debug, Default, PartialEq, Eq)]
struct Answer {
    /// A socket with the local port was listed.
    found: bool,
    /// The dump is over.
    done: bool,
}

/// Reads the netlink messages of one datagram (answers to request `seq` only).
fn read_answer(mut datagram: &[u8], seq: u32, port: u16) -> io::Result<Answer> {
    let mut answer = Answer::default();
    let u16_at = |b: &[u8], at: usize| {
        b.get(at..at + 2)
            .and_then(|s| s.try_into().ok())
            .map(u16::from_ne_bytes)
    };
    let u32_at = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    let malformed = || io::Error::other("a malformed netlink message");
    while datagram.len() >= NLMSG_HEADER {
        let len = u32_at(datagram, 0).ok_or_else(malformed)?;
        let len = usize::try_from(len).map_err(|_| malformed())?;
        let kind = u16_at(datagram, 4).ok_or_else(malformed)?;
        let message = datagram.get(..len).filter(|_| len >= NLMSG_HEADER);
        let message = message.ok_or_else(malformed)?;
        if u32_at(message, 8) == Some(seq) {
            match kind {
                NLMSG_DONE => answer.done = true,
                NLMSG_ERROR => {
                    let errno = message
                        .get(NLMSG_HEADER..NLMSG_HEADER + 4)
                        .and_then(|s| s.try_into().ok())
                        .map_or(0, i32::from_ne_bytes);
                    // Zero is an acknowledgement, not an error.
                    if errno != 0 {
                        return Err(io::Error::from_raw_os_error(errno.saturating_neg()));
                    }
                }
                // inet_diag_msg: family, state, timer, retrans, then the socket id whose
                // first field is the local port in network order. Checked here too, so a
                // kernel that ignored the filter cannot give a wrong answer.
                SOCK_DIAG_BY_FAMILY => {
                    let local = message
                        .get(NLMSG_HEADER + 4..NLMSG_HEADER + 6)
                        .and_then(|s| s.try_into().ok())
                        .map(u16::from_be_bytes);
                    answer.found |= local == Some(port);
                }
                _ => {}
            }
        }
        // Messages are 4-byte aligned.
        let next = len.checked_add(3).map(|l| l & !3).ok_or_else(malformed)?;
        datagram = datagram.get(next..).unwrap_or_default();
    }
    Ok(answer)
}

/// The same question answered from `/proc/net/tcp{,6}`.
fn established_in_proc(port: u16) -> bool {
    let local = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let mut fields = line.split_whitespace();
                // fields: sl, local_address, rem_address, st (01 = ESTABLISHED), ...
                let local_address = fields.nth(1).unwrap_or_default();
                let state = fields.nth(1).unwrap_or_default();
                local_address.ends_with(&local) && state == "01"
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[test]
    fn sees_an_established_connection_on_the_port_only() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(!ask_kernel(port).expect("sock_diag"), "listening only");
        let client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        assert!(ask_kernel(port).expect("sock_diag"));
        assert!(established_in_proc(port), "the fallback agrees");
        // The client's own (ephemeral) port is established too, a port next to it not.
        let ephemeral = client.local_addr().expect("addr").port();
        assert!(ask_kernel(ephemeral).expect("sock_diag"));
        drop((client, server));
        let other = TcpListener::bind("127.0.0.1:0").expect("bind");
        let idle = other.local_addr().expect("addr").port();
        assert!(!established_on(idle));
    }

    #[test]
    fn sees_ipv6_connections() {
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            return; // no IPv6 loopback in this sandbox: nothing to check
        };
        let port = listener.local_addr().expect("addr").port();
        let _client = TcpStream::connect(("::1", port)).expect("connect");
        let _server = listener.accept().expect("accept");
        assert!(established_on(port));
    }

    #[test]
    fn answers_that_are_not_netlink_are_errors_not_panics() {
        let cases: &[&[u8]] = &[
            &[0xff; 16],
            &[16, 0, 0, 0, 20, 0],
            &[8, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
            &[],
        ];
        for case in cases {
            let _ = read_answer(case, 1, 5678);
        }
        let mut done = 16u32.to_ne_bytes().to_vec();
        done.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        done.extend_from_slice(&[0, 0]);
        done.extend_from_slice(&1u32.to_ne_bytes());
        done.extend_from_slice(&[0; 4]);
        let answer = read_answer(&done, 1, 5678).expect("done");
        assert_eq!(
            answer,
            Answer {
                found: false,
                done: true
            }
        );
        // A DONE of another request is not ours.
        assert!(!read_answer(&done, 2, 5678).expect("other").done);
    }
}
