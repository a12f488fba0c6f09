#!/usr/bin/env bash
# Side-by-side load benchmark of usher against nginx (and optionally caddy, haproxy) with the
# shared harness (../shared/bench). Builds usher in release mode first. Examples:
#   benches/compare.sh                                  # every scenario, 5 reps, usher vs nginx
#   benches/compare.sh -n 3 -d 5 -s "h1_small st1k"     # a quick subset
# Extra adapters (nginx-bigbuf, haproxy, caddy, or the path benches/adapters/floor-relay.sh,
# the byte relay that is the floor on h1_small) go after the options as in bench.sh.
# Needs Debian's nginx, wrk, nghttp2-client (h2load), openssl; quote results/DATE/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-../shared/bench/bench.sh}
[ -x "$BENCH" ] || { echo "the shared harness is not at $BENCH (set BENCH=...)" >&2; exit 2; }
cargo build --release
opts=(); while [ $# -gt 0 ] && [[ $1 == -* ]]; do opts+=("$1" "$2"); shift 2; done
case " $* " in *floor-relay*) cargo build --release --example floor_relay ;; esac
status=0
"$BENCH" "${opts[@]}" nginx "$PWD/benches/adapters/usher.sh" "$@" || status=$?
# Every repetition's access log is kept (logging is on, as users run it): gigabytes per run,
# which once filled the disk. The figures are in results.csv and summary.md.
latest=$(ls -td "${BENCH_WORK:-/tmp/usher-bench}"/results/*/ 2>/dev/null | head -1)
[ -z "$latest" ] || find "$latest" -name access.log -delete
exit $status
