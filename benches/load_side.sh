#!/usr/bin/env bash
# Where the CPU of a benchmark row goes, process by process: syscalls, context switches and
# CPU time per request of the load generator (wrk), the upstream nginx and the proxy, counted
# by `perf stat` (tracepoints and software events; no hardware counters needed) during one
# bounded wrk run. The shared harness's rows say which side is the limit; this says why.
#
#   benches/load_side.sh [ADAPTER] [PATH] [http|https]     defaults: usher /big http
#   ADAPTER: usher (benches/adapters/usher.sh), or a name in ../shared/bench/adapters (nginx,
#   nginx-bigbuf, ...). DUR=5 (seconds of load), CONNS=50. Loopback ports 17400-17411.
#
# Needs Debian's nginx, wrk, linux-perf (perf), and target/release/usher for the usher adapter.
set -euo pipefail
cd "$(dirname "$0")/.."
B=$(cd "${BENCH_HOME:-../shared/bench}" && pwd)
ad=${1:-usher}; path=${2:-/big}; scheme=${3:-http}; dur=${DUR:-5}; conns=${CONNS:-50}
case $ad in
  usher) script=$PWD/benches/adapters/usher.sh ;;
  */*) script=$ad ;;
  *) script=$B/adapters/$ad.sh ;;
esac
export BENCH_HOME=$B BENCH_WORK=${BENCH_WORK:-/tmp/usher-bench}
# (the nginx adapter turns its cache on only for the cache scenario)
case $path in /cache/*) export SCENARIO=cache_small ;; *) export SCENARIO=${SCENARIO:-} ;; esac
export PROXY_CPUS=0 LOAD_CPUS=1 CPUS=0 NCPU=1
export UPSTREAM_HOST=127.0.0.1 UPSTREAM_PORT=17401 HTTP_PORT=17410 HTTPS_PORT=17411
export CERT=$BENCH_WORK/certs/cert.pem KEY=$BENCH_WORK/certs/key.pem
export CERT_COMBINED=$BENCH_WORK/certs/combined.pem DOCROOT=$BENCH_WORK/www
export BODY100=$(printf '0123456789%.0s' 1 2 3 4 5 6 7 8 9 10)
# shellcheck source=/dev/null
. "$B/lib/adapter_common_min.sh"
work=$(mktemp -d /tmp/usher-load-side.XXXXXX)
export ADAPTER_DIR=$work/proxy UP_DIR=$work/upstream UP_CPUS=1
mkdir -p "$ADAPTER_DIR" "$UP_DIR"
p1="" p2=""
cleanup() {
  stop_pid "$p1"; stop_pid "$p2"
  "$script" stop >/dev/null 2>&1 || true
  "$B/lib/upstream.sh" stop || true
  rm -rf "$work"
}
trap cleanup EXIT

# the files the harness serves (made as bench.sh makes them, if it has not run yet)
mkdir -p "$BENCH_WORK/certs" "$BENCH_WORK/www/static"
[ -s "$CERT_COMBINED" ] || {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$KEY" -out "$CERT" 2>/dev/null
  cat "$CERT" "$KEY" > "$CERT_COMBINED"; }
[ -s "$DOCROOT/big.bin" ] || head -c 1048576 /dev/urandom > "$DOCROOT/big.bin"
[ -s "$DOCROOT/static/1k.bin" ] || head -c 1024 /dev/urandom > "$DOCROOT/static/1k.bin"
[ -s "$DOCROOT/static/1m.bin" ] || head -c 1048576 /dev/urandom > "$DOCROOT/static/1m.bin"

"$B/lib/upstream.sh" start >/dev/null
"$script" start > "$ADAPTER_DIR/adapter.log" 2>&1
port=$HTTP_PORT; [ "$scheme" = https ] && port=$HTTPS_PORT
url=$scheme://127.0.0.1:$port$path
timeout 30 taskset -c 1 wrk -t1 -c"$conns" -d1s "$url" >/dev/null   # warm-up
ids() { proc_tree "$1" | paste -sd, -; }
events=raw_syscalls:sys_enter,context-switches,task-clock
up=$(proc_tree "$(cat "$UP_DIR/pid")" | tail -n +2 | paste -sd, -)   # the workers
px=$(ids "$(cat "$ADAPTER_DIR/pid")")
timeout $((dur + 30)) perf stat -e "$events" -p "$up" -o "$work/up.stat" -- sleep "$dur" &
p1=$!
timeout $((dur + 30)) perf stat -e "$events" -p "$px" -o "$work/px.stat" -- sleep "$dur" &
p2=$!
timeout $((dur + 30)) perf stat -e "$events" -o "$work/wrk.stat" \
  taskset -c 1 wrk -t1 -c"$conns" -d"${dur}s" "$url" > "$work/wrk.out"
wait "$p1" "$p2"
p1="" p2=""
req=$(awk '/requests in/{print $1}' "$work/wrk.out")
echo "$(basename "$script" .sh) $url: $(awk '/Requests\/sec/{print $2}' "$work/wrk.out") requests/s"
for w in wrk up px; do
  awk -v r="$req" -v w="$w" '
    /raw_syscalls/ {s=$1} /context-switches/ {c=$1} /task-clock/ {t=$1}
    END { gsub(",", "", s); gsub(",", "", c); gsub(",", "", t)
          name = (w == "up") ? "upstream" : (w == "px") ? "proxy" : "wrk"
          printf "  %-8s syscalls/req %6.1f  context switches/req %5.2f  CPU us/req %6.1f\n", name, s/r, c/r, t*1000/r }' "$work/$w.stat"
done
