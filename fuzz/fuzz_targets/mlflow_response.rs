//! Fuzz target: MLflow tracking URIs and error bodies.

#![no_main]

use amlx_agent::fuzz_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_entry::mlflow_response(data);
});
