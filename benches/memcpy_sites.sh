#!/usr/bin/env bash
# Where usher copies memory on a request path: every call into libc's memcpy/memmove during N
# requests, counted by size and by the source line that made it. A uprobe (perf probe) on
# libc's memmove records each call's length and return address; addr2line maps the address to
# a line of a build with line tables (target/lines, built here: same code, same optimisation).
# Large values moved through futures show up here, where a profile shows only "memmove".
#   benches/memcpy_sites.sh [PATH] [N]    default /small (proxied 100 B), 10000 requests
#   H2LOAD_MODE=""  for HTTP/2 instead of HTTP/1.1;  MIN=64  the smallest size listed;
#   SCHEME=https  over TLS
# Needs root (uprobes), Debian's linux-perf, nginx and h2load, binutils' addr2line. Ports
# 17500-17502 on 127.0.0.1, as benches/instructions.sh (not both at once).
set -euo pipefail
cd "$(dirname "$0")/.."
P=${1:-/small} N=${2:-10000} MIN=${MIN:-64} TOP=${TOP:-40} MODE=${H2LOAD_MODE---h1}
. benches/rig.sh
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --target-dir target/lines
BIN=$PWD/target/lines/release/usher
LIBC=$(ldd "$BIN" | awk '/libc.so.6/ {print $3}')
# the copy routine the dynamic loader picks for this CPU: probe every variant present (memcpy
# is the same code; perf finds these internal names in libc's own symbol data)
FUNCS=$(perf probe -x "$LIBC" -F '__memmove_*_unaligned_erms' 2>/dev/null)
[ -n "$FUNCS" ] || { echo "no __memmove_*_unaligned_erms in $LIBC" >&2; exit 1; }
VP="" RP="" EVENTS=()
cleanup() {
  rig_end "$RP" INT
  rig_end "$VP"
  for e in "${EVENTS[@]}"; do perf probe -q -d "$e" 2>/dev/null || true; done
  rig_stop
}
trap cleanup EXIT
rig_start memcpy
# a probe left by a run that was killed would make adding it fail
perf probe -q -d 'probe_libc:usher_mc*' 2>/dev/null || true
i=0
for f in $FUNCS; do
  i=$((i + 1))
  perf probe -q -x "$LIBC" -a "usher_mc$i=$f len=%dx:u64 ret=+0(%sp):x64"
  EVENTS+=("probe_libc:usher_mc$i")
done
TOKIO_WORKER_THREADS=1 taskset -c 0 "$BIN" run --config "$WORK/proxy.toml" >/dev/null 2>&1 &
VP=$!
for _ in $(seq 100); do curl -sk -o /dev/null "$BASE$P" && break; sleep 0.1; done
# warm: the pools' connections, the spare maps, the allocator's caches
taskset -c "$UP_CPUS" h2load $MODE -n 2000 -c 10 "$BASE$P" >/dev/null
base=$(awk -v b="$BIN" '$6 == b {print $1; exit}' "/proc/$VP/maps" | cut -d- -f1)
perf record -q $(printf -- '-e %s ' "${EVENTS[@]}") -p "$VP" -o "$WORK/mc.data" -- sleep 600 &
RP=$!
# (perf attaches within this; the requests below are the ones counted)
for _ in $(seq 50); do [ -s "$WORK/mc.data" ] && break; sleep 0.1; done
sleep 1
taskset -c "$UP_CPUS" h2load $MODE -n "$N" -c 10 "$BASE$P" | grep -q "$N succeeded" \
  || { echo "requests failed" >&2; exit 1; }
kill -INT "$RP"; wait "$RP" || true; RP=""
perf script -i "$WORK/mc.data" > "$WORK/mc.txt" 2>/dev/null
python3 - "$WORK/mc.txt" "$BIN" "$base" "$N" "$MIN" "$TOP" <<'PY'
import collections, re, subprocess, sys
trace, binp, base, n, least, top = sys.argv[1], sys.argv[2], int(sys.argv[3], 16), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
calls = collections.Counter(); size = collections.Counter(); sites = collections.Counter(); site_bytes = collections.Counter()
for line in open(trace):
    m = re.search(r'len=(\d+) ret=0x([0-9a-f]+)', line)
    if not m:
        continue
    s, at = int(m.group(1)), int(m.group(2), 16) - base
    band = '<64' if s < 64 else '64-511' if s < 512 else '512-4095' if s < 4096 else '>=4096'
    calls[band] += 1; size[band] += s
    if s >= least:
        sites[at] += 1; site_bytes[at] += s
print(f"== memcpy calls per request ({n} requests), by size")
for band in ['<64', '64-511', '512-4095', '>=4096']:
    print(f"  {band:>9}: {calls[band] / n:6.2f} calls, {size[band] / n:8.0f} bytes")
print(f"== call sites of copies of {least} bytes or more: calls per request, bytes per call, where")
for at, k in sites.most_common(top):
    # (the call's own line first, then the lines it was inlined into)
    out = subprocess.run(['addr2line', '-i', '-e', binp, hex(at - 1)], capture_output=True, text=True).stdout.splitlines()
    where = ' < '.join(l.split()[0].split('/src/')[-1] for l in out[:4] if l.strip())
    print(f"  {k / n:5.2f}  {site_bytes[at] // k:5d}  {where}")
PY
