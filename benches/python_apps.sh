#!/usr/bin/env bash
# The issue's measured runs with real Python app servers, at full length: the keep-alive
# race behind gunicorn (gthread, 2 workers, keep-alive 2 s) and uvicorn (keep-alive 5 s) for
# 60 s each (USHER_RACE_SECS), three uvicorn members with one killed and restarted under load,
# a real WebSocket client, and the balancing figures. Prints one line of figures per run.
#
#   benches/python_apps.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/pyenv
export USHER_RACE_SECS="${1:-60}"
cargo test --test it -- --nocapture --test-threads 2 python_apps balancing::least_requests 2>&1 |
  grep -E '^(gunicorn|uvicorn|kill/restart|least_requests)|^test |test result'
