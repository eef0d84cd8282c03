#!/usr/bin/env bash
# Slow clients against Sluice, on loopback: legit latency with and without an attack of
# CONNS slowloris connections (each sends a header byte every INTERVAL seconds and
# reconnects when the gate hangs up), and the gate's memory while it lasts.
# Prints the legit p99 (wrk, 16 connections) before and during the attack, their ratio
# (target < 2), the attack's open connections as the gate sees them, and the RSS.
#
# Usage: benches/slowloris.sh   (CONNS=1000 DURATION=60 INTERVAL=5 by default)
set -euo pipefail

CONNS=${CONNS:-1000}
DURATION=${DURATION:-60}
INTERVAL=${INTERVAL:-5}

. "$(dirname "$0")/lib.sh"
bench_setup

UP=$(free_port); SLU=$(free_port); ADM=$(free_port)
upstream_conf "$work/up" "$UP"
cat > "$work/sluice.toml" <<EOF
[server]
listen = "127.0.0.1:$SLU"
admin_listen = "127.0.0.1:$ADM"
threads = 1
# The attack comes from one address: no bound per address here (the default 1,000 would
# refuse part of it, which is the point of that bound, but not what this bench measures).
max_connections_per_ip = 0
[store]
enabled = false
[[services]]
name = "bench"
stable = ["127.0.0.1:$UP"]
EOF
"$NGINX" -p "$work/up" -c "$work/up/nginx.conf" & pids+=($!)
SLUICE_LOG=warn "$SLUICE" run --config "$work/sluice.toml" & pids+=($!)
gate=$!
wait_ready "http://127.0.0.1:$UP/" "http://127.0.0.1:$SLU/"
ulimit -n 65536 2>/dev/null || true

p99() { # seconds -> p99 in ms
  wrk -t1 -c16 -d"$1"s --latency "http://127.0.0.1:$SLU/" 2>&1 |
    awk '/^ +99%/ { v=$2; if (v ~ /us$/) { sub("us","",v); v/=1000 } else if (v ~ /ms$/) { sub("ms","",v) } else if (v ~ /s$/) { sub("s","",v); v*=1000 } print v }'
}
rss() { awk '/VmRSS/ {print $2}' "/proc/$gate/status"; }

base=$(p99 10)
rss0=$(rss)
python3 - "$SLU" "$CONNS" "$INTERVAL" "$DURATION" > "$work/attack.log" 2>&1 <<'PY' &
import asyncio, sys, time
port, conns, interval, duration = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
end = time.monotonic() + duration
reconnects = 0
async def one():
    global reconnects
    while time.monotonic() < end:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET / HTTP/1.1\r\nHost: bench\r\n"); await w.drain()
            while time.monotonic() < end:
                await asyncio.sleep(interval)
                w.write(b"X"); await w.drain()
                if r.at_eof(): break
        except Exception:
            pass
        reconnects += 1
        await asyncio.sleep(0.05)
async def main():
    await asyncio.gather(*(one() for _ in range(conns)))
    print(f"reconnects {reconnects}")
asyncio.run(main())
PY
attack=$!
sleep 5
during=$(p99 $((DURATION - 15)))
rss1=$(rss)
open=$(ls "/proc/$gate/fd" | wc -l)
wait "$attack" || true
echo
echo "legit p99 without attack: ${base} ms, during ${CONNS} slowloris connections: ${during} ms"
awk -v a="$during" -v b="$base" 'BEGIN { printf "p99 ratio: %.2f (target < 2)\n", a/b }'
echo "gate RSS: ${rss0} KiB before, ${rss1} KiB during; open descriptors during: ${open}"
cat "$work/attack.log"
