//! `amlx-agent relay ...`: the self-hosted server and the laptop-side forwarders.

use crate::cli::{Cli, RelayArgs, RelayCommand};

pub fn run(cli: &Cli, args: &RelayArgs) -> anyhow::Result<i32> {
    match &args.command {
        // --- relay serve (branch relay-server) ---
        RelayCommand::Serve(serve_args) => serve::run(cli, serve_args),
        // --- end relay serve ---
        // --- client side (relay-client) ---
        RelayCommand::Listen(a) => client::listen(cli, a),
        RelayCommand::Connect(a) => client::connect(cli, a),
        // --- end client side ---
    }
}

// --- relay serve (branch relay-server) ---
mod serve {
    //! `relay serve`: settings from flags over the config file, bind, print the address,
    //! run until SIGTERM/SIGINT.

    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use anyhow::Context as _;
    use serde::Deserialize;
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    use crate::cli::{Cli, ServeArgs};
    use crate::config::Secret;
    use crate::relay::server::{self, Right, ServerConfig, ServerKey};

    pub fn run(cli: &Cli, args: &ServeArgs) -> anyhow::Result<i32> {
        let file = cli
            .config
            .clone()
            .or_else(|| std::env::var_os("AMLX_CONFIG").map(PathBuf::from));
        let config = server_config(file.as_deref(), args)?;
        let settings = server::Settings::from_config(&config)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("could not start the async runtime")?;
        runtime.block_on(async move {
            let listener = TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("relay serve: could not bind {}", config.listen))?;
            let bound = listener
                .local_addr()
                .context("relay serve: bound address")?;
            eprintln!("relay serve: listening on {}://{bound}", settings.scheme());
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            server::run(listener, settings, shutdown).await
        })?;
        Ok(0)
    }

    /// Cancels `token` on the first SIGTERM or SIGINT.
    async fn cancel_on_signal(token: CancellationToken) {
        use tokio::signal::unix::{SignalKind, signal};
        let (term, int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(err), _) | (_, Err(err)) => {
                tracing::error!(
                    "relay serve: cannot watch SIGTERM/SIGINT ({err}); stop it with SIGKILL"
                );
                return;
            }
        };
        let (mut term, mut int) = (term, int);
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("relay serve: {name} received");
        token.cancel();
    }

    /// `[relay.server]` as written in the config file. The config module will own this
    /// section; until then `relay serve` reads it here, and this is the one place that
    /// turns file + flags into a [`ServerConfig`].
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct FileSection {
        listen: Option<std::net::SocketAddr>,
        tls_cert: Option<PathBuf>,
        tls_key: Option<PathBuf>,
        #[serde(default)]
        insecure_ws: bool,
        #[serde(default)]
        allow_insecure_remote: bool,
        max_listeners_per_path: Option<usize>,
        max_connections: Option<usize>,
        #[serde(default, with = "humantime_serde_opt")]
        handshake_timeout: Option<Duration>,
        #[serde(default, with = "humantime_serde_opt")]
        rendezvous_timeout: Option<Duration>,
        max_control_message: Option<usize>,
        #[serde(default, with = "humantime_serde_opt")]
        shutdown_grace: Option<Duration>,
        #[serde(default)]
        keys: Vec<FileKey>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct FileKey {
        name: String,
        key: String,
        /// `listen` and/or `send`; both when omitted.
        #[serde(default = "both_rights")]
        rights: Vec<String>,
        #[serde(default = "all_paths")]
        paths: Vec<String>,
    }

    impl std::fmt::Debug for FileKey {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("FileKey")
                .field("name", &self.name)
                .field("key", &"***")
                .field("rights", &self.rights)
                .field("paths", &self.paths)
                .finish()
        }
    }

    fn all_paths() -> Vec<String> {
        vec!["*".to_owned()]
    }

    fn both_rights() -> Vec<String> {
        vec!["listen".to_owned(), "send".to_owned()]
    }

    fn right(word: &str) -> anyhow::Result<Right> {
        match word.to_ascii_lowercase().as_str() {
            "listen" => Ok(Right::Listen),
            "send" => Ok(Right::Send),
            other => anyhow::bail!("unknown right {other:?} (expected listen or send)"),
        }
    }

    /// Durations written like `30s` or `1m 30s`.
    mod humantime_serde_opt {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer};

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let text = Option::<String>::deserialize(d)?;
            text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
                .transpose()
        }
    }

    /// Flags over `[relay.server]` in `file` over defaults.
    pub(super) fn server_config(
        file: Option<&Path>,
        args: &ServeArgs,
    ) -> anyhow::Result<ServerConfig> {
        let section = match file {
            Some(path) => read_section(path)?,
            None => FileSection::default(),
        };
        let mut config = ServerConfig::default();
        let l = &mut config.limits;
        l.max_listeners_per_path = section
            .max_listeners_per_path
            .unwrap_or(l.max_listeners_per_path);
        l.max_connections = section.max_connections.unwrap_or(l.max_connections);
        l.handshake_timeout = section.handshake_timeout.unwrap_or(l.handshake_timeout);
        l.rendezvous_timeout = section.rendezvous_timeout.unwrap_or(l.rendezvous_timeout);
        l.max_control_message = section.max_control_message.unwrap_or(l.max_control_message);
        l.shutdown_grace = section.shutdown_grace.unwrap_or(l.shutdown_grace);
        config.listen = args.listen.or(section.listen).unwrap_or(config.listen);
        // TLS from flags replaces TLS (and insecure_ws) from the file, and vice versa.
        if args.tls_cert.is_some() || args.insecure_ws {
            config.tls_cert = args.tls_cert.clone();
            config.tls_key = args.tls_key.clone();
            config.insecure_ws = args.insecure_ws;
        } else {
            config.tls_cert = section.tls_cert;
            config.tls_key = section.tls_key;
            config.insecure_ws = section.insecure_ws;
        }
        config.allow_insecure_remote = args.allow_insecure_remote || section.allow_insecure_remote;
        for k in section.keys {
            let rights = k
                .rights
                .iter()
                .map(|r| right(r))
                .collect::<anyhow::Result<Vec<_>>>()
                .with_context(|| format!("[[relay.server.keys]] {:?}", k.name))?;
            config.keys.push(ServerKey {
                name: k.name,
                key: Secret::new(k.key),
                rights,
                paths: k.paths,
            });
        }
        Ok(config)
    }

    fn read_section(path: &Path) -> anyhow::Result<FileSection> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("could not read config file {}", path.display()))?;
        let table: toml::Table = toml::from_str(&text)
            .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
        let Some(section) = table.get("relay").and_then(|r| r.get("server")).cloned() else {
            return Ok(FileSection::default());
        };
        section
            .try_into()
            .with_context(|| format!("invalid [relay.server] in {}", path.display()))
    }
}
// --- end relay serve ---

// --- client side (relay-client) ---
mod client {
    //! `relay listen` / `relay connect`: credentials from env, file or config (never argv),
    //! then the forwarders in `relay::client::forward`.

    use std::os::unix::fs::PermissionsExt as _;
    use std::path::Path;
    use std::sync::Arc;

    use anyhow::Context as _;
    use tokio_util::sync::CancellationToken;

    use crate::cli::Cli;
    use crate::cli::{ConnectArgs, ListenArgs, RelayClientArgs};
    use crate::config::{self, Secret};
    use crate::relay::bridge::{Forward, Forwards};
    use crate::relay::client::Endpoint;
    use crate::relay::client::forward::{self, IpNet, RemoteForwarder};
    use crate::relay::client::listener;
    use crate::relay::connection_string::{ConnectionString, Transport};
    use crate::role::ProcessEnv;

    /// Environment variable holding the connection string.
    pub const CONNECTION_STRING_ENV: &str = "AMLX_RELAY_CONNECTION_STRING";

    pub fn listen(cli: &Cli, args: &ListenArgs) -> anyhow::Result<i32> {
        let mut forwards = Forwards::from_ports(&args.ports);
        for spec in &args.forward {
            let f: Forward = spec.parse().map_err(|e| anyhow::anyhow!("--forward {e}"))?;
            forwards.0.push(f);
        }
        anyhow::ensure!(
            !forwards.0.is_empty(),
            "nothing to forward: pass --ports 5678[,5679] or --forward NAME=HOST:PORT"
        );
        let allow = args
            .allow_remote
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .map_err(|e| anyhow::anyhow!("--allow-remote {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let endpoint = Arc::new(endpoint(cli, &args.relay)?);
        for f in &forwards.0 {
            tracing::info!("forwarding port name {f}");
        }
        let handler = Arc::new(RemoteForwarder { forwards, allow });
        runtime()?.block_on(async move {
            let shutdown = shutdown_on_signal();
            listener::run(endpoint, handler, shutdown).await?;
            Ok(0)
        })
    }

    pub fn connect(cli: &Cli, args: &ConnectArgs) -> anyhow::Result<i32> {
        let port_name = match &args.port_name {
            Some(name) => name.clone(),
            None if args.bind.port() != 0 => args.bind.port().to_string(),
            None => anyhow::bail!(
                "--bind with port 0 needs --port-name (the port name the listener forwards)"
            ),
        };
        crate::relay::bridge::encode_request(&port_name)?;
        let endpoint = Arc::new(endpoint(cli, &args.relay)?);
        runtime()?.block_on(async move {
            let listener = tokio::net::TcpListener::bind(args.bind)
                .await
                .with_context(|| format!("could not bind {}", args.bind))?;
            let bound = listener
                .local_addr()
                .context("bound socket has no address")?;
            // A stable line for scripts and tests (port 0 picks the port).
            eprintln!(
                "amlx-agent relay connect: listening on {bound} (port name {port_name}, hc {})",
                endpoint.entity
            );
            let shutdown = shutdown_on_signal();
            forward::serve_local(listener, endpoint, port_name, shutdown).await;
            Ok(0)
        })
    }

    /// The relay endpoint from flags, environment and config, credentials never from argv.
    fn endpoint(cli: &Cli, args: &RelayClientArgs) -> anyhow::Result<Endpoint> {
        let flags = config::Flags {
            config: cli.config.as_deref(),
            log_format: cli.log_format,
            ..config::Flags::default()
        };
        let settings = config::load(&flags, &ProcessEnv)?;
        let text = match &args.connection_string_file {
            Some(path) => read_secret_file(path)?,
            None => match std::env::var(CONNECTION_STRING_ENV) {
                Ok(v) if !v.trim().is_empty() => Secret::new(v.trim()),
                _ => settings.relay.connection_string.clone().context(
                    "no relay credentials: set AMLX_RELAY_CONNECTION_STRING, pass --connection-string-file FILE, or set [relay] connection_string in the config file",
                )?,
            },
        };
        let connection: ConnectionString = text.expose().parse()?;
        let hc = args
            .hc
            .as_deref()
            .or(settings.relay.hybrid_connection.as_deref());
        let ca_file = args.ca_file.clone().or(settings.relay.ca_file.clone());
        let transport = if args.insecure_ws {
            Transport::InsecureWs
        } else {
            Transport::Tls
        };
        let mut endpoint = Endpoint::new(connection, hc, transport, ca_file.as_deref())?;
        if let Some(ttl) = args.token_ttl {
            anyhow::ensure!(ttl.as_secs() >= 1, "--token-ttl must be at least 1s");
            endpoint.token_ttl = ttl;
        }
        Ok(endpoint)
    }

    /// Reads a connection string file, warning when others may read it.
    fn read_secret_file(path: &Path) -> anyhow::Result<Secret> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("could not read connection string file {}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "connection string file {} is readable by group or others; chmod 600 it",
                path.display()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("could not read connection string file {}", path.display()))?;
        let text = text.trim();
        anyhow::ensure!(
            !text.is_empty(),
            "connection string file {} is empty",
            path.display()
        );
        Ok(Secret::new(text))
    }

    fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("could not start the async runtime")
    }

    /// A token cancelled at SIGINT or SIGTERM.
    fn shutdown_on_signal() -> CancellationToken {
        let token = CancellationToken::new();
        let cancel = token.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot watch SIGTERM: {e}");
                    let _ = tokio::signal::ctrl_c().await;
                    cancel.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
            cancel.cancel();
        });
        token
    }
}
// --- end client side ---
