#!/usr/bin/env bash
# What tests/containers.rs needs before `cargo test`, from a fresh Debian/Ubuntu machine:
# the packages (docker.io, musl-tools, debootstrap), the musl Rust target, the static
# release binary and the cached Python base root filesystem. Idempotent: a warm machine
# spends seconds here. tests/run.sh calls it in its install section.
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
command -v dockerd >/dev/null || [ -x /usr/sbin/dockerd ] || missing+=(docker.io)
command -v docker >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
[ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "== apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

source tests/static-toolchain.sh
static_toolchain

echo "== static release binary (docker/build-static.sh)"
bash docker/build-static.sh >/dev/null
echo "== Python base for the example image (docker/python-base.sh)"
bash docker/python-base.sh >/dev/null
