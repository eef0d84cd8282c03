#!/usr/bin/env bash
# Sluice next to nginx over TLS, in ONE run, on loopback: the same ECDSA P-256 certificate,
# the same upstream, one worker each, the proxy pinned to one core (PROXY_CPU) and wrk and
# the upstream to the other. Prints, for each proxy:
#   handshakes/s   every request on a new TLS connection (wrk with `Connection: close`)
#   keep-alive     requests/s over kept-alive TLS connections
#   plain          requests/s over kept-alive plain HTTP (the reference for the ratio)
# and the ratios Sluice/nginx. Only ratios mean anything on these shared machines.
# Session resumption is off on both sides' clients' view: nginx keeps no session cache
# (its default) and wrk opens each connection with a full handshake.
#
# Usage: benches/compare-tls.sh   (DURATION=10 CONNS=32 ROUNDS=2 by default); also run at the
#        end of benches/compare-nginx.sh.
set -euo pipefail

DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-2}
PROXY_CPU=${PROXY_CPU:-0}
OTHER_CPU=${OTHER_CPU:-1}

. "$(dirname "$0")/lib.sh"
bench_setup openssl

UP=$(free_port); NGX=$(free_port); NGXP=$(free_port); SLU=$(free_port); SLUP=$(free_port); ADM=$(free_port)

bench_cert

upstream_conf "$work/up" "$UP"
mkdir -p "$work/ngx"
{ nginx_main "$work/ngx"; cat <<EOF
  upstream backend { server 127.0.0.1:$UP; keepalive 128; }
  server {
    listen 127.0.0.1:$NGX ssl;
    listen 127.0.0.1:$NGXP;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
}
EOF
} > "$work/ngx/nginx.conf"
cat > "$work/sluice.toml" <<EOF
[server]
admin_listen = "127.0.0.1:$ADM"
threads = 1
[store]
enabled = false
[[listeners]]
name = "https"
address = "127.0.0.1:$SLU"
tls = true
[[listeners]]
name = "http"
address = "127.0.0.1:$SLUP"
[[tls.certificates]]
cert = "$work/cert.pem"
key = "$work/key.pem"
[[services]]
name = "bench"
stable = ["127.0.0.1:$UP"]
EOF

taskset -c "$OTHER_CPU" "$NGINX" -p "$work/up" -c "$work/up/nginx.conf" & pids+=($!)
taskset -c "$PROXY_CPU" "$NGINX" -p "$work/ngx" -c "$work/ngx/nginx.conf" & pids+=($!)
SLUICE_LOG=warn taskset -c "$PROXY_CPU" "$SLUICE" run --config "$work/sluice.toml" & pids+=($!)
wait_ready "http://127.0.0.1:$UP/" "https://127.0.0.1:$NGX/" "https://127.0.0.1:$SLU/" \
  "http://127.0.0.1:$NGXP/" "http://127.0.0.1:$SLUP/"

rps() { # url conns duration [header] -> req/s
  local out
  if [ $# -ge 4 ]; then
    out=$(taskset -c "$OTHER_CPU" wrk -t1 -c"$2" -d"$3"s -H "$4" "$1" 2>&1)
  else
    out=$(taskset -c "$OTHER_CPU" wrk -t1 -c"$2" -d"$3"s "$1" 2>&1)
  fi
  if grep -q "Non-2xx" <<<"$out"; then
    echo "warning: non-2xx answers from $1" >&2
  fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}

declare -A HS KA PL
for p in nginx sluice; do HS[$p]=0; KA[$p]=0; PL[$p]=0; done
declare -A TLSURL=([nginx]="https://127.0.0.1:$NGX/" [sluice]="https://127.0.0.1:$SLU/")
declare -A PLAINURL=([nginx]="http://127.0.0.1:$NGXP/" [sluice]="http://127.0.0.1:$SLUP/")
echo "warming up..." >&2
for p in nginx sluice; do rps "${TLSURL[$p]}" "$CONNS" 2 >/dev/null; done
for round in $(seq "$ROUNDS"); do
  for p in nginx sluice; do
    hs=$(rps "${TLSURL[$p]}" "$CONNS" "$DURATION" "Connection: close")
    ka=$(rps "${TLSURL[$p]}" "$CONNS" "$DURATION")
    pl=$(rps "${PLAINURL[$p]}" "$CONNS" "$DURATION")
    echo "round $round  $p: handshakes ${hs}/s  keep-alive TLS ${ka} req/s  plain ${pl} req/s" >&2
    HS[$p]=$(awk -v a="${HS[$p]}" -v b="$hs" 'BEGIN{print a+b}')
    KA[$p]=$(awk -v a="${KA[$p]}" -v b="$ka" 'BEGIN{print a+b}')
    PL[$p]=$(awk -v a="${PL[$p]}" -v b="$pl" 'BEGIN{print a+b}')
  done
done
echo
printf "%-8s %14s %16s %12s\n" proxy "handshakes/s" "keep-alive TLS" "plain"
for p in nginx sluice; do
  awk -v p="$p" -v h="${HS[$p]}" -v k="${KA[$p]}" -v l="${PL[$p]}" -v n="$ROUNDS" \
    'BEGIN { printf "%-8s %14.0f %16.0f %12.0f\n", p, h/n, k/n, l/n }'
done
awk -v hs="${HS[sluice]}" -v hn="${HS[nginx]}" -v ks="${KA[sluice]}" -v kn="${KA[nginx]}" \
    -v ps="${PL[sluice]}" -v pn="${PL[nginx]}" 'BEGIN {
  printf "\nTLS handshakes/s sluice/nginx: %.2f (target >= 1.00)\n", hs/hn
  printf "kept-alive TLS req/s sluice/nginx: %.2f; plain HTTP req/s sluice/nginx: %.2f (target: TLS ratio >= plain ratio)\n", ks/kn, ps/pn }'
