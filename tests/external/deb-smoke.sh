#!/usr/bin/env bash
# Smoke test of the release packages (packaging/build.sh) in clean places.
#
#  1. The .deb: a fresh Debian root (`debootstrap --variant=minbase bookworm`),
#     `dpkg -i` in a chroot, then `cartguard check` on the installed config, as
#     root and as an unprivileged user in the cartguard-config group (what the unit's
#     dynamic user gets); the files, conffiles, ownership and "not enabled"
#     state; then `dpkg --purge`.
#  2. The tarball: extracted into an otherwise empty directory, `file` must say
#     static, and the binary runs `check` on the shipped config chrooted into
#     that directory (no libc, no /etc: a dynamic binary could not even start).
#
# Usage: tests/external/deb-smoke.sh          builds first (packaging/build.sh)
#        NO_BUILD=1 tests/external/deb-smoke.sh   reuses target/dist/
#        KEEP=1 ...                               keeps the work dir
# Env: DEBIAN_MIRROR (default: the Debian URI in the host's apt sources),
#      DEBIAN_SUITE (bookworm). Needs root, debootstrap, chroot, file, and what
#      packaging/build.sh needs. A missing tool skips (exit 0) with a message,
#      unless CARTGUARD_REQUIRE_TOOLS=1 (CI), where it fails.
set -euo pipefail
cd "$(dirname "$0")/../.."

TEST="deb-smoke"
# shellcheck source=tests/external/lib.sh
source tests/external/lib.sh

[[ $(id -u) -eq 0 ]] || skip_or_fail "needs root (debootstrap, chroot)"
for tool in debootstrap chroot file dpkg-deb cargo-deb musl-gcc; do
    command -v "$tool" >/dev/null || skip_or_fail "$tool not found (bash .ci/install-tools installs it)"
done

suite=${DEBIAN_SUITE:-bookworm}
mirror=$(debian_mirror)

work=$(mktemp -d /tmp/cartguard-deb-smoke.XXXXXX)
cleanup() {
    if [[ -n ${KEEP:-} ]]; then
        echo "work dir kept: $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

now() { date +%s; }
t0=$(now)

if [[ -z ${NO_BUILD:-} ]]; then
    packaging/build.sh all
fi
t_build=$(now)

shopt -s nullglob
debs=(target/dist/cartguard_*_amd64.deb)
tarballs=(target/dist/cartguard-*-x86_64-unknown-linux-musl.tar.gz)
shopt -u nullglob
[[ ${#debs[@]} -eq 1 ]] || fail "expected one .deb in target/dist/, found ${#debs[@]} (run packaging/build.sh)"
[[ ${#tarballs[@]} -eq 1 ]] || fail "expected one musl tarball in target/dist/, found ${#tarballs[@]}"
deb=${debs[0]}
tarball=${tarballs[0]}

# --- 1. the .deb in a clean Debian root ---------------------------------------
root=$work/root
echo "== debootstrap --variant=minbase $suite from $mirror"
debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 20 "$work/debootstrap.log" >&2; fail "debootstrap"; }
t_root=$(now)

in_root() { chroot "$root" "$@"; }

cp "$deb" "$root/tmp/cartguard.deb"
echo "== dpkg -i $(basename "$deb")"
in_root dpkg -i /tmp/cartguard.deb | tee "$work/dpkg.out"

echo "== cartguard check (root, installed config)"
in_root cartguard check --config /etc/cartguard/cartguard.yaml >"$work/check.out" 2>&1 ||
    { cat "$work/check.out" >&2; fail "cartguard check on the installed config"; }
tail -n 3 "$work/check.out"
in_root cartguard check -q || fail "cartguard check -q (default config path)"

# The unit's dynamic user reads the config only through SupplementaryGroups=cartguard-config.
gid=$(in_root getent group cartguard-config | cut -d: -f3)
[[ -n $gid ]] || fail "the postinst did not create the cartguard-config group"
chroot --userspec=65534:65534 --groups="$gid" "$root" cartguard check -q --config /etc/cartguard/cartguard.yaml ||
    fail "cartguard check as nobody with the cartguard-config group"
if chroot --userspec=65534:65534 --groups=65534 "$root" cartguard check -q --config /etc/cartguard/cartguard.yaml 2>/dev/null; then
    fail "the config is readable without the cartguard-config group"
fi

# Numeric: the host's /etc/group does not know the chroot's groups.
perm() { stat -c '%u:%g %a' "$root$1"; }
[[ $(perm /etc/cartguard) == "0:$gid 750" ]] || fail "/etc/cartguard is $(perm /etc/cartguard), not 0:$gid 750"
[[ $(perm /etc/cartguard/cartguard.yaml) == "0:$gid 640" ]] ||
    fail "cartguard.yaml is $(perm /etc/cartguard/cartguard.yaml), not 0:$gid 640"

for f in /usr/bin/cartguard /usr/lib/systemd/system/cartguard.service \
    /usr/lib/systemd/system/cartguard.service.d/cartguard-deb.conf /etc/logrotate.d/cartguard \
    /usr/share/man/man1/cartguard.1.gz /usr/share/man/man1/cartguard-check.1.gz \
    /usr/share/bash-completion/completions/cartguard /usr/share/zsh/vendor-completions/_cartguard \
    /usr/share/fish/vendor_completions.d/cartguard.fish /usr/share/doc/cartguard/copyright; do
    [[ -e $root$f ]] || fail "$f is not installed"
done
unit=$root/usr/lib/systemd/system/cartguard.service
grep -q '^ExecStart=/usr/bin/cartguard run' "$unit" || fail "the packaged unit does not start /usr/bin/cartguard"
! grep -q /usr/local/bin "$unit" || fail "the packaged unit still names /usr/local/bin"
# shellcheck disable=SC2016 # ${Conffiles} is dpkg-query's field, not a shell variable
conffiles=$(in_root dpkg-query -W -f='${Conffiles}\n' cartguard)
for f in /etc/cartguard/cartguard.yaml /etc/logrotate.d/cartguard; do
    grep -q " $f " <<<"$conffiles" || fail "$f is not a conffile"
done
[[ ! -e $root/etc/systemd/system/multi-user.target.wants/cartguard.service ]] ||
    fail "the service was enabled on install"
zcat "$root/usr/share/man/man1/cartguard.1.gz" | grep -q 'hash\\-password' ||
    fail "the man page does not list hash-password"
if command -v logrotate >/dev/null; then
    logrotate --debug --state "$work/logrotate.state" "$root/etc/logrotate.d/cartguard" >"$work/logrotate.out" 2>&1 ||
        { cat "$work/logrotate.out" >&2; fail "logrotate rejects /etc/logrotate.d/cartguard"; }
fi

echo "== dpkg -i again (an upgrade's path: the overrides must hold, the service must stay disabled)"
in_root dpkg -i /tmp/cartguard.deb >"$work/dpkg-again.out" 2>&1 || { cat "$work/dpkg-again.out" >&2; fail "reinstall"; }
[[ $(perm /etc/cartguard/cartguard.yaml) == "0:$gid 640" ]] || fail "cartguard.yaml is $(perm /etc/cartguard/cartguard.yaml) after a reinstall"
[[ ! -e $root/etc/systemd/system/multi-user.target.wants/cartguard.service ]] || fail "enabled by a reinstall"
in_root cartguard check -q || fail "cartguard check -q after a reinstall"

echo "== dpkg --purge"
in_root dpkg --purge cartguard >/dev/null
[[ ! -e $root/etc/cartguard ]] || fail "/etc/cartguard is left after purge"
! in_root dpkg-statoverride --list | grep -q cartguard || fail "stat overrides left after purge"
t_deb=$(now)

# --- 2. the static tarball in an empty directory ---------------------------------
echo "== $(basename "$tarball")"
empty=$work/empty
mkdir -p "$empty"
tar -C "$empty" -xzf "$tarball"
dir=$(find "$empty" -mindepth 1 -maxdepth 1 -type d)
name=$(basename "$dir")
for f in cartguard cartguard.yaml cartguard.service INSTALL man/cartguard.1 completions/cartguard.bash \
    completions/_cartguard completions/cartguard.fish; do
    [[ -e $dir/$f ]] || fail "$f is missing from the tarball"
done
file -L "$dir/cartguard" | tee "$work/file.out"
grep -Eq 'statically linked|static-pie linked' "$work/file.out" || fail "the tarball's binary is not static"
chroot "$empty" "/$name/cartguard" check --config "/$name/cartguard.yaml" >"$work/check-musl.out" 2>&1 ||
    { cat "$work/check-musl.out" >&2; fail "the static binary's check on the shipped config (in an empty root)"; }
tail -n 1 "$work/check-musl.out"
t_tar=$(now)

echo "sizes: $(stat -c '%s' "$deb") bytes $(basename "$deb"), $(stat -c '%s' "$tarball") bytes $(basename "$tarball")"
echo "times: build $((t_build - t0))s, debootstrap $((t_root - t_build))s, deb checks $((t_deb - t_root))s, tarball $((t_tar - t_deb))s"
echo "OK: deb-smoke"
