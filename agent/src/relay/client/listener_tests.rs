//! The listener against an in-process `relay serve`: the cap on concurrent tunnels.

use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

use super::*;
use crate::config::{Secret, ServerKey, ServerSettings};
use crate::relay::client::sender;
use crate::relay::connection_string::{ConnectionString, Transport};
use crate::relay::sas::Right;
use crate::relay::server;

/// Bound for every wait in these tests.
const DEADLINE: Duration = Duration::from_secs(20);
const HC: &str = "capped";
const KEY_NAME: &str = "both";
const KEY: &str = "Y2FwcGVkLWxpc3RlbmVyLWtleQ==";

/// A relay on 127.0.0.1:0 and an endpoint for it.
async fn relay(shutdown: &CancellationToken) -> Arc<Endpoint> {
    let config = ServerSettings {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        insecure_ws: true,
        keys: vec![ServerKey {
            name: KEY_NAME.to_owned(),
            key: Secret::new(KEY),
            rights: vec![Right::Listen, Right::Send],
            paths: vec![HC.to_owned()],
            max_connections: None,
        }],
        ..ServerSettings::default()
    };
    let settings = server::Settings::from_config(&config).expect("valid relay settings");
    let listener = TcpListener::bind(config.listen).await.expect("bind");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(server::run(listener, settings, shutdown.clone()));
    let connection: ConnectionString = format!(
        "Endpoint=sb://{addr}/;SharedAccessKeyName={KEY_NAME};SharedAccessKey={KEY};EntityPath={HC}"
    )
    .parse()
    .expect("connection string");
    Arc::new(Endpoint::new(connection, None, Transport::InsecureWs, None).expect("endpoint"))
}

/// Accepts everyone and holds each tunnel until `release` is notified.
#[derive(Debug)]
struct Holder {
    online: mpsc::UnboundedSender<()>,
    release: Arc<Notify>,
}

impl AcceptHandler for Holder {
    fn decide(&self, _accept: &Accept) -> Decision {
        Decision::Accept
    }

    async fn handle(self: Arc<Self>, tunnel: Tunnel, _accept: Accept) {
        self.release.notified().await;
        tunnel.finish(close_code::NORMAL, "").await;
    }

    fn online(&self) {
        let _ = self.online.send(());
    }
}

#[tokio::test]
async fn senders_over_the_cap_are_rejected_at_once_and_admitted_when_a_slot_frees() {
    let shutdown = CancellationToken::new();
    let endpoint = relay(&shutdown).await;
    let (online, mut came_online) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let handler = Arc::new(Holder {
        online,
        release: Arc::clone(&release),
    });
    let listening = tokio::spawn(run_with_cap(
        Arc::clone(&endpoint),
        handler,
        shutdown.clone(),
        1,
    ));
    tokio::time::timeout(DEADLINE, came_online.recv())
        .await
        .expect("listener online in time");

    let first = tokio::time::timeout(DEADLINE, sender::connect(&endpoint, None))
        .await
        .expect("first sender in time")
        .expect("the first sender takes the one slot");
    let second = tokio::time::timeout(DEADLINE, sender::connect(&endpoint, None))
        .await
        .expect("an over-cap sender is answered, not queued");
    let err = second.expect_err("no second slot");
    assert_eq!(err.status(), Some(BUSY_STATUS), "{err}");

    // The held tunnel ends; its slot is free again.
    release.notify_one();
    drop(first);
    let admitted = tokio::time::timeout(DEADLINE, async {
        loop {
            match sender::connect(&endpoint, None).await {
                Ok(tunnel) => break tunnel,
                Err(e) if e.status() == Some(BUSY_STATUS) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("unexpected refusal: {e}"),
            }
        }
    })
    .await
    .expect("a freed slot admits the next sender");
    release.notify_one();
    drop(admitted);
    shutdown.cancel();
    let _ = tokio::time::timeout(DEADLINE, listening).await;
}

#[tokio::test]
async fn control_writes_end_by_the_silence_deadline_whatever_the_write_does() {
    type Write = std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;
    let far = Instant::now() + Duration::from_secs(3600);
    let soon = Instant::now() + Duration::from_millis(100);
    let stopped = CancellationToken::new();
    stopped.cancel();
    let running = CancellationToken::new();
    let cases: Vec<(&str, Write, Instant, &CancellationToken, Option<&str>)> = vec![
        ("written", Box::pin(async { Ok(()) }), far, &running, None),
        (
            "broken pipe",
            Box::pin(async { Err(std::io::ErrorKind::BrokenPipe.into()) }),
            far,
            &running,
            Some("write failed"),
        ),
        (
            "relay never takes the frame",
            Box::pin(std::future::pending()),
            soon,
            &running,
            Some("took no control frame"),
        ),
        (
            "relay never takes the frame, and a shutdown is asked for",
            Box::pin(std::future::pending()),
            far,
            &stopped,
            Some("shutting down"),
        ),
    ];
    for (name, write, silent_at, shutdown, want) in cases {
        let started = Instant::now();
        let got = tokio::time::timeout(DEADLINE, control_write(write, silent_at, shutdown))
            .await
            .unwrap_or_else(|_| panic!("{name}: control_write outlived its deadline"));
        match (got, want) {
            (Ok(()), None) => {}
            (Err(why), Some(want)) => assert!(why.contains(want), "{name}: {why}"),
            (got, want) => panic!("{name}: got {got:?}, wanted {want:?}"),
        }
        assert!(started.elapsed() < CONTROL_WRITE_TIMEOUT, "{name}");
    }
}

/// A relay that answers the control channel's upgrade, then floods Pings and never reads:
/// the listener's Pongs fill the socket and its write stalls. A shutdown asked for then
/// must end the listener within the goodbye bound, not wait out the write bound (it took
/// 9.4 s).
#[tokio::test]
async fn a_shutdown_ends_the_listener_while_the_relay_takes_no_frame() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let relay = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = relay.local_addr().expect("bound");
    let stop_flood = CancellationToken::new();
    // Notified once a Ping has waited this long to be written: the listener has stopped
    // reading, stuck itself in writing a Pong nobody takes.
    const STALLED: Duration = Duration::from_millis(300);
    let stalled = Arc::new(Notify::new());
    let flood = {
        let stop_flood = stop_flood.clone();
        let stalled = Arc::clone(&stalled);
        tokio::spawn(async move {
            let (mut socket, _) = relay.accept().await.expect("the listener connects");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
                socket.read_exact(&mut byte).await.expect("request head");
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let key = head
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .expect("a WebSocket key")
                .trim()
                .to_owned();
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            socket.write_all(answer.as_bytes()).await.expect("101");
            // Unmasked server Pings with the largest control payload, never reading the
            // Pongs; bounded by the test's end and a count.
            let mut ping = vec![0x89, 125];
            ping.extend([b'p'; 125]);
            let mut told = false;
            for _ in 0..1_000_000 {
                let write = socket.write_all(&ping);
                tokio::pin!(write);
                let written = tokio::select! {
                    written = &mut write => written,
                    () = tokio::time::sleep(STALLED), if !told => {
                        told = true;
                        stalled.notify_one();
                        tokio::select! {
                            written = &mut write => written,
                            () = stop_flood.cancelled() => break,
                        }
                    }
                    () = stop_flood.cancelled() => break,
                };
                if written.is_err() {
                    break;
                }
            }
            drop(socket);
        })
    };
    let connection: ConnectionString = format!(
        "Endpoint=sb://{addr}/;SharedAccessKeyName={KEY_NAME};SharedAccessKey={KEY};EntityPath={HC}"
    )
    .parse()
    .expect("connection string");
    let endpoint =
        Arc::new(Endpoint::new(connection, None, Transport::InsecureWs, None).expect("endpoint"));
    let (online, mut came_online) = mpsc::unbounded_channel();
    let handler = Arc::new(Holder {
        online,
        release: Arc::new(Notify::new()),
    });
    let shutdown = CancellationToken::new();
    let listening = tokio::spawn(run_with_cap(endpoint, handler, shutdown.clone(), 1));
    tokio::time::timeout(DEADLINE, came_online.recv())
        .await
        .expect("listener online in time");
    // The Pongs filled both socket buffers: the listener's write is stalled.
    tokio::time::timeout(DEADLINE, stalled.notified())
        .await
        .expect("the listener stops reading once its Pongs are not taken");
    let asked = Instant::now();
    shutdown.cancel();
    let ended = tokio::time::timeout(DEADLINE, listening)
        .await
        .expect("the listener ends after a shutdown");
    let took = asked.elapsed();
    stop_flood.cancel();
    let _ = tokio::time::timeout(DEADLINE, flood).await;
    assert!(ended.expect("no panic").is_ok());
    assert!(
        took < CONTROL_WRITE_TIMEOUT / 2,
        "the shutdown took {took:?}, as long as a stalled control write"
    );
}
