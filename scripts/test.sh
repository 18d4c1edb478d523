#!/usr/bin/env bash
# The whole test suite: sets up the Python test environment (psycopg) once,
# runs every Rust test, unit and integration, against the real binary, then
# a short coverage-guided fuzz run of every decoder of untrusted bytes
# (SEALDB_FUZZ_SECONDS each, default 10; 0 skips it; an unoptimized build,
# quicker to make). Every test server's log and data directory is scanned
# for secrets in the clear when it stops (SEALDB_SECRETS_REPORT collects
# what was scanned), and the whole output of the suite is grepped for the
# known test secrets. Ends with one summary line.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
./scripts/setup-test-env.sh
log="$(mktemp)"
export SEALDB_SECRETS_REPORT="$(mktemp)"
trap 'rm -f "$log" "$SEALDB_SECRETS_REPORT"' EXIT
set +e
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{s+=$1} END {print s+0}')
failed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {print s+0}')
# No secret in the clear: neither in what the servers wrote or logged
# (scanned as each stopped) nor anywhere in the suite's output.
scanned=$(grep -c '^clean' "$SEALDB_SECRETS_REPORT" || true)
found=$(grep '^FOUND' "$SEALDB_SECRETS_REPORT" || true)
leaked=$(grep -v -e '^#' -e '^$' crates/sealdb/tests/known-secrets.txt | grep -n -F -f - "$log" | head -5 || true)
if [ -n "$found" ] || [ -n "$leaked" ] || { [ "$scanned" = 0 ] && [ $# = 0 ]; }; then
  secrets="FAILED"
  echo "secrets in the clear:"; echo "$found"; echo "$leaked"
  [ "$status" -ne 0 ] || status=1
else
  secrets="$scanned server logs and data directories scanned, none found"
fi
fuzz="skipped"
fuzz_seconds="${SEALDB_FUZZ_SECONDS:-10}"
if [ "$fuzz_seconds" != 0 ]; then
  if SEALDB_FUZZ_PROFILE="${SEALDB_FUZZ_PROFILE:-dev}" ./scripts/fuzz.sh "$fuzz_seconds"; then
    fuzz="$(wc -l <fuzz/last-run.txt) targets without a crash"
  else
    fuzz="FAILED"
    [ "$status" -ne 0 ] || status=1
  fi
fi
echo
echo "summary: ${passed} passed, ${failed} failed; secrets: ${secrets}; fuzzing: ${fuzz}"
exit "$status"
