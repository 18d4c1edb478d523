#!/usr/bin/env bash
# The reliability suite, the long tier of testing, one part at a time or
# all of it (RELIABILITY.md); ./scripts/test.sh runs the short tier:
#   scripts/reliability.sh fuzz [SECONDS] [TARGET...]  coverage-guided fuzzing (default 60 s a target)
#   scripts/reliability.sh load [SECONDS] [SESSIONS]   verified-TLS sessions against a model, with a
#                                                      flood of half-open handshakes (default 120 s, 200)
#   scripts/reliability.sh crash [KILLS]               kill -9 soak of a mixed workload (default 100)
#   scripts/reliability.sh disk                        full disk, read-only data directory
#   scripts/reliability.sh kmip [SECONDS]              two PyKMIP hosts killed, restarted, blocked (default 300 s)
#   scripts/reliability.sh secrets                     the whole test suite, then no secret anywhere
#   scripts/reliability.sh all                         each of the above in turn
# The figures of each part are printed at its end (lines starting with the
# part's name); RELIABILITY.md gives those of the last run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
part="${1:-}"
[ $# -gt 0 ] && shift
./scripts/setup-test-env.sh > /dev/null
run_test() { # crate test-target name-filter
  # --include-ignored: the parts that run only here are #[ignore]d in the
  # test suite, with the command that runs them as the reason.
  cargo test -p "$1" --test "$2" -- --nocapture --test-threads 1 --include-ignored "$3"
}
case "$part" in
  fuzz)
    exec ./scripts/fuzz.sh "${1:-60}" "${@:2}"
    ;;
  load)
    SEALDB_LOAD_SECONDS="${1:-120}" SEALDB_LOAD_SESSIONS="${2:-200}" run_test sealdb load two_hundred_sessions
    ;;
  crash)
    SEALDB_SOAK_KILLS="${1:-100}" run_test sealdb crash acknowledged_rows_survive
    ;;
  disk)
    run_test sealdb disk_full ""
    run_test sealdb-storage disk_full ""
    ;;
  kmip)
    SEALDB_CHAOS_SECONDS="${1:-300}" run_test sealdb kmip_chaos random_kills_restarts
    ;;
  secrets)
    exec ./scripts/test.sh
    ;;
  all)
    "$0" fuzz
    "$0" load
    "$0" crash
    "$0" disk
    "$0" kmip
    "$0" secrets
    ;;
  *)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
