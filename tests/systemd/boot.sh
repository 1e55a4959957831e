#!/bin/bash
# Boots Debian's systemd as PID 1 of fresh namespaces, for tests/systemd (see main.rs).
#
# The machines that run the tests are VMs whose PID 1 is not systemd, yet the unit files are
# only proven by a real systemd running them. So: new pid/mount/uts/ipc/net/cgroup namespaces,
# an overlay of the host's / with a tmpfs upper layer as root (nothing the box writes reaches the
# host), fresh /run and /tmp, loopback only, and systemd as PID 1 booting basic.target.
#
# usage: boot.sh BOXDIR SRC BIN
#   BOXDIR  an empty directory of the caller's, with a unique name (it names the box's cgroup);
#           the box keeps its state files there
#   SRC     a checkout: its systemd/ and config/, the files README's install commands name, are
#           shown read-only at /srv/ws-sidecar inside
#   BIN     the daemon binary (any path), shown at /srv/ws-sidecar/target/release/ws-sidecar
# By hand: `sudo bash tests/systemd/boot.sh /tmp/box . "$CARGO_TARGET_DIR/release/ws-sidecar"`,
# then `sudo nsenter -t "$(cat /tmp/box/pid1)" -a bash` (cd /srv/ws-sidecar for README's
# install block), and `sudo bash tests/systemd/teardown.sh /tmp/box` at the end.
# Prints "pid1=N" (the host pid of the box's systemd) once systemd reports running or degraded.
# Exit 77 with the reason on stderr when this machine does not allow it (not root, no systemd,
# unshare or overlay refused): the test decides whether that is a skip or a failure.
set -euo pipefail
D=$(readlink -f "${1:?usage: boot.sh BOXDIR SRC BIN}")
SRC=$(readlink -f "${2:?usage: boot.sh BOXDIR SRC BIN}")
BIN=$(readlink -f "${3:?usage: boot.sh BOXDIR SRC BIN}")
HERE=$(cd "$(dirname "$0")" && pwd)
refuse() { echo "$*" >&2; exit 77; }

[ "$(id -u)" = 0 ] || refuse "not root"
[ -x /usr/lib/systemd/systemd ] || refuse "no /usr/lib/systemd/systemd (apt-get install systemd)"
for t in unshare nsenter setpriv findmnt; do
  command -v "$t" >/dev/null || refuse "no $t (apt-get install util-linux)"
done
# The box gets a cgroup subtree of its own, so that its systemd can manage services and the
# subtree can be removed afterwards. Hybrid hosts mount cgroup2 at /sys/fs/cgroup/unified.
CGROOT=$(findmnt -n -t cgroup2 -o TARGET | head -n 1)
[ -n "$CGROOT" ] || refuse "no cgroup2 file system mounted"
[ -w "$CGROOT" ] || refuse "cgroup2 at $CGROOT is read-only"
CG=$CGROOT/ws-sidecar-box-$(basename "$D")

# What is copied over the overlay before systemd starts: the target it boots, units masked
# because they must not run in a throw-away box, and the sudo stand-in README's commands use.
P=$D/payload
mkdir -p "$P/etc/systemd/system" "$P/usr/local/sbin"
cat > "$P/etc/systemd/system/box.target" <<'T'
[Unit]
Description=ws-sidecar test box (basic.target only)
Requires=basic.target
After=basic.target
AllowIsolate=yes
T
for u in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
         fstrim.timer man-db.timer systemd-timesyncd.service systemd-pstore.service \
         postgresql.service e2scrub_reap.service getty@tty1.service console-getty.service \
         systemd-modules-load.service; do
  ln -sf /dev/null "$P/etc/systemd/system/$u"
done
install -m 0755 "$HERE/sudo" "$P/usr/local/sbin/sudo"

echo "$CG" > "$D/cgroup"
mkdir "$CG"
: > "$D/console.log"
# Host-affecting capabilities leave the bounding set: the box must not load modules, set the
# clock or do raw I/O even if a unit asks.
( echo $BASHPID > "$CG/cgroup.procs"
  exec setpriv --bounding-set -sys_module,-sys_time,-sys_rawio,-wake_alarm,-mac_admin,-mac_override,-audit_control \
    unshare --pid --fork --mount --uts --ipc --net --cgroup --propagation private \
      env BOX="$D" SRC="$SRC" BIN="$BIN" "$HERE/stage2.sh" ) >"$D/unshare.log" 2>&1 </dev/null &
U=$!
echo $U > "$D/unshare.pid"
c=
for _ in $(seq 1 300); do
  c=$(cat /proc/$U/task/*/children 2>/dev/null | awk '{print $1}' || true)
  [ -n "$c" ] && [ "$(readlink /proc/$c/exe 2>/dev/null)" = /usr/lib/systemd/systemd ] && break
  c=
  if ! kill -0 "$U" 2>/dev/null; then
    wait "$U" && rc=0 || rc=$?
    [ -e "$D/refused" ] && refuse "$(cat "$D/refused")"
    grep -q "Operation not permitted" "$D/unshare.log" && refuse "unshare refused: $(head -n 1 "$D/unshare.log")"
    echo "the box ended before systemd started (exit $rc):" >&2; cat "$D/unshare.log" >&2; exit 1
  fi
  sleep 0.1
done
[ -n "$c" ] || { echo "systemd did not start within 30 s:" >&2; cat "$D/unshare.log" >&2; exit 1; }
echo "$c" > "$D/pid1"
s=
for _ in $(seq 1 600); do
  s=$(nsenter -t "$c" -a systemctl is-system-running 2>/dev/null || true)
  case "$s" in running|degraded) break;; esac
  sleep 0.1
done
case "$s" in
  running|degraded) echo "pid1=$c" ;;
  *) echo "systemd in the box did not finish booting within 60 s (state: $s)" >&2; exit 1 ;;
esac
