#!/bin/bash
# PID 1 of the box's namespaces until it execs systemd (started by boot.sh): builds a throw-away
# root as systemd-nspawn would (overlay of / with a tmpfs upper layer, API file systems, fresh
# /run and /tmp), shows SRC's systemd/ and config/ and BIN read-only at /srv/ws-sidecar, pivots
# into it, execs systemd.
set -euo pipefail
D=$BOX; R=$D/root
mkdir -p "$D/rw" "$R"
mount -t tmpfs -o mode=0755,size=2G box-rw "$D/rw"
mkdir -p "$D/rw/upper" "$D/rw/work"
if ! mount -t overlay box-root -o "lowerdir=/,upperdir=$D/rw/upper,workdir=$D/rw/work" "$R"; then
  echo "overlay mount of / refused" > "$D/refused"; exit 77
fi
cp -a "$D/payload/." "$R/"
# The checkout's path (CI clones under /tmp) is not visible inside, where /tmp is fresh: bind
# what the install commands read, SRC's systemd/ and config/ and BIN as target/release's binary
# (wherever CARGO_TARGET_DIR put it). Read-only, so a command that writes there fails loudly.
S=$R/srv/ws-sidecar
mkdir -p "$S/systemd" "$S/config" "$S/target/release"
: > "$S/target/release/ws-sidecar"
for m in "$SRC/systemd:$S/systemd" "$SRC/config:$S/config" "$BIN:$S/target/release/ws-sidecar"; do
  mount --bind "${m%%:*}" "${m#*:}"
  mount -o remount,bind,ro "${m#*:}"
done
mount -t proc proc "$R/proc"
mount --bind "$R/proc/sys" "$R/proc/sys"; mount -o remount,bind,ro "$R/proc/sys"
[ -e "$R/proc/sysrq-trigger" ] && mount --bind /dev/null "$R/proc/sysrq-trigger"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t cgroup2 -o rw,nosuid,nodev,noexec,nsdelegate cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=0755,nosuid,size=64M box-dev "$R/dev"
for n in null zero full random urandom tty; do touch "$R/dev/$n"; mount --bind "/dev/$n" "$R/dev/$n"; done
mkdir -p "$R/dev/pts" "$R/dev/shm" "$R/dev/mqueue"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$R/dev/shm"
mount -t mqueue mqueue "$R/dev/mqueue"
ln -s /proc/self/fd "$R/dev/fd"; ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
touch "$R/dev/console"; mount --bind "$D/console.log" "$R/dev/console"
mount -t tmpfs -o mode=0755,nosuid,nodev,size=256M box-run "$R/run"
mount -t tmpfs -o mode=1777,nosuid,nodev,size=512M box-tmp "$R/tmp"
cd "$R"; mkdir -p .oldroot; pivot_root . .oldroot; umount -l /.oldroot; rmdir /.oldroot || true
hostname ws-sidecar-box
exec env -i container=ws-sidecar-box TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  /lib/systemd/systemd --system --unit=box.target --log-target=journal-or-kmsg --show-status=no
