# Sourced by tests/containers/setup.sh and tests/bench.sh: `static_toolchain` installs what
# docker/build-static.sh needs when it is missing: musl-gcc (Debian's musl-tools, with apt)
# and the x86_64-unknown-linux-musl Rust target (rustup). Fails (status 1) when either could
# not be had.
static_toolchain() {
  if ! command -v musl-gcc >/dev/null; then
    echo "== apt-get install musl-tools"
    apt-get update -qq || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends musl-tools \
      || return 1
  fi
  if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
    echo "== rustup target add x86_64-unknown-linux-musl"
    rustup target add x86_64-unknown-linux-musl || return 1
  fi
}
