#!/usr/bin/env bash
# Builds the fully static release binary (x86_64-unknown-linux-musl: no dynamic loader,
# no libc on the machine it runs on), stages it with the CA certificates in
# target/docker-context/ for docker/Dockerfile.prebuilt, and prints the binary's path as
# the last line of stdout.
# Used by docker/Dockerfile.prebuilt, tests/containers/setup.sh and tests/containers.rs.
#   bash docker/build-static.sh            # -> target/x86_64-unknown-linux-musl/release/amlx-agent
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
# The release binary must stay at most this many bytes (LTO + strip in [profile.release]).
max_bytes=$((6 * 1000 * 1000))

if ! command -v musl-gcc >/dev/null; then
  echo "build-static.sh: musl-gcc not found: apt-get install musl-tools" >&2
  exit 1
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  echo "build-static.sh: the Rust target $target is missing: rustup target add $target" >&2
  exit 1
fi

# Variables cargo sets for a test or a build script (this runs under `cargo test` too)
# would look like a changed environment to ring's build script and rebuild it each time.
while read -r var; do unset "$var"; done < <(compgen -e | grep -E '^(CARGO_(MANIFEST_|PKG_|CRATE_|BIN_|CFG_|PRIMARY_PACKAGE|TARGET_TMPDIR)|OUT_DIR$)')
# ring compiles C and assembly, with musl's compiler wrapper. cc-rs finds Debian's
# x86_64-linux-musl-gcc (musl-tools) by itself; naming it keeps other hosts honest.
export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-musl-gcc}"
# Static and *not* position-independent: a static-pie binary relocates itself at every
# start (41 % of a non-target `exec`'s instructions), and its relocation tables make it
# larger. Set for this target only, so host builds (build scripts, proc macros) keep
# their defaults.
flags="-C relocation-model=static -C target-feature=+crt-static"
# --wrap: every memcpy and memmove (ours and musl's own) goes through the agent's
# wrappers first (agent/src/memory_copies.rs): musl copies a buffer onto itself byte by
# byte, and rustls asks for that after most reads over TLS.
flags+=" -C link-arg=-Wl,--wrap=memcpy -C link-arg=-Wl,--wrap=memmove"
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="$flags"
# Optimised for size: 5.7 MB against 7.5 MB at opt-level 3 (the ceiling above is 6 MB).
export CARGO_PROFILE_RELEASE_OPT_LEVEL=s
nice -n 10 cargo build --release --locked -p amlx-agent --bin amlx-agent --target "$target" >&2

bin="${CARGO_TARGET_DIR:-target}/$target/release/amlx-agent"
size=$(stat -c %s "$bin")
if [ "$size" -gt "$max_bytes" ]; then
  echo "build-static.sh: $bin is $size bytes, more than $max_bytes" >&2
  exit 1
fi
echo "build-static.sh: $bin, $size bytes" >&2

# The build context of docker/Dockerfile.prebuilt: the binary, the CA certificates the
# agent needs for wss (a FROM-scratch image has no other source of them) and the shims.
ca=/etc/ssl/certs/ca-certificates.crt
if [ ! -f "$ca" ]; then
  echo "build-static.sh: $ca not found: apt-get install ca-certificates" >&2
  exit 1
fi
context="${CARGO_TARGET_DIR:-target}/docker-context"
mkdir -p "$context"
cp "$bin" "$context/amlx-agent.partial" && mv "$context/amlx-agent.partial" "$context/amlx-agent"
cp "$ca" "$context/ca-certificates.crt"
# The launcher shims travel with the agent, so training images can take both at once.
rm -rf "$context/launcher-shims"
cp -a launcher-shims "$context/launcher-shims"
rm -f "$context/launcher-shims/README.md"
realpath "$bin"
