#!/usr/bin/env bash
# Instructions per request, counted by callgrind: repeatable where timings on this shared box
# are not. usher runs under valgrind twice, for N1 and N2 requests (h2load, HTTP/1.1, 10
# connections); the difference over N2-N1 is one request's cost, by function.
#   benches/instructions.sh [PATH...]   default: /static/1k.bin /small; INCLUSIVE=yes: inclusive cost
# /static/ is a 1 KiB file from memory, /cache/ is proxied and cached (the upstream allows an
# hour: after the first request every one is a hit), anything else is proxied to a 1-worker
# nginx (the shared harness's upstream). Needs valgrind, nginx, h2load; builds usher in release mode.
# SCHEME=https: over TLS. Ports 17500-17502 on 127.0.0.1. Prints the total and the top functions (self cost).
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-1000} N2=${N2:-6000} TOP=${TOP:-25}
. benches/rig.sh
cargo build --release -q
VP=""
cleanup() {
  rig_end "$VP"
  rig_stop
}
trap cleanup EXIT
rig_start instr

# count PATH N -> callgrind_annotate's per-function table for startup + N requests
count() {
  # one worker thread, as the load comparison runs usher (a current-thread runtime)
  TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-1} \
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" target/release/usher run \
    --config "$WORK/proxy.toml" >/dev/null 2>"$WORK/valgrind.log" &
  VP=$!
  for _ in $(seq 150); do curl -sk -o /dev/null "$BASE$1" && break; sleep 0.2; done
  taskset -c "$UP_CPUS" h2load --h1 -n "$2" -c 10 "$BASE$1" | grep -q "$2 succeeded" \
    || { echo "requests failed" >&2; exit 1; }
  kill -TERM "$VP"; wait "$VP" || true; VP=""
  callgrind_annotate --inclusive="${INCLUSIVE:-no}" --threshold=100 "$WORK/cg.out" 2>/dev/null
}

for path in "${@:-/static/1k.bin /small}"; do
  for p in $path; do
    count "$p" "$N1" > "$WORK/a.txt"
    count "$p" "$N2" > "$WORK/b.txt"
    echo "== $p: instructions per request (self cost; ${N2} minus ${N1} requests)"
    python3 - "$WORK/a.txt" "$WORK/b.txt" "$((N2 - N1))" "$TOP" <<'PY'
import re, sys
def load(f):
    d = {}
    for line in open(f):
        m = re.match(r'\s*([\d,]+) \([\d. %]+\)\s+(.*)', line)
        if m:
            d[m.group(2)] = int(m.group(1).replace(',', ''))
    return d
a, b, n, top = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = sorted((((b.get(k, 0) - a.get(k, 0)) / n), k) for k in set(a) | set(b))[::-1]
for v, k in rows[:top + 1]:
    print(f"{v:9.0f}  {k[:140]}")
PY
  done
done
