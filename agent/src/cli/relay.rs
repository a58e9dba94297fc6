//! `relay` subcommands: the self-hosted server and the laptop-side forwarders.
//!
//! Credentials never come from a flag (`ps` would show them): they come from
//! `AMLX_RELAY_CONNECTION_STRING`, `--connection-string-file` or the config file.

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct RelayArgs {
    #[command(subcommand)]
    pub command: RelayCommand,
}

#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    // --- relay serve (branch relay-server) ---
    /// Run a self-hosted Hybrid Connections relay (the protocol subset the agent needs).
    ///
    /// Listeners, senders and Microsoft's clients (azure-relay-dotnet, hyco-ws,
    /// azure-relay-java, azbridge) use it like an Azure Relay namespace. Keys come from
    /// the config file's [[relay.server.keys]] (name, key, rights, paths), never from flags.
    /// Prints "relay serve: listening on ws[s]://ADDR" on stderr once bound; `GET /$status`
    /// on the same port returns live counts as JSON. SIGTERM/SIGINT drain relayed
    /// connections for shutdown_grace, then exit.
    #[command(after_help = "Examples:\n  \
        # a key: any string works, the relay uses its UTF-8 bytes as written\n  \
        openssl rand -base64 32\n  \
        # a config file with it (keep it 0600):\n  \
        #   [relay.server]\n  \
        #   [[relay.server.keys]]\n  \
        #   name = \"debug\"\n  \
        #   key = \"<the key>\"\n  \
        #   rights = [\"listen\", \"send\"]\n  \
        #   paths = [\"*\"]\n  \
        amlx-agent relay serve --config relay.toml --listen 127.0.0.1:9443 --insecure-ws\n  \
        # TLS for remote clients (a self-signed pair for testing):\n  \
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \\\n      \
        -subj /CN=relay.example -addext subjectAltName=DNS:relay.example -keyout key.pem -out cert.pem\n  \
        amlx-agent relay serve --config relay.toml --listen 0.0.0.0:9443 --tls-cert cert.pem --tls-key key.pem")]
    Serve(ServeArgs),
    // --- end relay serve ---
}

// --- relay serve (branch relay-server) ---
/// `relay serve`: where to listen and how. Flags win over `[relay.server]` in the config file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to bind; port 0 picks a free port (the bound address is printed)
    /// [default: 0.0.0.0:9443]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,

    /// TLS certificate chain (PEM, leaf first). Clients then use wss://.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Serve plain ws:// without TLS: tokens travel in clear text, so only on a
    /// loopback address unless --allow-insecure-remote.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub insecure_ws: bool,

    /// Allow --insecure-ws on a non-loopback address (e.g. behind a TLS-terminating proxy).
    #[arg(long, requires = "insecure_ws")]
    pub allow_insecure_remote: bool,
}
// --- end relay serve ---
