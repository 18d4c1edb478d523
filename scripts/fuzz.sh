#!/usr/bin/env bash
# Coverage-guided fuzzing of sealdb's decoders of untrusted bytes with
# cargo fuzz (libFuzzer), each target for a bounded time.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     (default: 60 s, every target)
#
# Needs the nightly toolchain (`rustup toolchain install nightly`) and
# cargo-fuzz (installed here if missing). Seeds are in fuzz/corpus/TARGET
# (committed); what a run discovers goes to fuzz/work/TARGET (not
# committed), and a crash to fuzz/artifacts/TARGET: turn each crash into a
# unit test next to the decoder before fixing it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^sealdb-fuzz$')
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
for t in "${targets[@]}"; do
  mkdir -p "fuzz/work/$t" "fuzz/corpus/$t"
  echo "== $t: $seconds s"
  cargo +nightly fuzz run "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 2>&1 |
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ *DONE)|ERROR|panicked|SUMMARY' || true
done
