#!/usr/bin/env bash
# A private Docker engine for one run of the container tests, torn down when that run
# ends however it ends. Usage: dockerd.sh DIR (a short, empty directory: the engine's
# sockets live under it). Prints "ready <storage driver>" once the engine answers, or
# "failed: ..." and exits. Then it waits for EOF on stdin, a pipe whose only writer is
# the test process, so the end of the test process (pass, panic or kill) stops the
# engine (its containers with it) and removes DIR.
# No network plumbing: no iptables, no bridge; containers use --network host or none.
set -uo pipefail
dir=$1
# dockerd lives in /usr/sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"
# Longest wait for the engine to answer after it started.
START_SECONDS=60
# Longest wait for the engine to stop after SIGTERM before SIGKILL.
STOP_SECONDS=30

export DOCKER_HOST="unix://$dir/docker.sock"
pid=
start() {
  dockerd --data-root "$dir/data" --exec-root "$dir/exec" -H "$DOCKER_HOST" \
    --pidfile "$dir/dockerd.pid" --iptables=false --ip6tables=false --bridge=none \
    --storage-driver "$1" --shutdown-timeout 5 >"$dir/dockerd-$1.log" 2>&1 </dev/null &
  pid=$!
  for _ in $(seq $((START_SECONDS * 10))); do
    if docker version >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    sleep 0.1
  done
  return 1
}
stop() {
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq $((STOP_SECONDS * 10))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  pid=
}

driver=
# overlay2 where the kernel and the filesystem allow it; vfs (full copies, slower) else.
for candidate in overlay2 vfs; do
  if start "$candidate"; then driver=$candidate; break; fi
  stop
done
if [ -z "$driver" ]; then
  echo "failed: dockerd did not answer within ${START_SECONDS}s with overlay2 or vfs: $(tail -n 5 "$dir"/dockerd-*.log | tr '\n' ' ')"
  exit 1
fi
echo "ready $driver"
exec >/dev/null
cat >/dev/null
stop
# What a stopped dockerd may leave mounted (its default network namespace, an
# overlay of a container killed mid-way), deepest first, then the directory.
awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
  while read -r mnt; do umount -l "$mnt" 2>/dev/null; done
rm -rf "$dir"
