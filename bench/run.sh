#!/usr/bin/env bash
# Side-by-side benchmark: cartguard against nginx doing the same job
# (allowlist or Basic auth, then proxy_pass to a keep-alive upstream).
#
#   bench/run.sh                       # about 4 minutes after the build
#   ROUNDS=1 DURATION=5 bench/run.sh   # a quick look
#
# Knobs (environment): DURATION (s per load, default 10), ROUNDS (3), WARMUP
# (s, 2), CONNS (64), WRK_THREADS (1), SERVER_CPU (1), CLIENT_CPU (0),
# IDLE_CONNS (10000; 0 skips the idle keep-alive test), NGINX_10K (1; 0 skips
# nginx with 10,000 allow lines), OVERLOAD (1; 0 skips the guessing-flood and
# cold-login cases), KEEP=1 keeps the work directory, NO_BUILD=1
# skips `cargo build --release`.
#
# Every server runs pinned to SERVER_CPU (the proxy and the upstream share it),
# wrk runs pinned to CLIENT_CPU; cartguard gets 1 async worker thread
# (CARTGUARD_WORKER_THREADS=1) and nginx `worker_processes 1`. Both write an
# access log to a file during the run. All servers start once; each round runs
# every case in turn (same duration, same connections), so a noisy neighbour
# hits all cases alike; the table shows the round with the median req/s.
# Results: a table on stdout and bench/results/YYYY-MM-DD.md.

set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-1}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
IDLE_CONNS=${IDLE_CONNS:-10000}
NGINX_10K=${NGINX_10K:-1}
OVERLOAD=${OVERLOAD:-1}
CIDRS=10000

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS="$ROOT/bench/results"
SCRIPT_START=$(date +%s)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

say() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'bench/run.sh: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- cleanup
PIDS=()
WORK=""
cleanup() {
    local rc=$?
    set +e
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
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
need_pkgs=()
command -v wrk >/dev/null || need_pkgs+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need_pkgs+=(nginx-light)
command -v python3 >/dev/null || need_pkgs+=(python3)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v taskset >/dev/null || need_pkgs+=(util-linux)
command -v pgrep >/dev/null || need_pkgs+=(procps)
[[ "${INSTR_RUN:-1}" != 1 ]] || command -v callgrind_control >/dev/null || need_pkgs+=(valgrind)
if ((${#need_pkgs[@]})); then
    command -v apt-get >/dev/null || die "missing ${need_pkgs[*]} and no apt-get to install them"
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "missing ${need_pkgs[*]}; run as root or install them"
        SUDO=sudo
    fi
    say "installing ${need_pkgs[*]}"
    $SUDO apt-get update -qq
    # Installing nginx may start the distribution's service on :80; it is not used here.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
command -v cargo >/dev/null || die "cargo is not installed (https://rustup.rs)"
CPUS=$(nproc)
((SERVER_CPU < CPUS && CLIENT_CPU < CPUS)) || die "SERVER_CPU=$SERVER_CPU / CLIENT_CPU=$CLIENT_CPU: this machine has $CPUS CPUs"
((ROUNDS >= 1 && DURATION >= 1)) || die "ROUNDS and DURATION must be at least 1"

# File descriptors for the idle keep-alive test: raise the soft limit to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)

# ---------------------------------------------------------------- build
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/cartguard"
if [[ "${NO_BUILD:-0}" != 1 ]]; then
    say "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
fi
[[ -x "$BIN" ]] || die "no binary at $BIN"
BUILD_DONE=$(date +%s)

WORK=$(mktemp -d /tmp/cartguard-bench.XXXXXX)
chmod 755 "$WORK" # nginx workers run as nobody when started by root
mkdir -p "$WORK/tmp" "$RESULTS"

# ---------------------------------------------------------------- helpers
# shellcheck source=tests/external/lib.sh
source "$ROOT/tests/external/lib.sh"

expect_status() {
    local want=$1 what=$2 url=$3
    shift 3
    local got
    got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$@" "$url" || true)
    [[ "$got" == "$want" ]] || die "$what: expected HTTP $want from $url, got $got"
}

# kB from /proc/PID/status
proc_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
mib() { awk -v kb="${1:-0}" 'BEGIN { printf "%.1f", kb / 1024 }'; }

# wrk output → "rps p50_ms p99_ms errors requests"
parse_wrk() {
    awk '
        function ms(v) {
            if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
            if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
            if (v ~ /m$/)  { sub(/m$/, "", v);  return v * 60000 }
            if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
            return v + 0
        }
        /^Requests\/sec:/ { rps = $2 }
        / requests in / { n = $1 }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        /Non-2xx or 3xx responses:/ { err += $NF }
        /Socket errors:/ {
            for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) { v = $i; sub(/,/, "", v); err += v }
        }
        END { printf "%.0f %.3f %.3f %d %d\n", rps, p50, p99, err, n }
    ' "$1"
}

# ---------------------------------------------------------------- fixtures
read -r P_UP P_CG_ALLOW P_CG_AUTH P_CG_10K P_NG_ALLOW P_NG_AUTH P_NG_10K A_ALLOW A_AUTH A_10K <<<"$(free_ports 10)"
PATH_REQ="/wp-json/wc/v3/products?per_page=10"
USER_NAME=bench
PASSWORD="bench-$(head -c 9 /dev/urandom | base64 | tr -d '/+=')"
AUTH_HEADER="Authorization: Basic $(printf '%s:%s' "$USER_NAME" "$PASSWORD" | base64 -w0)"
printf '%s\n' "$PASSWORD" | "$BIN" hash-password --cost 10 "$USER_NAME" >"$WORK/htpasswd" ||
    die "cartguard hash-password failed"
chmod 644 "$WORK/htpasswd"
grep -q '^bench:\$2[aby]\$10\$' "$WORK/htpasswd" || die "unexpected htpasswd line: $(cat "$WORK/htpasswd")"

# A 1 KiB JSON body (exactly 1024 bytes, no quote or $ that nginx would interpret).
BODY=$(python3 -c '
import json
items = [{"id": i, "name": "product-%04d" % i, "price": "19.99", "stock": 7} for i in range(16)]
body = json.dumps({"products": items}, separators=(",", ":"))
body = body[:-1] + ",\"pad\":\"" + "x" * (1024 - len(body) - 9) + "\"}"
assert len(body) == 1024, len(body)
print(body)')

# Upstream: its own nginx, answering the fixed body on keep-alive connections.
mkdir -p "$WORK/up"
cat >"$WORK/up/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 40000;
pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log warn;
events { worker_connections 30000; }
http {
    access_log off;
    client_body_temp_path $WORK/tmp/up-body;
    proxy_temp_path $WORK/tmp/up-proxy;
    fastcgi_temp_path $WORK/tmp/up-fcgi;
    uwsgi_temp_path $WORK/tmp/up-uwsgi;
    scgi_temp_path $WORK/tmp/up-scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    server {
        listen 127.0.0.1:$P_UP backlog=4096;
        location / {
            default_type application/json;
            return 200 '$BODY';
        }
    }
}
EOF

# nginx as the guard: satisfy any; allow <groups>; deny all; auth_basic.
# $1 = name, $2 = port, $3 = file of extra allow lines (besides integration-management).
nginx_guard_conf() {
    local name=$1 port=$2 allow_file=$3 dir="$WORK/$1"
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 40000;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 30000; }
http {
    client_body_temp_path $WORK/tmp/$name-body;
    proxy_temp_path $WORK/tmp/$name-proxy;
    fastcgi_temp_path $WORK/tmp/$name-fcgi;
    uwsgi_temp_path $WORK/tmp/$name-uwsgi;
    scgi_temp_path $WORK/tmp/$name-scgi;
    # Buffered, like cartguard's writer; nginx's default is one write() per request.
    access_log $dir/access.log combined buffer=64k flush=1s;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    upstream cart {
        server 127.0.0.1:$P_UP;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            satisfy any;
            allow 50.18.194.14;
            allow 54.241.171.180;
            include $allow_file;
            deny all;
            auth_basic "Shop";
            auth_basic_user_file $WORK/htpasswd;
            proxy_pass http://cart;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF
}

printf 'allow 127.0.0.1;\n' >"$WORK/allow-bench.inc"
: >"$WORK/allow-none.inc"
# 10,000 non-adjacent /24s (none matching the client), then the client.
python3 - "$WORK" "$CIDRS" <<'EOF'
import ipaddress, sys
work, n = sys.argv[1], int(sys.argv[2])
nets = [f"{ipaddress.IPv4Address(0x0b000000 + i * 512)}/24" for i in range(n)]
with open(f"{work}/cidrs.yaml", "w") as f:
    f.write("".join(f'    - "{c}"\n' for c in nets))
with open(f"{work}/allow-10k.inc", "w") as f:
    f.write("".join(f"allow {c};\n" for c in nets) + "allow 127.0.0.1;\n")
EOF
nginx_guard_conf ng-allow "$P_NG_ALLOW" "$WORK/allow-bench.inc"
nginx_guard_conf ng-auth "$P_NG_AUTH" "$WORK/allow-none.inc"
nginx_guard_conf ng-10k "$P_NG_10K" "$WORK/allow-10k.inc"

# cartguard, same rules as the nginx config.
# $1 = name, $2 = port, $3 = admin port, $4 = allow list, $5 = extra groups (yaml).
cartguard_conf() {
    local name=$1 port=$2 admin=$3 allow=$4 groups=$5 dir="$WORK/$1"
    mkdir -p "$dir"
    cat >"$dir/cartguard.yaml" <<EOF
mode: enforce
listen:
  - addr: "127.0.0.1:$port"
upstream:
  url: "http://127.0.0.1:$P_UP"
  host: preserve
groups:
  bench: ["127.0.0.1/32"]
$groups
users:
  htpasswd: $WORK/htpasswd
rules:
  - name: cart-api
    path_prefix: /wp-json/wc/
    query: { rest_route: /wc/ }
    allow: $allow
    others: auth
  - name: site
    path_prefix: /
    allow: $allow
    others: auth
auth:
  realm: "Shop"
status:
  listen: "127.0.0.1:$admin"
log:
  format: json
  path: $dir/access.log
limits:
  max_connections: 30000
  idle_timeout: 120s
  shutdown_grace: 1s
EOF
    "$BIN" check --quiet --config "$dir/cartguard.yaml" >/dev/null || die "cartguard check failed for $name"
}
cartguard_conf cg-allow "$P_CG_ALLOW" "$A_ALLOW" "[integration-management, bench]" ""
cartguard_conf cg-auth "$P_CG_AUTH" "$A_AUTH" "[integration-management]" ""
cartguard_conf cg-10k "$P_CG_10K" "$A_10K" "[integration-management, partners, bench]" "  partners:
$(cat "$WORK/cidrs.yaml")"

# ---------------------------------------------------------------- servers
declare -A SERVE_PID # the process serving requests (nginx: its worker), by name
start_nginx() {
    local name=$1 port=$2 master=""
    taskset -c "$SERVER_CPU" "$NGINX" -p "$WORK/$name" -c "$WORK/$name/nginx.conf" -g 'daemon off;' \
        >"$WORK/$name.out" 2>"$WORK/$name.err" &
    master=$!
    PIDS+=("$master")
    wait_port "$port" "$master" "$name"
    for _ in $(seq 1 50); do
        SERVE_PID[$name]=$(pgrep -P "$master" | head -n1 || true)
        [[ -n "${SERVE_PID[$name]}" ]] && return 0
        sleep 0.1
    done
    die "nginx ($name) has no worker process"
}
start_cartguard() {
    local name=$1 port=$2
    CARTGUARD_WORKER_THREADS=1 CARTGUARD_LOG=warn taskset -c "$SERVER_CPU" \
        "$BIN" run --config "$WORK/$name/cartguard.yaml" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    SERVE_PID[$name]=$!
    PIDS+=("$!")
    wait_port "$port" "${SERVE_PID[$name]}" "$name"
}

say "cartguard $("$BIN" --version | awk '{print $2}'), $("$NGINX" -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}')"
say "servers on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU, $ROUNDS round(s) of ${DURATION}s per case"
start_nginx up "$P_UP"
expect_status 200 "upstream" "http://127.0.0.1:$P_UP/"
[[ $(curl -s --max-time 5 "http://127.0.0.1:$P_UP$PATH_REQ" | wc -c) -eq 1024 ]] || die "upstream body is not 1024 bytes"
start_cartguard cg-allow "$P_CG_ALLOW"
start_cartguard cg-auth "$P_CG_AUTH"
start_cartguard cg-10k "$P_CG_10K"
start_nginx ng-allow "$P_NG_ALLOW"
start_nginx ng-auth "$P_NG_AUTH"
[[ "$NGINX_10K" == 1 ]] && start_nginx ng-10k "$P_NG_10K"

# Every proxy answers as it should before anything is measured.
for u in "cg-allow $P_CG_ALLOW" "ng-allow $P_NG_ALLOW" "cg-10k $P_CG_10K" "ng-10k $P_NG_10K"; do
    read -r name port <<<"$u"
    [[ $name == ng-10k && "$NGINX_10K" != 1 ]] && continue
    expect_status 200 "$name (allowlisted client, no credentials)" "http://127.0.0.1:$port/"
done
for u in "cg-auth $P_CG_AUTH" "ng-auth $P_NG_AUTH"; do
    read -r name port <<<"$u"
    url="http://127.0.0.1:$port/"
    expect_status 401 "$name (no credentials)" "$url"
    expect_status 401 "$name (wrong password)" "$url" -u "$USER_NAME:wrong-$PASSWORD"
    expect_status 200 "$name (right password)" "$url" -H "$AUTH_HEADER"
done

# ---------------------------------------------------------------- measuring
# key | server name | port | auth? | label
CASES=(
    "direct|up|$P_UP|no|a. direct to the upstream (ceiling)"
    "cg_allow|cg-allow|$P_CG_ALLOW|no|b. cartguard, client in an allow group"
    "ng_allow|ng-allow|$P_NG_ALLOW|no|b. nginx, client in the allow list"
    "cg_auth|cg-auth|$P_CG_AUTH|yes|c. cartguard, Basic auth (bcrypt cost 10)"
    "ng_auth|ng-auth|$P_NG_AUTH|yes|c. nginx, Basic auth (bcrypt cost 10)"
    "cg_10k|cg-10k|$P_CG_10K|no|e. cartguard, $CIDRS CIDRs + allow group"
)
[[ "$NGINX_10K" == 1 ]] && CASES+=("ng_10k|ng-10k|$P_NG_10K|no|e. nginx, $CIDRS allow lines + allow")

# CPU ticks (user + system, all threads) used so far by one process.
CLK_TCK=$(getconf CLK_TCK)
pid_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# CPU ticks used so far by every server process.
server_ticks() {
    local t=0 pid
    for pid in "${SERVE_PID[@]}"; do
        t=$((t + $(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
}
# Waits (at most 30 s) until the servers are idle: nginx keeps hashing bcrypt for
# requests whose client has gone, which would otherwise eat into the next case.
settle() {
    local before after
    before=$(server_ticks)
    for _ in $(seq 1 60); do
        sleep 0.5
        after=$(server_ticks)
        ((after - before <= 2)) && return 0
        before=$after
    done
    say "  warning: servers still busy after 30 s"
}

declare -A RUNS LABEL SERVER TOTAL_REQ
run_wrk() {
    local key=$1 port=$2 auth=$3 secs=$4 out=$5
    local args=(-t"$WRK_THREADS" -c"$CONNS" -d"${secs}s" --timeout 10s --latency)
    [[ $auth == yes ]] && args+=(-H "$AUTH_HEADER")
    taskset -c "$CLIENT_CPU" wrk "${args[@]}" "http://127.0.0.1:$port$PATH_REQ" >"$out" 2>&1 ||
        die "wrk failed for $key: $(cat "$out")"
}

for c in "${CASES[@]}"; do
    IFS='|' read -r key name port auth label <<<"$c"
    LABEL[$key]=$label
    SERVER[$key]=$name
    RUNS[$key]=""
    TOTAL_REQ[$key]=0
    run_wrk "$key" "$port" "$auth" "$WARMUP" "$WORK/$key.warmup"
    settle
done
for round in $(seq 1 "$ROUNDS"); do
    say "round $round/$ROUNDS"
    for c in "${CASES[@]}"; do
        IFS='|' read -r key name port auth label <<<"$c"
        settle
        ticks=$(pid_ticks "${SERVE_PID[$name]}")
        run_wrk "$key" "$port" "$auth" "$DURATION" "$WORK/$key.$round.wrk"
        ticks=$(($(pid_ticks "${SERVE_PID[$name]}") - ticks))
        read -r rps p50 p99 errs n < <(parse_wrk "$WORK/$key.$round.wrk")
        cpu=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$n" 'BEGIN { if (n > 0) printf "%.1f", t * 1e6 / hz / n; else printf "-" }')
        RUNS[$key]+="$rps $p50 $p99 $errs $cpu"$'\n'
        TOTAL_REQ[$key]=$((TOTAL_REQ[$key] + n))
        say "  $key: $rps req/s, p50 $p50 ms, p99 $p99 ms, errors $errs, CPU $cpu µs/request"
    done
done

# The round with the median req/s: "rps p50 p99 errors", plus "min-max" of req/s.
declare -A RPS P50 P99 ERRS CPU SPREAD
for c in "${CASES[@]}"; do
    IFS='|' read -r key _ <<<"$c"
    read -r RPS[$key] P50[$key] P99[$key] ERRS[$key] CPU[$key] < <(printf '%s' "${RUNS[$key]}" | sort -n -k1,1 |
        awk '{ l[NR] = $0 } END { print l[int((NR + 1) / 2)] }')
    SPREAD[$key]=$(printf '%s' "${RUNS[$key]}" | sort -n -k1,1 | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "–" hi }')
done

# Memory: peak during the rounds, and 1 s after the last load.
declare -A HWM RSS_AFTER LOGLINES DROPPED
sleep 1
for c in "${CASES[@]}"; do
    IFS='|' read -r key name _ <<<"$c"
    HWM[$key]=$(proc_kb "${SERVE_PID[$name]}" VmHWM)
    RSS_AFTER[$key]=$(proc_kb "${SERVE_PID[$name]}" VmRSS)
done
declare -A ADMIN=([cg-allow]=$A_ALLOW [cg-auth]=$A_AUTH [cg-10k]=$A_10K)
for name in cg-allow cg-auth cg-10k; do
    DROPPED[$name]=$(curl -s --max-time 5 "http://127.0.0.1:${ADMIN[$name]}/metrics" |
        awk '$1 == "cartguard_access_log_dropped_total" { print $2 }')
done
sleep 1.5 # nginx flushes its buffered log within 1 s
for c in "${CASES[@]}"; do
    IFS='|' read -r key name _ <<<"$c"
    LOGLINES[$key]=""
    [[ -f "$WORK/$name/access.log" ]] && LOGLINES[$key]=$(wc -l <"$WORK/$name/access.log")
done

# ---------------------------------------------------------------- idle keep-alive connections
IDLE_RESULT=()
IDLE_RSS_CG=""
idle_test() {
    local kind=$1 name=$2 port=$3
    local pid=${SERVE_PID[$name]}
    local before out
    before=$(proc_kb "$pid" VmRSS)
    out=$(timeout 90 python3 - "$port" "$IDLE_CONNS" "$pid" <<'EOF'
import selectors, socket, sys, time
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def rss(field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0
deadline = time.monotonic() + 60
req = b"GET /wp-json/wc/v3/products HTTP/1.1\r\nHost: shop.example\r\n\r\n"
socks, ok = [], 0
sel = selectors.DefaultSelector()
batch = 250
try:
    while len(socks) < n and time.monotonic() < deadline:
        group = []
        for _ in range(min(batch, n - len(socks))):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(req)
            s.setblocking(False)
            group.append(s)
        socks.extend(group)
        pending = {s: b"" for s in group}
        for s in group:
            sel.register(s, selectors.EVENT_READ)
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                s = key.fileobj
                data = s.recv(65536)
                pending[s] += data
                head, sep, body = pending[s].partition(b"\r\n\r\n")
                if not data or (sep and len(body) >= 1024):
                    if sep and head.startswith(b"HTTP/1.1 200") and len(body) >= 1024:
                        ok += 1
                    sel.unregister(s)
                    del pending[s]
        for s in list(pending):
            sel.unregister(s)
    time.sleep(2)
    print(len(socks), ok, rss("VmRSS"), rss("VmHWM"))
finally:
    for s in socks:
        s.close()
EOF
    ) || out=""
    if [[ -z "$out" ]]; then
        IDLE_RESULT+=("| $kind | failed or timed out | | | |")
        return
    fi
    local opened okc rss hwm
    read -r opened okc rss hwm <<<"$out"
    IDLE_RESULT+=("| $kind | $opened opened, $okc answered 200 | $(mib "$before") | $(mib "$rss") | $(mib "$hwm") |")
    if [[ $kind == cartguard && $opened == "$IDLE_CONNS" && $okc == "$IDLE_CONNS" ]]; then
        IDLE_RSS_CG=$rss
    fi
    say "  $kind: $opened connections ($okc × 200), RSS $(mib "$rss") MiB"
}
if ((IDLE_CONNS > 0)); then
    if ((FD_LIMIT < IDLE_CONNS + 1000)); then
        IDLE_RESULT+=("| - | skipped: ulimit -n is $FD_LIMIT, need $((IDLE_CONNS + 1000)) | | | |")
        say "idle test skipped: ulimit -n is $FD_LIMIT"
    else
        say "idle: $IDLE_CONNS keep-alive connections, one request each, then held open"
        idle_test cartguard cg-allow "$P_CG_ALLOW"
        idle_test nginx ng-allow "$P_NG_ALLOW"
    fi
fi

# ---------------------------------------------------------------- instructions per request
# The allowlisted case again, each proxy restarted alone under callgrind (the VM has no
# hardware counters for `perf stat`): counters zeroed after a warm-up, a short bounded
# load, then a dump; Ir of every thread (cartguard's log writer included) / requests.
declare -A INSTR
instr_one() {
    local name=$1 port=$2 kind=$3 pid out n ir
    kill -TERM "${SERVE_PID[$name]}" 2>/dev/null || true
    [[ $kind == nginx ]] && kill -TERM "$(cat "$WORK/$name/nginx.pid" 2>/dev/null)" 2>/dev/null
    sleep 1
    if [[ $kind == nginx ]]; then
        taskset -c "$SERVER_CPU" valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.cg.%p" \
            "$NGINX" -p "$WORK/$name" -c "$WORK/$name/nginx.conf" -g 'daemon off; master_process off;' \
            >"$WORK/$name.cg.out" 2>&1 &
    else
        CARTGUARD_WORKER_THREADS=1 CARTGUARD_LOG=warn taskset -c "$SERVER_CPU" valgrind --tool=callgrind \
            --callgrind-out-file="$WORK/$name.cg.%p" "$BIN" run --config "$WORK/$name/cartguard.yaml" \
            >"$WORK/$name.cg.out" 2>&1 &
    fi
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    taskset -c "$CLIENT_CPU" wrk -t1 -c8 -d3s "http://127.0.0.1:$port$PATH_REQ" >/dev/null 2>&1 || true
    callgrind_control -z "$pid" >/dev/null 2>&1 || return 0
    out="$WORK/$name.instr.wrk"
    taskset -c "$CLIENT_CPU" wrk -t1 -c8 -d"$INSTR_SECS"s --timeout 10s --latency "http://127.0.0.1:$port$PATH_REQ" >"$out" 2>&1 || return 0
    callgrind_control -d "$pid" >/dev/null 2>&1 || return 0
    sleep 1
    read -r _ _ _ _ n < <(parse_wrk "$out")
    ir=$(cat "$WORK/$name.cg.$pid".* 2>/dev/null | awk '/^totals:/ { t = $2 } /^summary:/ { s = $2 } END { print (t ? t : s) + 0 }')
    INSTR[$name]=$(awk -v ir="$ir" -v n="$n" 'BEGIN { if (n > 0) printf "%.0f", ir / n; else printf "-" }')
    say "  $name: $n requests, ${INSTR[$name]} instructions/request"
    kill -TERM "$pid" 2>/dev/null || true
}
INSTR_SECS=${INSTR_SECS:-5}
if [[ "${INSTR_RUN:-1}" == 1 ]] && command -v callgrind_control >/dev/null; then
    say "instructions per request (callgrind, allowlisted case, ${INSTR_SECS}s, 8 connections)"
    instr_one cg-allow "$P_CG_ALLOW" cartguard
    instr_one ng-allow "$P_NG_ALLOW" nginx
fi

# ---------------------------------------------------------------- overload
# One more cartguard (same pinning): /login asks 127.0.0.1 to log in, the rest
# admits it. f: allowlisted throughput quiet, then while 8 wrk connections send
# distinct wrong passwords to /login (bans raised, so every guess costs a bcrypt).
# g: 50 concurrent first logins of one user against one cold login of another.
OVERLOAD_RESULT=()
overload_test() {
    local port admin dir="$WORK/cg-flood"
    read -r port admin <<<"$(free_ports 2)"
    mkdir -p "$dir"
    cp "$WORK/htpasswd" "$WORK/htpasswd-flood"
    for u in cold solo; do
        printf '%s\n' "$PASSWORD" | "$BIN" hash-password --cost 10 "$u" >>"$WORK/htpasswd-flood" ||
            die "cartguard hash-password failed"
    done
    cat >"$dir/cartguard.yaml" <<EOF
mode: enforce
listen:
  - addr: "127.0.0.1:$port"
upstream:
  url: "http://127.0.0.1:$P_UP"
  host: preserve
groups:
  bench: ["127.0.0.1/32"]
users:
  htpasswd: $WORK/htpasswd-flood
rules:
  - name: login
    path_prefix: /login
    allow: [integration-management]
    others: auth
  - name: site
    path_prefix: /
    allow: [integration-management, bench]
    others: auth
auth:
  max_failures: 4000000000
status:
  listen: "127.0.0.1:$admin"
log:
  format: json
  path: $dir/access.log
limits:
  max_connections: 30000
  shutdown_grace: 1s
EOF
    start_cartguard cg-flood "$port"
    expect_status 200 "cg-flood (allowlisted)" "http://127.0.0.1:$port/"
    expect_status 401 "cg-flood (/login, wrong password)" "http://127.0.0.1:$port/login" -u "bench:wrong"
    cat >"$WORK/guess.lua" <<'EOF'
-- Distinct wrong passwords, so neither cache helps the guesser.
local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(s)
  return ((s:gsub(".", function(x)
    local r, b = "", x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return b64chars:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#s % 3 + 1])
end
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/login", { ["Authorization"] = "Basic " .. b64("bench:guess-" .. n .. "-" .. math.random(1000000000)) })
end
EOF
    local rps_q rps_f p99_q p99_f guesses flood_pid
    settle
    run_wrk cg_flood_quiet "$port" no "$DURATION" "$WORK/flood.quiet.wrk"
    read -r rps_q _ p99_q _ < <(parse_wrk "$WORK/flood.quiet.wrk")
    taskset -c "$CLIENT_CPU" wrk -t1 -c8 -d"$((DURATION + 2))s" --timeout 10s -s "$WORK/guess.lua" \
        "http://127.0.0.1:$port/login" >"$WORK/flood.guess.wrk" 2>&1 &
    flood_pid=$!
    sleep 1
    run_wrk cg_flood_busy "$port" no "$DURATION" "$WORK/flood.busy.wrk"
    wait "$flood_pid" || true
    read -r rps_f _ p99_f _ < <(parse_wrk "$WORK/flood.busy.wrk")
    read -r _ _ _ _ guesses < <(parse_wrk "$WORK/flood.guess.wrk")
    OVERLOAD_RESULT+=("| f. allowlisted, quiet | $rps_q req/s, p99 $p99_q ms |")
    OVERLOAD_RESULT+=("| f. allowlisted during an 8-connection wrong-password flood ($guesses guesses answered) | $rps_f req/s, p99 $p99_f ms: **$(ratio "$rps_f" "$rps_q") ×** quiet |")
    say "  flood: allowlisted $rps_q req/s quiet, $rps_f req/s during the flood ($guesses guesses)"
    settle
    local cold one p99c okc solo_status
    cold=$(python3 - "$port" "$PASSWORD" <<'EOF'
import base64, http.client, sys, threading, time
port, password = int(sys.argv[1]), sys.argv[2]
def login(user, out, barrier=None):
    auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.connect()
    if barrier:
        barrier.wait()
    t = time.monotonic()
    c.request("GET", "/login", headers={"Authorization": auth})
    r = c.getresponse()
    r.read()
    out.append((time.monotonic() - t, r.status))
solo = []
login("solo", solo)
n, times, barrier = 50, [], threading.Barrier(50)
threads = [threading.Thread(target=login, args=("cold", times, barrier)) for _ in range(n)]
for t in threads: t.start()
for t in threads: t.join()
lat = sorted(t for t, _ in times)
ok = sum(1 for _, s in times if s == 200)
p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
print(f"{solo[0][0] * 1000:.1f} {p99 * 1000:.1f} {ok} {solo[0][1]}")
EOF
    ) || cold=""
    if [[ -n "$cold" ]]; then
        read -r one p99c okc solo_status <<<"$cold"
        OVERLOAD_RESULT+=("| g. one cold login (bcrypt cost 10) | $one ms (HTTP $solo_status) |")
        OVERLOAD_RESULT+=("| g. 50 concurrent cold logins of one user | p99 $p99c ms ($okc × 200): **$(ratio "$p99c" "$one") ×** one login |")
        say "  cold logins: one $one ms, 50 at once p99 $p99c ms"
    else
        OVERLOAD_RESULT+=("| g. 50 concurrent cold logins | failed |")
    fi
}

# ---------------------------------------------------------------- report
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'; }
if [[ "$OVERLOAD" == 1 ]]; then
    say "overload: guessing flood and cold logins"
    overload_test
fi
declare -A VS_NGINX=([cg_allow]=ng_allow [cg_auth]=ng_auth [cg_10k]=ng_10k)

DATE=$(date +%Y-%m-%d)
OUT="$RESULTS/$DATE.md"
{
    echo "# cartguard vs nginx, $DATE"
    echo
    echo "Command: \`bench/run.sh\` (ROUNDS=$ROUNDS, DURATION=$DURATION s per case and round, CONNS=$CONNS, wrk -t$WRK_THREADS on loopback)."
    echo "Machine: $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(uname -sr), load average before the run: $LOAD_BEFORE."
    echo "Pinning: servers (proxy and upstream nginx) on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU."
    echo "cartguard $("$BIN" --version | awk '{print $2}'): 1 async worker thread (CARTGUARD_WORKER_THREADS=1), JSON access log to a file."
    echo "nginx $("$NGINX" -v 2>&1 | sed 's/.*\///'): worker_processes 1, access_log combined buffer=64k, upstream keepalive 64."
    echo "Upstream: nginx \`return 200\` with a 1024-byte JSON body. Request: GET $PATH_REQ."
    echo "Each row is the round with the median req/s; 'req/s range' spans all rounds."
    echo
    echo "| case | req/s | req/s range | p50 ms | p99 ms | errors | CPU µs/request | peak RSS MiB | RSS after MiB | requests / log lines | cartguard/nginx | cartguard/direct |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for c in "${CASES[@]}"; do
        IFS='|' read -r key _ <<<"$c"
        vs_ng="" vs_direct=""
        if [[ $key == cg_* ]]; then
            vs_direct=$(ratio "${RPS[$key]}" "${RPS[direct]}")
            ng=${VS_NGINX[$key]:-}
            [[ -n "$ng" && -n "${RPS[$ng]:-}" ]] && vs_ng="$(ratio "${RPS[$key]}" "${RPS[$ng]}")"
        fi
        logs=""
        [[ -n "${LOGLINES[$key]}" ]] && logs="${TOTAL_REQ[$key]} / ${LOGLINES[$key]}"
        echo "| ${LABEL[$key]} | ${RPS[$key]} | ${SPREAD[$key]} | ${P50[$key]} | ${P99[$key]} | ${ERRS[$key]} | ${CPU[$key]} | $(mib "${HWM[$key]}") | $(mib "${RSS_AFTER[$key]}") | $logs | $vs_ng | $vs_direct |"
    done
    echo
    echo "Peak RSS: VmHWM of the process serving requests (nginx: its worker; 'direct': the upstream's worker)."
    echo "CPU µs/request: user + system time of the serving process (all its threads; not the upstream's) during the measured load, from /proc, divided by the requests wrk completed."
    echo "RSS after: VmRSS 1 s after the last load. Errors: non-2xx answers plus socket errors reported by wrk."
    echo "Log lines include warm-up and check requests. cartguard access records dropped: allow ${DROPPED[cg-allow]:-?}, auth ${DROPPED[cg-auth]:-?}, 10k ${DROPPED[cg-10k]:-?}."
    if [[ -n "${INSTR[cg-allow]:-}${INSTR[ng-allow]:-}" ]]; then
        echo
        echo "Instructions per request (callgrind, each proxy alone, allowlisted case, wrk -c8 for ${INSTR_SECS} s after a warm-up; every thread counted): cartguard ${INSTR[cg-allow]:-?}, nginx ${INSTR[ng-allow]:-?}."
    fi
    if ((${#IDLE_RESULT[@]})); then
        echo
        echo "Idle keep-alive connections ($IDLE_CONNS, one request each, then held open 2 s; same processes as b):"
        echo
        echo "| proxy | connections | RSS before MiB | RSS with connections MiB | peak RSS MiB |"
        echo "|---|---|---:|---:|---:|"
        printf '%s\n' "${IDLE_RESULT[@]}"
    fi
    if ((${#OVERLOAD_RESULT[@]})); then
        echo
        echo "Overload (a separate cartguard process, same pinning):"
        echo
        echo "| case | figure |"
        echo "|---|---|"
        printf '%s\n' "${OVERLOAD_RESULT[@]}"
    fi
    echo
    echo "Targets:"
    echo
    check() { if awk "BEGIN { exit !($2) }"; then echo "- [x] $1"; else echo "- [ ] $1 (missed)"; fi; }
    check "allowlisted ≥ 1.1 × nginx: $(ratio "${RPS[cg_allow]}" "${RPS[ng_allow]}")×" "${RPS[cg_allow]} >= 1.1 * ${RPS[ng_allow]}"
    check "allowlisted p99 ≤ nginx: ${P99[cg_allow]} ms vs ${P99[ng_allow]} ms" "${P99[cg_allow]} <= ${P99[ng_allow]}"
    if ((RPS[ng_auth] > 0)); then
        check "Basic auth ≥ 20 × nginx: $(ratio "${RPS[cg_auth]}" "${RPS[ng_auth]}")×" "${RPS[cg_auth]} >= 20 * ${RPS[ng_auth]}"
    else
        echo "- [ ] Basic auth ≥ 20 × nginx: nginx completed no request within ${DURATION} s (bcrypt per request); use a longer DURATION"
    fi
    check "Basic auth ≥ 0.9 × cartguard allowlisted: $(ratio "${RPS[cg_auth]}" "${RPS[cg_allow]}")×" "${RPS[cg_auth]} >= 0.9 * ${RPS[cg_allow]}"
    check "$CIDRS CIDRs ≥ 0.95 × 2 CIDRs: $(ratio "${RPS[cg_10k]}" "${RPS[cg_allow]}")×" "${RPS[cg_10k]} >= 0.95 * ${RPS[cg_allow]}"
    check "RSS after the run < 15 MiB: $(mib "${RSS_AFTER[cg_allow]}") MiB (allowlisted), $(mib "${RSS_AFTER[cg_auth]}") MiB (Basic), $(mib "${RSS_AFTER[cg_10k]}") MiB ($CIDRS CIDRs)" \
        "${RSS_AFTER[cg_allow]} < 15360 && ${RSS_AFTER[cg_auth]} < 15360 && ${RSS_AFTER[cg_10k]} < 15360"
    if [[ -n "$IDLE_RSS_CG" ]]; then
        check "RSS with $IDLE_CONNS idle keep-alive connections < 64 MiB: $(mib "$IDLE_RSS_CG") MiB" "$IDLE_RSS_CG < 65536"
    else
        echo "- [ ] RSS with $IDLE_CONNS idle keep-alive connections < 64 MiB (not measured)"
    fi
    echo
    echo "Total time: $(($(date +%s) - BUILD_DONE)) s after the build ($((BUILD_DONE - SCRIPT_START)) s build)."
} >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
cat "$OUT"
say "written to ${OUT#"$ROOT"/}"
