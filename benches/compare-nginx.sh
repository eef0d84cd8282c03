#!/usr/bin/env bash
# Sluice next to nginx, in ONE run, on loopback, with the same upstream and the same worker
# count, measured with the same wrk. Prints requests/s and p50/p99 latency for:
#   direct     wrk -> upstream
#   nginx      wrk -> nginx (proxy_pass, upstream keepalive)         -> upstream
#   sluice     wrk -> sluice (stable only)                           -> upstream
#   sluice-10  wrk -> sluice (10 % canary on a second upstream port) -> upstream
#   no-store   wrk -> sluice (stable only, history store off)       -> upstream
# and the ratios that matter: sluice req/s / nginx req/s, the latency each proxy adds over
# direct (p50 at one connection, where latency is service time, not queueing), and sluice
# with its history store (SQLite, the default) against sluice without it.
#
# The proxies are pinned to one core (PROXY_CPU), the upstream and wrk to the other. Only
# ratios are meaningful: these machines are shared and noisy.
#
# Then the same over TLS (benches/compare-tls.sh: handshakes/s and kept-alive TLS req/s,
# same ECDSA P-256 certificate), unless TLS=0.
#
# Usage: benches/compare-nginx.sh            (DURATION=10 CONNS=32 ROUNDS=2 by default)
#        PROFILE=1 benches/compare-nginx.sh  (also records `perf` of sluice under load)
set -euo pipefail

DURATION=${DURATION:-10}
LAT_DURATION=${LAT_DURATION:-5}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-2}
PROXY_CPU=${PROXY_CPU:-0}
OTHER_CPU=${OTHER_CPU:-1}
PROFILE=${PROFILE:-0}

. "$(dirname "$0")/lib.sh"
bench_setup

UP=$(free_port); UP2=$(free_port); NGX=$(free_port); SLU=$(free_port); SLU_ADMIN=$(free_port)
SLU10=$(free_port); SLU10_ADMIN=$(free_port)
NOS=$(free_port); NOS_ADMIN=$(free_port)

upstream_conf "$work/up" "$UP" "$UP2"
mkdir -p "$work/ngx"
{ nginx_main "$work/ngx"; cat <<EOF
  upstream backend { server 127.0.0.1:$UP; keepalive 128; }
  server {
    listen 127.0.0.1:$NGX;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
}
EOF
} > "$work/ngx/nginx.conf"
cat > "$work/sluice.toml" <<EOF
[server]
listen = "127.0.0.1:$SLU"
admin_listen = "127.0.0.1:$SLU_ADMIN"
threads = 1
[[services]]
name = "bench"
stable = ["127.0.0.1:$UP"]
EOF
cat > "$work/nostore.toml" <<EOF
[server]
listen = "127.0.0.1:$NOS"
admin_listen = "127.0.0.1:$NOS_ADMIN"
threads = 1
[store]
enabled = false
[[services]]
name = "bench"
stable = ["127.0.0.1:$UP"]
EOF
cat > "$work/sluice10.toml" <<EOF
[server]
listen = "127.0.0.1:$SLU10"
admin_listen = "127.0.0.1:$SLU10_ADMIN"
threads = 1
[[services]]
name = "bench"
stable = ["127.0.0.1:$UP"]
canary = ["127.0.0.1:$UP2"]
canary_weight = 10.0
EOF

taskset -c "$OTHER_CPU" "$NGINX" -p "$work/up" -c "$work/up/nginx.conf" & pids+=($!)
taskset -c "$PROXY_CPU" "$NGINX" -p "$work/ngx" -c "$work/ngx/nginx.conf" & pids+=($!)
SLUICE_LOG=warn taskset -c "$PROXY_CPU" "$SLUICE" run --config "$work/sluice.toml" & pids+=($!)
SLUICE_LOG=warn taskset -c "$PROXY_CPU" "$SLUICE" run --config "$work/sluice10.toml" & pids+=($!)
SLUICE_LOG=warn taskset -c "$PROXY_CPU" "$SLUICE" run --config "$work/nostore.toml" & pids+=($!)
sluice_pid=${pids[2]}

wait_ready "http://127.0.0.1:$UP/" "http://127.0.0.1:$NGX/" "http://127.0.0.1:$SLU/" \
  "http://127.0.0.1:$SLU10/" "http://127.0.0.1:$NOS/"

# wrk's latency lines ("50%  512.00us") in microseconds.
to_us() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
    if (u == "ms") n *= 1000; else if (u == "s") n *= 1000000; else if (u == "m") n *= 60000000;
    printf "%.1f", n }'
}
run_wrk() { # port conns duration -> "rps p50us p99us"
  local out
  out=$(taskset -c "$OTHER_CPU" wrk -t1 -c"$2" -d"$3"s --latency "http://127.0.0.1:$1/" 2>&1)
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then
    echo "warning: errors during run on port $1:" >&2
    grep "Non-2xx\|Socket errors" <<<"$out" >&2
  fi
  echo "$rps $(to_us "$p50") $(to_us "$p99")"
}

declare -A RPS P50 P99 L50
targets=(direct nginx sluice sluice-10 no-store)
declare -A PORT=([direct]=$UP [nginx]=$NGX [sluice]=$SLU [sluice-10]=$SLU10 [no-store]=$NOS)
for t in "${targets[@]}"; do RPS[$t]=0; P50[$t]=0; P99[$t]=0; L50[$t]=0; done

echo "warming up..." >&2
for t in "${targets[@]}"; do run_wrk "${PORT[$t]}" "$CONNS" 2 >/dev/null; done

if [ "$PROFILE" = 1 ] && command -v perf >/dev/null; then
  perf record -F 999 -g -p "$sluice_pid" -o "$work/perf.data" -- sleep "$DURATION" >/dev/null 2>&1 &
  perf_pid=$!
  run_wrk "$SLU" "$CONNS" "$DURATION" >/dev/null
  wait $perf_pid || true
  perf report -i "$work/perf.data" --no-children --percent-limit 1.5 --stdio 2>/dev/null \
    | grep -v "^$" | head -60 > "$here/target-perf-report.txt" || true
  echo "perf report: $here/target-perf-report.txt" >&2
fi

for round in $(seq "$ROUNDS"); do
  for t in "${targets[@]}"; do
    read -r rps p50 p99 < <(run_wrk "${PORT[$t]}" "$CONNS" "$DURATION")
    read -r _ l50 _ < <(run_wrk "${PORT[$t]}" 1 "$LAT_DURATION")
    echo "round $round  $t: ${rps} req/s  p50 ${p50}us  p99 ${p99}us  (1 conn p50 ${l50}us)" >&2
    RPS[$t]=$(awk -v a="${RPS[$t]}" -v b="$rps" 'BEGIN{print a+b}')
    P50[$t]=$(awk -v a="${P50[$t]}" -v b="$p50" 'BEGIN{print a+b}')
    P99[$t]=$(awk -v a="${P99[$t]}" -v b="$p99" 'BEGIN{print a+b}')
    L50[$t]=$(awk -v a="${L50[$t]}" -v b="$l50" 'BEGIN{print a+b}')
  done
done

echo
printf "%-10s %12s %10s %10s %14s %12s\n" target "req/s" "p50 us" "p99 us" "1-conn p50 us" "vs nginx"
for t in "${targets[@]}"; do
  awk -v t="$t" -v r="${RPS[$t]}" -v a="${P50[$t]}" -v b="${P99[$t]}" -v l="${L50[$t]}" \
      -v n="$ROUNDS" -v ng="${RPS[nginx]}" \
      'BEGIN { printf "%-10s %12.0f %10.0f %10.0f %14.1f %11.2fx\n", t, r/n, a/n, b/n, l/n, r/ng }'
done
awk -v s="${RPS[sluice]}" -v n="${RPS[nginx]}" -v ls="${L50[sluice]}" -v ln="${L50[nginx]}" \
    -v ld="${L50[direct]}" -v r="$ROUNDS" -v ns="${RPS[no-store]}" 'BEGIN {
  printf "\nthroughput ratio sluice/nginx: %.2f (target >= 1.00)\n", s / n
  printf "throughput with the history store / without: %.3f (target within 2 %%)\n", s / ns
  printf "added p50 latency at 1 connection: nginx %.1f us, sluice %.1f us, difference %.1f us (target <= 20)\n",
    (ln - ld) / r, (ls - ld) / r, (ls - ln) / r
}'

if [ "${TLS:-1}" = 1 ]; then
  echo
  cleanup
  trap - EXIT
  "$here/benches/compare-tls.sh"
fi
