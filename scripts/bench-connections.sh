#!/usr/bin/env bash
# Side-by-side benchmark, one run: sealdb against PostgreSQL 15 on this
# machine, both with TLS and client-certificate authentication
# (sslmode=verify-full, the same ECDSA P-256 certificates), driven by the
# same client (pgbench, libpq):
#   1. new TLS connections per second, one SELECT 1 each   (pgbench -C)
#   2. SELECT 1 round-trip latency on an open TLS session  (pgbench, 1 client)
# Rounds alternate between the two servers; ratios are printed at the end.
# Needs: postgresql-15 (initdb, postgres, pgbench). Servers listen on
# 127.0.0.1 only and are stopped by PID.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
pgbin="${PGBIN:-/usr/lib/postgresql/15/bin}"
seconds="${BENCH_SECONDS:-10}"
rounds="${BENCH_ROUNDS:-2}"
clients="${BENCH_CLIENTS:-4}"
for tool in initdb postgres pgbench; do
  [ -x "$pgbin/$tool" ] || { echo "missing $pgbin/$tool: apt-get install postgresql-15" >&2; exit 2; }
done
cd "$root"
cargo build --release --quiet --bin sealdb
work="$(mktemp -d /tmp/sealdb-bench.XXXXXX)"
chmod 755 "$work"
sealdb_pid=""; pg_pid=""
cleanup() {
  [ -n "$sealdb_pid" ] && kill "$sealdb_pid" 2>/dev/null || true
  [ -n "$pg_pid" ] && kill "$pg_pid" 2>/dev/null || true
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sealdb_port=$(free_port); pg_port=$(free_port)

# sealdb: bootstrap certificates, admin logs in with its client certificate.
SEALDB_LOG=warn "$root/target/release/sealdb" start --data "$work/sealdb" --port "$sealdb_port" --max-connections 1000 > "$work/sealdb.out" 2> "$work/sealdb.err" &
sealdb_pid=$!
for _ in $(seq 1 100); do grep -q listening "$work/sealdb.out" 2>/dev/null && break; sleep 0.1; done
certs="$work/sealdb/certs"

# PostgreSQL 15 with the same certificates.
pgdata="$work/pg"
run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p "$pgdata"; [ "$(id -u)" = 0 ] && chown postgres "$pgdata" "$work"
run_pg "$pgbin/initdb" -D "$pgdata" -A trust -U postgres > "$work/initdb.log"
cp "$certs/node.crt" "$certs/node.key" "$certs/ca.crt" "$pgdata/"
[ "$(id -u)" = 0 ] && chown postgres "$pgdata/node.crt" "$pgdata/node.key" "$pgdata/ca.crt"
chmod 600 "$pgdata/node.key"
cat >> "$pgdata/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$pgdata'
ssl = on
ssl_cert_file = 'node.crt'
ssl_key_file = 'node.key'
ssl_ca_file = 'ca.crt'
ssl_min_protocol_version = 'TLSv1.2'
max_connections = 200
fsync = off
CONF
cat > "$pgdata/pg_hba.conf" <<HBA
local all postgres trust
hostssl all all 127.0.0.1/32 cert
HBA
run_pg "$pgbin/postgres" -D "$pgdata" > "$work/pg.log" 2>&1 &
pg_pid=$!
for _ in $(seq 1 100); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" && break; sleep 0.1; done
run_pg psql -X -q -h "$pgdata" -p "$pg_port" -U postgres -c "create role admin login" postgres

echo "SELECT 1;" > "$work/select1.sql"
export PGSSLMODE=verify-full PGSSLROOTCERT="$certs/ca.crt" PGSSLCERT="$certs/client.admin.crt" PGSSLKEY="$certs/client.admin.key"
conn_rate() { # port dbname -> tps with a new connection per transaction
  "$pgbin/pgbench" -n -C -f "$work/select1.sql" -T "$seconds" -c "$clients" -j 2 -h localhost -p "$1" -U admin "$2" 2>&1 \
    | sed -nE 's/^tps = ([0-9.]+).*/\1/p' | head -1
}
latency() { # port dbname -> average latency in ms, one client, open session
  "$pgbin/pgbench" -n -f "$work/select1.sql" -T "$seconds" -c 1 -j 1 -h localhost -p "$1" -U admin "$2" 2>&1 \
    | sed -nE 's/^latency average = ([0-9.]+) ms.*/\1/p' | head -1
}
declare -a s_conn p_conn s_lat p_lat
for r in $(seq 1 "$rounds"); do
  s_conn+=("$(conn_rate "$sealdb_port" sealdb)"); p_conn+=("$(conn_rate "$pg_port" postgres)")
  s_lat+=("$(latency "$sealdb_port" sealdb)");    p_lat+=("$(latency "$pg_port" postgres)")
  echo "round $r: connections/s sealdb ${s_conn[-1]} postgres ${p_conn[-1]} | SELECT 1 latency ms sealdb ${s_lat[-1]} postgres ${p_lat[-1]}"
done
python3 - "${s_conn[*]}" "${p_conn[*]}" "${s_lat[*]}" "${p_lat[*]}" <<'PY'
import statistics, sys
sc, pc, sl, pl = ([float(x) for x in a.split()] for a in sys.argv[1:5])
c = statistics.median(sc) / statistics.median(pc)
l = statistics.median(sl) / statistics.median(pl)
print(f"new TLS connections/s with one query: sealdb/postgres = {c:.2f}x (goal >= 2.0x)")
print(f"SELECT 1 latency on an open TLS session: sealdb/postgres = {l:.2f}x (goal <= 1.5x)")
PY
