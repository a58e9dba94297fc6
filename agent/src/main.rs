//! The `amlx-agent` binary: parse, dispatch, exit code. Everything else is in the library.

/// The static build's heap: musl's allocator behind a cache of freed blocks of a few KiB
/// (`amlx_agent::block_cache` says why). Other builds keep their C library's allocator.
#[cfg(target_env = "musl")]
#[global_allocator]
static HEAP: amlx_agent::block_cache::BlockCache<std::alloc::System> =
    amlx_agent::block_cache::BlockCache::new(std::alloc::System);

fn main() {
    let cli = amlx_agent::cli::Cli::parse_args();
    let code = amlx_agent::commands::run(cli);
    std::process::exit(code);
}

/// Records the signal state the agent was started with before Rust's runtime sets
/// SIGPIPE to "ignore" (see `amlx_agent::process`): the step must get the parent's SIGPIPE.
///
/// Why an ELF constructor rather than `#![no_main]` with our own C `main`: libc runs
/// `.init_array` entries before it calls `main` on glibc and musl alike, statically linked
/// or not, so this sees the untouched state and std's runtime start-up still runs in full.
/// Skipping that start-up would lose `std::env::args` on musl (our static release target,
/// where std learns argv only there), the reopening of closed stdio descriptors on
/// /dev/null, and the main thread's stack-overflow guard.
extern "C" fn record_inherited_signals() {
    amlx_agent::process::record_inherited_signals();
}

// SAFETY: `.init_array` holds plain `extern "C" fn()` pointers that libc calls once,
// single-threaded, before `main`; the function only queries `sigaction` and
// `pthread_sigmask` and stores the result, needing nothing std's runtime sets up.
#[allow(unsafe_code)]
#[used]
#[unsafe(link_section = ".init_array")]
static RECORD_INHERITED_SIGNALS: extern "C" fn() = record_inherited_signals;
