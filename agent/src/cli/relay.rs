//! `relay` subcommands: the self-hosted server and the laptop-side forwarders.
//!
//! Credentials never come from a flag (`ps` would show them): they come from
//! `AMLX_RELAY_CONNECTION_STRING`, `--connection-string-file` or the config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Prints "relay serve: listening on ws://ADDR" (wss:// with TLS) on stderr once bound;
    /// `GET /$status` on the same port returns live counts as JSON. SIGTERM/SIGINT drain relayed
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
        amlx-agent relay serve --config relay.toml --insecure-ws        # ws://127.0.0.1:9351\n  \
        # TLS for remote clients (a self-signed pair for testing):\n  \
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \\\n      \
        -subj /CN=relay.example -addext subjectAltName=DNS:relay.example \\\n      \
        -addext basicConstraints=critical,CA:FALSE -keyout key.pem -out cert.pem\n  \
        amlx-agent relay serve --config relay.toml --listen 0.0.0.0:9443 --tls-cert cert.pem --tls-key key.pem")]
    Serve(ServeArgs),
    // --- end relay serve ---

    // --- client side: laptop/node forwarders (relay-client) ---
    /// Hold a Hybrid Connection listener and forward each relayed connection to a local
    /// port chosen by its azbridge port name (like `azbridge -R`).
    ///
    /// Senders (`amlx-agent relay connect`, azbridge -L, the agent's debug sidecar) name a
    /// port; names not in --ports/--forward are refused (421 for a sender that names its
    /// port in its path, so it tries another listener of the Hybrid Connection).
    /// Reconnects after 0, 1, 2, 5, 10, 30 s (then every 30 s); a 401, 403 or 404 from the
    /// relay ends it with the reason, except a full relay's 403 (quota), which is waited out.
    /// Credentials: AMLX_RELAY_CONNECTION_STRING, --connection-string-file or `[relay]
    /// connection_string` in the config file, never a flag.
    #[command(after_help = "Examples:\n  \
        AMLX_RELAY_CONNECTION_STRING='Endpoint=sb://ns.servicebus.windows.net/;...' \\\n    \
        amlx-agent relay listen --hc debug --ports 5678,5679\n  \
        amlx-agent relay listen --connection-string-file ~/.amlx/relay --forward dbg=127.0.0.1:5678\n  \
        amlx-agent relay listen --hc debug --ports 5678 --allow-remote 10.0.0.0/8")]
    Listen(ListenArgs),

    /// Bind a local TCP port and forward each connection to it through the relay as a
    /// sender with an azbridge port name (like `azbridge -L`).
    ///
    /// Prints `listening on ADDR` on stderr once bound (useful with port 0). Each failed
    /// relay connection is logged as one line naming the cause (401 credentials, 403
    /// rights or a refusing listener, 404 no listener) and the fix.
    /// Credentials: AMLX_RELAY_CONNECTION_STRING, --connection-string-file or `[relay]
    /// connection_string` in the config file, never a flag.
    #[command(after_help = "Examples:\n  \
        amlx-agent relay connect --hc debug --bind 127.0.0.1:5678\n  \
        amlx-agent relay connect --hc debug --bind 127.0.0.1:0 --port-name 5678\n  \
        # a self-hosted relay on this machine, without TLS:\n  \
        amlx-agent relay connect --connection-string-file relay.cs --insecure-ws")]
    Connect(ConnectArgs),
    // --- end client side ---
}

// --- relay serve (branch relay-server) ---
/// `relay serve`: where to listen and how. Flags win over `[relay.server]` in the config file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to bind; port 0 picks a free port (the bound address is printed)
    /// [default: 127.0.0.1:9351]
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

// --- client side: laptop/node forwarders (relay-client) ---

/// How the forwarders reach the relay. The connection string itself comes from
/// `AMLX_RELAY_CONNECTION_STRING`, `--connection-string-file` or `[relay] connection_string`.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Relay")]
pub struct RelayClientArgs {
    /// Hybrid Connection name (wins over EntityPath in the connection string)
    /// [env: AMLX_RELAY_HC]
    #[arg(long = "hc", value_name = "NAME")]
    pub hc: Option<String>,

    /// File holding the connection string (keep it chmod 600); wins over
    /// AMLX_RELAY_CONNECTION_STRING and the config file. The connection string itself is
    /// never a flag: `ps` would show it [env: AMLX_RELAY_CONNECTION_STRING_FILE]
    #[arg(long, value_name = "FILE")]
    pub connection_string_file: Option<PathBuf>,

    /// PEM file with the CA that signed the relay's certificate (private relays);
    /// without it the system roots are trusted [env: AMLX_RELAY_CA_FILE]
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// Use plain ws:// instead of wss:// (refused unless the relay is on a loopback address)
    /// [env: AMLX_RELAY_INSECURE_WS]
    #[arg(long)]
    pub insecure_ws: bool,

    /// Lifetime of the SAS tokens this client signs (renewed before expiry), e.g. 1h
    #[arg(long, value_name = "DURATION", value_parser = token_ttl, hide = true)]
    pub token_ttl: Option<Duration>,
}

/// `--token-ttl`: a duration from 1s to the longest any setting takes (100 years; a
/// token's expiry and its renewal are clock arithmetic that must not overflow).
fn token_ttl(text: &str) -> Result<Duration, String> {
    match crate::config::parse_duration(text) {
        Ok(ttl) if ttl.as_secs() >= 1 => Ok(ttl),
        Ok(_) => Err("a token lives at least 1s".to_owned()),
        Err(err) => Err(err.to_string()),
    }
}

/// `relay listen`.
#[derive(Debug, Args)]
pub struct ListenArgs {
    #[command(flatten)]
    pub relay: RelayClientArgs,

    /// Forward these ports to 127.0.0.1 under their own numbers as port names
    /// (azbridge `-R hc:127.0.0.1:5678;5679`)
    #[arg(long, value_name = "PORT,...", value_delimiter = ',',
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Forward port name NAME to HOST:PORT (repeatable)
    #[arg(long, value_name = "NAME=HOST:PORT")]
    pub forward: Vec<String>,

    /// Only accept senders from these networks (CIDR, repeatable or comma-separated);
    /// others are rejected with 403
    #[arg(long, value_name = "CIDR", value_delimiter = ',')]
    pub allow_remote: Vec<String>,

    /// Most relayed connections served at once; senders past it are refused with 503
    /// [env: AMLX_RELAY_MAX_TUNNELS] [default: 256]
    #[arg(long, value_name = "N")]
    pub max_tunnels: Option<String>,
}

/// `relay connect`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub relay: RelayClientArgs,

    /// Local address to accept connections on (port 0 picks a free port)
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:5678")]
    pub bind: SocketAddr,

    /// azbridge port name sent to the listener [default: the bind port]
    #[arg(long, value_name = "NAME")]
    pub port_name: Option<String>,

    /// Most local connections forwarded at once; later ones wait in the accept backlog
    /// [env: AMLX_RELAY_MAX_TUNNELS] [default: 256]
    #[arg(long, value_name = "N")]
    pub max_tunnels: Option<String>,

    /// Relayed connections to keep open before a local one needs them (0-8), so a
    /// debugger attaching skips the relay's rendezvous: about half of a new tunnel's time,
    /// several round trips to Azure Relay. Each is a connection at the relay and the
    /// listener, renewed every 45 s while unused
    /// [env: AMLX_RELAY_SPARE_TUNNELS] [default: 0]
    #[arg(long, value_name = "N")]
    pub spare_tunnels: Option<String>,
}
// --- end client side ---
