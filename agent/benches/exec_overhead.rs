//! What a non-target process pays for having `amlx-agent exec --` in front of it.
//!
//! Runs `true` three ways, interleaved so machine noise hits all alike: directly; through
//! `env` (the smallest possible wrapper: one extra execve, nothing else); and through
//! the agent (debugging off, so it takes its shortest path: config, role, decision,
//! execve). Agent minus `env` is what the agent's own work costs; agent minus direct is
//! what a job sees. Prints medians, differences, ratios and the peak RSS.
//! Run with `cargo bench --bench exec_overhead`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs per variant; enough for a stable median on a noisy 2-core machine.
const RUNS: usize = 300;

fn main() {
    let agent = env!("CARGO_BIN_EXE_amlx-agent");
    let direct = || Command::new("true");
    let wrapper = || {
        let mut cmd = Command::new("env");
        cmd.arg("true");
        cmd
    };
    let through_agent = || {
        let mut cmd = Command::new(agent);
        cmd.args(["exec", "--", "true"])
            .env_remove("AMLX_DEBUG")
            .env_remove("AMLX_CONFIG");
        cmd
    };
    // Warm the page cache and the dynamic loader for all three.
    for _ in 0..20 {
        time_one(direct());
        time_one(wrapper());
        time_one(through_agent());
    }
    let mut direct_times = Vec::with_capacity(RUNS);
    let mut wrapper_times = Vec::with_capacity(RUNS);
    let mut agent_times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        direct_times.push(time_one(direct()));
        wrapper_times.push(time_one(wrapper()));
        agent_times.push(time_one(through_agent()));
    }
    let direct_median = median(&mut direct_times);
    let wrapper_median = median(&mut wrapper_times);
    let agent_median = median(&mut agent_times);
    println!("exec overhead for a non-target process ({RUNS} runs each, medians)");
    println!(
        "  `true`                            {:>8.1} us",
        micros(direct_median)
    );
    println!(
        "  `env true` (baseline wrapper)     {:>8.1} us",
        micros(wrapper_median)
    );
    println!(
        "  `amlx-agent exec -- true`         {:>8.1} us",
        micros(agent_median)
    );
    println!(
        "  agent's own work (agent - env)    {:>8.1} us   ratio agent/env    {:.2}x",
        micros(agent_median.saturating_sub(wrapper_median)),
        ratio(agent_median, wrapper_median)
    );
    println!(
        "  what a job sees (agent - true)    {:>8.1} us   ratio agent/direct {:.2}x",
        micros(agent_median.saturating_sub(direct_median)),
        ratio(agent_median, direct_median)
    );
    println!(
        "  peak RSS of any child (the agent) {} KiB",
        peak_child_rss_kib()
    );
}

fn time_one(mut cmd: Command) -> Duration {
    let start = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the benchmark command runs");
    let elapsed = start.elapsed();
    assert!(status.success(), "{cmd:?} failed: {status}");
    elapsed
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// The largest RSS of any waited-for child so far (the agent path dominates: `true` is tiny).
fn peak_child_rss_kib() -> i64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map(|usage| usage.max_rss())
        .unwrap_or(-1)
}
