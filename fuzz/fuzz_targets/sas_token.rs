//! Fuzz target: SAS token parsing and verification (header and query forms), and sign-then-verify.

#![no_main]

use amlx_agent::fuzz_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_entry::sas_token_text(data);
});
