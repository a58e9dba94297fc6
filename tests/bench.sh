#!/usr/bin/env bash
# amlx-agent next to its peers, one table: installs what is missing, then runs
# `cargo bench --bench compare` (agent/benches/compare.rs) on the optimised build.
#   bash tests/bench.sh                  # about 5 minutes after the first build
#   BENCH_TUNNELS=250 bash tests/bench.sh   # idle-tunnel memory at 250 tunnels instead of 5000
#   BENCH_FIGURES=4,6 bash tests/bench.sh   # only figures 4 and 6 (numbers as the table's rows start)
# The static build that ships is built first (docker/build-static.sh, with musl-tools and the
# Rust target installed when missing). Peers: rathole, bore and websocat are built once into target/bench-peers (cargo install,
# about 10 minutes on 2 cores the first time); iperf3, tini, strace and valgrind come from
# apt when missing. A peer that still cannot be had is named in the output and its cells
# say "missing"; the rest is measured. Not part of tests/run.sh or CI. (No hyperfine: it
# runs each command's repetitions in one block, and the bench interleaves them run by run.)
set -uo pipefail
cd "$(dirname "$0")/.."

peers=target/bench-peers
export PATH="$PWD/$peers/bin:$PATH"

missing_crates=()
command -v rathole >/dev/null || missing_crates+=(rathole)
command -v bore >/dev/null || missing_crates+=(bore-cli)
command -v websocat >/dev/null || missing_crates+=('websocat@^1')
if [ ${#missing_crates[@]} -gt 0 ]; then
  echo "== cargo install --root $peers ${missing_crates[*]}" >&2
  start=$SECONDS
  nice cargo install --quiet --root "$peers" "${missing_crates[@]}" >&2 \
    || echo "bench.sh: cargo install failed; the peers it did not build are reported missing" >&2
  echo "== peers built in $((SECONDS - start)) s" >&2
fi

missing_packages=()
for tool in iperf3 tini strace valgrind; do
  command -v "$tool" >/dev/null || missing_packages+=("$tool")
done
if [ ${#missing_packages[@]} -gt 0 ]; then
  echo "== apt-get install ${missing_packages[*]}" >&2
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_packages[@]}" >&2; then
    apt-get update -qq >&2 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_packages[@]}" >&2 ||
      echo "bench.sh: apt-get install failed; figures needing ${missing_packages[*]} are skipped" >&2
  fi
fi

# Figures 9, 10 and 12 start steps under debugpy: a virtual environment of the bench's
# own holds it (Debian's Python refuses `pip install` outside one), pinned as the tests pin it.
if ! python3 -c 'import debugpy' 2>/dev/null; then
  source tests/python-venv.sh
  if python_venv target/bench-venv >&2; then
    python3 -m pip install --quiet --disable-pip-version-check \
      "$(grep -m1 '^debugpy==' tests/requirements.txt)" >&2 \
      || echo "bench.sh: pip could not install debugpy; figures 9, 10 and 12 are skipped" >&2
  else
    echo "bench.sh: no virtual environment for debugpy; figures 9, 10 and 12 are skipped" >&2
  fi
fi

# Figures 1, 3, 8 and 12 measure the static build that ships (docker/build-static.sh), so
# it is built here, from the same sources as the release build (incremental: seconds when
# nothing changed). A stale one would measure older code.
source tests/static-toolchain.sh
static_toolchain >&2 || echo "bench.sh: musl-tools or the musl Rust target could not be installed" >&2
echo "== bash docker/build-static.sh" >&2
if ! bash docker/build-static.sh >/dev/null; then
  # An old build must not stand in for this one.
  rm -f target/x86_64-unknown-linux-musl/release/amlx-agent
  echo "bench.sh: the static build failed: its rows are skipped, exec is measured on the release build" >&2
fi

# Thousands of idle tunnels need thousands of descriptors (the bench raises the soft
# limit to this hard one).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "== nice cargo bench --bench compare" >&2
exec nice cargo bench --quiet --bench compare
