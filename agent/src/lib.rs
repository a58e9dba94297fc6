//! amlx-agent: makes exactly the right processes of a distributed training job
//! remotely debuggable. The binary is a thin shell over this library.

pub mod atomic_file;
pub mod block_cache;
pub mod cli;
pub mod commands;
pub mod config;
pub mod demo;
#[doc(hidden)]
pub mod fuzz_entry;
pub mod inject;
pub mod launch_json;
pub mod logging;
pub mod memory_copies;
pub mod netinfo;
pub mod policy;
pub mod poll_deadline;
pub mod ports;
pub mod post_mortem;
pub mod process;
pub mod publish;
pub mod relay;
pub mod role;
pub mod run;
pub mod session;
pub mod small_file;
pub mod web_url;
