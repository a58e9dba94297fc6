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
    let cases: Vec<(&str, Write, Instant, Option<&str>)> = vec![
        ("written", Box::pin(async { Ok(()) }), far, None),
        (
            "broken pipe",
            Box::pin(async { Err(std::io::ErrorKind::BrokenPipe.into()) }),
            far,
            Some("write failed"),
        ),
        (
            "relay never takes the frame",
            Box::pin(std::future::pending()),
            soon,
            Some("took no control frame"),
        ),
    ];
    for (name, write, silent_at, want) in cases {
        let started = Instant::now();
        let got = tokio::time::timeout(DEADLINE, control_write(write, silent_at))
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
