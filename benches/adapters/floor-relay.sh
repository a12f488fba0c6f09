#!/usr/bin/env bash
# Adapter for ../shared/bench/bench.sh: benches/tools/floor_relay.rs, a byte relay with no HTTP
# (the floor of a proxy's CPU per request on the small proxied row), pinned like the proxies.
# Only h1_small: its 8 KiB copies make it no floor for the 1 MiB rows (262 syscalls a request
# where usher makes 21).
#   cargo build --release --example floor_relay   (FLOOR_BIN overrides the path)
. "${BENCH_HOME:?run me through bench.sh (see benches/compare.sh)}/lib/adapter_common.sh"
RELAY_BIN=${FLOOR_BIN:-$PWD/target/release/examples/floor_relay}
case "${1:-}" in
supports) case "$2" in h1_small) exit 0;; *) exit 1;; esac ;;
start)
  ulimit -n "$(ulimit -Hn)"
  taskset -c "$CPUS" "$RELAY_BIN" "127.0.0.1:$HTTP_PORT" "$UPSTREAM_HOST:$UPSTREAM_PORT" \
      </dev/null >"$ADAPTER_DIR/stdout.log" 2>&1 &
  echo $! > "$PIDFILE"
  wait_port "$HTTP_PORT" ;;
stop) adapter_stop ;;
*) echo "usage: $0 supports SCEN|start|stop" >&2; exit 2 ;;
esac
