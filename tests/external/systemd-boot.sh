#!/usr/bin/env bash
# The .deb under a real systemd: a fresh Debian root with systemd, the package
# installed with dpkg, and systemd booted as PID 1 of new PID/mount/UTS/IPC
# namespaces (no VM, no container engine; the network namespace is the host's,
# so the guard's ports are moved to free loopback ports first). Then, as the
# README and systemd/README.md say a shop owner does it:
#   systemctl start cartguard       -> active, ExecStartPre check passed
#   systemctl reload (good config)  -> exit 0, the guard's status shows the reload
#   systemctl reload (broken config)-> exit non-zero, the guard keeps running
#   cartguard status                -> answers from the admin listener
#   systemctl stop cartguard        -> inactive
#
# Usage: tests/external/systemd-boot.sh   (after packaging/build.sh deb; KEEP=1 keeps the root)
# Needs root, debootstrap, unshare, nsenter. A missing tool skips (exit 0) unless
# CARTGUARD_REQUIRE_TOOLS=1 (CI), where it fails.
set -euo pipefail
cd "$(dirname "$0")/../.."

TEST="systemd-boot"
# shellcheck source=tests/external/lib.sh
source tests/external/lib.sh

[[ $(id -u) -eq 0 ]] || skip_or_fail "needs root (debootstrap, namespaces)"
for tool in debootstrap unshare nsenter chroot python3; do
    command -v "$tool" >/dev/null || skip_or_fail "$tool not found (bash .ci/install-tools installs it)"
done
shopt -s nullglob
debs=(target/dist/cartguard_*_amd64.deb)
shopt -u nullglob
[[ ${#debs[@]} -eq 1 ]] || fail "expected one .deb in target/dist/ (run packaging/build.sh deb)"

mirror=$(debian_mirror)

work=$(mktemp -d /tmp/cartguard-systemd-boot.XXXXXX)
root=$work/root
booted=""
cleanup() {
    # Killing the namespace's PID 1 ends every process in it; its mounts go with it.
    [[ -z $booted ]] || kill -KILL "$booted" 2>/dev/null || true
    sleep 0.5
    if [[ -n ${KEEP:-} ]]; then echo "work dir kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

echo "== debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm"
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 20 "$work/debootstrap.log" >&2; fail "debootstrap"; }
cp "${debs[0]}" "$root/tmp/cartguard.deb"
chroot "$root" dpkg -i /tmp/cartguard.deb >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -i"; }

# Free loopback ports for the guard and its admin listener (the host's network).
read -r port admin < <(free_ports 2)
config=$root/etc/cartguard/cartguard.yaml
sed -i "s/127.0.0.1:8080/127.0.0.1:$port/; s/127.0.0.1:9901/127.0.0.1:$admin/" "$config"
grep -q "127.0.0.1:$admin" "$config" || fail "the shipped config no longer has status.listen 127.0.0.1:9901"

echo "== boot systemd in new namespaces"
unshare --fork --pid --mount --uts --ipc --propagation private \
    bash -c "mount --bind '$root' '$root' && exec chroot '$root' /lib/systemd/systemd --system" \
    >"$work/boot.log" 2>&1 &
unshare_pid=$!
for _ in $(seq 100); do
    booted=$(pgrep -P "$unshare_pid" || true)
    [[ -n $booted ]] && break
    sleep 0.1
done
[[ -n $booted ]] || fail "systemd did not start"
in_ns() { timeout 60 nsenter -t "$booted" -m -p -u -i -r -w "$@"; }
for _ in $(seq 100); do
    state=$(in_ns /bin/systemctl is-system-running 2>/dev/null || true)
    [[ $state == starting || $state == running || $state == degraded ]] && break
    sleep 0.3
done
echo "systemd: $state"

echo "== systemctl start cartguard"
in_ns /bin/systemctl start cartguard || { in_ns /bin/systemctl status cartguard --no-pager >&2 || true; fail "systemctl start"; }
[[ $(in_ns /bin/systemctl is-active cartguard) == active ]] || fail "not active after start"

echo "== systemctl reload cartguard (unchanged config)"
in_ns /bin/systemctl reload cartguard || fail "reload of a good config failed"
in_ns /usr/bin/cartguard status --admin "127.0.0.1:$admin" --json >"$work/status.json" 2>&1 || true
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["config"]["reloads"]==1 and not d["config"].get("last_reload_error"), d["config"]' "$work/status.json" ||
    fail "the good reload is not in /status"

echo "== systemctl reload cartguard (broken config)"
sed -i 's/others: auth/others: ath/' "$config"
if in_ns /bin/systemctl reload cartguard 2>"$work/reload.err"; then fail "reload of a broken config succeeded"; fi
[[ $(in_ns /bin/systemctl is-active cartguard) == active ]] || fail "a failed reload stopped the guard"
in_ns /bin/journalctl -u cartguard --no-pager >"$work/journal.txt" 2>&1 || true
grep -q "not reloading" "$work/journal.txt" || { tail -n 20 "$work/journal.txt" >&2; fail "the journal does not say why the reload failed"; }
sed -i 's/others: ath/others: auth/' "$config"

echo "== cartguard status"
in_ns /usr/bin/cartguard status --admin "127.0.0.1:$admin" >"$work/status.txt" 2>&1 || true
grep -q "^cartguard " "$work/status.txt" || { cat "$work/status.txt" >&2; fail "cartguard status"; }

echo "== systemctl stop cartguard"
in_ns /bin/systemctl stop cartguard || fail "systemctl stop"
[[ $(in_ns /bin/systemctl is-active cartguard || true) == inactive ]] || fail "still active after stop"
echo "OK: systemd-boot"
