# shellcheck shell=bash
# Shell helpers shared by bench/run.sh and the scripts in tests/external/.
# `wait_port` needs the caller's `die MESSAGE` and `$WORK` (where each process writes NAME.err);
# the package tests set `$TEST` (their name in SKIP lines).

# N free loopback TCP ports, chosen now.
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# Waits (bounded, 10 s) until something accepts on 127.0.0.1:PORT; dies if PID exits first.
wait_port() {
    local port=$1 pid=$2 name=$3
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || die "$name exited during start-up: $(tail -n 5 "$WORK/$name.err" 2>/dev/null)"
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    die "$name did not listen on 127.0.0.1:$port within 10s"
}

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# A missing tool: skip with a message, or fail under CARTGUARD_REQUIRE_TOOLS=1 (CI).
skip_or_fail() {
    [[ -z ${CARTGUARD_REQUIRE_TOOLS:-} ]] || fail "$* (CARTGUARD_REQUIRE_TOOLS is set)"
    echo "SKIP ${TEST:-test}: $*"
    exit 0
}

# The Debian mirror for debootstrap: $DEBIAN_MIRROR, else the host's apt sources, else deb.debian.org.
debian_mirror() {
    local mirror=${DEBIAN_MIRROR:-}
    [[ -n $mirror ]] || mirror=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n 1 || true)
    [[ -n $mirror ]] || mirror=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    echo "${mirror:-http://deb.debian.org/debian}"
}
