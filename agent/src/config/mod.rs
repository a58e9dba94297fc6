//! Settings: TOML file + `AMLX_*` environment + flags, validated, secrets masked.
//!
//! Precedence: flag > environment > file (`--config`, `AMLX_CONFIG`,
//! `/etc/amlx/agent.toml`) > defaults. Every key, its default and its variable are
//! documented in `config.example.toml` at the top of the repository.

mod duration;
mod env;
mod file;
mod flags;
mod secret;
mod server;
mod value;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{LogFormat, NodeArgs, PolicyArgs, PortArgs, SessionArgs};
use crate::inject::InjectMode;
use crate::policy::Policy;
use crate::ports::PortRange;
use crate::role::Env;
use crate::session::{DebugMode, FailurePolicy};

pub use duration::{DurationError, parse_duration};
pub use env::{ENV_CONFIG, ENV_RELAY_CONNECTION_STRING};
pub use secret::Secret;
pub use server::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONTROL_MESSAGE,
    DEFAULT_MAX_LISTENERS_PER_PATH, DEFAULT_RENDEZVOUS_TIMEOUT, DEFAULT_SERVER_LISTEN,
    DEFAULT_SHUTDOWN_GRACE, MAX_KEY_CHARS, ServerKey, ServerSettings, TlsFiles, path_matches,
};

/// The config file read when neither `--config` nor `AMLX_CONFIG` names one (if present).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/amlx/agent.toml";

/// Every validated setting the agent uses. `Debug` is safe to log (secrets print `***`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// The config file that was read, if any.
    pub source: Option<PathBuf>,
    /// `None`: not configured anywhere (text).
    pub log_format: Option<LogFormat>,
    /// `[debug]` enabled, ranks, max_targets_per_node: which processes are targets.
    pub policy: Policy,
    /// `[ports]`: where debug ports come from.
    pub ports: PortSettings,
    /// The IP to publish for this node; `None`: detect it.
    pub node_ip: Option<IpAddr>,
    /// Node-wide directory for session status records; `None`: the fallbacks
    /// (`/run/amlx`, `$XDG_RUNTIME_DIR/amlx`, `/tmp/amlx-UID`).
    pub state_dir: Option<PathBuf>,
    /// The rest of `[debug]`: how a target's session behaves.
    pub session: SessionSettings,
    /// `[relay]` and `[relay.server]`.
    pub relay: RelaySettings,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSettings {
    /// Inclusive debug-port range; the preferred port is its start + global rank.
    pub range: PortRange,
    /// `None`: the documented fallbacks (`/run/amlx/ports`, ...).
    pub lock_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSettings {
    /// Who listens and who connects.
    pub mode: DebugMode,
    /// Run the step undebugged (default) or fail when debugging cannot be set up.
    pub on_failure: FailurePolicy,
    /// How long a target waits for a developer before running on undebugged.
    pub attach_timeout: Duration,
    /// How the debugger gets into the step.
    pub inject: InjectMode,
    /// Hold the step at startup until a debugger attaches (bounded by `attach_timeout`).
    pub wait_for_client: bool,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            mode: DebugMode::default(),
            on_failure: FailurePolicy::default(),
            attach_timeout: DEFAULT_ATTACH_TIMEOUT,
            inject: InjectMode::default(),
            wait_for_client: false,
        }
    }
}

/// How long a target waits for a developer before running on undebugged.
pub const DEFAULT_ATTACH_TIMEOUT: Duration = Duration::from_secs(600);

/// `[relay]`: the client side (the agent's sidecar and the laptop forwarders), and
/// `[relay.server]` for `relay serve`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelaySettings {
    /// `Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...[;EntityPath=...]`.
    pub connection_string: Option<Secret>,
    /// The Hybrid Connection to use when the connection string has no `EntityPath`.
    pub hybrid_connection: Option<String>,
    /// Extra CA certificate (PEM) to trust, for a self-hosted relay with a private CA.
    pub ca_file: Option<PathBuf>,
    /// Plain ws:// instead of wss:// (a self-hosted relay with `insecure_ws`, on loopback).
    pub insecure_ws: bool,
    /// The self-hosted relay server.
    pub server: ServerSettings,
}

/// Flag values from the command line (the top layer).
///
/// A command passes the flag groups it has; `None` groups leave lower layers alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flags<'a> {
    /// `--config`: the file to read (it must exist).
    pub config: Option<&'a Path>,
    /// `--log-format` (clap also folds `AMLX_LOG_FORMAT` into it).
    pub log_format: Option<LogFormat>,
    pub policy: Option<&'a PolicyArgs>,
    pub ports: Option<&'a PortArgs>,
    pub node: Option<&'a NodeArgs>,
    pub session: Option<&'a SessionArgs>,
}

/// A setting that could not be used, naming where it came from (flag, variable, or
/// file, line and key). Never contains a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config error: {message}")]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
        }
    }

    /// The message without the `config error:` prefix.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Loads and layers every source.
pub fn load(flags: &Flags<'_>, env: &dyn Env) -> Result<Settings, ConfigError> {
    load_with_default(flags, env, Path::new(DEFAULT_CONFIG_PATH))
}

/// `load`, with the file tried when neither `--config` nor `AMLX_CONFIG` names one.
pub(crate) fn load_with_default(
    flags: &Flags<'_>,
    env: &dyn Env,
    default_path: &Path,
) -> Result<Settings, ConfigError> {
    let file = match find_file(flags, env, default_path) {
        Some((path, origin)) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::new(format!("{origin}: cannot read {}: {e}", path.display()))
            })?;
            Some((path, text))
        }
        None => None,
    };
    let file = file
        .as_ref()
        .map(|(path, text)| (path.as_path(), text.as_str()));
    layer(flags, env, file)
}

/// Which file to read and what named it: `--config` and `AMLX_CONFIG` must exist, the
/// default only counts when it does.
fn find_file(flags: &Flags<'_>, env: &dyn Env, default_path: &Path) -> Option<(PathBuf, String)> {
    if let Some(path) = flags.config {
        return Some((path.to_owned(), "--config".to_owned()));
    }
    if let Some(path) = env::nonempty(env, ENV_CONFIG) {
        return Some((PathBuf::from(path), ENV_CONFIG.to_owned()));
    }
    default_path
        .exists()
        .then(|| (default_path.to_owned(), "default config".to_owned()))
}

/// Defaults, then the file (path and text), then the environment, then the flags.
pub(crate) fn layer(
    flags: &Flags<'_>,
    env: &dyn Env,
    file: Option<(&Path, &str)>,
) -> Result<Settings, ConfigError> {
    let mut s = Settings::default();
    if let Some((path, text)) = file {
        apply_file(file::FileContext { path, text }, &mut s)?;
        s.source = Some(path.to_owned());
    }
    env::apply(env, &mut s)?;
    flags::apply(flags, &mut s)?;
    // `Debug` masks every secret, so the whole result is safe to show with -v.
    Ok(s)
}

/// Applies every key the file sets over `s`.
fn apply_file(ctx: file::FileContext<'_>, s: &mut Settings) -> Result<(), ConfigError> {
    let f = ctx.parse()?;
    let d = f.debug;
    set(&mut s.policy.enabled, d.enabled);
    set(&mut s.policy.ranks, d.ranks.map(|v| v.0));
    let limit = d.max_targets_per_node.map(|v| Some(v.0.0));
    set(&mut s.policy.max_targets_per_node, limit);
    set(&mut s.session.mode, d.mode.map(|v| v.0));
    set(&mut s.session.on_failure, d.on_debug_failure.map(|v| v.0));
    set(&mut s.session.attach_timeout, d.attach_timeout.map(|v| v.0));
    set(&mut s.session.inject, d.inject.map(|v| v.0));
    set(&mut s.session.wait_for_client, d.wait_for_client);
    set(&mut s.ports.range, f.ports.range.map(|v| v.0));
    set(&mut s.ports.lock_dir, f.ports.lock_dir.map(Some));
    set(&mut s.node_ip, f.node.ip.map(|v| Some(v.0)));
    set(&mut s.state_dir, f.node.state_dir.map(Some));
    set(&mut s.log_format, f.log.format.map(|v| Some(v.0)));
    let r = f.relay;
    s.relay.connection_string = r
        .connection_string
        .filter(|c| !c.expose().trim().is_empty());
    s.relay.hybrid_connection = r.hybrid_connection.filter(|h| !h.trim().is_empty());
    s.relay.ca_file = r.ca_file;
    set(&mut s.relay.insecure_ws, r.insecure_ws);
    s.relay.server = r.server.into_settings(&ctx)?;
    Ok(())
}

/// Overwrites `slot` when the layer sets the key.
fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

#[cfg(test)]
mod tests;
