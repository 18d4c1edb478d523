#!/usr/bin/env bash
# Coverage-guided fuzzing of sealdb's decoders of untrusted bytes with
# cargo fuzz (libFuzzer), each target for a bounded time.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     (default: 60 s, every target)
#
# Targets (fuzz/fuzz_targets): the KMIP TTLV decoder and response parsers,
# the log-file, catalog and segment decoders, the config file parser,
# cert-user-map rules and the security statements parser; and
# (fuzz/wire/fuzz_targets, a crate of its own as it builds a whole server
# with DataFusion) the wire protocol: SSL negotiation, startup and
# authentication against a server running in the fuzzing process.
#
# Runs on the machine's one (stable) toolchain with RUSTC_BOOTSTRAP=1, as
# cargo fuzz needs unstable compiler flags; installs cargo-fuzz when
# missing. SEALDB_FUZZ_PROFILE=dev builds without optimizations: a
# quicker build for short runs (the test suite's), fewer executions. Seeds are in fuzz/corpus/TARGET (committed);
# what a run discovers goes to fuzz/work/TARGET (not committed), a crash to
# fuzz/artifacts/TARGET: turn each crash into a regression test next to
# the decoder, then fix it. Prints one line per target (executions, corpus,
# peak memory) and writes them to fuzz/last-run.txt; exits 1 if any target
# crashed, leaked or timed out.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml fuzz/wire/Cargo.toml | grep -v '^sealdb-fuzz')
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
profile=()
if [ "${SEALDB_FUZZ_PROFILE:-release}" = dev ]; then
  profile=(--dev)
fi
summary=fuzz/last-run.txt
: >"$summary"
failed=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/work/$t" "fuzz/corpus/$t"
  dir=fuzz
  if grep -q "^name = \"$t\"$" fuzz/wire/Cargo.toml; then
    dir=fuzz/wire
  fi
  log="$(mktemp)"
  # A run that ends without a finding (no artifact written, no final
  # statistics) failed outside the target, in its build or start: it is
  # tried once more, and the end of its output is shown.
  for attempt in 1 2; do
    set +e
    cargo fuzz run --fuzz-dir "$dir" "${profile[@]}" "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1
    status=$?
    set -e
    if [ "$status" -eq 0 ] || grep -qE 'Test unit written|^stat::number_of_executed_units' "$log"; then
      break
    fi
    echo "$t: the run ended (exit $status) before fuzzing; its output ends:" >&2
    tail -25 "$log" >&2
  done
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  corpus=$(find "fuzz/work/$t" "fuzz/corpus/$t" -type f | wc -l)
  if [ "$status" -eq 0 ]; then
    line="$t: ${runs:-0} executions in ${seconds} s, ${corpus} inputs, peak ${rss:-?} MB, no crash"
  else
    failed=1
    line="$t: FAILED (exit $status) after ${runs:-?} executions; see below and $dir/artifacts/$t"
    grep -E 'ERROR|panicked|SUMMARY|Test unit written|error(\[|:)' "$log" | head -20 >&2 || tail -30 "$log" >&2
  fi
  echo "$line" | tee -a "$summary"
  rm -f "$log"
done
exit "$failed"
