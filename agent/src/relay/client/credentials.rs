//! Which relay, as whom: the endpoint from the layered settings plus command-line
//! overrides. Credentials never come from argv: a file, the environment or the config.

use std::path::Path;

use anyhow::Context as _;

use super::Endpoint;
use crate::config::{RelaySettings, Secret};
use crate::relay::connection_string::{ConnectionString, Transport};

/// What a command line may add on top of the settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides<'a> {
    /// `--connection-string-file`: wins over AMLX_RELAY_CONNECTION_STRING and the config.
    pub connection_string_file: Option<&'a Path>,
    /// `--hc`: wins over `[relay] hybrid_connection` and EntityPath.
    pub hybrid_connection: Option<&'a str>,
    pub ca_file: Option<&'a Path>,
    pub insecure_ws: bool,
}

/// The relay endpoint, or an error naming every way to provide what is missing.
pub fn endpoint(settings: &RelaySettings, overrides: Overrides<'_>) -> anyhow::Result<Endpoint> {
    endpoint_and_secret(settings, overrides).map(|(endpoint, _)| endpoint)
}

/// [`endpoint`] and the connection string it was made from (read once), for a caller
/// that hands the same credentials on (`run --external-relay` gives them to its step).
pub fn endpoint_and_secret(
    settings: &RelaySettings,
    overrides: Overrides<'_>,
) -> anyhow::Result<(Endpoint, Secret)> {
    let text = match overrides.connection_string_file {
        Some(path) => read_secret_file(path)?,
        // `config` layered AMLX_RELAY_CONNECTION_STRING over `[relay] connection_string`.
        None => settings.connection_string.clone().context(
            "no relay credentials: set AMLX_RELAY_CONNECTION_STRING, pass --connection-string-file FILE, or set [relay] connection_string in the config file",
        )?,
    };
    let connection: ConnectionString = text.expose().parse()?;
    let hc = overrides
        .hybrid_connection
        .or(settings.hybrid_connection.as_deref());
    let ca_file = overrides.ca_file.or(settings.ca_file.as_deref());
    let transport = if overrides.insecure_ws || settings.insecure_ws {
        Transport::InsecureWs
    } else {
        Transport::Tls
    };
    Ok((Endpoint::new(connection, hc, transport, ca_file)?, text))
}

/// Largest connection string file read: a connection string is a few hundred bytes.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Reads a connection string file, warning when others may read it.
pub fn read_secret_file(path: &Path) -> anyhow::Result<Secret> {
    crate::small_file::warn_if_others_may_read(path, "connection string file");
    let text = crate::small_file::read_text(path, MAX_SECRET_FILE_BYTES, "connection string files")
        .map_err(|e| {
            anyhow::anyhow!(
                "could not read connection string file {}: {e}",
                path.display()
            )
        })?;
    let text = text.trim();
    anyhow::ensure!(
        !text.is_empty(),
        "connection string file {} is empty",
        path.display()
    );
    Ok(Secret::new(text))
}
