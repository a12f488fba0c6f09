#!/usr/bin/env bash
# Adapter for ../shared/bench/bench.sh: usher in its default configuration (access log on, to a
# file), pinned like the other proxies. Run through benches/compare.sh.
. "${BENCH_HOME:?run me through bench.sh (see benches/compare.sh)}/lib/adapter_common.sh"
PROXY_BIN=${USHER_BIN:-$PWD/target/release/usher}
case "${1:-}" in
# /direct (a fixed body) is not in usher yet
supports) case "$2" in h1_small|h1s_small|h2s_small|hs_close|hs_resume|st1k|st1ks|st1m|st1ms|h1_big|h1s_big|cache_small|idle10k) exit 0;; *) exit 1;; esac ;;
start)
  cat > "$ADAPTER_DIR/proxy.toml" <<CONF
[server]
http = "127.0.0.1:$HTTP_PORT"
https = "127.0.0.1:$HTTPS_PORT"
certs_dir = "$ADAPTER_DIR/certs"
access_log = "text"

[timeouts]
client_idle = "300s"

[[site]]
names = ["localhost", "127.0.0.1"]
default = true
cert = "$CERT"
key = "$KEY"
http_redirect = false        # the plain scenarios are served on the plain port, as nginx does

[[site.route]]
path = "/static/"
static = "$DOCROOT"

[[site.route]]
path = "/cache/"
proxy = ["$UPSTREAM_HOST:$UPSTREAM_PORT"]
cache = {}

[[site.route]]
path = "/"
proxy = ["$UPSTREAM_HOST:$UPSTREAM_PORT"]
CONF
  ulimit -n "$(ulimit -Hn)"
  TOKIO_WORKER_THREADS="$NCPU" USHER_LOG=warn taskset -c "$CPUS" "$PROXY_BIN" run --config "$ADAPTER_DIR/proxy.toml" \
      </dev/null >"$ADAPTER_DIR/access.log" 2>"$ADAPTER_DIR/stderr.log" &
  echo $! > "$PIDFILE"
  wait_port "$HTTP_PORT" && wait_port "$HTTPS_PORT" ;;
stop) adapter_stop ;;
*) echo "usage: $0 supports SCEN|start|stop" >&2; exit 2 ;;
esac
