#!/usr/bin/env bash
# scripts/fuzz.sh [CASES] — a long fuzzing pass (tests/fuzz.rs: the startup
# packet parser, the session's frame visitors both ways, the rewriter) with
# CASES cases per property (default 100000), in release mode. A failure is
# printed shrunk to its smallest form and kept in tests/proptest-regressions/
# (commit it: every later run replays it first).
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-100000}
echo "fuzzing: $cases cases per property"
PROPTEST_CASES=$cases cargo test --release --test fuzz -- --nocapture
ls tests/proptest-regressions 2>/dev/null && echo "(failures kept above)" || echo "no failure found"
