//! Refusals reach the user as one line naming the cause and the fix.

use std::io::{Read, Write};
use std::net::TcpStream;

use amlx_agent::config::Secret;
use amlx_agent::relay::{protocol, sas};

use super::harness::*;
use crate::util;

/// Runs `relay listen` expecting it to give up; returns its error line.
fn listen_fails(relay: &Relay, cs: &str) -> String {
    let mut p = relay.listen(cs, &["--ports", "5678"]);
    let status = p.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", p.dump());
    p.stderr
        .wait_for("amlx-agent: error:")
        .unwrap_or_else(|| panic!("no error line:\n{}", p.dump()))
}

/// Opens a local connection through `relay connect` and returns the error line it logs.
fn connect_fails(relay: &Relay, cs: &str, needle: &str) -> String {
    let (p, addr) = relay.connect(cs, "5678");
    let mut s = TcpStream::connect(addr).expect("connect locally");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        got.is_empty(),
        "nothing may arrive through a refused tunnel"
    );
    p.stderr
        .wait_for(needle)
        .unwrap_or_else(|| panic!("no {needle:?} line:\n{}", p.dump()))
}

#[test]
fn bad_signature_is_401() {
    let relay = Relay::start();
    let cs = relay.connection_string(("both", "not-the-key"), "hc");
    let line = listen_fails(&relay, &cs);
    assert!(
        line.contains("401 Unauthorized")
            && line.contains("check SharedAccessKeyName/SharedAccessKey"),
        "{line}"
    );
    let line = connect_fails(&relay, &cs, "401 Unauthorized");
    assert!(line.contains("check SharedAccessKeyName"), "{line}");
}

#[test]
fn expired_token_is_401() {
    let relay = Relay::start();
    let token = sas::sign(
        "http://127.0.0.1/hc/",
        KEY_BOTH.0,
        &Secret::new(KEY_BOTH.1),
        1,
    )
    .expect("sign");
    let cs = format!(
        "Endpoint=sb://127.0.0.1:{}/;SharedAccessSignature={};EntityPath=hc",
        relay.addr.port(),
        token.expose()
    );
    let line = listen_fails(&relay, &cs);
    assert!(line.contains("401 Unauthorized"), "{line}");
}

#[test]
fn send_only_key_cannot_listen_403() {
    let relay = Relay::start();
    let line = listen_fails(&relay, &relay.connection_string(KEY_SEND, "hc"));
    assert!(
        line.contains("403 Forbidden") && line.contains("Listen right"),
        "{line}"
    );
    let line = connect_fails(
        &relay,
        &relay.connection_string(KEY_LISTEN, "hc"),
        "403 Forbidden",
    );
    assert!(line.contains("Send right"), "{line}");
}

#[test]
fn no_listener_is_404_with_the_service_text() {
    let relay = Relay::start();
    let line = connect_fails(
        &relay,
        &relay.connection_string(KEY_BOTH, "nobody"),
        "404 Not Found",
    );
    assert!(line.contains(protocol::NO_LISTENER_TEXT), "{line}");
    assert!(line.contains("start `amlx-agent relay listen`"), "{line}");
}

#[test]
fn listener_reject_403_reaches_the_sender_and_the_reject_gets_410() {
    let relay = Relay::start();
    let cs = relay.connection_string(KEY_BOTH, "picky");
    // Loopback senders are outside the allowed network: the listener rejects with 403.
    let listener = relay.listen_online(
        &cs,
        &["--ports", "5678", "--allow-remote", "10.255.255.255/32"],
    );
    let line = connect_fails(&relay, &cs, "403 Forbidden");
    assert!(line.contains("not allowed by this listener"), "{line}");
    // "rejected sender" is only logged when the reject rendezvous was answered with 410.
    listener
        .stderr
        .wait_for("rejected sender")
        .unwrap_or_else(|| panic!("{}", listener.dump()));
}

#[test]
fn unknown_connection_string_key_is_named_and_secrets_are_not_echoed() {
    let mut cmd = util::agent();
    cmd.args(["relay", "listen", "--ports", "5678", "--insecure-ws"]).env(
        "AMLX_RELAY_CONNECTION_STRING",
        "Endpoint=sb://127.0.0.1:1/;SharedAccessKeyName=n;SharedAccessKey=TopSecretValue;Colour=blue",
    );
    let out = cmd.output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("unknown connection string key \"Colour\""),
        "{stderr}"
    );
    assert!(!stderr.contains("TopSecretValue"), "{stderr}");
}

#[test]
fn credentials_never_come_from_argv_and_plain_ws_only_to_loopback() {
    let out = util::agent()
        .args(["relay", "connect", "--hc", "x"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no relay credentials: set AMLX_RELAY_CONNECTION_STRING"),
        "{stderr}"
    );

    let out = util::agent()
        .args(["relay", "connect", "--insecure-ws"])
        .env(
            "AMLX_RELAY_CONNECTION_STRING",
            "Endpoint=sb://relay.example:9443/;SharedAccessKeyName=n;SharedAccessKey=k;EntityPath=hc",
        )
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("only allowed to a loopback relay"),
        "{stderr}"
    );
}

#[test]
fn connection_string_file_is_read_and_loose_permissions_warned() {
    use std::os::unix::fs::PermissionsExt as _;
    let relay = Relay::start();
    let file = relay.dir().join("cs.txt");
    std::fs::write(
        &file,
        format!("{}\n", relay.connection_string(KEY_BOTH, "filehc")),
    )
    .expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut cmd = util::agent();
    cmd.args([
        "relay",
        "listen",
        "--insecure-ws",
        "--ports",
        "5678",
        "--connection-string-file",
    ])
    .arg(&file)
    .env("NO_COLOR", "1")
    .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let stderr = child.stderr.take().expect("piped");
    let lines = std::io::BufReader::new(stderr);
    let mut seen = Vec::new();
    use std::io::BufRead as _;
    for line in lines.lines() {
        let line = line.expect("utf-8");
        let online = line.contains("listener online");
        seen.push(line);
        if online {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = seen.join("\n");
    assert!(
        text.contains("readable by group or others; chmod 600"),
        "{text}"
    );
    assert!(text.contains("listener online"), "{text}");
}

#[test]
fn sas_vectors_from_the_design_doc() {
    let key = Secret::new("SGVsbG9Xb3JsZEtleUZvclRlc3RpbmdPbmx5IQ==");
    let cases = [
        (
            "http://contoso.servicebus.windows.net/hyco/",
            "V2vY/GGpVAbOe3TOt+FANHiotMuW/1qhr7k4tXr1/3I=",
        ),
        (
            "http://contoso.servicebus.windows.net/hyco",
            "ReBn5R+BmoZRfuQ+hznjk77QqFCm40bsUISudBOqzZU=",
        ),
    ];
    for (uri, sig) in cases {
        assert_eq!(sas::signature(uri, &key, 1_700_000_000), sig, "{uri}");
        assert_ne!(sig, "+YqzGWp4u+wBLg7i1zQ9G1iMmAba79GQZvsU8xEfOE4=");
    }
}

/// A relay's own text (an accept's id and sender address, a malformed control message
/// quoting itself, an error body) goes into the client's log escaped and short: a hostile
/// relay cannot forge a line of it, steer the terminal, or pour megabytes into it.
#[test]
fn a_hostile_relay_cannot_forge_or_flood_the_listeners_log() {
    use tokio_tungstenite::tungstenite::{Message, accept};
    const FORGED: &str = "2026-01-01T00:00:00Z ERROR forged";
    // With the address, the id opens the rendezvous: the log shows its first 8 characters.
    const RENDEZVOUS_ID: &str = "opens-the-rendezvous-0123456789";
    let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = server.local_addr().expect("addr");
    let relay = std::thread::spawn(move || {
        let (tcp, _) = server.accept().expect("the listener connects");
        let mut ws = accept(tcp).expect("upgrade");
        let accept_msg = serde_json::json!({"accept": {
            "address": "ws://127.0.0.1:9/$hc/hc?sb-hc-action=accept&sb-hc-id=x",
            "id": format!("{RENDEZVOUS_ID}\n{FORGED}\u{1b}[2J"),
            "connectHeaders": {},
            "remoteEndpoint": {"address": format!("\r\n{FORGED}\u{202e}"), "port": 1},
        }});
        ws.send(Message::Text(accept_msg.to_string().into()))
            .expect("send accept");
        let huge = format!(
            "{{\"accept\": {{\"id\": 1, \"x\": \"{}\"}}}}",
            "y".repeat(300_000)
        );
        ws.send(Message::Text(huge.into()))
            .expect("send a malformed message");
        // Hold the control channel until the test is done reading the log.
        std::thread::sleep(std::time::Duration::from_secs(5));
    });
    let cs = format!(
        "Endpoint=sb://{addr}/;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0;EntityPath=hc"
    );
    let listener = listen_without_relay(&cs, &["--forward", "x=127.0.0.1:9"]);
    listener
        .stderr
        .wait_for("malformed control message")
        .unwrap_or_else(|| panic!("no warning:\n{}", listener.dump()));
    // The accept's rendezvous (port 9: refused) fails with a line in the accept's span.
    let _ = listener.stderr.wait_for("rendezvous");
    let log = listener.dump();
    assert!(log.contains("id=opens-th"), "{log}");
    assert!(
        !log.contains("opens-the-"),
        "the whole id is logged:\n{log}"
    );
    for line in log.lines() {
        assert!(!line.starts_with(FORGED), "a forged line:\n{log}");
        assert!(!line.contains(['\u{1b}', '\r', '\u{202e}']), "{line:?}");
        assert!(line.len() < 2000, "a line of {} bytes", line.len());
    }
    drop(listener);
    relay.join().expect("fake relay");
}

/// A relay that sends, as fast as it can, control messages that do not parse and accepts
/// naming an address nobody listens on. Each kind is logged once, then at most once per
/// interval with a count: before, `relay listen` wrote a line for every one (60 MB of log a
/// second). The rendezvous failure names the relay's accept message, not the connection
/// string, as the place the address came from.
#[test]
fn a_relay_flooding_the_control_channel_gets_a_line_per_kind_not_per_message() {
    use tokio_tungstenite::tungstenite::{Message, accept};
    const MALFORMED: usize = 5000;
    const ACCEPTS: usize = 2000;
    let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = server.local_addr().expect("addr");
    let relay = std::thread::spawn(move || {
        let (tcp, _) = server.accept().expect("the listener connects");
        // Bounds the reads below: a listener that never answers fails the test, not hangs it.
        tcp.set_read_timeout(Some(util::DEADLINE))
            .expect("read timeout");
        let mut ws = accept(tcp).expect("upgrade");
        for _ in 0..MALFORMED {
            ws.write(Message::Text("{not json".into()))
                .expect("queue a malformed message");
        }
        for n in 0..ACCEPTS {
            let accept_msg = serde_json::json!({"accept": {
                "address": format!("ws://127.0.0.1:9/$hc/hc?sb-hc-action=accept&sb-hc-id={n}"),
                "id": n.to_string(),
                "connectHeaders": {},
                "remoteEndpoint": {"address": "10.0.0.1", "port": 1},
            }});
            ws.write(Message::Text(accept_msg.to_string().into()))
                .expect("queue an accept");
        }
        ws.flush().expect("send the flood");
        // The listener has read everything once it answers the Close.
        ws.close(None).expect("close");
        while ws.read().is_ok() {}
    });
    let cs = format!(
        "Endpoint=sb://{addr}/;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0;EntityPath=hc"
    );
    let listener = listen_without_relay(&cs, &["--forward", "x=127.0.0.1:9"]);
    listener
        .stderr
        .wait_for("listener offline")
        .unwrap_or_else(|| panic!("the flood never ended:\n{}", listener.dump()));
    relay.join().expect("fake relay");
    // Every message was read before the Close was answered.
    let log = listener.stderr.all();
    let count = |needle: &str| log.iter().filter(|l| l.contains(needle)).count();
    let head = format!(
        "{} lines, the first: {:#?}",
        log.len(),
        &log[..log.len().min(20)]
    );
    assert_eq!(count("malformed control message"), 1, "{head}");
    assert!(count("rendezvous failed") <= 2, "{head}");
    assert!(count("ignoring the sender") <= 2, "{head}");
    assert!(count("rejecting the sender") <= 2, "{head}");
    assert!(log.len() < 40, "{head}");
    let rendezvous = listener
        .stderr
        .wait_for("rendezvous failed")
        .unwrap_or_else(|| panic!("no rendezvous line:\n{}", listener.dump()));
    assert!(
        rendezvous.contains("the relay named it in its accept message")
            && !rendezvous.contains("connection string"),
        "{rendezvous}"
    );
}

/// A sender with the Send right opening tunnels with every kind of bad preamble (an
/// unknown version, a port name nobody forwards, UDP, nothing at all), as fast as the
/// relay takes them: `relay listen` logs each kind once, then at most once per interval
/// with a count. Before, every tunnel wrote a warning (1,100 lines a second), and the
/// listener still serves a good sender afterwards.
#[test]
fn a_sender_flooding_bad_preambles_gets_a_line_per_kind_not_per_tunnel() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::{Message, client};
    const EACH: usize = 40;
    let relay = Relay::start();
    let cs = relay.connection_string(KEY_BOTH, "flood");
    let echo = echo_server();
    let listener = relay.listen_online(&cs, &["--forward", &format!("echo={echo}")]);
    let token = relay.token(KEY_SEND, "flood");
    let preambles: [&[u8]; 4] = [
        &[9, 9, 9],              // an unknown version
        b"\x01\x00\x00\x04nope", // a port name nobody forwards
        b"\x01\x00\x01\x04echo", // UDP
        &[],                     // nothing: the sender closes at once
    ];
    for _ in 0..EACH {
        for preamble in preambles {
            let url = format!(
                "ws://127.0.0.1:{}/$hc/flood?sb-hc-action=connect",
                relay.addr.port()
            );
            let mut request = url.into_client_request().expect("request");
            request.headers_mut().insert(
                "ServiceBusAuthorization",
                HeaderValue::from_str(token.expose()).expect("header"),
            );
            let tcp = TcpStream::connect(relay.addr).expect("connect");
            tcp.set_read_timeout(Some(DEADLINE)).expect("timeout");
            let (mut ws, _) = client(request, tcp).expect("the listener accepts the sender");
            if !preamble.is_empty() {
                ws.send(Message::Binary(preamble.to_vec().into()))
                    .expect("send the preamble");
            }
            ws.close(None).expect("close");
            // Until the listener's Close (or the end): the tunnel is over on both sides.
            while ws.read().is_ok() {}
        }
    }
    // The listener is still there for a good sender.
    let (_connect, addr) = relay.connect(&cs, "echo");
    let data = random_bytes(1024);
    let back = round_trip(addr, &data).unwrap_or_default();
    assert_eq!(sha256(&back), sha256(&data), "{}", listener.dump());
    let log = listener.stderr.all();
    let count = |needle: &str| log.iter().filter(|l| l.contains(needle)).count();
    let head = format!("{} lines:\n{}", log.len(), listener.dump());
    for needle in [
        "unknown preamble version",
        "port name not in the forward list",
        "UDP asked for a TCP forward",
    ] {
        // Once, or twice when the flood outlasted one throttle interval on a slow machine.
        assert!((1..=2).contains(&count(needle)), "{needle}: {head}");
    }
    assert!(log.len() < 30, "{head}");
}

/// A relay that holds as many listeners as it allows on a Hybrid Connection answers 403
/// "quota exceeded": `relay listen` keeps trying (it used to exit, told to use a key with
/// the Listen right), and comes online once a place frees.
#[test]
fn a_full_relay_is_waited_out_not_taken_for_a_missing_right() {
    let relay = Relay::start_with("max_listeners_per_path = 1");
    let cs = relay.connection_string(KEY_BOTH, "full");
    let mut first = relay.listen_online(&cs, &["--ports", "5678"]);
    let mut second = relay.listen(&cs, &["--ports", "5679"]);
    let line = second
        .stderr
        .wait_for("listener offline")
        .unwrap_or_else(|| panic!("{}", second.dump()));
    assert!(
        line.contains("is full (403 quota exceeded") && line.contains("reconnecting in"),
        "{line}"
    );
    assert!(!line.contains("Listen right"), "{line}");
    assert!(
        second.child.try_wait().expect("try_wait").is_none(),
        "relay listen exited:\n{}",
        second.dump()
    );
    first.kill();
    // The backoff's first steps are 0, 1 and 2 s: well inside the deadline.
    assert!(
        second.stderr.wait_for("listener online").is_some(),
        "{}",
        second.dump()
    );
}

/// A `relay listen` that is stopped (SIGSTOP: its sockets still take bytes) is dropped by
/// the relay once it leaves the Ping after an accept unanswered, and its sender goes to
/// the other listener of the Hybrid Connection. Before, that sender waited out the
/// rendezvous timeout (30 s) for a 504, and so did every later one the relay picked it for.
#[test]
fn a_stopped_listener_is_dropped_and_its_senders_served_by_another() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let relay = Relay::start_with("listener_answer_timeout = \"1s\"");
    let echo = echo_server();
    let cs = relay.connection_string(KEY_BOTH, "stopped");
    let forward = format!("e=127.0.0.1:{}", echo.port());
    let mut stopped = relay.listen_online(&cs, &["--forward", &forward]);
    let _working = relay.listen_online(&cs, &["--forward", &forward]);
    let pid = Pid::from_raw(stopped.child.id() as i32);
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let (connect, addr) = relay.connect(&cs, "e");
    // The relay picks a listener at random: twelve connections all but surely try the
    // stopped one.
    for round in 0..12 {
        let back = round_trip(addr, b"ping").unwrap_or_default();
        assert_eq!(
            back,
            b"ping",
            "#{round}\nrelay:\n{}\nconnect:\n{}",
            relay.proc.dump(),
            connect.dump()
        );
    }
    relay.wait_logged("listener disconnected: Unresponsive");
    // Woken, it finds its control channel gone and comes back.
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    let (first, _) = stopped
        .stderr
        .wait_for_from(0, "listener online", DEADLINE)
        .expect("online once");
    let online = stopped
        .stderr
        .wait_for_from(first + 1, "listener online", DEADLINE)
        .is_some();
    assert!(online, "{}", stopped.dump());
    stopped.kill();
}

/// A `relay listen` at its `--max-tunnels` refuses a further sender with 503, and the
/// sender's log says it was the listener's limit and what to do (it read as the relay's
/// fault before: "the listener serves as many connections as it can").
#[test]
fn a_listener_at_its_tunnel_limit_says_so_to_the_sender() {
    let relay = Relay::start();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    // The target holds each connection open until the test ends.
    let target = serve_each(move |s| {
        let _ = held_tx.send(s);
    });
    let cs = relay.connection_string(KEY_BOTH, "busy");
    let _listener = relay.listen_online(
        &cs,
        &[
            "--forward",
            &format!("t=127.0.0.1:{}", target.port()),
            "--max-tunnels",
            "1",
        ],
    );
    let (connect, addr) = relay.connect(&cs, "t");
    let mut first = TcpStream::connect(addr).expect("connect");
    first.write_all(b"hold").expect("write");
    let _held = held_rx
        .recv_timeout(DEADLINE)
        .expect("the first tunnel reached the target");
    let second = round_trip(addr, b"x").unwrap_or_default();
    assert!(second.is_empty(), "{second:?}");
    let line = connect
        .stderr
        .wait_for("503 Service Unavailable")
        .unwrap_or_else(|| panic!("{}", connect.dump()));
    assert!(
        line.contains("as many relayed connections as it is allowed (--max-tunnels"),
        "{line}"
    );
}

/// `relay serve` warns when its config file, which holds its keys, may be read by group or
/// others (anyone who reads a key can sign tokens for the relay); not when it is 0600.
#[test]
fn relay_serve_warns_about_keys_others_may_read() {
    use std::os::unix::fs::PermissionsExt as _;
    const WARNING: &str = "holds the relay's keys, ";
    let mut relay = Relay::start();
    for (mode, warned) in [(0o644, true), (0o600, false)] {
        let config = relay.dir().join("relay.toml");
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(mode)).expect("chmod");
        relay = relay.restart();
        // The warning comes before the line that says the relay listens.
        let lines = relay.proc.stderr.all();
        let warning = lines.iter().find(|l| l.contains(WARNING));
        assert_eq!(warning.is_some(), warned, "{mode:o}:\n{}", lines.join("\n"));
        if let Some(line) = warning {
            assert!(line.contains("chmod 600 it"), "{line}");
        }
    }
}

/// A listener that stops while idle (SIGSTOP, no sender coming) holds the path's only
/// place under `max_listeners_per_path`: the relay Pings a silent listener, drops it when
/// it does not answer, and the listener waiting on the quota comes online. Before, the
/// stopped one kept the place until a sender's connection was lost on it.
#[test]
fn a_listener_stopped_while_idle_gives_up_its_place() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let relay = Relay::start_with(
        "max_listeners_per_path = 1\nlistener_ping_interval = \"3s\"\nlistener_answer_timeout = \"1s\"",
    );
    let cs = relay.connection_string(KEY_BOTH, "idle");
    let stopped = relay.listen_online(&cs, &["--ports", "5678"]);
    let pid = Pid::from_raw(stopped.child.id() as i32);
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let waiting = relay.listen(&cs, &["--ports", "5679"]);
    assert!(
        waiting.stderr.wait_for("quota exceeded").is_some(),
        "{}",
        waiting.dump()
    );
    assert!(
        waiting.stderr.wait_for("listener online").is_some(),
        "the place was never freed:\nwaiting:\n{}\nrelay:\n{}",
        waiting.dump(),
        relay.proc.dump()
    );
    relay.wait_logged("listener disconnected: Unresponsive");
    let _ = kill(pid, Signal::SIGCONT);
}

/// `--ca-file` with plain ws (`--insecure-ws`) has nothing to verify: said, not silently
/// ignored.
#[test]
fn a_ca_file_without_tls_is_said_to_be_unused() {
    let relay = Relay::start();
    let cs = relay.connection_string(KEY_BOTH, "plain");
    let (connect, _addr) = relay.connect_with(&cs, "p", &["--ca-file", "/dev/zero"]);
    let line = connect
        .stderr
        .wait_for("is not used")
        .unwrap_or_else(|| panic!("{}", connect.dump()));
    assert!(
        line.contains("/dev/zero") && line.contains("--insecure-ws"),
        "{line}"
    );
}

/// `relay connect` and `relay serve` listen with a backlog of 4096 (the kernel may cap it
/// at somaxconn), not the standard library's 128: past `--max-tunnels` relay connect stops
/// accepting, and a burst over 128 overflowed the queue, where a client that wrote and
/// closed at once lost its bytes silently. `ss` (iproute2) shows a listener's backlog as
/// its Send-Q.
#[test]
fn relay_connect_and_serve_keep_a_deep_accept_queue() {
    let relay = Relay::start();
    let cs = relay.connection_string(KEY_BOTH, "backlog");
    let (_connect, addr) = relay.connect(&cs, "p");
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    let want = somaxconn.min(4096);
    for (what, port) in [
        ("relay connect", addr.port()),
        ("relay serve", relay.addr.port()),
    ] {
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{port}")])
            .output()
            .expect("ss (iproute2; tests/run.sh installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        // State Recv-Q Send-Q Local Peer: for a listener Send-Q is the backlog.
        let backlog: Option<u32> = text
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|q| q.parse().ok());
        assert_eq!(backlog, Some(want), "{what} on port {port}: {text}");
    }
}
