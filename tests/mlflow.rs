//! Integration tests: MLflow run tags against a real MLflow tracking server (PyPI
//! `mlflow-skinny` + its server dependencies, from tests/requirements.txt) on loopback.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amlx_agent::publish::{
    MlflowError, MlflowTags, SessionState, TagPublisher, session_tag_key, session_tag_value,
};
use amlx_agent::session::DebugMode;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// MLflow imports a lot and migrates its database on startup: generous, but bounded.
const STARTUP_DEADLINE: Duration = Duration::from_secs(180);
/// Between health probes while the server starts.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A running `mlflow server`, killed with its whole process group on drop.
pub(crate) struct MlflowServer {
    child: Child,
    /// `http://127.0.0.1:PORT`: the tracking URI.
    pub(crate) base: String,
    /// Everything the server printed, for failure messages.
    output: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl MlflowServer {
    /// Starts the server on 127.0.0.1 port 0 and waits for the port it reports.
    pub(crate) fn start() -> MlflowServer {
        let probe = Command::new("python3")
            .args(["-c", "import mlflow.server, sqlalchemy, alembic, flask"])
            .output()
            .expect("python3 runs");
        assert!(
            probe.status.success(),
            "the MLflow server is not installed: run `python3 -m pip install -r tests/requirements.txt` (tests/run.sh does): {}",
            String::from_utf8_lossy(&probe.stderr)
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let db = format!("sqlite:///{}", dir.path().join("mlflow.db").display());
        let artifacts = dir.path().join("artifacts");
        let mut command = Command::new("python3");
        command
            .args(["-m", "mlflow", "server", "--backend-store-uri", &db])
            .arg("--default-artifact-root")
            .arg(&artifacts)
            .args(["--host", "127.0.0.1", "--port", "0", "--workers", "1"])
            // No background job runner: the test needs the REST API only.
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .current_dir(dir.path())
            // Its own process group, so one signal reaches uvicorn and any worker.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("python3 -m mlflow server starts");
        let output = Arc::new(Mutex::new(String::new()));
        let (lines_tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        drain(stdout, lines_tx.clone(), output.clone());
        drain(stderr, lines_tx, output.clone());
        let mut server = MlflowServer {
            child,
            base: String::new(),
            output,
            _dir: dir,
        };
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(port) = reported_port(&line) {
                        break port;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "mlflow server did not report its port within {STARTUP_DEADLINE:?}:\n{}",
                    server.output()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                    "mlflow server exited before reporting its port ({:?}):\n{}",
                    server.child.wait(),
                    server.output()
                ),
            }
        };
        server.base = format!("http://127.0.0.1:{port}");
        server
    }

    pub(crate) fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        let group = Pid::from_raw(i32::try_from(self.child.id()).expect("PIDs fit in i32"));
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Copies a pipe into `output` and sends each line on `lines`, until the pipe closes.
fn drain(
    pipe: impl Read + Send + 'static,
    lines: mpsc::Sender<String>,
    output: Arc<Mutex<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Ok(mut all) = output.lock() {
                all.push_str(&line);
                all.push('\n');
            }
            let _ = lines.send(line);
        }
    });
}

/// The port in uvicorn's "Uvicorn running on http://127.0.0.1:PORT (Press CTRL+C …)".
fn reported_port(line: &str) -> Option<u16> {
    let rest = line.split_once("running on http://127.0.0.1:")?.1;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A plain-HTTP client for the test's own calls to the server.
pub(crate) fn http_client() -> reqwest::Client {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

pub(crate) async fn wait_healthy(client: &reqwest::Client, server: &MlflowServer) {
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        let health = client.get(format!("{}/health", server.base)).send().await;
        if health.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "mlflow server not healthy within {STARTUP_DEADLINE:?}:\n{}",
            server.output()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

pub(crate) async fn call(
    client: &reqwest::Client,
    server: &MlflowServer,
    path: &str,
    body: Value,
) -> Value {
    let response = client
        .post(format!("{}/api/2.0/mlflow/{path}", server.base))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = response.status();
    let text = response.text().await.expect("body");
    assert!(status.is_success(), "{path} answered {status}: {text}");
    serde_json::from_str(&text).expect("JSON answer")
}

/// The run's tag `key`, read back through `runs/get`.
pub(crate) async fn tag(
    client: &reqwest::Client,
    server: &MlflowServer,
    run_id: &str,
    key: &str,
) -> Option<String> {
    let url = format!("{}/api/2.0/mlflow/runs/get?run_id={run_id}", server.base);
    let run: Value = client
        .get(url)
        .send()
        .await
        .expect("runs/get")
        .json()
        .await
        .expect("JSON run");
    run["run"]["data"]["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .and_then(|t| t["value"].as_str())
        .map(str::to_owned)
}

/// A new run in a new experiment named `experiment`, created through the REST API.
pub(crate) async fn create_run(
    client: &reqwest::Client,
    server: &MlflowServer,
    experiment: &str,
) -> String {
    let created = call(
        client,
        server,
        "experiments/create",
        json!({"name": experiment}),
    )
    .await;
    let experiment_id = created["experiment_id"].as_str().expect("experiment id");
    let run = call(
        client,
        server,
        "runs/create",
        json!({"experiment_id": experiment_id}),
    )
    .await;
    run["run"]["info"]["run_id"]
        .as_str()
        .expect("run id")
        .to_owned()
}

fn tags_for(server: &MlflowServer, run_id: &str) -> MlflowTags {
    let env: HashMap<String, String> = [
        ("MLFLOW_TRACKING_URI", server.base.as_str()),
        ("MLFLOW_RUN_ID", run_id),
        // The open-source server ignores it; sending it must not break anything.
        ("MLFLOW_TRACKING_TOKEN", "test-token"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    MlflowTags::from_env(&env).expect("an http tracking URI and a run id are usable")
}

#[test]
fn session_tags_are_set_updated_and_read_back_from_a_real_server() {
    let server = MlflowServer::start();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = http_client();
        wait_healthy(&client, &server).await;
        let run_id = create_run(&client, &server, "amlx-tags").await;

        let tags = tags_for(&server, &run_id);
        let key = session_tag_key(Some(0), "node-0", 5678);
        assert_eq!(key, "amlx.debug.rank0");
        let waiting = session_tag_value(
            "10.1.2.3:5678",
            DebugMode::Connect,
            SessionState::WaitingForDebugger,
            None,
        );
        tags.set_tag(&key, &waiting).await.expect("set the tag");
        assert_eq!(
            tag(&client, &server, &run_id, &key).await.as_deref(),
            Some(waiting.as_str())
        );

        // A state change overwrites the same key.
        let attached = session_tag_value(
            "10.1.2.3:5678",
            DebugMode::Connect,
            SessionState::Attached,
            None,
        );
        tags.set_tag(&key, &attached).await.expect("update the tag");
        assert_eq!(
            tag(&client, &server, &run_id, &key).await.as_deref(),
            Some("10.1.2.3:5678 mode=connect state=attached")
        );

        // Through the background publisher: the last value published wins.
        let publisher = TagPublisher::spawn(tags.clone(), key.clone()).expect("inside a runtime");
        publisher.publish(session_tag_value(
            "10.1.2.3:5678",
            DebugMode::Connect,
            SessionState::TimedOut,
            None,
        ));
        let last = session_tag_value(
            "10.1.2.3:5678",
            DebugMode::Connect,
            SessionState::RunningUndebugged,
            Some("nobody attached in 10m"),
        );
        publisher.publish(last.clone());
        publisher.finish().await;
        assert_eq!(
            tag(&client, &server, &run_id, &key).await.as_deref(),
            Some(last.as_str())
        );

        // A run that does not exist: the server's error comes back, named.
        let err = tags_for(&server, "no-such-run")
            .set_tag(&key, "x")
            .await
            .expect_err("unknown run");
        match err {
            MlflowError::Status { status, detail } => {
                assert!((400..500).contains(&status), "{status} {detail}");
                assert!(detail.contains("RESOURCE_DOES_NOT_EXIST"), "{detail}");
            }
            other => panic!("expected the server's error, got {other}"),
        }
    });
}
