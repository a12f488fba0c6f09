#!/usr/bin/env bash
# The issue's reload measurement: four keep-alive clients load usher for SECONDS (30) while
# the config is reloaded every second, with a WebSocket tunnel open throughout; prints the
# reloads, the requests answered and failed, and checks /metrics against the client count.
#
#   benches/reload_under_load.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
export USHER_RELOAD_SECS="${1:-30}"
cargo test --test it -- --nocapture reload::reloads_under_load 2>&1 |
  grep -E '^reload_under_load|^test |test result'
