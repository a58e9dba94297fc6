//! `relay listen` survives a relay restart on the documented backoff schedule.

use super::harness::*;

#[test]
fn listener_reconnects_after_the_relay_restarts() {
    let relay = Relay::start();
    let echo = echo_server();
    let cs = relay.connection_string(KEY_BOTH, "phoenix");
    let listener = relay.listen_online(&cs, &["--ports", &echo.port().to_string()]);
    let (connect, addr) = relay.connect(&cs, &echo.port().to_string());
    assert_eq!(round_trip(addr, b"before").expect("round trip"), b"before");

    let mark = listener.stderr.len();
    let relay = relay.restart();
    // Back online with a fresh control channel...
    listener
        .stderr
        .wait_for_from(mark, "listener online", DEADLINE)
        .unwrap_or_else(|| panic!("listener did not reconnect:\n{}", listener.dump()));
    // ...after waits that follow the schedule 0, 1, 2, 5, ... seconds (each jittered).
    let delays: Vec<String> = listener.stderr.all()[mark..]
        .iter()
        .filter_map(|l| {
            l.split("(backoff step ")
                .nth(1)
                .and_then(|d| d.split(')').next())
                .map(|d| d.trim().to_owned())
        })
        .collect();
    let schedule = ["0s", "1s", "2s", "5s", "10s", "30s"];
    assert!(
        !delays.is_empty() && delays.len() <= schedule.len(),
        "{delays:?}"
    );
    assert_eq!(delays, schedule[..delays.len()], "{}", listener.dump());

    // New tunnels work again through the same `relay connect`.
    let worked = poll(DEADLINE, || {
        round_trip(addr, b"after").ok().filter(|b| b == b"after")
    });
    assert!(
        worked.is_some(),
        "connect:\n{}\nrelay:\n{}",
        connect.dump(),
        relay.proc.dump()
    );
}

#[test]
fn listener_renews_its_token_before_the_relay_would_close_the_channel() {
    let relay = Relay::start();
    let echo = echo_server();
    let cs = relay.connection_string(KEY_BOTH, "renew");
    // 3 s tokens: without renewToken the relay closes the control channel (1008) in <= 3 s.
    let listener = relay.listen_online(
        &cs,
        &["--ports", &echo.port().to_string(), "--token-ttl", "3s"],
    );
    let mut from = 0;
    for _ in 0..4 {
        let (at, _) = relay
            .proc
            .stderr
            .wait_for_from(from, "token renewed", DEADLINE)
            .unwrap_or_else(|| {
                panic!(
                    "no renewal:\nrelay:\n{}\nlisten:\n{}",
                    relay.proc.dump(),
                    listener.dump()
                )
            });
        from = at + 1;
    }
    // Four renewals span more than one token lifetime: the channel never dropped.
    assert!(
        !listener.dump().contains("listener offline"),
        "{}",
        listener.dump()
    );
    let (_connect, addr) = relay.connect(&cs, &echo.port().to_string());
    assert_eq!(
        round_trip(addr, b"still here").expect("round trip"),
        b"still here"
    );
}
