//! The sender: opens a relayed connection to whoever listens on the Hybrid Connection.

use std::time::Duration;

use tracing::Instrument as _;

use super::error::{ConnectError, Role};
use super::{Endpoint, Tunnel, handshake};
use crate::relay::protocol::{self, status};

/// Connects as a sender (`sb-hc-action=connect`). Resolves once the listener accepted;
/// its refusal arrives as the status of [`ConnectError`] (404 when nobody listens).
pub async fn connect(endpoint: &Endpoint, suffix: Option<&str>) -> Result<Tunnel, ConnectError> {
    connect_with(endpoint, suffix, &[]).await
}

/// [`connect`] with app arguments in the query, which reach the listener in the accept
/// address (a spare says so: [`super::spare::SPARE_QUERY`]).
pub async fn connect_with(
    endpoint: &Endpoint,
    suffix: Option<&str>,
    app_query: &[(String, String)],
) -> Result<Tunnel, ConnectError> {
    let tracking_id = protocol::new_tracking_id();
    let span = tracing::info_span!("send", tracking_id = %tracking_id, hc = %endpoint.entity);
    async {
        let url = protocol::connect_url(
            &endpoint.base,
            &endpoint.entity,
            suffix,
            app_query,
            &tracking_id,
        );
        let token = endpoint.token().map_err(|e| ConnectError::Protocol {
            url: handshake::display_url(&url),
            detail: format!("cannot sign a token: {e}"),
        })?;
        tracing::debug!(url = %handshake::display_url(&url), "connecting as sender");
        let ws = handshake::connect(
            &url,
            Some(&token),
            endpoint.tls.as_ref(),
            Role::Send,
            endpoint.operation_timeout,
        )
        .await?;
        tracing::debug!("relayed connection open");
        Ok(Tunnel::new(ws))
    }
    .instrument(span)
    .await
}

/// How many times a sender tries again when a listener answers that another listener
/// serves its port: the relay spreads senders across listeners at random, so with L
/// listeners all attempts miss with probability ((L-1)/L)^n — about 1e-8 for 4
/// listeners, 3e-5 for Azure's maximum of 25.
pub const WRONG_LISTENER_ATTEMPTS: usize = 256;
/// Tries after a wrong listener that go again at once: with a few listeners one of the
/// first is the right one.
const WRONG_LISTENER_FREE_TRIES: usize = 4;
/// After those, each try waits this much longer than the one before...
const WRONG_LISTENER_PAUSE_STEP: Duration = Duration::from_millis(10);
/// ...up to this: a relay (or a listener) that answers 421 every time costs at most twenty
/// upgrades a second for each local connection, not thousands, and all
/// [`WRONG_LISTENER_ATTEMPTS`] take about 13 s (a connection whose listener is gone fails
/// that soon, not after a minute).
const WRONG_LISTENER_PAUSE_MAX: Duration = Duration::from_millis(50);

/// The pause before try `attempt + 1` after `attempt` reached a listener for another port.
fn wrong_listener_pause(attempt: usize) -> Duration {
    let steps = attempt.saturating_sub(WRONG_LISTENER_FREE_TRIES);
    WRONG_LISTENER_PAUSE_STEP
        .saturating_mul(u32::try_from(steps).unwrap_or(u32::MAX))
        .min(WRONG_LISTENER_PAUSE_MAX)
}

/// Connects as a sender naming `port_name` in the path suffix, so that only the
/// listener serving that port accepts (several debug targets can listen on one Hybrid
/// Connection); tries again while the relay picks a listener that serves another port,
/// pausing longer after each miss (`wrong_listener_pause`), up to `attempts` upgrades in all.
pub async fn connect_to_owner(
    endpoint: &Endpoint,
    port_name: &str,
    app_query: &[(String, String)],
    attempts: usize,
) -> Result<Tunnel, ConnectError> {
    let mut attempt = 1;
    loop {
        match connect_with(endpoint, Some(port_name), app_query).await {
            Err(e) if e.status() == Some(status::MISDIRECTED) && attempt < attempts => {
                tracing::debug!(attempt, "reached a listener for another port; again");
                tokio::time::sleep(wrong_listener_pause(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// A relay that answers every sender with 421, for tests of the senders' retries.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use crate::relay::client::Endpoint;
    use crate::relay::connection_string::{ConnectionString, Transport};

    /// A relay on loopback that answers every upgrade 421 ("a listener for another
    /// port"), counting them; it runs until the returned task is aborted.
    pub(crate) async fn misdirecting_relay()
    -> (Endpoint, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let relay = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = relay.local_addr().expect("bound");
        let upgrades = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&upgrades);
        let answering = tokio::spawn(async move {
            // Bounded by the test, which aborts it.
            loop {
                let Ok((mut socket, _)) = relay.accept().await else {
                    break;
                };
                counted.fetch_add(1, Ordering::Relaxed);
                let mut head = [0u8; 4096];
                let _ = socket.read(&mut head).await;
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 421 Misdirected Request\r\nContent-Length: 0\r\n\
                          Connection: close\r\n\r\n",
                    )
                    .await;
            }
        });
        let connection: ConnectionString = format!(
            "Endpoint=sb://{addr}/;SharedAccessKeyName=k;SharedAccessKey=a2V5;EntityPath=hc"
        )
        .parse()
        .expect("connection string");
        let endpoint =
            Endpoint::new(connection, None, Transport::InsecureWs, None).expect("endpoint");
        (endpoint, upgrades, answering)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    #[test]
    fn wrong_listener_tries_slow_down_to_a_bound() {
        let pauses: Vec<Duration> = (1..=WRONG_LISTENER_ATTEMPTS)
            .map(wrong_listener_pause)
            .collect();
        assert!(
            pauses
                .iter()
                .take(WRONG_LISTENER_FREE_TRIES)
                .all(Duration::is_zero)
        );
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "never shorter");
        assert_eq!(pauses.last(), Some(&WRONG_LISTENER_PAUSE_MAX));
        let total: Duration = pauses.iter().sum();
        assert!(total < Duration::from_secs(15), "all tries take {total:?}");
        assert_eq!(wrong_listener_pause(usize::MAX), WRONG_LISTENER_PAUSE_MAX);
    }

    /// A relay that answers every sender with 421 (a listener for another port, every
    /// time): the sender tries again, but a few times a second, not back to back (it made
    /// 256 upgrades in about 0.1 s).
    #[tokio::test]
    async fn a_relay_that_always_answers_421_is_not_hammered() {
        let (endpoint, upgrades, answering) = test_support::misdirecting_relay().await;
        let window = Duration::from_secs(1);
        let outcome = tokio::time::timeout(
            window,
            connect_to_owner(&endpoint, "5678", &[], WRONG_LISTENER_ATTEMPTS),
        )
        .await;
        answering.abort();
        assert!(outcome.is_err(), "still trying after {window:?}");
        let made = upgrades.load(Ordering::Relaxed);
        assert!(
            (WRONG_LISTENER_FREE_TRIES..=40).contains(&made),
            "{made} upgrades in {window:?}"
        );
    }
}
