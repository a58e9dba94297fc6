//! Entry points for the `cargo fuzz` targets in `fuzz/` (not a stable API: hidden from
//! the docs). Each function takes the fuzzer's raw bytes and feeds one parser the way
//! its input arrives in production: from the network, the environment, a file or argv.
//!
//! The functions never panic on their own: a panic inside one is a bug in the parser it
//! drives (a few assert an invariant the parser documents, e.g. a rank spec's text form
//! parses back to itself). Network parsers run over [`ScriptedIo`], an in-memory stream,
//! so the async ones need a Tokio runtime; the fuzz crate runs them on a current-thread
//! runtime with paused time, so every protocol timeout fires at once instead of waiting.

mod local;
mod network;
mod scripted_io;

pub use local::{
    config_file_and_env, duration_text, inject_python_argv, launch_json_merge, lock_records,
    mlflow_response, post_mortem_crash, rank_spec_text, role_environment,
};
pub use network::{
    bridge_preamble, client_frame_reader, connection_string_text, control_message_text, dap_gate,
    hc_request_target, sas_token_text, serve_control_channel, serve_upgrade_request,
    server_frame_relay, upgrade_response,
};
pub use scripted_io::ScriptedIo;

/// The fuzzer's bytes as text: valid UTF-8 as is, anything else decoded lossily (both
/// reach our parsers: HTTP, env and files are read lossily in several places).
fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Splits `data` into at most `n` fields at NUL bytes (NUL cannot occur in argv or
/// environment values, so it is a natural separator for multi-part inputs).
fn fields(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |b| *b == 0).collect()
}

/// The first byte (a selector for the input's shape) and the rest; 0 for empty input.
fn selector(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((first, rest)) => (*first, rest),
        None => (0, data),
    }
}
