//! The sender: opens a relayed connection to whoever listens on the Hybrid Connection.

use tracing::Instrument as _;

use super::error::{ConnectError, Role};
use super::{Endpoint, Tunnel, handshake};
use crate::relay::protocol;

/// Connects as a sender (`sb-hc-action=connect`). Resolves once the listener accepted;
/// its refusal arrives as the status of [`ConnectError`] (404 when nobody listens).
pub async fn connect(endpoint: &Endpoint, suffix: Option<&str>) -> Result<Tunnel, ConnectError> {
    let tracking_id = protocol::new_tracking_id();
    let span = tracing::info_span!("send", tracking_id = %tracking_id, hc = %endpoint.entity);
    async {
        let url =
            protocol::connect_url(&endpoint.base, &endpoint.entity, suffix, &[], &tracking_id);
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
