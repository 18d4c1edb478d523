#!/usr/bin/env bash
# The whole test suite (the README's test command; .ci/run calls it):
#   ./scripts/test.sh                 every test of the workspace
#   ./scripts/test.sh -p CRATE ...    arguments go to `cargo nextest run`
#
# 1. Sets up the Python test environment (.venv: psycopg, PyKMIP) once.
# 2. Builds every target of the workspace (libraries, binaries, tests,
#    examples, benchmarks) in the test profile, with clippy's lints on the
#    workspace's own crates (clippy-driver as the compiler of those
#    crates, warnings denied): clippy's verdict for no second pass over
#    the dependencies.
# 3. Runs every test with cargo nextest (.config/nextest.toml: a process
#    per test, four at a time, the heaviest one at a time), unit and
#    integration tests against the real binary and real peers, and every
#    fuzz target's committed corpus and regression inputs
#    (crates/sealdb/tests/fuzz_corpus.rs). Coverage-guided fuzzing, the
#    long soaks and chaos are the long tier: scripts/fuzz.sh and
#    scripts/reliability.sh (RELIABILITY.md).
# 4. Every test server's log and data directory is scanned for secrets in
#    the clear when it stops (SEALDB_SECRETS_REPORT collects what was
#    scanned), and the whole output is grepped for the known test secrets.
# Ends with the ten slowest tests and test binaries, and one summary line.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
started=$(date +%s)
./scripts/setup-test-env.sh
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest is missing: installing it (cargo install cargo-nextest --locked)"
  cargo install cargo-nextest --locked
fi
log="$(mktemp)"
export SEALDB_SECRETS_REPORT="$(mktemp)"
trap 'rm -f "$log" "$SEALDB_SECRETS_REPORT"' EXIT
target_dir="${CARGO_TARGET_DIR:-$root/target}"
junit="$target_dir/nextest/default/junit.xml"
rm -f "$junit"

# Clippy's lints, denied, in the build itself: the same settings `cargo
# clippy` passes to clippy-driver.
clippy_driver="$(rustc --print sysroot)/bin/clippy-driver"
[ -x "$clippy_driver" ] || clippy_driver="$(command -v clippy-driver)"
export RUSTC_WORKSPACE_WRAPPER="$clippy_driver"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

set +e
status=0
if [ $# = 0 ]; then
  build_started=$(date +%s)
  cargo test --workspace --all-targets --no-run 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  build_seconds=$(( $(date +%s) - build_started ))
fi
if [ "$status" = 0 ]; then
  if [ $# = 0 ]; then
    cargo nextest run --workspace 2>&1 | tee -a "$log"
  else
    cargo nextest run "$@" 2>&1 | tee -a "$log"
  fi
  status=${PIPESTATUS[0]}
fi
set -e

counts=$(sed -nE 's/.*Summary \[ *[0-9.]+s\] ([0-9]+) tests? run: ([0-9]+) passed.*/\1 \2/p' "$log" | tail -1)
run=${counts%% *}; passed=${counts##* }
run=${run:-0}; passed=${passed:-0}
failed=$(( run - passed ))
skipped=$(sed -nE 's/.*Summary .* ([0-9]+) skipped.*/\1/p' "$log" | tail -1)

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

if [ -f "$junit" ]; then
  python3 - "$junit" <<'PY'
import sys, xml.etree.ElementTree as ET
from collections import defaultdict
tests, binaries = [], defaultdict(float)
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    seconds = float(case.get("time", 0))
    binary = case.get("classname", "?")
    tests.append((seconds, f"{binary} {case.get('name')}"))
    binaries[binary] += seconds
print("\nten slowest tests (seconds):")
for seconds, name in sorted(tests, reverse=True)[:10]:
    print(f"  {seconds:7.1f}  {name}")
print("ten slowest test binaries (seconds, their tests summed):")
for name, seconds in sorted(binaries.items(), key=lambda kv: -kv[1])[:10]:
    print(f"  {seconds:7.1f}  {name}")
PY
fi
minutes=$(( ($(date +%s) - started + 59) / 60 ))
echo
echo "summary: ${passed} passed, ${failed} failed, ${skipped:-0} skipped (long tier); secrets: ${secrets}; build ${build_seconds:-?} s; ${minutes} min in all"
exit "$status"
