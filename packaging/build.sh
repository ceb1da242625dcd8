#!/usr/bin/env bash
# Builds the release packages into target/dist/:
#
#   cartguard_VERSION-1_amd64.deb                          cargo-deb; glibc build for Debian 12
#   cartguard-VERSION-x86_64-unknown-linux-musl.tar.gz     static musl binary, any x86_64 Linux
#
# Usage: packaging/build.sh [all|deb|tarball]        (default: all)
#
# Needs cargo-deb (`cargo install cargo-deb --locked`) for the .deb, and for the
# tarball the musl target (`rustup target add x86_64-unknown-linux-musl`) and
# musl-gcc (Debian `musl-tools`: ring compiles C for the target). .ci/install-tools
# installs all three. The man pages and completions come from the binary itself
# (`cartguard generate`, hidden), into target/dist/gen/. See packaging/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-all}
case $what in all | deb | tarball) ;; *)
    echo "usage: $0 [all|deb|tarball]" >&2
    exit 2
    ;;
esac

musl=x86_64-unknown-linux-musl
target_dir=${CARGO_TARGET_DIR:-target}
dist=target/dist
gen=$dist/gen
mkdir -p "$dist"

die() {
    echo "packaging/build.sh: $*" >&2
    exit 1
}

# Reproducible archives: timestamps from the last commit. Given to the archivers
# only: exported to `cargo build`, it would make ring's build script rerun.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

# Man pages, completions and the packaged unit, rendered by the given binary.
generate() {
    local bin=$1
    rm -rf "$gen"
    mkdir -p "$gen/man-gz" "$gen/completions" "$gen/systemd"
    "$bin" generate man --out "$gen/man" >/dev/null
    local page
    for page in "$gen"/man/*.1; do
        gzip -9nc -- "$page" >"$gen/man-gz/${page##*/}.gz"
    done
    for shell in bash zsh fish; do
        "$bin" generate completions "$shell" --out "$gen/completions" >/dev/null
    done
    # The packaged binary lives in /usr/bin; whatever the Exec lines say, only the path changes.
    sed 's#/usr/local/bin/#/usr/bin/#g' systemd/cartguard.service >"$gen/systemd/cartguard.service"
    if grep -q /usr/local/bin "$gen/systemd/cartguard.service"; then
        die "the packaged unit still names /usr/local/bin"
    fi
}

build_deb() {
    command -v cargo-deb >/dev/null || die "cargo-deb not found: cargo install cargo-deb --locked"
    cargo build --release --locked
    generate "$target_dir/release/cartguard"
    rm -f "$dist"/cartguard_*.deb
    SOURCE_DATE_EPOCH=$epoch cargo deb --no-build --locked --output "$dist/"
}

build_tarball() {
    rustup target list --installed 2>/dev/null | grep -qx "$musl" ||
        die "the $musl target is missing: rustup target add $musl"
    export CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-musl-gcc}
    command -v "$CC_x86_64_unknown_linux_musl" >/dev/null ||
        die "$CC_x86_64_unknown_linux_musl not found: apt-get install musl-tools"
    cargo build --release --locked --target "$musl"
    local bin=$target_dir/$musl/release/cartguard
    file -L "$bin" | grep -Eq 'statically linked|static-pie linked' || die "not a static binary: $(file -L "$bin")"
    [[ -d $gen/man ]] || generate "$bin"

    local version name stage
    version=$("$bin" --version | awk '{print $2}')
    name=cartguard-$version-$musl
    stage=$dist/stage/$name
    rm -rf "$dist/stage"
    mkdir -p "$stage/man" "$stage/completions" "$stage/examples"
    install -m 0755 "$bin" "$stage/cartguard"
    strip "$stage/cartguard" 2>/dev/null || true
    # The tarball follows systemd/README.md: binary in /usr/local/bin, so the unit as it is.
    install -m 0644 systemd/cartguard.service config/cartguard.yaml "$stage/"
    install -m 0644 packaging/logrotate "$stage/cartguard.logrotate"
    install -m 0644 README.md "$stage/README.md"
    install -m 0644 systemd/README.md "$stage/SYSTEMD.md"
    install -m 0644 packaging/INSTALL.tarball "$stage/INSTALL"
    install -m 0644 "$gen"/man/*.1 "$stage/man/"
    install -m 0644 "$gen"/completions/* "$stage/completions/"
    install -m 0644 config/examples/*.yaml "$stage/examples/"
    rm -f "$dist"/cartguard-*-"$musl".tar.gz
    tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
        -C "$dist/stage" -czf "$dist/$name.tar.gz" "$name"
    rm -rf "$dist/stage"
    echo "$dist/$name.tar.gz"
}

case $what in
deb) build_deb ;;
tarball) build_tarball ;;
all)
    build_deb
    build_tarball
    ;;
esac

shopt -s nullglob
packages=("$dist"/cartguard_*.deb "$dist"/cartguard-*.tar.gz)
(cd "$dist" && sha256sum "${packages[@]#"$dist"/}" >SHA256SUMS)
ls -l "${packages[@]}"
