#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs
# formatting, lints, every test and the doc build. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test dependencies"
# A virtual environment of our own: Debian's system Python refuses `pip install` outside
# one (PEP 668). Its bin/ goes first on PATH, so every `python3` (and the mpich wheel's
# `mpiexec`) the tests start is this one, with debugpy and the rest installed.
source tests/python-venv.sh
python_venv target/test-venv
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
for dir in tests/dap tests/interop; do
  if [ -f "$dir/package-lock.json" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done
bash tests/containers/setup.sh

# systemd's own tools check the units (tests/systemd.rs); setpriv runs `systemd --test`
# as an unprivileged user when the suite runs as root. The ssh target's tests
# (tests/ssh.rs) run a real sshd in a network namespace of their own.
if ! command -v systemd-analyze >/dev/null || ! command -v setpriv >/dev/null \
    || [ ! -x /usr/sbin/sshd ] || ! command -v ssh-keygen >/dev/null || ! command -v ip >/dev/null; then
  echo "== installing systemd, util-linux, openssh-server and iproute2"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    systemd util-linux openssh-server openssh-client iproute2
fi

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
echo "== cargo doc"
# Private items too: most of the crate is private, and its links are read by the team.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --quiet --document-private-items
