#!/usr/bin/env bash
# Creates .venv with the Python packages the tests use (psycopg), once.
# Idempotent: a second run only checks that the environment is complete.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.sealdb-requirements"
requirements="$root/scripts/test-requirements.txt"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$stamp" "$requirements"; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
cp "$requirements" "$stamp"
echo "test environment ready: $venv"
