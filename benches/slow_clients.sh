#!/usr/bin/env bash
# The slow-client measurement: a real gunicorn (2 sync workers) serving tests/apps/app.py, and
# for DURATION seconds (default 20) 50 trickling uploaders, 50 slow readers and 50 slow-header
# clients against it while one well-behaved client sends fast GETs and 64 KiB POSTs
# (benches/slow_clients.py). Run three times: through usher (release build, default
# buffering), through nginx (default proxy buffering) and against gunicorn with no proxy;
# gunicorn is restarted before each. Prints one JSON line per target. Loopback only; every
# process it starts is stopped by PID on exit.
#
#   benches/slow_clients.sh [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-20}
./scripts/pyenv
cargo build --release -q
command -v nginx >/dev/null || { echo "needs Debian's nginx (apt-get install -y nginx)" >&2; exit 2; }
py=target/pyenv/bin/python
work=$(mktemp -d /tmp/usher-slow.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
app=$(free_port); ush=$(free_port); ngx=$(free_port)

start_gunicorn() {
  [ -n "${gpid:-}" ] && { kill "$gpid"; wait "$gpid" 2>/dev/null || true; }
  "$py" -m gunicorn -w 2 -k sync --no-control-socket --graceful-timeout 1 -b "127.0.0.1:$app" \
    --chdir tests/apps app:wsgi >"$work/gunicorn.log" 2>&1 &
  gpid=$!; pids+=("$gpid"); wait_port "$app"
}

cat >"$work/proxy.toml" <<CONF
[server]
http = "127.0.0.1:$ush"
https = "off"
access_log = "off"
[[site]]
names = ["app.test"]
default = true
tls = "off"
[[site.route]]
path = "/"
proxy = ["127.0.0.1:$app"]
CONF
target/release/usher run --config "$work/proxy.toml" >"$work/usher.log" 2>&1 &
pids+=($!); wait_port "$ush"

mkdir -p "$work/nginx"; chmod 777 "$work/nginx"
cat >"$work/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  server {
    listen 127.0.0.1:$ngx;
    location / { proxy_pass http://127.0.0.1:$app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
nginx -c "$work/nginx.conf" -p "$work/nginx" &
pids+=($!); wait_port "$ngx"

for target in "usher $ush" "nginx $ngx" "gunicorn $app"; do
  set -- $target
  start_gunicorn
  "$py" benches/slow_clients.py 127.0.0.1 "$2" "$duration" "$1"
done
