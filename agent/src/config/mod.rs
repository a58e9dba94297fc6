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
mod server_key;
mod targets;
mod value;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{LogFormat, NodeArgs, PolicyArgs, PortArgs, RelayClientArgs, SessionArgs};
use crate::inject::InjectMode;
use crate::policy::Policy;
use crate::ports::PortRange;
use crate::role::Env;
use crate::session::{DebugMode, FailurePolicy};

pub use duration::{DurationError, parse_duration};
pub use env::{ENV_CONFIG, ENV_RELAY_CONNECTION_STRING, ENV_RELAY_CONNECTION_STRING_FILE};
pub use file::MAX_CONFIG_BYTES;
pub use secret::Secret;
pub use server::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONTROL_MESSAGE,
    DEFAULT_MAX_LISTENERS_PER_PATH, DEFAULT_RENDEZVOUS_TIMEOUT, DEFAULT_SERVER_LISTEN,
    DEFAULT_SHUTDOWN_GRACE, MAX_KEY_CHARS, ServerKey, ServerSettings, TlsFiles, path_matches,
};
pub use targets::{
    IMAGE_RULE, MAX_RANKS_COUNT, PROJECT_TARGETS_FILE, TargetKind, TargetSpec, parse_targets_file,
    read_project_targets, valid_image,
};
pub use value::parse_node_ip;

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
    /// `[targets.NAME]`: named places `amlx-agent run -t NAME` runs a step.
    pub targets: std::collections::BTreeMap<String, TargetSpec>,
    /// What layering decided that the log should say, e.g. a step's own `--debug-port`
    /// overruled by `--port-range`. Settings load before logging starts, so the command
    /// logs these once it can.
    pub notes: Vec<String>,
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
    /// Hook every Python step: the process that raises an unhandled exception gets a
    /// post-mortem session (see `post_mortem`).
    pub post_mortem: bool,
    /// How long a post-mortem session waits for a developer.
    pub post_mortem_timeout: Duration,
    /// How many post-mortem sessions a node holds at once.
    pub post_mortem_max: u32,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            mode: DebugMode::default(),
            on_failure: FailurePolicy::default(),
            attach_timeout: DEFAULT_ATTACH_TIMEOUT,
            inject: InjectMode::default(),
            wait_for_client: false,
            post_mortem: false,
            post_mortem_timeout: crate::post_mortem::DEFAULT_TIMEOUT,
            post_mortem_max: crate::post_mortem::DEFAULT_MAX_PER_NODE,
        }
    }
}

/// How long a target waits for a developer before running on undebugged.
pub const DEFAULT_ATTACH_TIMEOUT: Duration = Duration::from_secs(600);

/// Most relayed connections one `relay listen` or `relay connect` serves at once unless
/// `max_tunnels` says otherwise: a debug session needs one per debugger, and the cap only
/// stops a flood of senders from exhausting the process (two descriptors per tunnel).
pub const DEFAULT_MAX_TUNNELS: usize = 256;

/// Spare tunnels `relay connect` keeps unless `spare_tunnels` says otherwise: none, since
/// each is a connection the relay and the listener hold and renew while nobody uses it,
/// for a gain (a faster first connection) only benchmarks notice.
pub const DEFAULT_SPARE_TUNNELS: u8 = 0;

/// `[relay]`: the client side (the agent's sidecar and the laptop forwarders), and
/// `[relay.server]` for `relay serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    /// `Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...[;EntityPath=...]`.
    /// At most one of this and `connection_string_file` is set: the highest layer that
    /// gives credentials in either form wins, and within one layer the file wins.
    pub connection_string: Option<Secret>,
    /// A file (chmod 600) holding the connection string, read only when a session needs
    /// it, so a non-target never opens it.
    pub connection_string_file: Option<PathBuf>,
    /// The Hybrid Connection to use when the connection string has no `EntityPath`.
    pub hybrid_connection: Option<String>,
    /// Extra CA certificate (PEM) to trust, for a self-hosted relay with a private CA.
    pub ca_file: Option<PathBuf>,
    /// Plain ws:// instead of wss:// (a self-hosted relay with `insecure_ws`, on loopback).
    pub insecure_ws: bool,
    /// Most relayed connections `relay listen` (and `relay connect`) serves at once.
    pub max_tunnels: usize,
    /// Relayed connections `relay connect` keeps open before a local one needs them.
    pub spare_tunnels: u8,
    /// The self-hosted relay server.
    pub server: ServerSettings,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            connection_string: None,
            connection_string_file: None,
            hybrid_connection: None,
            ca_file: None,
            insecure_ws: false,
            max_tunnels: DEFAULT_MAX_TUNNELS,
            spare_tunnels: DEFAULT_SPARE_TUNNELS,
            server: ServerSettings::default(),
        }
    }
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
    /// `--state-dir` (`status`).
    pub state_dir: Option<&'a Path>,
    /// `--hc`, `--connection-string-file`, `--ca-file`, `--insecure-ws`.
    pub relay: Option<&'a RelayClientArgs>,
    /// `--max-tunnels` (`relay listen`, `relay connect`).
    pub max_tunnels: Option<&'a String>,
    /// `--spare-tunnels` (`relay connect`).
    pub spare_tunnels: Option<&'a String>,
    /// The step's own prior-art arguments (`exec` only): below the environment and the
    /// flags, above the config file.
    pub step: Option<&'a StepHints>,
}

/// What a step written for the prior art asks for in its own arguments (`--is-debug`,
/// `--debug-port`, `--debug-relay-connection-name`; see `inject::prior_art`).
///
/// They are a layer of their own: above the config file (the step is more specific than
/// the node), below `AMLX_*` variables and flags (the person running the job decides), so
/// `--no-debug` means never and an explicit `--port-range` keeps its range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepHints {
    /// `--is-debug [true|false]`.
    pub debug: Option<bool>,
    /// `--debug-port N`: the one port the step expects.
    pub debug_port: Option<u16>,
    /// `--debug-relay-connection-name NAME`.
    pub hybrid_connection: Option<String>,
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
    let file = match find_file(flags, env, default_path)? {
        Some((path, origin)) => {
            let text = file::read_bounded(&path).map_err(|why| {
                ConfigError::new(format!("{origin}: cannot read {}: {why}", path.display()))
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
fn find_file(
    flags: &Flags<'_>,
    env: &dyn Env,
    default_path: &Path,
) -> Result<Option<(PathBuf, String)>, ConfigError> {
    if let Some(path) = flags.config {
        return Ok(Some((path.to_owned(), "--config".to_owned())));
    }
    if let Some(path) = env::nonempty(env, ENV_CONFIG)? {
        return Ok(Some((PathBuf::from(path), ENV_CONFIG.to_owned())));
    }
    Ok(default_path
        .exists()
        .then(|| (default_path.to_owned(), "default config".to_owned())))
}

/// Defaults, then the file (path and text), then the step's own arguments, then the
/// environment, then the flags.
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
    // Snapshots only for a step with prior-art arguments, to say which ones were overruled.
    let after_step = flags.step.map(|step| {
        apply_step(step, &mut s);
        s.clone()
    });
    env::apply(env, &mut s)?;
    let after_env = after_step.is_some().then(|| s.clone());
    flags::apply(flags, &mut s)?;
    if let (Some(step), Some(after_step), Some(after_env)) = (flags.step, after_step, after_env) {
        s.notes = overruled(step, &after_step, &after_env, &s);
    }
    // `Debug` masks every secret, so the whole result is safe to show with -v.
    Ok(s)
}

/// The step's prior-art arguments over the file's settings.
fn apply_step(step: &StepHints, s: &mut Settings) {
    set(&mut s.policy.enabled, step.debug);
    let range = step.debug_port.map(|port| PortRange {
        start: port,
        end: port,
    });
    set(&mut s.ports.range, range);
    set(
        &mut s.relay.hybrid_connection,
        step.hybrid_connection.clone().map(Some),
    );
}

/// One note per prior-art argument that a variable or a flag overruled, naming both.
fn overruled(
    step: &StepHints,
    after_step: &Settings,
    after_env: &Settings,
    last: &Settings,
) -> Vec<String> {
    // Which layer changed the value last: the flags, else the environment.
    let by = |changed_by_flag: bool, flag: &str, variable: &str| {
        if changed_by_flag {
            flag.to_owned()
        } else {
            variable.to_owned()
        }
    };
    let mut notes = Vec::new();
    if let Some(debug) = step.debug
        && last.policy.enabled != after_step.policy.enabled
    {
        let winner = by(
            last.policy.enabled != after_env.policy.enabled,
            if last.policy.enabled {
                "--debug"
            } else {
                "--no-debug"
            },
            "AMLX_DEBUG",
        );
        notes.push(format!(
            "ignoring the step's --is-debug {debug}: {winner} wins over the step's arguments"
        ));
    }
    if let Some(port) = step.debug_port
        && last.ports.range != after_step.ports.range
    {
        let winner = by(
            last.ports.range != after_env.ports.range,
            "--port-range",
            "AMLX_PORT_RANGE",
        );
        notes.push(format!(
            "ignoring the step's --debug-port {port}: {winner} {} wins over the step's arguments",
            last.ports.range
        ));
    }
    if let Some(name) = &step.hybrid_connection
        && last.relay.hybrid_connection != after_step.relay.hybrid_connection
    {
        let winner = by(
            last.relay.hybrid_connection != after_env.relay.hybrid_connection,
            "--hc",
            "AMLX_RELAY_HC",
        );
        notes.push(format!(
            "ignoring the step's --debug-relay-connection-name {name:?}: {winner} wins over \
             the step's arguments"
        ));
    }
    notes
}

/// Credentials from one layer replace every credential from the layers below, whichever
/// form each has; within the layer a file wins over an inline connection string.
pub(crate) fn set_credentials(
    relay: &mut RelaySettings,
    inline: Option<Secret>,
    file: Option<PathBuf>,
) {
    if let Some(file) = file {
        relay.connection_string_file = Some(file);
        relay.connection_string = None;
    } else if let Some(inline) = inline {
        relay.connection_string = Some(inline);
        relay.connection_string_file = None;
    }
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
    set(&mut s.session.post_mortem, d.post_mortem);
    set(
        &mut s.session.post_mortem_timeout,
        d.post_mortem_timeout.map(|v| v.0),
    );
    set(
        &mut s.session.post_mortem_max,
        d.post_mortem_max.map(|v| v.0.0),
    );
    set(&mut s.ports.range, f.ports.range.map(|v| v.0));
    set(&mut s.ports.lock_dir, f.ports.lock_dir.map(Some));
    set(&mut s.node_ip, f.node.ip.map(|v| Some(v.0.0)));
    set(&mut s.state_dir, f.node.state_dir.map(Some));
    set(&mut s.log_format, f.log.format.map(|v| Some(v.0)));
    let r = f.relay;
    let inline = r
        .connection_string
        .filter(|c| !c.expose().trim().is_empty());
    let file = r
        .connection_string_file
        .filter(|p| !p.as_os_str().is_empty());
    set_credentials(&mut s.relay, inline, file);
    s.relay.hybrid_connection = r.hybrid_connection.filter(|h| !h.trim().is_empty());
    s.relay.ca_file = r.ca_file;
    set(&mut s.relay.insecure_ws, r.insecure_ws);
    set(&mut s.relay.max_tunnels, r.max_tunnels.map(|v| v.0.0));
    set(&mut s.relay.spare_tunnels, r.spare_tunnels.map(|v| v.0.0));
    s.relay.server = r.server.into_settings(&ctx)?;
    s.targets = targets::into_specs(f.targets, &ctx)?;
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
