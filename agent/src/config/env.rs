//! The `AMLX_*` environment layer: one variable per setting; an empty value is unset.
//!
//! `AMLX_RANK`, `AMLX_LOCAL_RANK` and `AMLX_WORLD_SIZE` are role overrides and belong to
//! the `role` module. `AMLX_CONFIG` picks the file (see `load`).

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::LogFormat;
use crate::inject::InjectMode;
use crate::policy::RankSpec;
use crate::ports::PortRange;
use crate::role::Env;
use crate::session::{DebugMode, FailurePolicy};

use super::value::{FromConfig, NodeIp, PostMortemLimit, SpareTunnels, TargetLimit, TunnelLimit};
use super::{ConfigError, Secret, Settings};

/// The config file to read when `--config` is not given.
pub const ENV_CONFIG: &str = "AMLX_CONFIG";
/// Secret: the Hybrid Connections connection string. Never echoed.
pub const ENV_RELAY_CONNECTION_STRING: &str = "AMLX_RELAY_CONNECTION_STRING";
/// A file holding the connection string; wins over [`ENV_RELAY_CONNECTION_STRING`].
pub const ENV_RELAY_CONNECTION_STRING_FILE: &str = "AMLX_RELAY_CONNECTION_STRING_FILE";

/// The variable's value, `None` when unset or empty (an exported empty variable is a
/// common way of "unsetting" in job specs); a value that is not valid UTF-8 is an error
/// naming the variable (never quoting the value: it may be a secret), not a silent unset.
pub(super) fn nonempty(env: &dyn Env, name: &str) -> Result<Option<String>, ConfigError> {
    let value = env.lookup(name).map_err(|crate::role::NotUnicode| {
        ConfigError::new(format!(
            "{name} is set to a value that is not valid UTF-8: give it a UTF-8 value or unset it"
        ))
    })?;
    Ok(value.filter(|v| !v.trim().is_empty()))
}

/// Parses a non-secret variable; the error names the variable and quotes the value.
fn get<T: FromConfig>(env: &dyn Env, name: &str) -> Result<Option<T>, ConfigError> {
    nonempty(env, name)?
        .map(|v| T::from_config(&v).map_err(|m| ConfigError::new(format!("{name}: {m}"))))
        .transpose()
}

/// Applies every `AMLX_*` setting that is set over `s`.
pub(super) fn apply(env: &dyn Env, s: &mut Settings) -> Result<(), ConfigError> {
    if let Some(v) = get::<bool>(env, "AMLX_DEBUG")? {
        s.policy.enabled = v;
    }
    if let Some(v) = get::<RankSpec>(env, "AMLX_RANKS")? {
        s.policy.ranks = v;
    }
    if let Some(TargetLimit(v)) = get::<TargetLimit>(env, "AMLX_MAX_TARGETS_PER_NODE")? {
        s.policy.max_targets_per_node = Some(v);
    }
    if let Some(v) = get::<PortRange>(env, "AMLX_PORT_RANGE")? {
        s.ports.range = v;
    }
    if let Some(v) = get::<PathBuf>(env, "AMLX_LOCK_DIR")? {
        s.ports.lock_dir = Some(v);
    }
    if let Some(NodeIp(v)) = get::<NodeIp>(env, "AMLX_NODE_IP")? {
        s.node_ip = Some(v);
    }
    if let Some(v) = get::<DebugMode>(env, "AMLX_DEBUG_MODE")? {
        s.session.mode = v;
    }
    if let Some(v) = get::<FailurePolicy>(env, "AMLX_ON_DEBUG_FAILURE")? {
        s.session.on_failure = v;
    }
    if let Some(v) = get::<Duration>(env, "AMLX_ATTACH_TIMEOUT")? {
        s.session.attach_timeout = v;
    }
    if let Some(v) = get::<InjectMode>(env, "AMLX_INJECT")? {
        s.session.inject = v;
    }
    if let Some(v) = get::<bool>(env, "AMLX_WAIT_FOR_CLIENT")? {
        s.session.wait_for_client = v;
    }
    if let Some(v) = get::<bool>(env, "AMLX_POST_MORTEM")? {
        s.session.post_mortem = v;
    }
    if let Some(v) = get::<Duration>(env, "AMLX_POST_MORTEM_TIMEOUT")? {
        s.session.post_mortem_timeout = v;
    }
    if let Some(v) = get::<PostMortemLimit>(env, "AMLX_POST_MORTEM_MAX")? {
        s.session.post_mortem_max = v.0;
    }
    if let Some(v) = get::<LogFormat>(env, "AMLX_LOG_FORMAT")? {
        s.log_format = Some(v);
    }
    let inline = nonempty(env, ENV_RELAY_CONNECTION_STRING)?.map(|v| Secret::new(v.trim()));
    let file = get::<PathBuf>(env, ENV_RELAY_CONNECTION_STRING_FILE)?;
    super::set_credentials(&mut s.relay, inline, file);
    if let Some(v) = get::<String>(env, "AMLX_RELAY_HC")? {
        s.relay.hybrid_connection = Some(v.trim().to_owned());
    }
    if let Some(v) = get::<PathBuf>(env, "AMLX_RELAY_CA_FILE")? {
        s.relay.ca_file = Some(v);
    }
    if let Some(v) = get::<bool>(env, "AMLX_RELAY_INSECURE_WS")? {
        s.relay.insecure_ws = v;
    }
    if let Some(TunnelLimit(v)) = get::<TunnelLimit>(env, "AMLX_RELAY_MAX_TUNNELS")? {
        s.relay.max_tunnels = v;
    }
    if let Some(SpareTunnels(v)) = get::<SpareTunnels>(env, "AMLX_RELAY_SPARE_TUNNELS")? {
        s.relay.spare_tunnels = v;
    }
    if let Some(v) = get::<PathBuf>(env, "AMLX_STATE_DIR")? {
        s.state_dir = Some(v);
    }
    Ok(())
}
