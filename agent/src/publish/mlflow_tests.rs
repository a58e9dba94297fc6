//! Unit tests for MLflow tags: keys, values, URIs, environment, and requests against
//! small loopback HTTP servers (the real MLflow server is in tests/mlflow.rs).

use std::collections::HashMap;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn session_tag_keys() {
    let cases = [
        (Some(0), "node-1", 5678, "amlx.debug.rank0"),
        (Some(17), "node-1", 5678, "amlx.debug.rank17"),
        (
            None,
            "node-1.cluster",
            5679,
            "amlx.debug.node-1.cluster.port5679",
        ),
        (None, "we!rd host", 5680, "amlx.debug.we-rd-host.port5680"),
    ];
    for (rank, host, port, want) in cases {
        assert_eq!(session_tag_key(rank, host, port), want);
    }
}

#[test]
fn session_tag_values() {
    let cases = [
        (
            "10.1.2.3:5678",
            DebugMode::Connect,
            SessionState::WaitingForDebugger,
            None,
            "10.1.2.3:5678 mode=connect state=waiting-for-debugger",
        ),
        (
            "relay hc1/5678",
            DebugMode::Listen,
            SessionState::RelayUnreachable,
            Some("401 from the relay"),
            "relay hc1/5678 mode=listen state=relay-unreachable reason=401 from the relay",
        ),
    ];
    for (endpoint, mode, state, reason, want) in cases {
        assert_eq!(session_tag_value(endpoint, mode, state, reason), want);
    }
    let long = "é".repeat(2 * MAX_TAG_VALUE_CHARS);
    let value = session_tag_value("e", DebugMode::Direct, SessionState::Attached, Some(&long));
    assert_eq!(value.chars().count(), MAX_TAG_VALUE_CHARS);
}

#[test]
fn ended_tag_values_keep_the_last_state() {
    let cases = [
        (None, "e mode=connect state=ended"),
        (
            Some((SessionState::TimedOut, Some("nobody attached within 3s"))),
            "e mode=connect state=ended last=timed-out reason=nobody attached within 3s",
        ),
        (
            Some((SessionState::Attached, None)),
            "e mode=connect state=ended last=attached",
        ),
        // An explicit `ended` is not repeated as its own last state.
        (
            Some((SessionState::Ended, Some("gone"))),
            "e mode=connect state=ended",
        ),
    ];
    for (last, want) in cases {
        assert_eq!(session_ended_tag_value("e", DebugMode::Connect, last), want);
    }
    let long = "é".repeat(2 * MAX_TAG_VALUE_CHARS);
    let last = Some((SessionState::TimedOut, Some(long.as_str())));
    let value = session_ended_tag_value("e", DebugMode::Connect, last);
    assert_eq!(value.chars().count(), MAX_TAG_VALUE_CHARS);
}

#[test]
fn rest_bases() {
    let ws = "/mlflow/v1.0/subscriptions/sub/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws";
    let cases: Vec<(String, Result<String, UriError>)> = vec![
        (
            format!("azureml://eastus.api.azureml.ms{ws}?auth=x&token=y"),
            Ok(format!("https://eastus.api.azureml.ms{ws}")),
        ),
        (
            "http://127.0.0.1:5000".into(),
            Ok("http://127.0.0.1:5000/".into()),
        ),
        (
            " https://mlflow.example/prefix/#frag ".into(),
            Ok("https://mlflow.example/prefix/".into()),
        ),
        (
            "file:///tmp/mlruns".into(),
            Err(UriError::Unsupported("file".into())),
        ),
        (
            "sqlite:///mlflow.db".into(),
            Err(UriError::Unsupported("sqlite".into())),
        ),
        ("databricks".into(), Err(UriError::NotAUrl)),
        ("./mlruns".into(), Err(UriError::NotAUrl)),
        ("azureml:///no-host".into(), Err(UriError::NotAUrl)),
    ];
    for (uri, want) in cases {
        let got = rest_base(&uri).map(|u| u.to_string());
        assert_eq!(got, want, "{uri:?}");
    }
}

#[test]
fn from_env_needs_a_rest_uri_and_a_run() {
    let cases = [
        (env(&[]), false),
        (env(&[("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")]), false),
        (env(&[("MLFLOW_RUN_ID", "r1")]), false),
        (
            env(&[
                ("MLFLOW_TRACKING_URI", "file:///m"),
                ("MLFLOW_RUN_ID", "r1"),
            ]),
            false,
        ),
        (
            env(&[
                ("MLFLOW_TRACKING_URI", "http://127.0.0.1:1"),
                ("MLFLOW_RUN_ID", " "),
            ]),
            false,
        ),
        (
            env(&[
                ("MLFLOW_TRACKING_URI", "http://127.0.0.1:1"),
                ("MLFLOW_RUN_ID", "r1"),
            ]),
            true,
        ),
    ];
    for (vars, want) in cases {
        assert_eq!(MlflowTags::from_env(&vars).is_some(), want, "{vars:?}");
    }
}

#[test]
fn debug_output_hides_credentials() {
    let vars = env(&[
        (
            "MLFLOW_TRACKING_URI",
            "http://alice:pw-in-url@127.0.0.1:1/x",
        ),
        ("MLFLOW_RUN_ID", "r1"),
        ("MLFLOW_TRACKING_USERNAME", "alice"),
        ("MLFLOW_TRACKING_PASSWORD", "hunter2"),
    ]);
    let tags = MlflowTags::from_env(&vars).expect("usable");
    let shown = format!("{tags:?}");
    for secret in ["hunter2", "pw-in-url"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(shown.contains("127.0.0.1:1"), "{shown}");
    assert_eq!(tags.run_id(), "r1");
}

#[test]
fn error_details() {
    let cases = [
        (
            r#"{"error_code":"RESOURCE_DOES_NOT_EXIST","message":"Run 'x' not found"}"#,
            "RESOURCE_DOES_NOT_EXIST: Run 'x' not found",
        ),
        (r#"{"message":"nope"}"#, "nope"),
        ("", "(empty body)"),
        ("<html>bad gateway</html>\n", "<html>bad gateway</html>"),
    ];
    for (body, want) in cases {
        assert_eq!(error_detail(body), want);
    }
    assert!(error_detail(&"x".repeat(1000)).ends_with('…'));
}

/// A loopback HTTP server answering every request with `response` and reporting each
/// request (head and body) on the returned channel. One request per connection.
async fn fake_server(response: String) -> (String, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            let response = response.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Read the head, then Content-Length bytes of body.
                loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            let _ = tx.send(text);
                            break;
                        }
                    }
                }
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), rx)
}

const OK_RESPONSE: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";

fn tags_for(uri: &str, extra: &[(&str, &str)]) -> MlflowTags {
    let mut vars = env(&[("MLFLOW_TRACKING_URI", uri), ("MLFLOW_RUN_ID", "run-1")]);
    vars.extend(env(extra));
    MlflowTags::from_env(&vars).expect("usable")
}

#[tokio::test]
async fn set_tag_posts_json_with_bearer_auth() {
    let (uri, mut requests) = fake_server(OK_RESPONSE.to_owned()).await;
    let tags = tags_for(&uri, &[("MLFLOW_TRACKING_TOKEN", "tok-123")]);
    tags.set_tag("amlx.debug.rank0", "v1").await.expect("200");
    let request = requests.recv().await.expect("one request");
    assert!(
        request.starts_with(&format!("POST {SET_TAG_PATH} HTTP/1.1")),
        "{request}"
    );
    assert!(
        request
            .to_ascii_lowercase()
            .contains("authorization: bearer tok-123"),
        "{request}"
    );
    let body = request.split_once("\r\n\r\n").expect("body").1;
    let json: serde_json::Value = serde_json::from_str(body).expect("json body");
    assert_eq!(
        json,
        serde_json::json!({"run_id": "run-1", "key": "amlx.debug.rank0", "value": "v1"})
    );
}

#[tokio::test]
async fn set_tag_uses_basic_auth_without_a_token() {
    let (uri, mut requests) = fake_server(OK_RESPONSE.to_owned()).await;
    let extra = [
        ("MLFLOW_TRACKING_USERNAME", "alice"),
        ("MLFLOW_TRACKING_PASSWORD", "pw"),
    ];
    tags_for(&uri, &extra).set_tag("k", "v").await.expect("200");
    let request = requests.recv().await.expect("one request");
    // base64("alice:pw")
    assert!(request.contains("Basic YWxpY2U6cHc="), "{request}");
}

#[tokio::test]
async fn set_tag_reports_the_servers_error() {
    let body = r#"{"error_code":"PERMISSION_DENIED","message":"nope"}"#;
    let forbidden = format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (uri, _requests) = fake_server(forbidden).await;
    let err = tags_for(&uri, &[])
        .set_tag("k", "v")
        .await
        .expect_err("403");
    assert!(
        matches!(&err, MlflowError::Status { status: 403, detail } if detail == "PERMISSION_DENIED: nope"),
        "{err}"
    );
}

#[tokio::test]
async fn set_tag_is_bounded_when_the_server_never_answers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let uri = format!("http://{}", listener.local_addr().expect("addr"));
    // Accepts (the kernel does) but never reads or answers.
    let tags = tags_for(&uri, &[]).with_timeout(Duration::from_millis(200));
    let err = tags.set_tag("k", "v").await.expect_err("no answer");
    assert!(matches!(err, MlflowError::Timeout(_)), "{err}");
    drop(listener);
}

#[tokio::test]
async fn set_tag_reports_a_refused_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let uri = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let err = tags_for(&uri, &[])
        .set_tag("k", "v")
        .await
        .expect_err("refused");
    assert!(matches!(err, MlflowError::Transport(_)), "{err}");
    assert!(!err.to_string().contains(&uri), "no URL in errors: {err}");
}

#[tokio::test]
async fn publisher_sends_the_latest_value_last() {
    let (uri, mut requests) = fake_server(OK_RESPONSE.to_owned()).await;
    let publisher = TagPublisher::spawn(tags_for(&uri, &[]), "k".into()).expect("runtime");
    for value in ["first", "second", "third"] {
        publisher.publish(value);
    }
    publisher.finish().await;
    let mut seen = Vec::new();
    while let Ok(request) = requests.try_recv() {
        seen.push(request);
    }
    assert!(!seen.is_empty() && seen.len() <= 3, "{seen:?}");
    let last = seen.last().expect("at least one");
    assert!(last.contains("\"value\":\"third\""), "{last}");
}

#[test]
fn publisher_needs_a_runtime() {
    let tags = tags_for("http://127.0.0.1:1", &[]);
    assert!(TagPublisher::spawn(tags, "k".into()).is_err());
}

/// A server that answers with an endless body: the agent reads a bounded prefix and
/// stops. It read the whole body until the request's bound (5 s), which on loopback grew
/// one agent process past 2.7 GB: memory a training node's step needs.
#[tokio::test]
async fn an_endless_response_body_is_read_only_up_to_its_bound() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    /// What the server offers at most (the test's own bound); far more than the cap.
    const OFFERED: usize = 512 << 20;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let written = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&written);
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut head = [0u8; 4096];
        let _ = stream.read(&mut head).await;
        let _ = stream
            .write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\n")
            .await;
        let chunk = vec![b'x'; 64 * 1024];
        while counted.load(Ordering::Relaxed) < OFFERED {
            if stream.write_all(&chunk).await.is_err() {
                break;
            }
            counted.fetch_add(chunk.len(), Ordering::Relaxed);
        }
    });
    let err = tags_for(&format!("http://{addr}"), &[])
        .with_timeout(Duration::from_secs(20))
        .set_tag("k", "v")
        .await
        .expect_err("500");
    assert!(
        matches!(&err, MlflowError::Status { status: 500, detail } if detail.starts_with("xxx")),
        "{err}"
    );
    let _ = tokio::time::timeout(Duration::from_secs(20), server).await;
    // What the server wrote before the agent hung up: the cap plus socket buffers.
    let written = written.load(Ordering::Relaxed);
    assert!(written < 64 << 20, "the agent read {written} bytes");
}

/// A token with a line break cannot be a header: tags are off at once, with a line that
/// names the variable and not its value. Every request failed with "builder error:
/// failed to parse header value", naming nothing.
#[test]
fn a_token_with_a_line_break_turns_tags_off_up_front() {
    let vars = env(&[
        ("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"),
        ("MLFLOW_RUN_ID", "run-1"),
        ("MLFLOW_TRACKING_TOKEN", "tok-1\ntok-2"),
    ]);
    assert!(MlflowTags::from_env(&vars).is_none());
}
