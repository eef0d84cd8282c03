#!/usr/bin/env bash
# Sluice next to nginx for the edge, part 2, in ONE run, on loopback: one worker each, the
# proxies pinned to one core (PROXY_CPU), the clients and upstreams to the other. Prints:
#   h2        requests/s over HTTP/2 + TLS, h2load with 100 streams over 10 connections
#             (same ECDSA P-256 certificate, same upstream)
#   websocket echoed messages/s over 16 WebSocket connections (examples/ws_echo.rs, both
#             the upstream and the client)
#   log       Sluice's plain HTTP requests/s with the access log on (JSON to a file) / off
# and the ratios. Only ratios mean anything on these shared machines.
#
# Usage: benches/compare-edge.sh   (DURATION=10 ROUNDS=2 by default)
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
PROXY_CPU=${PROXY_CPU:-0}
OTHER_CPU=${OTHER_CPU:-1}

. "$(dirname "$0")/lib.sh"
command -v h2load >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null
bench_setup openssl
(cd "$here" && cargo build --release --quiet --example ws_echo)
WS=$CARGO_TARGET_DIR/release/examples/ws_echo

UP=$(free_port); WSUP=$(free_port); NGX=$(free_port); NGXP=$(free_port)
SLU=$(free_port); SLUP=$(free_port); ADM=$(free_port); SLUL=$(free_port); ADML=$(free_port)

bench_cert

upstream_conf "$work/up" "$UP"
mkdir -p "$work/ngx"
{ nginx_main "$work/ngx"; cat <<EOF
  http2_max_concurrent_streams 100;
  upstream backend { server 127.0.0.1:$UP; keepalive 128; }
  server {
    listen 127.0.0.1:$NGX ssl http2;
    listen 127.0.0.1:$NGXP;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    location /ws {
      proxy_pass http://127.0.0.1:$WSUP;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 1h;
    }
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
    }
  }
}
EOF
} > "$work/ngx/nginx.conf"
sluice_conf() { # file admin-port listener-tables [extra-tables]
  cat > "$1" <<EOF
[server]
admin_listen = "127.0.0.1:$2"
threads = 1
[store]
enabled = false
$3
${4:-}
[[services]]
name = "ws"
path_prefix = "/ws"
stable = ["127.0.0.1:$WSUP"]
[[services]]
name = "bench"
stable = ["127.0.0.1:$UP"]
EOF
}
sluice_conf "$work/sluice.toml" "$ADM" "[[listeners]]
name = \"https\"
address = \"127.0.0.1:$SLU\"
tls = true
[[listeners]]
name = \"http\"
address = \"127.0.0.1:$SLUP\"
[[tls.certificates]]
cert = \"$work/cert.pem\"
key = \"$work/key.pem\""
sluice_conf "$work/sluice-log.toml" "$ADML" "[[listeners]]
name = \"http\"
address = \"127.0.0.1:$SLUL\"" "[access_log]
path = \"$work/access.log\""

taskset -c "$OTHER_CPU" "$NGINX" -p "$work/up" -c "$work/up/nginx.conf" & pids+=($!)
taskset -c "$OTHER_CPU" "$WS" server "127.0.0.1:$WSUP" & pids+=($!)
taskset -c "$PROXY_CPU" "$NGINX" -p "$work/ngx" -c "$work/ngx/nginx.conf" & pids+=($!)
SLUICE_LOG=warn taskset -c "$PROXY_CPU" "$SLUICE" run --config "$work/sluice.toml" & pids+=($!)
SLUICE_LOG=warn taskset -c "$PROXY_CPU" "$SLUICE" run --config "$work/sluice-log.toml" & pids+=($!)
wait_ready "http://127.0.0.1:$UP/" "https://127.0.0.1:$NGX/" "https://127.0.0.1:$SLU/" \
  "http://127.0.0.1:$NGXP/" "http://127.0.0.1:$SLUP/" "http://127.0.0.1:$SLUL/"

h2rps() { # url -> req/s
  taskset -c "$OTHER_CPU" h2load -c 10 -m 10 -t 1 -D "$DURATION" "$1" 2>&1 |
    awk '/^finished in/ {gsub(",", "", $4); print $4}
         /^requests:/ && $10 != "0" {print "warning: " $0 > "/dev/stderr"}'
}
wsmps() { taskset -c "$OTHER_CPU" "$WS" client "$1" 16 "$DURATION"; }
rps() { taskset -c "$OTHER_CPU" wrk -t1 -c32 -d"$DURATION"s "$1" 2>&1 | awk '/Requests\/sec/ {print $2}'; }
sum() { awk -v a="$1" -v b="$2" 'BEGIN{print a+b}'; }

declare -A H2 WSM
for p in nginx sluice; do H2[$p]=0; WSM[$p]=0; done
LOGON=0; LOGOFF=0
declare -A H2URL=([nginx]="https://127.0.0.1:$NGX/" [sluice]="https://127.0.0.1:$SLU/")
declare -A WSURL=([nginx]="ws://127.0.0.1:$NGXP/ws" [sluice]="ws://127.0.0.1:$SLUP/ws")
echo "warming up..." >&2
for p in nginx sluice; do DURATION=2 h2rps "${H2URL[$p]}" >/dev/null; done
for round in $(seq "$ROUNDS"); do
  for p in nginx sluice; do
    h=$(h2rps "${H2URL[$p]}"); w=$(wsmps "${WSURL[$p]}")
    echo "round $round  $p: h2 ${h} req/s  websocket ${w} msg/s" >&2
    H2[$p]=$(sum "${H2[$p]}" "$h"); WSM[$p]=$(sum "${WSM[$p]}" "$w")
  done
  off=$(rps "http://127.0.0.1:$SLUP/"); on=$(rps "http://127.0.0.1:$SLUL/")
  echo "round $round  sluice plain: access log off ${off} req/s, on ${on} req/s" >&2
  LOGOFF=$(sum "$LOGOFF" "$off"); LOGON=$(sum "$LOGON" "$on")
done
lines=$(wc -l < "$work/access.log")
echo
printf "%-8s %12s %16s\n" proxy "h2 req/s" "websocket msg/s"
for p in nginx sluice; do
  awk -v p="$p" -v h="${H2[$p]}" -v w="${WSM[$p]}" -v n="$ROUNDS" \
    'BEGIN { printf "%-8s %12.0f %16.0f\n", p, h/n, w/n }'
done
awk -v hs="${H2[sluice]}" -v hn="${H2[nginx]}" -v ws="${WSM[sluice]}" -v wn="${WSM[nginx]}" \
    -v on="$LOGON" -v off="$LOGOFF" -v lines="$lines" 'BEGIN {
  printf "\nh2 req/s sluice/nginx: %.2f\n", hs/hn
  printf "websocket msg/s sluice/nginx: %.2f\n", ws/wn
  printf "access log on/off (sluice, plain HTTP): %.2f (target >= 0.95; %d lines written)\n", on/off, lines }'
