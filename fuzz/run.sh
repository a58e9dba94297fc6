#!/usr/bin/env bash
# Fuzzes every cargo-fuzz target of amlx-agent for SECONDS each (default 60), one after
# another, and fails if any target crashes, panics, leaks past the memory limit or hangs
# on one input for longer than FUZZ_INPUT_TIMEOUT seconds.
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]
#
# Installs cargo-fuzz from crates.io when it is missing. cargo-fuzz needs nightly
# compiler flags (-Zsanitizer, sanitizer coverage); the stable toolchain provides them
# with RUSTC_BOOTSTRAP=1, which is what this script uses unless FUZZ_TOOLCHAIN names
# another toolchain (e.g. FUZZ_TOOLCHAIN=nightly, when one is installed).
#
# Seeds are read from fuzz/corpus/<target>/ (checked in); what libFuzzer learns goes to
# fuzz/work/corpus/<target>/, crashing inputs to fuzz/artifacts/<target>/, logs to
# fuzz/work/logs/<target>.log (none of them checked in). Everything runs under `nice`
# (FUZZ_NICE, default 15) and one libFuzzer process at a time.
set -euo pipefail

seconds="${1:-60}"
if [[ $# -gt 0 ]]; then shift; fi
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [[ "$seconds" -eq 0 ]]; then
    echo "usage: bash fuzz/run.sh [SECONDS] [TARGET...]  (SECONDS: a whole number, at least 1)" >&2
    exit 2
fi

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$fuzz_dir"
niceness="${FUZZ_NICE:-15}"
input_timeout="${FUZZ_INPUT_TIMEOUT:-25}"
toolchain="${FUZZ_TOOLCHAIN:-stable}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz (crates.io)"
    nice -n "$niceness" cargo install cargo-fuzz --locked
fi

if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    echo "toolchain $toolchain is not installed here (rustup toolchain list: $(rustup toolchain list | tr '\n' ' '))" >&2
    exit 2
fi
case "$toolchain" in
    nightly*) ;;
    *) export RUSTC_BOOTSTRAP=1 ;;
esac
cargo_fuzz=(nice -n "$niceness" cargo "+$toolchain" fuzz)

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <("${cargo_fuzz[@]}" list --fuzz-dir "$fuzz_dir")
fi

echo "== building all fuzz targets once with $toolchain ($(rustup run "$toolchain" rustc --version))"
"${cargo_fuzz[@]}" build --fuzz-dir "$fuzz_dir"

mkdir -p work/logs
failed=()
for target in "${targets[@]}"; do
    mkdir -p "work/corpus/$target" "corpus/$target" "artifacts/$target"
    log="work/logs/$target.log"
    echo "== $target: ${seconds}s"
    if "${cargo_fuzz[@]}" run --fuzz-dir "$fuzz_dir" "$target" \
        "work/corpus/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout="$input_timeout" -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^stat::number_of_executed_units|^Done [0-9]+ runs' "$log" | tail -n 2 | sed 's/^/   /'
    else
        failed+=("$target")
        echo "   FAILED: see $fuzz_dir/$log; crashing inputs:"
        ls -1 "artifacts/$target" | sed "s|^|   $fuzz_dir/artifacts/$target/|"
        grep -E "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | head -n 5 | sed 's/^/   /'
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "== ${#failed[@]} of ${#targets[@]} targets failed: ${failed[*]}"
    exit 1
fi
echo "== all ${#targets[@]} targets ran ${seconds}s each without a crash"
