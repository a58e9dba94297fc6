//! `amlx-agent relay ...`: the self-hosted server and the laptop-side forwarders.

use crate::cli::{Cli, RelayArgs, RelayCommand};

pub fn run(cli: &Cli, args: &RelayArgs) -> anyhow::Result<i32> {
    match &args.command {
        // --- relay serve (branch relay-server) ---
        RelayCommand::Serve(serve_args) => serve::run(cli, serve_args),
        // --- end relay serve ---
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
    use crate::relay::server::{self, KeyRight, ServerConfig, ServerKey};

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
        rights: Vec<KeyRight>,
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
        config.keys = section
            .keys
            .into_iter()
            .map(|k| ServerKey {
                name: k.name,
                key: Secret::new(k.key),
                rights: k.rights,
                paths: k.paths,
            })
            .collect();
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
