#!/usr/bin/env bash
# The whole test suite: sets up the Python test environment (psycopg) once,
# then runs every Rust test, unit and integration, against the real binary.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
./scripts/setup-test-env.sh
cargo test --workspace "$@"
