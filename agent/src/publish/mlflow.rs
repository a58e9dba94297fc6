//! MLflow run tags: `amlx.debug.rank<N>` = "endpoint mode=M state=S" on the job's run,
//! so the endpoint shows on the run page (Azure ML sets `MLFLOW_TRACKING_URI` and
//! `MLFLOW_RUN_ID` in every job). Once the session is over the tag reads
//! `state=ended last=<the last state> reason=<its reason>`.
//!
//! Best effort: one bounded request per update ([`REQUEST_TIMEOUT`]), never on the
//! step's path ([`TagPublisher`] runs them on a task, latest value wins), and a failure
//! is one warning naming the cause. Credentials come from `MLFLOW_TRACKING_TOKEN`
//! (bearer) or `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD` (basic) and are
//! never logged; neither is the tracking URI (only its host).
//!
//! Tracking URIs: `http(s)://host[/prefix]` is the REST base as is. Azure ML's
//! `azureml://<region>.api.azureml.ms/mlflow/v1.0/subscriptions/…/workspaces/<ws>` maps to
//! `https://` on the same host and path — what the azureml-mlflow plugin does (its host
//! URL is `https://` + the URI's host, and its REST base is that plus the URI's
//! `/mlflow/v…/<workspace scope>` path), with the job's `MLFLOW_TRACKING_TOKEN` as the
//! bearer token. Best effort: private-link workspaces whose service endpoint differs from
//! the URI's host are not discovered. Other schemes (`file:`, `sqlite:`, `databricks`)
//! have no REST server: tags are off.

use std::fmt;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use url::Url;

use super::SessionState;
pub use super::tag_publisher::TagPublisher;
use crate::config::Secret;
use crate::relay::client::tls;
use crate::role::Env;
use crate::session::DebugMode;

/// Upper bound on one tag request, connect to last byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The MLflow REST call that sets one tag on a run.
pub const SET_TAG_PATH: &str = "/api/2.0/mlflow/runs/set-tag";

/// Prefix of every tag the agent sets.
pub const TAG_PREFIX: &str = "amlx.debug.";

/// MLflow rejects longer tag values (the server limit is 8000; Azure ML's is lower).
pub const MAX_TAG_VALUE_CHARS: usize = 5000;

/// How much of an error response body goes into the warning.
const MAX_ERROR_BODY_CHARS: usize = 300;

/// The most of a response body read. MLflow answers in a few hundred bytes and only the
/// start of an error's body is shown; a server sending more is not read on. An endless
/// body, read to the request's time bound, grew an agent to gigabytes on loopback, on a
/// node whose memory the step needs.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The tag key for one session: `amlx.debug.rank<N>`, or, when the rank is unknown
/// (several rankless workers per node), `amlx.debug.<host>.port<P>`.
pub fn session_tag_key(rank: Option<u32>, host: &str, port: u16) -> String {
    match rank {
        Some(rank) => format!("{TAG_PREFIX}rank{rank}"),
        None => {
            // MLflow keys allow alphanumerics, `_ - . / :` and spaces.
            let host: String = host
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "_-.".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            format!("{TAG_PREFIX}{host}.port{port}")
        }
    }
}

/// The tag value: `10.1.2.3:5678 mode=connect state=waiting-for-debugger[ reason=…]`.
pub fn session_tag_value(
    endpoint: &str,
    mode: DebugMode,
    state: SessionState,
    reason: Option<&str>,
) -> String {
    capped(
        format!("{endpoint} mode={mode} state={state}"),
        None,
        reason,
    )
}

/// The tag value a session leaves behind: `state=ended`, plus the last state it was in
/// and why (`… state=ended last=timed-out reason=no debugger attached within 10m; …`).
/// After the job the run page still tells what happened, not only that it is over.
///
/// ```
/// use amlx_agent::publish::{SessionState, session_ended_tag_value};
/// use amlx_agent::session::DebugMode;
/// let last = Some((SessionState::TimedOut, Some("nobody came")));
/// assert_eq!(
///     session_ended_tag_value("relay:hc/5678", DebugMode::Connect, last),
///     "relay:hc/5678 mode=connect state=ended last=timed-out reason=nobody came"
/// );
/// ```
pub fn session_ended_tag_value(
    endpoint: &str,
    mode: DebugMode,
    last: Option<(SessionState, Option<&str>)>,
) -> String {
    let ended = SessionState::Ended;
    let value = format!("{endpoint} mode={mode} state={ended}");
    match last.filter(|(state, _)| *state != ended) {
        Some((state, reason)) => capped(value, Some(state), reason),
        None => capped(value, None, None),
    }
}

/// Appends `last=` and `reason=` and cuts the value to [`MAX_TAG_VALUE_CHARS`].
fn capped(mut value: String, last: Option<SessionState>, reason: Option<&str>) -> String {
    if let Some(last) = last {
        value.push_str(&format!(" last={last}"));
    }
    if let Some(reason) = reason {
        value.push_str(" reason=");
        value.push_str(reason);
    }
    match value.char_indices().nth(MAX_TAG_VALUE_CHARS) {
        Some((cut, _)) => value[..cut].to_owned(),
        None => value,
    }
}

/// Why a tracking URI has no REST base.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("the tracking URI is not a URL")]
    NotAUrl,
    #[error("tracking URI scheme {0:?} has no REST server (only http, https and azureml)")]
    Unsupported(String),
}

/// The REST base for a tracking URI (see the module docs), without query or fragment.
///
/// ```
/// use amlx_agent::publish::mlflow::rest_base;
/// let base = rest_base("azureml://westus.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/g/providers/Microsoft.MachineLearningServices/workspaces/w").unwrap();
/// assert_eq!(base.as_str(), "https://westus.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/g/providers/Microsoft.MachineLearningServices/workspaces/w");
/// assert_eq!(rest_base("http://127.0.0.1:5000/").unwrap().as_str(), "http://127.0.0.1:5000/");
/// assert!(rest_base("file:///tmp/mlruns").is_err());
/// ```
pub fn rest_base(uri: &str) -> Result<Url, UriError> {
    let mut url = crate::web_url::parse(uri.trim()).map_err(|_| UriError::NotAUrl)?;
    match url.scheme() {
        "http" | "https" => {}
        "azureml" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err(UriError::NotAUrl);
            }
            // Url refuses to switch a non-special scheme to a special one: rebuild it.
            let rest = &url.as_str()["azureml:".len()..];
            url = crate::web_url::parse(&format!("https:{rest}")).map_err(|_| UriError::NotAUrl)?;
        }
        other => return Err(UriError::Unsupported(other.to_owned())),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(UriError::NotAUrl);
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// Why one tag request failed.
#[derive(Debug, thiserror::Error)]
pub enum MlflowError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Transport(String),
    #[error("server answered {status}: {detail}")]
    Status { status: u16, detail: String },
}

/// How requests authenticate.
#[derive(Debug, Clone)]
enum Auth {
    None,
    Bearer(Secret),
    Basic { user: String, password: Secret },
}

/// Sets tags on one MLflow run. Cheap to clone (the HTTP client is shared).
#[derive(Clone)]
pub struct MlflowTags {
    base: Url,
    run_id: String,
    auth: Auth,
    client: reqwest::Client,
    timeout: Duration,
}

impl fmt::Debug for MlflowTags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry user info; show the host only. Secrets print as ***.
        f.debug_struct("MlflowTags")
            .field("host", &self.host())
            .field("run_id", &self.run_id)
            .field("auth", &self.auth)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl MlflowTags {
    /// From `MLFLOW_TRACKING_URI` + `MLFLOW_RUN_ID`; `None` (with one log line saying
    /// why, when the variables are set) if tags cannot be set.
    pub fn from_env(env: &dyn Env) -> Option<MlflowTags> {
        let var = |name: &str| env.var(name).filter(|v| !v.trim().is_empty());
        let uri = var("MLFLOW_TRACKING_URI")?;
        let Some(run_id) = var("MLFLOW_RUN_ID") else {
            tracing::debug!("MLFLOW_TRACKING_URI is set but MLFLOW_RUN_ID is not: no run tags");
            return None;
        };
        let base = match rest_base(&uri) {
            Ok(base) => base,
            Err(err) => {
                tracing::info!("MLflow run tags off: {err}");
                return None;
            }
        };
        let token = var("MLFLOW_TRACKING_TOKEN");
        if token
            .as_deref()
            .is_some_and(|t| t.chars().any(char::is_control))
        {
            // Named, never quoted: it is a secret.
            tracing::info!(
                "MLflow run tags off: MLFLOW_TRACKING_TOKEN holds a line break or another \
                 control character, which no HTTP header can carry (check how the job sets it)"
            );
            return None;
        }
        let auth = match (token, var("MLFLOW_TRACKING_USERNAME")) {
            (Some(token), _) => Auth::Bearer(Secret::new(token)),
            (None, Some(user)) => Auth::Basic {
                user,
                password: Secret::new(env.var("MLFLOW_TRACKING_PASSWORD").unwrap_or_default()),
            },
            (None, None) => Auth::None,
        };
        let ca_file = var("MLFLOW_TRACKING_SERVER_CERT_PATH");
        match Self::new(base, run_id.trim(), auth, ca_file.as_deref()) {
            Ok(tags) => Some(tags),
            Err(err) => {
                tracing::warn!("MLflow run tags off: {err:#}");
                None
            }
        }
    }

    fn new(base: Url, run_id: &str, auth: Auth, ca_file: Option<&str>) -> anyhow::Result<Self> {
        let tls = tls_config(base.scheme() == "https", ca_file)?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("amlx-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("could not build the HTTP client")?;
        Ok(MlflowTags {
            base,
            run_id: run_id.to_owned(),
            auth,
            client,
            timeout: REQUEST_TIMEOUT,
        })
    }

    /// The same tags with another per-request bound.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The run the tags go to.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The tracking server's host (and port), for log lines.
    pub fn host(&self) -> String {
        let host = self.base.host_str().unwrap_or_default();
        match self.base.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }

    /// Sets `key` = `value` on the run: one request, bounded by the timeout.
    pub async fn set_tag(&self, key: &str, value: &str) -> Result<(), MlflowError> {
        let url = format!("{}{SET_TAG_PATH}", self.base.as_str().trim_end_matches('/'));
        let body = serde_json::json!({ "run_id": self.run_id, "key": key, "value": value });
        let request = self.client.post(url).json(&body).timeout(self.timeout);
        let request = match &self.auth {
            Auth::None => request,
            Auth::Bearer(token) => request.bearer_auth(token.expose()),
            Auth::Basic { user, password } => request.basic_auth(user, Some(password.expose())),
        };
        let exchange = async {
            let mut response = request.send().await?;
            let status = response.status();
            let mut body = Vec::new();
            while body.len() < MAX_RESPONSE_BYTES {
                let Some(chunk) = response.chunk().await? else {
                    break;
                };
                let room = MAX_RESPONSE_BYTES - body.len();
                body.extend_from_slice(chunk.get(..room).unwrap_or(&chunk));
            }
            // What is left unread is dropped with the connection.
            Ok::<_, reqwest::Error>((status, String::from_utf8_lossy(&body).into_owned()))
        };
        // The client timeout covers the request; this outer bound also covers the body.
        let (status, text) = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => return Err(MlflowError::Timeout(self.timeout)),
            Ok(Err(err)) if err.is_timeout() => return Err(MlflowError::Timeout(self.timeout)),
            Ok(Err(err)) => return Err(MlflowError::Transport(error_chain(err.without_url()))),
            Ok(Ok(answer)) => answer,
        };
        if status.is_success() {
            return Ok(());
        }
        Err(MlflowError::Status {
            status: status.as_u16(),
            detail: error_detail(&text),
        })
    }
}

/// The whole cause chain of an error on one line (reqwest's top message is generic).
fn error_chain(err: reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// MLflow's `{"error_code", "message"}` when the body has them, else the body, shortened.
pub(crate) fn error_detail(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let detail = match (field("error_code"), field("message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        (None, Some(message)) => message,
        (None, None) if body.trim().is_empty() => "(empty body)".to_owned(),
        (None, None) => body.trim().to_owned(),
    };
    match detail.char_indices().nth(MAX_ERROR_BODY_CHARS) {
        Some((cut, _)) => format!("{}…", &detail[..cut]),
        None => detail,
    }
}

/// The agent's rustls setup; roots from `ca_file` or the system store (https only).
fn tls_config(https: bool, ca_file: Option<&str>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if https {
        let certs: Vec<CertificateDer<'static>> = match ca_file {
            Some(path) => CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<_, _>>())
                .with_context(|| format!("could not read CA certificates from {path}"))?,
            None => rustls_native_certs::load_native_certs().certs,
        };
        roots.add_parsable_certificates(certs);
        if roots.is_empty() {
            anyhow::bail!(
                "no CA certificates to verify the https tracking server (install the system CA bundle or set SSL_CERT_FILE)"
            );
        }
    }
    tls::config_with_roots(roots)
}

#[cfg(test)]
#[path = "mlflow_tests.rs"]
mod tests;
