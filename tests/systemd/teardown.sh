#!/bin/bash
# Stops a box boot.sh started: poweroff inside (which ends only its pid namespace, and with it
# every process and mount of the box), SIGKILL after 30 s, then removes its cgroup subtree.
# Safe to run twice, or on a box that never finished booting.
set -u
D=$(readlink -f "${1:?usage: teardown.sh BOXDIR}")
P=$(cat "$D/pid1" 2>/dev/null || true); U=$(cat "$D/unshare.pid" 2>/dev/null || true)
CG=$(cat "$D/cgroup" 2>/dev/null || true)
if [ -n "$P" ] && [ "$(readlink /proc/$P/exe 2>/dev/null)" = /usr/lib/systemd/systemd ]; then
  nsenter -t "$P" -a systemctl poweroff --no-block 2>/dev/null || kill -s SIGRTMIN+4 "$P"
  for _ in $(seq 1 300); do kill -0 "$P" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$P" 2>/dev/null && { echo "PID 1 of the box still alive after 30 s: SIGKILL" >&2; kill -9 "$P"; }
fi
# Whatever is left in the subtree (a box that failed half-way) goes too.
if [ -n "$CG" ] && [ -d "$CG" ]; then
  for _ in $(seq 1 50); do
    pids=$(find "$CG" -name cgroup.procs -exec cat {} + 2>/dev/null)
    [ -z "$pids" ] && break
    kill -9 $pids 2>/dev/null
    sleep 0.1
  done
fi
[ -n "$U" ] && for _ in $(seq 1 50); do kill -0 "$U" 2>/dev/null || break; sleep 0.1; done
if [ -n "$CG" ] && [ -d "$CG" ]; then
  find "$CG" -mindepth 1 -depth -type d -exec rmdir {} + 2>/dev/null
  rmdir "$CG" 2>/dev/null
fi
rm -f "$D/pid1" "$D/unshare.pid"
if [ -n "$CG" ] && [ -d "$CG" ]; then echo "cgroup $CG left behind" >&2; exit 1; fi
