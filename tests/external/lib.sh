# Shell helpers shared by bench/run.sh and tests/external/hostile-tools.sh.
# The caller defines `die MESSAGE` and `$WORK` (where each process writes NAME.err).

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
