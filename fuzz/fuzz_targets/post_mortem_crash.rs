//! Fuzz target: the post-mortem hook's crash line (from a crashed interpreter), the
//! debugpy bootstrap's report (from a step's interpreter) and a node slot's record (from
//! another rank), as the agent reads them.

#![no_main]

use amlx_agent::fuzz_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_entry::post_mortem_crash(data);
});
