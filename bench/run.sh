#!/usr/bin/env bash
# Side-by-side benchmark: cartguard against nginx doing the same job
# (allowlist or Basic auth, then proxy_pass to a keep-alive upstream).
#
#   bench/run.sh                 # full run, about 2 minutes after the build
#   DURATION=5 bench/run.sh      # shorter loads
#
# Knobs (environment): DURATION (s, default 10), WARMUP (s, 2), CONNS (64),
# WRK_THREADS (1), SERVER_CPU (1), CLIENT_CPU (0), IDLE_CONNS (10000; 0 skips
# the idle keep-alive test), NGINX_10K (1; 0 skips nginx with 10,000 allow
# lines), KEEP=1 keeps the work directory, NO_BUILD=1 skips `cargo build`.
#
# Every server runs pinned to SERVER_CPU (the proxy and the upstream share it),
# wrk runs pinned to CLIENT_CPU; cartguard gets 1 async worker thread
# (CARTGUARD_WORKER_THREADS=1) and nginx `worker_processes 1`. Both write an
# access log to a file during the run. Results: a table on stdout and
# bench/results/YYYY-MM-DD.md.

set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-1}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
IDLE_CONNS=${IDLE_CONNS:-10000}
NGINX_10K=${NGINX_10K:-1}
CIDRS=10000

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS="$ROOT/bench/results"
SCRIPT_START=$(date +%s)

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
# N free loopback TCP ports, chosen now.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Waits (bounded) until something accepts on the port.
wait_port() {
    local port=$1 pid=$2 name=$3
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || die "$name exited during start-up (see $WORK/*.err)"
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    die "$name did not listen on 127.0.0.1:$port within 10s"
}

# status code of one request: http_status URL [curl args...]
http_status() {
    local url=$1
    shift
    curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$@" "$url" || true
}

expect_status() {
    local want=$1 what=$2 url=$3
    shift 3
    local got
    got=$(http_status "$url" "$@")
    [[ "$got" == "$want" ]] || die "$what: expected HTTP $want from $url, got $got"
}

# kB from /proc/PID/status
proc_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
mib() { awk -v kb="${1:-0}" 'BEGIN { printf "%.1f", kb / 1024 }'; }

# wrk output → "rps p50_ms p99_ms errors"
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
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        /Non-2xx or 3xx responses:/ { err += $NF }
        /Socket errors:/ {
            for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) { v = $i; sub(/,/, "", v); err += v }
        }
        END { printf "%s %.3f %.3f %d\n", rps + 0, p50 + 0, p99 + 0, err + 0 }
    ' "$1"
}

# ---------------------------------------------------------------- fixtures
read -r P_UP P_CG P_CG_ADMIN P_NG <<<"$(free_ports 4)"
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
# $1 = name, $2 = extra allow lines (besides integration-management).
nginx_guard_conf() {
    local name=$1 allow_file=$2 dir="$WORK/$1"
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
        listen 127.0.0.1:$P_NG backlog=4096;
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
nginx_guard_conf ng-allow "$WORK/allow-bench.inc"
nginx_guard_conf ng-auth "$WORK/allow-none.inc"
nginx_guard_conf ng-10k "$WORK/allow-10k.inc"

# cartguard: same rules as the nginx config. $1 = name, $2 = allow list, $3 = extra groups yaml.
cartguard_conf() {
    local name=$1 allow=$2 groups=$3 dir="$WORK/$1"
    mkdir -p "$dir"
    cat >"$dir/cartguard.yaml" <<EOF
mode: enforce
listen:
  - addr: "127.0.0.1:$P_CG"
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
  listen: "127.0.0.1:$P_CG_ADMIN"
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
cartguard_conf cg-allow "[integration-management, bench]" ""
cartguard_conf cg-auth "[integration-management]" ""
cartguard_conf cg-10k "[integration-management, partners, bench]" "  partners:
$(cat "$WORK/cidrs.yaml")"

# ---------------------------------------------------------------- servers
UP_PID=""
start_upstream() {
    taskset -c "$SERVER_CPU" "$NGINX" -p "$WORK/up" -c "$WORK/up/nginx.conf" -g 'daemon off;' \
        >"$WORK/up.out" 2>"$WORK/up.err" &
    UP_PID=$!
    PIDS+=("$UP_PID")
    wait_port "$P_UP" "$UP_PID" "upstream nginx"
}

# Starts a proxy; sets PROXY_PID (the process doing the work) and STOP_PID.
PROXY_PID=""
STOP_PID=""
start_proxy() {
    local kind=$1 name=$2
    if [[ $kind == cartguard ]]; then
        CARTGUARD_WORKER_THREADS=1 CARTGUARD_LOG=warn taskset -c "$SERVER_CPU" \
            "$BIN" run --config "$WORK/$name/cartguard.yaml" >"$WORK/$name.out" 2>"$WORK/$name.err" &
        STOP_PID=$!
        PIDS+=("$STOP_PID")
        wait_port "$P_CG" "$STOP_PID" "cartguard ($name)"
        PROXY_PID=$STOP_PID
    else
        taskset -c "$SERVER_CPU" "$NGINX" -p "$WORK/$name" -c "$WORK/$name/nginx.conf" -g 'daemon off;' \
            >"$WORK/$name.out" 2>"$WORK/$name.err" &
        STOP_PID=$!
        PIDS+=("$STOP_PID")
        wait_port "$P_NG" "$STOP_PID" "nginx ($name)"
        PROXY_PID=""
        for _ in $(seq 1 50); do
            PROXY_PID=$(pgrep -P "$STOP_PID" | head -n1 || true)
            [[ -n "$PROXY_PID" ]] && break
            sleep 0.1
        done
        [[ -n "$PROXY_PID" ]] || die "nginx ($name) has no worker process"
    fi
}

stop_proxy() {
    local pid=$STOP_PID
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do
        [[ $p == "$pid" ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

# ---------------------------------------------------------------- measuring
declare -A RPS P50 P99 HWM RSS_AFTER ERRS LOGLINES LABEL
ORDER=()

# measure KEY PORT [wrk args...]: warm-up, then the measured load.
measure() {
    local key=$1 port=$2
    shift 2
    local url="http://127.0.0.1:$port$PATH_REQ"
    taskset -c "$CLIENT_CPU" wrk -t"$WRK_THREADS" -c"$CONNS" -d"${WARMUP}s" --timeout 10s "$@" "$url" \
        >"$WORK/$key.warmup" 2>&1 || die "wrk warm-up failed for $key"
    say "  $key: wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s"
    taskset -c "$CLIENT_CPU" wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" --timeout 10s --latency "$@" "$url" \
        >"$WORK/$key.wrk" 2>&1 || die "wrk failed for $key: $(cat "$WORK/$key.wrk")"
    read -r RPS[$key] P50[$key] P99[$key] ERRS[$key] < <(parse_wrk "$WORK/$key.wrk")
    ORDER+=("$key")
}

sample_rss() {
    local key=$1 pid=$2
    HWM[$key]=$(proc_kb "$pid" VmHWM)
    sleep 1 # connections closed, allocator settled
    RSS_AFTER[$key]=$(proc_kb "$pid" VmRSS)
}

log_lines() { if [[ -f "$1" ]]; then wc -l <"$1"; else echo 0; fi; }

say "cartguard $("$BIN" --version | awk '{print $2}'), $("$NGINX" -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}')"
say "servers on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU; ports up=$P_UP cartguard=$P_CG nginx=$P_NG"
start_upstream
expect_status 200 "upstream" "http://127.0.0.1:$P_UP/"
[[ $(curl -s --max-time 5 "http://127.0.0.1:$P_UP$PATH_REQ" | wc -c) -eq 1024 ]] || die "upstream body is not 1024 bytes"

say "a. direct to the upstream"
measure direct "$P_UP"
LABEL[direct]="a. direct to the upstream (ceiling)"
HWM[direct]=$(proc_kb "$(pgrep -P "$UP_PID" | head -n1)" VmHWM)
RSS_AFTER[direct]=""

run_case() {
    local key=$1 kind=$2 name=$3 label=$4 mode=$5
    say "$label"
    start_proxy "$kind" "$name"
    local url="http://127.0.0.1:${P_CG}/"
    [[ $kind == nginx ]] && url="http://127.0.0.1:${P_NG}/"
    local port=${url##*:}
    port=${port%/}
    if [[ $mode == allow ]]; then
        expect_status 200 "$key (allowlisted, no credentials)" "$url"
        measure "$key" "$port"
    else
        expect_status 401 "$key (not allowlisted, no credentials)" "$url"
        expect_status 401 "$key (wrong password)" "$url" -u "$USER_NAME:wrong-$PASSWORD"
        expect_status 200 "$key (right password)" "$url" -H "$AUTH_HEADER"
        measure "$key" "$port" -H "$AUTH_HEADER"
    fi
    sample_rss "$key" "$PROXY_PID"
    if [[ $kind == cartguard ]]; then
        local dropped
        dropped=$(curl -s --max-time 5 "http://127.0.0.1:$P_CG_ADMIN/metrics" |
            awk '$1 == "cartguard_access_log_dropped_total" { print $2 }')
        [[ "${dropped:-0}" == 0 ]] || say "  warning: cartguard dropped ${dropped} access records"
    fi
    stop_proxy
    LOGLINES[$key]=$(log_lines "$WORK/$name/access.log")
    LABEL[$key]=$label
}

run_case cg_allow cartguard cg-allow "b. cartguard, client in an allow group" allow
run_case ng_allow nginx ng-allow "b. nginx, client in allow" allow
run_case cg_auth cartguard cg-auth "c. cartguard, Basic auth (bcrypt cost 10)" auth
run_case ng_auth nginx ng-auth "c. nginx, Basic auth (bcrypt cost 10)" auth
run_case cg_10k cartguard cg-10k "e. cartguard, $CIDRS CIDRs + allow group" allow
if [[ "$NGINX_10K" == 1 ]]; then
    run_case ng_10k nginx ng-10k "e. nginx, $CIDRS allow lines + allow" allow
fi

# ---------------------------------------------------------------- idle keep-alive connections
IDLE_RESULT=()
IDLE_RSS_CG=""
idle_test() {
    local kind=$1 name=$2 port=$3
    start_proxy "$kind" "$name"
    local before out
    before=$(proc_kb "$PROXY_PID" VmRSS)
    out=$(timeout 90 python3 - "$port" "$IDLE_CONNS" "$PROXY_PID" <<'EOF'
import resource, selectors, socket, sys, time
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
                buf = pending[s]
                head, sep, body = buf.partition(b"\r\n\r\n")
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
    stop_proxy
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
        idle_test cartguard cg-allow "$P_CG"
        idle_test nginx ng-allow "$P_NG"
    fi
fi

# ---------------------------------------------------------------- report
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'; }
fmt_rps() { awk -v v="${1:-0}" 'BEGIN { printf "%.0f", v }'; }
declare -A VS_NGINX=([cg_allow]=ng_allow [cg_auth]=ng_auth [cg_10k]=ng_10k)

DATE=$(date +%Y-%m-%d)
OUT="$RESULTS/$DATE.md"
{
    echo "# cartguard vs nginx, $DATE"
    echo
    echo "Command: \`bench/run.sh\` (DURATION=$DURATION s, WARMUP=$WARMUP s, CONNS=$CONNS, wrk -t$WRK_THREADS on loopback)."
    echo "Machine: $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(uname -sr)."
    echo "Pinning: servers (proxy and upstream nginx) on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU."
    echo "cartguard: 1 async worker thread (CARTGUARD_WORKER_THREADS=1), JSON access log to a file."
    echo "nginx $("$NGINX" -v 2>&1 | sed 's/.*\///'): worker_processes 1, access_log combined buffer=64k, upstream keepalive 64."
    echo "Upstream: nginx \`return 200\` with a 1024-byte JSON body. Request: GET $PATH_REQ."
    echo
    echo "| case | req/s | p50 ms | p99 ms | errors | peak RSS MiB | RSS after MiB | log lines | cartguard/nginx | cartguard/direct |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for key in "${ORDER[@]}"; do
        vs_ng="" vs_direct=""
        if [[ $key == cg_* ]]; then
            vs_direct=$(ratio "${RPS[$key]}" "${RPS[direct]}")
            ng=${VS_NGINX[$key]:-}
            [[ -n "$ng" && -n "${RPS[$ng]:-}" ]] && vs_ng="$(ratio "${RPS[$key]}" "${RPS[$ng]}")"
        fi
        rss_after=""
        [[ -n "${RSS_AFTER[$key]:-}" ]] && rss_after=$(mib "${RSS_AFTER[$key]}")
        echo "| ${LABEL[$key]} | $(fmt_rps "${RPS[$key]}") | ${P50[$key]} | ${P99[$key]} | ${ERRS[$key]} | $(mib "${HWM[$key]}") | $rss_after | ${LOGLINES[$key]:-} | $vs_ng | $vs_direct |"
    done
    echo
    echo "Peak RSS is VmHWM of the process serving requests (nginx: its worker; for 'direct', the upstream's worker)."
    echo "RSS after: VmRSS 1 s after the load stopped. Errors: non-2xx answers plus socket errors reported by wrk."
    if ((${#IDLE_RESULT[@]})); then
        echo
        echo "Idle keep-alive connections ($IDLE_CONNS, one request each, then held open 2 s):"
        echo
        echo "| proxy | connections | RSS before MiB | RSS with connections MiB | peak RSS MiB |"
        echo "|---|---|---:|---:|---:|"
        printf '%s\n' "${IDLE_RESULT[@]}"
    fi
    echo
    echo "Targets:"
    echo
    check() { if awk "BEGIN { exit !($2) }"; then echo "- [x] $1"; else echo "- [ ] $1 (missed)"; fi; }
    check "allowlisted ≥ 1.1 × nginx: $(ratio "${RPS[cg_allow]}" "${RPS[ng_allow]}")×" "${RPS[cg_allow]} >= 1.1 * ${RPS[ng_allow]}"
    check "allowlisted p99 ≤ nginx: ${P99[cg_allow]} ms vs ${P99[ng_allow]} ms" "${P99[cg_allow]} <= ${P99[ng_allow]}"
    check "Basic auth ≥ 20 × nginx: $(ratio "${RPS[cg_auth]}" "${RPS[ng_auth]}")×" "${RPS[cg_auth]} >= 20 * ${RPS[ng_auth]}"
    check "Basic auth ≥ 0.9 × cartguard allowlisted: $(ratio "${RPS[cg_auth]}" "${RPS[cg_allow]}")×" "${RPS[cg_auth]} >= 0.9 * ${RPS[cg_allow]}"
    check "$CIDRS CIDRs ≥ 0.95 × 2 CIDRs: $(ratio "${RPS[cg_10k]}" "${RPS[cg_allow]}")×" "${RPS[cg_10k]} >= 0.95 * ${RPS[cg_allow]}"
    check "RSS after the run < 15 MiB: $(mib "${RSS_AFTER[cg_allow]}") MiB (allowlisted), $(mib "${RSS_AFTER[cg_10k]}") MiB ($CIDRS CIDRs)" \
        "${RSS_AFTER[cg_allow]} < 15360 && ${RSS_AFTER[cg_10k]} < 15360"
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
