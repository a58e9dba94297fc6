//! Fuzz target: Port lock-file records, session status records and `/proc` lines.

#![no_main]

use amlx_agent::fuzz_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_entry::lock_records(data);
});
