//! Fuzz target: `relay serve`'s Hybrid Connections request target (`/$hc/path?sb-hc-...`) and the URLs built from it.

#![no_main]

use amlx_agent::fuzz_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_entry::hc_request_target(data);
});
