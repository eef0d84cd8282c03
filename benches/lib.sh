# Shared by the comparison scripts (sourced, not run): tools installed when missing, the
# release build, a scratch directory and the processes cleaned up on exit, free ports, the
# upstream nginx, and waiting until a URL answers.
# Sets: here, NGINX, SLUICE (a given $SLUICE skips the build), work, pids.

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}

# bench_setup TOOL... : installs nginx-light, wrk, util-linux (and openssl when asked) if one
# of the tools is missing, then builds the release binary.
bench_setup() {
  local missing=0 t
  for t in nginx wrk taskset "$@"; do command -v "$t" >/dev/null 2>&1 || missing=1; done
  if [ "$missing" = 1 ]; then
    echo "installing nginx-light, wrk, util-linux $* (apt)..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk util-linux "$@" >/dev/null
  fi
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  if [ -z "${SLUICE:-}" ]; then
    (cd "$here" && cargo build --release --quiet --bin sluice)
    SLUICE=$CARGO_TARGET_DIR/release/sluice
  fi
  work=$(mktemp -d)
  pids=()
  trap cleanup EXIT
}

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# nginx_main DIR : the start of an nginx.conf kept in DIR: one worker, in the foreground, no
# access log, long keep-alive; it leaves the `http {` block open for the caller.
nginx_main() {
  cat <<EOF
worker_processes 1;
daemon off;
error_log $1/error.log warn;
pid $1/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $1;
  proxy_temp_path $1;
EOF
}

# upstream_conf DIR PORT... : an nginx answering 200 on each port, one worker, no logs.
upstream_conf() {
  local dir=$1; shift
  local listens="" p
  for p in "$@"; do listens+="    listen 127.0.0.1:$p;"$'\n'; done
  mkdir -p "$dir"
  { nginx_main "$dir"; cat <<EOF
  server {
$listens    location / { return 200 "hello from the upstream\n"; }
  }
}
EOF
  } > "$dir/nginx.conf"
}

# wait_ready URL... : until each answers (at most 10 s each; curl -k for the test certificate).
wait_ready() {
  local url
  for url in "$@"; do
    for _ in $(seq 100); do
      curl -kfsS -o /dev/null "$url" 2>/dev/null && break
      sleep 0.1
    done
  done
}

# bench_cert : an ECDSA P-256 certificate for bench.test and 127.0.0.1, as $work/cert.pem and
# $work/key.pem (the same for every proxy in a run).
bench_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=bench.test -addext subjectAltName=DNS:bench.test,IP:127.0.0.1 \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
}
