//! A tunnel that breaks reaches the programs at its ends as a reset, never as the clean
//! end of a stream: a debugger or a target that reads EOF takes a cut stream for a whole
//! one. Each case breaks one part (the target, the client, `relay listen`, `relay serve`)
//! in the middle of a stream and reads what the other end gets.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd as _;
use std::sync::mpsc;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::harness::*;

/// How one end's stream ended after the bytes it got.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// Read to a clean end (FIN).
    Eof,
    /// Reset, or refused as broken.
    Reset,
    /// Something else (a timeout is a hang: the worst outcome).
    Other(ErrorKind),
}

/// Reads `stream` to its end, bounded by [`DEADLINE`].
fn ending(stream: &mut TcpStream) -> (Vec<u8>, Ending) {
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut got = Vec::new();
    let end = match stream.read_to_end(&mut got) {
        Ok(_) => Ending::Eof,
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
            Ending::Reset
        }
        Err(e) => Ending::Other(e.kind()),
    };
    (got, end)
}

/// Closes `stream` with a reset (SO_LINGER 0), the way a crashing program's kernel or a
/// firewall ends it.
fn reset(stream: TcpStream) {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&stream.as_fd(), nix::sys::socket::sockopt::Linger, &linger)
        .expect("SO_LINGER");
    drop(stream);
}

/// What breaks, in the middle of a stream both ends have used.
#[derive(Debug, Clone, Copy)]
enum Break {
    /// The target resets its connection.
    TargetResets,
    /// The local client of `relay connect` resets its connection.
    ClientResets,
    /// `relay listen` is killed (-9).
    ListenKilled,
    /// `relay connect` is killed (-9).
    ConnectKilled,
    /// `relay serve` is killed (-9).
    RelayKilled,
    /// No break: the target ends its stream in order (the control case).
    TargetCloses,
}

#[test]
fn a_broken_tunnel_reaches_both_ends_as_a_reset() {
    // (what breaks, what the client gets, what the target gets)
    let cases = [
        (Break::TargetResets, Some(Ending::Reset), None),
        (Break::ClientResets, None, Some(Ending::Reset)),
        // The killed process's own local connection is reset by the kernel too: it is
        // armed to reset while a tunnel carries it.
        (
            Break::ListenKilled,
            Some(Ending::Reset),
            Some(Ending::Reset),
        ),
        (
            Break::ConnectKilled,
            Some(Ending::Reset),
            Some(Ending::Reset),
        ),
        (Break::RelayKilled, Some(Ending::Reset), Some(Ending::Reset)),
        (Break::TargetCloses, Some(Ending::Eof), None),
    ];
    for (what, client_gets, target_gets) in cases {
        let mut relay = Relay::start();
        let (targets, target_conns) = mpsc::channel::<TcpStream>();
        let target = serve_each(move |s| {
            let _ = targets.send(s);
        });
        let cs = relay.connection_string(KEY_BOTH, "breaks");
        let mut listen = relay.listen_online(
            &cs,
            &["--forward", &format!("t=127.0.0.1:{}", target.port())],
        );
        let (mut connect, addr) = relay.connect(&cs, "t");
        let logs = |relay: &Relay, listen: &Proc, connect: &Proc| {
            format!(
                "{what:?}\nrelay:\n{}\nlisten:\n{}\nconnect:\n{}",
                relay.proc.dump(),
                listen.dump(),
                connect.dump()
            )
        };

        // Both directions carry bytes before the break.
        let mut client = TcpStream::connect(addr).expect("connect to relay connect");
        client.write_all(b"request").expect("client writes");
        let mut first_at_target = target_conns.recv_timeout(DEADLINE).unwrap_or_else(|_| {
            panic!(
                "the target got no connection: {}",
                logs(&relay, &listen, &connect)
            )
        });
        let mut request = [0u8; 7];
        first_at_target
            .set_read_timeout(Some(DEADLINE))
            .expect("timeout");
        first_at_target
            .read_exact(&mut request)
            .expect("target reads");
        assert_eq!(&request, b"request");
        first_at_target
            .write_all(b"partial")
            .expect("target writes");
        let mut partial = [0u8; 7];
        client.set_read_timeout(Some(DEADLINE)).expect("timeout");
        client.read_exact(&mut partial).expect("client reads");
        assert_eq!(&partial, b"partial");
        // Owned here so that a reset closes the socket itself, not a duplicate of it.
        let (mut client, mut at_target) = (Some(client), Some(first_at_target));

        match what {
            Break::TargetResets => reset(at_target.take().expect("the target's connection")),
            Break::ClientResets => reset(client.take().expect("the client's connection")),
            Break::ListenKilled => listen.kill(),
            Break::ConnectKilled => connect.kill(),
            Break::RelayKilled => {
                let pid = Pid::from_raw(relay.proc.child.id() as i32);
                kill(pid, Signal::SIGKILL).expect("kill relay serve");
                let _ = relay.proc.child.wait();
            }
            Break::TargetCloses => {
                at_target
                    .as_ref()
                    .expect("the target's connection")
                    .shutdown(std::net::Shutdown::Write)
                    .expect("target half-closes");
            }
        }
        if let Some(want) = client_gets {
            let (rest, got) = ending(client.as_mut().expect("the client's connection"));
            assert!(rest.is_empty(), "{what:?}: more bytes: {rest:?}");
            assert_eq!(got, want, "the client: {}", logs(&relay, &listen, &connect));
        }
        if let Some(want) = target_gets {
            let (rest, got) = ending(at_target.as_mut().expect("the target's connection"));
            assert!(rest.is_empty(), "{what:?}: more bytes: {rest:?}");
            assert_eq!(got, want, "the target: {}", logs(&relay, &listen, &connect));
        }
        // A break ends one tunnel, never a client: the next connection still works (not
        // after the relay itself was killed).
        if !matches!(
            what,
            Break::RelayKilled | Break::ListenKilled | Break::ConnectKilled
        ) {
            let echo_back = TcpStream::connect(addr).and_then(|mut s| {
                s.write_all(b"again")?;
                Ok(s)
            });
            let mut next = echo_back.expect("a new connection");
            let mut at_target = target_conns.recv_timeout(DEADLINE).unwrap_or_else(|_| {
                panic!("no second connection: {}", logs(&relay, &listen, &connect))
            });
            at_target.set_read_timeout(Some(DEADLINE)).expect("timeout");
            let mut again = [0u8; 5];
            at_target.read_exact(&mut again).expect("second request");
            at_target.write_all(b"fine").expect("answer");
            at_target
                .shutdown(std::net::Shutdown::Write)
                .expect("half-close");
            let (back, end) = ending(&mut next);
            assert_eq!(
                (back.as_slice(), end),
                (&b"fine"[..], Ending::Eof),
                "{what:?}"
            );
        }
        drop(connect);
    }
}
