#!/usr/bin/env bash
# A minimal Debian bookworm root filesystem with python3 and pip, packed for
# `docker import`: the base of the example image where no registry is reachable (the
# tests' private Docker engine). Prints the tarball's path as the last line of stdout.
#   docker import "$(bash docker/python-base.sh)" amlx-python-base
# debootstrap takes minutes, so the tarball is cached under target/containers/ (or
# $AMLX_CACHE_DIR), keyed by everything that goes into it and rebuilt when older than
# MAX_AGE_DAYS (security updates); stale tarballs are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
# debootstrap lives in /usr/sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

suite=bookworm
variant=minbase
packages=python3,python3-pip
mirror="${AMLX_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Bump when the recipe below changes in a way the inputs above do not show.
recipe=1
MAX_AGE_DAYS=30
# Longest wait for another run building the same tarball.
LOCK_WAIT_SECONDS=1800

if ! command -v debootstrap >/dev/null; then
  echo "python-base.sh: debootstrap not found: apt-get install debootstrap" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "python-base.sh: debootstrap needs root" >&2
  exit 1
fi

cache="${AMLX_CACHE_DIR:-${CARGO_TARGET_DIR:-target}/containers}"
mkdir -p "$cache"
cache="$(realpath "$cache")"
key=$(printf '%s\n' "$recipe" "$suite" "$variant" "$packages" "$mirror" | sha256sum | cut -c1-16)
tarball="$cache/python-base-$suite-$key.tar"

exec 9>"$cache/python-base.lock"
flock -w "$LOCK_WAIT_SECONDS" 9 || { echo "python-base.sh: $cache/python-base.lock is held by another build" >&2; exit 1; }

if [ -f "$tarball" ] && [ -z "$(find "$tarball" -mtime +"$MAX_AGE_DAYS")" ]; then
  echo "python-base.sh: cached $tarball" >&2
else
  rm -f "$cache"/python-base-*.tar
  rootfs="$cache/python-base.rootfs"
  rm -rf "$rootfs"
  echo "python-base.sh: debootstrap $suite ($packages) from $mirror, a few minutes" >&2
  if ! nice -n 10 debootstrap --variant="$variant" --include="$packages" "$suite" "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1; then
    tail -n 30 "$cache/debootstrap.log" >&2
    echo "python-base.sh: debootstrap failed, full log in $cache/debootstrap.log" >&2
    exit 1
  fi
  # What an image does not need: downloaded packages and package lists.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar --numeric-owner -C "$rootfs" -cf "$tarball.partial" .
  mv "$tarball.partial" "$tarball"
  rm -rf "$rootfs"
fi
echo "$tarball"
