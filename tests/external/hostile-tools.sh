#!/usr/bin/env bash
# Outside tools, not written by us, against a running cartguard.
#
#   tests/external/hostile-tools.sh            # about 3 minutes after the build
#   NO_BUILD=1 ATTACK_SECONDS=15 tests/external/hostile-tools.sh
#
# Starts, all on loopback: a tiny upstream (tests/external/upstream.py), and the
# release build of cartguard with a config written to a temp dir: a plain
# listener, a TLS listener (throwaway P-256 certificate, SAN localhost and
# 127.0.0.1), group office = 127.0.0.2/32, group loadtest = 127.0.0.1/32,
# header_timeout 5s, idle_timeout 10s, one user. Then:
#
#  1. slowhttptest slow headers (-H), slow body (-B) and slow read (-X) against
#     the plain listener, CONNS connections each for ATTACK_SECONDS, while an
#     allowlisted client (curl --interface 127.0.0.2) asks for / every 0.5s.
#     Fails if any of those requests was not a 200 or took more than 2s.
#  2. sslyze --mozilla_config=intermediate against the TLS listener (the
#     throwaway certificate is given as the trust anchor): fails unless
#     compliant, and prints the reasons.
#  3. h2load over TLS + HTTP/2 (ALPN h2) from 127.0.0.1 (group loadtest):
#     fails unless every request got a 2xx.
#
# Installs what is missing: Debian packages slowhttptest, nghttp2-client (h2load),
# curl, openssl, python3; sslyze from PyPI into a venv kept at SSLYZE_VENV
# (default /tmp/cartguard-sslyze-venv) so a second run does not reinstall it.
# Every tool runs under `timeout`; everything started is stopped on exit.
# Knobs: ATTACK_SECONDS (30), CONNS (300), H2_REQUESTS (20000), NO_BUILD=1,
# KEEP=1 (keep the work directory), SSLYZE_VENV. Exit 0 only if all checks pass.

set -euo pipefail

ATTACK_SECONDS=${ATTACK_SECONDS:-30}
CONNS=${CONNS:-300}
H2_REQUESTS=${H2_REQUESTS:-20000}
SSLYZE_VENV=${SSLYZE_VENV:-/tmp/cartguard-sslyze-venv}
PROBE_MAX_SECONDS=2 # an allowlisted request slower than this counts as a failure

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
START=$(date +%s)

say() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'hostile-tools.sh: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- cleanup
PIDS=()
WORK=""
cleanup() {
    local rc=$?
    set +e
    [[ -n "$WORK" ]] && touch "$WORK/stop-probe" 2>/dev/null
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
    done
    wait 2>/dev/null
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ "${KEEP:-0}" == 1 || $rc -ne 0 ]]; then
            say "work directory kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    SUDO=sudo
fi
apt_install() {
    command -v apt-get >/dev/null || die "missing $*; no apt-get to install them"
    [[ -z $SUDO ]] || command -v sudo >/dev/null || die "missing $*; run as root or install them"
    say "installing $*"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
need=()
command -v slowhttptest >/dev/null || need+=(slowhttptest)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3)
command -v timeout >/dev/null || need+=(coreutils)
((${#need[@]} == 0)) || apt_install "${need[@]}"
command -v cargo >/dev/null || die "cargo is not installed"

SSLYZE="$SSLYZE_VENV/bin/sslyze"
if [[ ! -x $SSLYZE ]]; then
    say "installing sslyze from PyPI into $SSLYZE_VENV"
    rm -rf "$SSLYZE_VENV"
    if ! python3 -m venv "$SSLYZE_VENV" 2>/dev/null; then
        rm -rf "$SSLYZE_VENV"
        apt_install python3-venv
        python3 -m venv "$SSLYZE_VENV"
    fi
    timeout 600 "$SSLYZE_VENV/bin/pip" install -q sslyze || die "pip install sslyze failed"
fi

# Hundreds of attack connections, each also holding an upstream connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------- build
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/cartguard"
if [[ "${NO_BUILD:-0}" != 1 ]]; then
    say "cargo build --release (other builds on this machine may hold the lock for a while)"
    (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
fi
[[ -x "$BIN" ]] || die "no binary at $BIN"
TESTS_START=$(date +%s)

WORK=$(mktemp -d /tmp/cartguard-hostile.XXXXXX)

# ---------------------------------------------------------------- helpers
# shellcheck source=tests/external/lib.sh
source "$ROOT/tests/external/lib.sh"

# "CODE SECONDS" for one request; extra curl arguments after the URL.
request() {
    local url=$1
    shift
    curl -s -o /dev/null -w '%{http_code} %{time_total}' --max-time 10 "$@" "$url" 2>/dev/null || true
}

expect_status() {
    local want=$1 what=$2 url=$3
    shift 3
    local got
    got=$(request "$url" "$@")
    [[ "${got%% *}" == "$want" ]] || die "sanity check '$what': expected HTTP $want from $url, got '${got:-nothing}'"
    say "ok: $what -> $want"
}

# The allowlisted client: one fresh connection from 127.0.0.2 every 0.5s until
# the stop file appears (at most 4 * ATTACK_SECONDS + 120 requests).
probe_loop() {
    local out=$1 i=0 line
    local max=$((4 * ATTACK_SECONDS + 120))
    while [[ ! -e "$WORK/stop-probe" ]] && ((i < max)); do
        line=$(curl -s -o /dev/null -w '%{http_code} %{time_total} %{time_connect} %{time_starttransfer}' \
            --max-time 5 --interface 127.0.0.2 "http://127.0.0.1:$P_PLAIN/" 2>/dev/null || true)
        echo "${line:-000 5 0 0}" >>"$out"
        i=$((i + 1))
        sleep 0.5
    done
}

# probe file (code total connect first-byte, seconds) ->
# "total ok failed slowest_total its_connect its_first_byte"
probe_stats() {
    awk -v lim="$PROBE_MAX_SECONDS" '
        { n++; if ($1 == "200" && $2 + 0 <= lim) ok++; if ($2 + 0 > max) { max = $2 + 0; c = $3 + 0; f = $4 + 0 } }
        END { printf "%d %d %d %.3f %.3f %.3f\n", n, ok, n - ok, max, c, f }' "$1"
}

# slowhttptest CSV (seconds,closed,pending,connected,service available) ->
# "peak_connected closed_at_end seconds_unavailable"
slow_stats() {
    awk -F, 'NR > 1 {
            if ($4 + 0 > peak) peak = $4 + 0
            closed = $2 + 0
            if ($5 + 0 == 0) down++
        }
        END { printf "%d %d %d\n", peak, closed, down }' "$1"
}

# Drops a reaped pid, so cleanup never signals a pid the system has since reused.
forget_pid() {
    local keep=() p
    for p in "${PIDS[@]}"; do
        [[ $p == "$1" ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

# bounded SECONDS OUTFILE CMD...: runs CMD under `timeout` in the background, its
# output to OUTFILE, and waits, so INT/TERM reach the traps at once and cleanup
# stops CMD (a foreground child would delay the traps until it ended; redirecting
# the call itself would send the traps' messages to OUTFILE). Returns CMD's status.
bounded() {
    local secs=$1 out=$2 pid rc=0
    shift 2
    timeout "$secs" "$@" >"$out" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    forget_pid "$pid"
    return "$rc"
}

FAILURES=()
fail() {
    FAILURES+=("$*")
    printf 'FAIL: %s\n' "$*" >&2
}
SUMMARY=()

# ---------------------------------------------------------------- fixtures
read -r P_UP P_PLAIN P_TLS P_ADMIN <<<"$(free_ports 4)"

# A self-signed leaf. It must say CA:FALSE: sslyze's path validation (pyca/cryptography)
# refuses an end-entity certificate with CA:TRUE, which `openssl req -x509` sets by default.
# sslyze gets it as its trust anchor (--certinfo_ca_file).
say "throwaway certificate (P-256, SAN localhost + 127.0.0.1, 30 days)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" -addext "keyUsage=critical,digitalSignature" \
    -addext "extendedKeyUsage=serverAuth" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>"$WORK/openssl.err" ||
    die "openssl req failed: $(cat "$WORK/openssl.err")"

PASSWORD="pw-$(head -c 9 /dev/urandom | base64 | tr -d '/+=')"
HASH=$(printf '%s\n' "$PASSWORD" | "$BIN" hash-password --cost 4 tester | cut -d: -f2-)
[[ $HASH == \$2* ]] || die "cartguard hash-password gave '$HASH'"

cat >"$WORK/cartguard.yaml" <<EOF
mode: enforce
listen:
  - addr: "127.0.0.1:$P_PLAIN"
  - addr: "127.0.0.1:$P_TLS"
    tls:
      cert: "$WORK/cert.pem"
      key: "$WORK/key.pem"
upstream:
  url: "http://127.0.0.1:$P_UP"
groups:
  office: ["127.0.0.2/32"]
  loadtest: ["127.0.0.1/32"]      # h2load cannot pick its source address
users:
  inline:
    tester: "$HASH"
rules:
  - name: public                  # open to all: the slow body/read attacks reach the upstream through it
    path_prefix: /public/
    others: open
  - name: h2load
    path_prefix: /h2/
    allow: [loadtest]
    others: deny
  - name: site
    path_prefix: /
    allow: [office]
    others: auth
status:
  listen: "127.0.0.1:$P_ADMIN"
log:
  format: json
  path: "$WORK/access.log"
limits:
  header_timeout: 5s
  idle_timeout: 10s
EOF

"$BIN" check --config "$WORK/cartguard.yaml" >"$WORK/check.out" 2>&1 ||
    die "cartguard check refused the generated config: $(cat "$WORK/check.out")"

say "starting the upstream on 127.0.0.1:$P_UP"
python3 "$HERE/upstream.py" "$P_UP" >"$WORK/upstream.out" 2>"$WORK/upstream.err" &
UP_PID=$!
PIDS+=("$UP_PID")
wait_port "$P_UP" "$UP_PID" upstream

say "starting cartguard: plain 127.0.0.1:$P_PLAIN, TLS 127.0.0.1:$P_TLS"
"$BIN" run --config "$WORK/cartguard.yaml" >"$WORK/guard.out" 2>"$WORK/guard.err" &
GUARD_PID=$!
PIDS+=("$GUARD_PID")
wait_port "$P_PLAIN" "$GUARD_PID" guard
wait_port "$P_TLS" "$GUARD_PID" guard

# ---------------------------------------------------------------- sanity
PLAIN="http://127.0.0.1:$P_PLAIN"
TLSURL="https://localhost:$P_TLS"
TLSARGS=(--cacert "$WORK/cert.pem" --resolve "localhost:$P_TLS:127.0.0.1")
expect_status 200 "office client, plain" "$PLAIN/" --interface 127.0.0.2
expect_status 401 "stranger without login" "$PLAIN/" --interface 127.0.0.3
expect_status 200 "stranger with login" "$PLAIN/" --interface 127.0.0.3 -u "tester:$PASSWORD"
expect_status 200 "open path" "$PLAIN/public/big.bin" --interface 127.0.0.3
expect_status 403 "h2load path from outside loadtest" "$PLAIN/h2/" --interface 127.0.0.3
expect_status 200 "office client, TLS + h2" "$TLSURL/" --interface 127.0.0.2 --http2 "${TLSARGS[@]}"
alpn=$(curl -s -o /dev/null -w '%{http_version}' --max-time 10 --http2 "${TLSARGS[@]}" "$TLSURL/h2/" || true)
[[ $alpn == 2 ]] || die "TLS listener did not negotiate HTTP/2 (curl saw HTTP/$alpn)"
say "ok: ALPN h2 on the TLS listener"

# ---------------------------------------------------------------- 1. slowhttptest
slow_attack() {
    local mode=$1 name=$2
    shift 2
    local out="$WORK/slow-$mode" probe="$WORK/probe-$mode.txt"
    rm -f "$WORK/stop-probe" "$probe"
    touch "$probe"
    say "slowhttptest -$mode ($name): $CONNS connections, ${ATTACK_SECONDS}s, allowlisted client polling"
    probe_loop "$probe" &
    local probe_pid=$!
    PIDS+=("$probe_pid")
    sleep 1 # one probe before the attack as a baseline
    local rc=0
    bounded $((ATTACK_SECONDS + 60)) "$out.log" slowhttptest "-$mode" -c "$CONNS" -r 100 -p 3 \
        -l "$ATTACK_SECONDS" -g -o "$out" "$@" || rc=$?
    touch "$WORK/stop-probe"
    wait "$probe_pid" || true
    forget_pid "$probe_pid"
    local ended exit_status peak closed down total ok failed max max_connect max_ttfb
    sed -i 's/\x1b\[[0-9;]*m//g' "$out.log" # colours
    ended=$(grep -a -o 'Test ended on [0-9]*[a-z]* second' "$out.log" | tail -n 1 || true)
    exit_status=$(grep -a -o 'Exit status: .*' "$out.log" | tail -n 1 | sed 's/: */: /' || true)
    if [[ -f "$out.csv" ]]; then
        read -r peak closed down <<<"$(slow_stats "$out.csv")"
    else
        peak='?' closed='?' down='?'
    fi
    read -r total ok failed max max_connect max_ttfb <<<"$(probe_stats "$probe")"
    SUMMARY+=("slowhttptest -$mode $name: $CONNS conns ${ATTACK_SECONDS}s; peak connected $peak, closed $closed; slowhttptest's probe saw the service down ${down}s; ${ended:-no end line}, ${exit_status:-rc=$rc}")
    SUMMARY+=("    allowlisted 127.0.0.2: $ok/$total requests 200 within ${PROBE_MAX_SECONDS}s (slowest ${max}s: connected after ${max_connect}s, first byte at ${max_ttfb}s)")
    if [[ $rc -ne 0 && $rc -ne 1 ]]; then
        # slowhttptest exits 1 when it ends with no connection left open; a timeout is 124.
        fail "slowhttptest -$mode exited $rc (log: $out.log)"
        tail -n 20 "$out.log" >&2
    fi
    if ((total == 0)); then
        fail "slowhttptest -$mode: the allowlisted client made no request"
    elif ((failed > 0)); then
        fail "slowhttptest -$mode: $failed of $total allowlisted requests failed or took > ${PROBE_MAX_SECONDS}s (code, total, connect, first byte):"
        awk -v lim="$PROBE_MAX_SECONDS" '$1 != "200" || $2 + 0 > lim { print "    " $0 }' "$probe" | head -n 10 >&2
    fi
}

slow_attack H "slow headers" -i 2 -x 24 -u "$PLAIN/"
slow_attack B "slow body" -i 2 -x 24 -s 65536 -u "$PLAIN/public/upload"
slow_attack X "slow read" -k 3 -n 5 -w 512 -y 1024 -z 32 -u "$PLAIN/public/big.bin"

# What the guard logged for the connections it cut.
if [[ -f "$WORK/access.log" ]]; then
    logged=$(python3 - "$WORK/access.log" <<'EOF'
import collections, json, sys
c = collections.Counter()
slowest = None
for line in open(sys.argv[1], errors="replace"):
    try:
        r = json.loads(line)
    except Exception:
        c["unparsed"] += 1
        continue
    c[r["status"]] += 1
    if r["client_ip"] == "127.0.0.2" and (slowest is None or r["duration_ms"] > slowest["duration_ms"]):
        slowest = r
print(", ".join(f"{n} x {s}" for s, n in sorted(c.items(), key=lambda kv: str(kv[0]))))
if slowest:
    print(f"{slowest['duration_ms']:.0f} ms in the guard, {slowest['upstream_ms'] or 0:.0f} ms of it waiting for the upstream")
EOF
)
    SUMMARY+=("guard access log after the slow attacks (status counts): $(head -n 1 <<<"$logged")")
    SUMMARY+=("    slowest allowlisted request as logged: $(sed -n 2p <<<"$logged")")
fi
stalled=$(grep -a -c 'closing a stalled connection' "$WORK/guard.err" || true)
SUMMARY+=("guard log: ${stalled:-0} stalled connections cut (idle_timeout, request in flight)")

# ---------------------------------------------------------------- 2. sslyze
say "sslyze --mozilla_config=intermediate localhost:$P_TLS{127.0.0.1}"
sslyze_version=$("$SSLYZE" --help 2>/dev/null | grep -a -o 'SSLyze version [0-9.]*' | head -n 1 || true)
rc=0
bounded 300 "$WORK/sslyze.out" "$SSLYZE" --mozilla_config=intermediate --certinfo_ca_file "$WORK/cert.pem" \
    --json_out "$WORK/sslyze.json" "localhost:$P_TLS{127.0.0.1}" || rc=$?
compliance=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/sslyze.out" | awk '/COMPLIANCE AGAINST/ { on = 1 } on' || true)
accepted=$(python3 - "$WORK/sslyze.json" <<'EOF' 2>/dev/null || true
import json, sys
doc = json.load(open(sys.argv[1]))
res = doc["server_scan_results"][0]["scan_result"]
parts = []
for key, name in [("ssl_2_0_cipher_suites", "SSLv2"), ("ssl_3_0_cipher_suites", "SSLv3"),
                  ("tls_1_0_cipher_suites", "TLS1.0"), ("tls_1_1_cipher_suites", "TLS1.1"),
                  ("tls_1_2_cipher_suites", "TLS1.2"), ("tls_1_3_cipher_suites", "TLS1.3")]:
    r = (res.get(key) or {}).get("result") or {}
    n = len(r.get("accepted_cipher_suites") or [])
    if n:
        parts.append(f"{name}: {n} suites")
curves = ((res.get("elliptic_curves") or {}).get("result") or {}).get("supported_curves") or []
parts.append("curves: " + " ".join(c["name"] for c in curves))
print("; ".join(parts))
EOF
)
if grep -a -q 'OK - Compliant' <<<"$compliance" && [[ $rc -eq 0 ]]; then
    SUMMARY+=("${sslyze_version:-sslyze} --mozilla_config=intermediate: compliant ($accepted)")
else
    fail "sslyze: not compliant with Mozilla intermediate (rc=$rc)"
    if [[ -n $compliance ]]; then
        printf '%s\n' "$compliance" >&2
    else
        tail -n 30 "$WORK/sslyze.out" >&2
    fi
    SUMMARY+=("${sslyze_version:-sslyze} --mozilla_config=intermediate: NOT COMPLIANT ($accepted)")
    while IFS= read -r l; do SUMMARY+=("    $l"); done < <(grep -a '^ *\*' <<<"$compliance" || true)
fi

# ---------------------------------------------------------------- 3. h2load
say "h2load -n $H2_REQUESTS -c 20 -m 10 https://127.0.0.1:$P_TLS/h2/"
h2_version=$(h2load --version 2>/dev/null | head -n 1 || true)
rc=0
bounded 180 "$WORK/h2load.out" h2load -n "$H2_REQUESTS" -c 20 -m 10 "https://127.0.0.1:$P_TLS/h2/" || rc=$?
proto=$(sed -n 's/^Application protocol: *//p' "$WORK/h2load.out" | head -n 1)
finished=$(grep -a '^finished in' "$WORK/h2load.out" | head -n 1 || true)
reqline=$(grep -a '^requests:' "$WORK/h2load.out" | head -n 1 || true)
codes=$(grep -a '^status codes:' "$WORK/h2load.out" | head -n 1 || true)
ok2xx=$(sed -n 's/^status codes: *\([0-9]*\) 2xx.*/\1/p' <<<"$codes")
SUMMARY+=("${h2_version:-h2load} -n $H2_REQUESTS -c 20 -m 10 over TLS, protocol ${proto:-?}: ${finished:-no result}")
SUMMARY+=("    $reqline")
SUMMARY+=("    $codes")
if [[ $rc -ne 0 || $proto != h2 || ${ok2xx:-0} -ne $H2_REQUESTS ]]; then
    fail "h2load: rc=$rc, protocol '${proto:-?}', ${ok2xx:-0} of $H2_REQUESTS requests 2xx"
    tail -n 15 "$WORK/h2load.out" >&2
fi

kill -0 "$GUARD_PID" 2>/dev/null || fail "cartguard exited during the run (see $WORK/guard.err)"
expect_status 200 "office client after everything" "$PLAIN/" --interface 127.0.0.2

# ---------------------------------------------------------------- summary
END=$(date +%s)
echo
echo "== cartguard hostile-tools summary: $(date -u +%Y-%m-%dT%H:%MZ), $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo '+changes'), $(nproc) cores, tests $((END - TESTS_START))s (total $((END - START))s)"
echo "   guard: header_timeout 5s, idle_timeout 10s; allowlisted client 127.0.0.2 polled every 0.5s, fail if not 200 within ${PROBE_MAX_SECONDS}s"
for line in "${SUMMARY[@]}"; do
    echo "$line"
done
if ((${#FAILURES[@]})); then
    echo "RESULT: FAIL (${#FAILURES[@]})"
    for f in "${FAILURES[@]}"; do
        echo "  - $f"
    done
    exit 1
fi
echo "RESULT: PASS"
