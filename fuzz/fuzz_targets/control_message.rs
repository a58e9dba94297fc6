//! Fuzz target: Control-channel JSON (accept, renewToken, ...) as the listener and the relay parse it.

#![no_main]

use amlx_agent::fuzz_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_entry::control_message_text(data);
});
