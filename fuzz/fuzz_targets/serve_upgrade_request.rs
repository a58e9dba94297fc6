//! Fuzz target: `relay serve` reading an unauthenticated upgrade request, through authorization and the accept command.

#![no_main]

use amlx_agent::fuzz_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    amlx_agent_fuzz::block_on(fuzz_entry::serve_upgrade_request(data));
});
