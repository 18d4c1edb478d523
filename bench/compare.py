#!/usr/bin/env python3
"""sealdb side by side with PostgreSQL 15 (TLS) and DuckDB (encrypted), one run.

Started by `bench/compare` (which installs what it needs). Loads TPC-H at
the given scale factors into sealdb encrypted, sealdb with
`default-table-encryption = none`, PostgreSQL 15 with `ssl = on`, and a
DuckDB file encrypted with AES-GCM; runs the 22 TPC-H queries (sealdb and
PostgreSQL through psycopg over verified TLS, DuckDB in process), compares
every result across systems, and writes a Markdown report. Every server it
starts listens on 127.0.0.1 and is stopped by PID, also when the run fails.
"""

import argparse
import datetime
import decimal
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import psycopg

ROOT = Path(__file__).resolve().parent.parent
PG_BIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))

# TPC-H tables, in load order, with their columns.
SCHEMA = {
    "region": "r_regionkey INT NOT NULL, r_name TEXT NOT NULL, r_comment TEXT NOT NULL",
    "nation": "n_nationkey INT NOT NULL, n_name TEXT NOT NULL, n_regionkey INT NOT NULL, n_comment TEXT NOT NULL",
    "part": "p_partkey BIGINT NOT NULL, p_name TEXT NOT NULL, p_mfgr TEXT NOT NULL, p_brand TEXT NOT NULL, "
    "p_type TEXT NOT NULL, p_size INT NOT NULL, p_container TEXT NOT NULL, p_retailprice DECIMAL(15,2) NOT NULL, "
    "p_comment TEXT NOT NULL",
    "supplier": "s_suppkey BIGINT NOT NULL, s_name TEXT NOT NULL, s_address TEXT NOT NULL, s_nationkey INT NOT NULL, "
    "s_phone TEXT NOT NULL, s_acctbal DECIMAL(15,2) NOT NULL, s_comment TEXT NOT NULL",
    "partsupp": "ps_partkey BIGINT NOT NULL, ps_suppkey BIGINT NOT NULL, ps_availqty INT NOT NULL, "
    "ps_supplycost DECIMAL(15,2) NOT NULL, ps_comment TEXT NOT NULL",
    "customer": "c_custkey BIGINT NOT NULL, c_name TEXT NOT NULL, c_address TEXT NOT NULL, c_nationkey INT NOT NULL, "
    "c_phone TEXT NOT NULL, c_acctbal DECIMAL(15,2) NOT NULL, c_mktsegment TEXT NOT NULL, c_comment TEXT NOT NULL",
    "orders": "o_orderkey BIGINT NOT NULL, o_custkey BIGINT NOT NULL, o_orderstatus TEXT NOT NULL, "
    "o_totalprice DECIMAL(15,2) NOT NULL, o_orderdate DATE NOT NULL, o_orderpriority TEXT NOT NULL, "
    "o_clerk TEXT NOT NULL, o_shippriority INT NOT NULL, o_comment TEXT NOT NULL",
    "lineitem": "l_orderkey BIGINT NOT NULL, l_partkey BIGINT NOT NULL, l_suppkey BIGINT NOT NULL, "
    "l_linenumber INT NOT NULL, l_quantity DECIMAL(15,2) NOT NULL, l_extendedprice DECIMAL(15,2) NOT NULL, "
    "l_discount DECIMAL(15,2) NOT NULL, l_tax DECIMAL(15,2) NOT NULL, l_returnflag TEXT NOT NULL, "
    "l_linestatus TEXT NOT NULL, l_shipdate DATE NOT NULL, l_commitdate DATE NOT NULL, "
    "l_receiptdate DATE NOT NULL, l_shipinstruct TEXT NOT NULL, l_shipmode TEXT NOT NULL, l_comment TEXT NOT NULL",
}

SYSTEMS = ["sealdb", "sealdb-plain", "postgres", "duckdb"]
# The systems run with concurrent clients (sealdb plain differs from
# sealdb only in its files, which the single-client runs compare).
CLIENT_SYSTEMS = ["sealdb", "postgres", "duckdb"]

# What a PostgreSQL user would give TPC-H: primary keys and indexes on the
# join columns. Without them PostgreSQL runs Q20 and Q17 as nested loops
# over lineitem (27 s at scale factor 0.01, hours at 1).
PG_INDEXES = [
    "ALTER TABLE region ADD PRIMARY KEY (r_regionkey)",
    "ALTER TABLE nation ADD PRIMARY KEY (n_nationkey)",
    "ALTER TABLE part ADD PRIMARY KEY (p_partkey)",
    "ALTER TABLE supplier ADD PRIMARY KEY (s_suppkey)",
    "ALTER TABLE partsupp ADD PRIMARY KEY (ps_partkey, ps_suppkey)",
    "ALTER TABLE customer ADD PRIMARY KEY (c_custkey)",
    "ALTER TABLE orders ADD PRIMARY KEY (o_orderkey)",
    "ALTER TABLE lineitem ADD PRIMARY KEY (l_orderkey, l_linenumber)",
    "CREATE INDEX ON lineitem (l_partkey, l_suppkey)",
    "CREATE INDEX ON lineitem (l_suppkey)",
    "CREATE INDEX ON partsupp (ps_suppkey)",
    "CREATE INDEX ON orders (o_custkey)",
    "CREATE INDEX ON customer (c_nationkey)",
    "CREATE INDEX ON supplier (s_nationkey)",
]

# A query running longer than this on PostgreSQL is reported as timed out.
PG_STATEMENT_TIMEOUT_MS = 600_000


def log(msg):
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def queries(sf):
    text = (ROOT / "bench" / "tpch" / "queries.sql").read_text()
    text = text.replace("{q11_fraction}", repr(0.0001 / sf))
    out = {}
    parts = re.split(r"^-- Q(\d+)\s*$", text, flags=re.M)
    for i in range(1, len(parts), 2):
        out[int(parts[i])] = parts[i + 1].strip().rstrip(";")
    assert sorted(out) == list(range(1, 23)), sorted(out)
    return out


def generate(tool, sf, out):
    """TPC-H tables as `|`-separated text (crates/sealdb/examples/tpch_tbl.rs, the tpchgen crate)."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(tool), str(sf), str(out)], check=True)
    files = {}
    for table in SCHEMA:
        path = out / f"{table}.txt"
        assert path.exists(), f"{tool} wrote no {path}"
        files[table] = path
    return files


def copy_rows(cursor, sql, path):
    """Streams a file into COPY ... FROM STDIN."""
    with cursor.copy(sql) as copy, open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            copy.write(chunk)


class Server:
    """A server process started here, stopped by PID."""

    def __init__(self, name, proc, conninfo, pid_of=None):
        self.name = name
        self.proc = proc
        self.conninfo = conninfo
        self.pid_of = pid_of

    def pid(self):
        return self.pid_of() if self.pid_of else self.proc.pid

    def connect(self):
        return psycopg.connect(self.conninfo, autocommit=True)

    def peak_rss_kib(self):
        """VmHWM of the server and its children (PostgreSQL's backends)."""
        pid = self.pid()
        if pid is None:
            return None
        total = 0
        pids = [pid]
        try:
            children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
            pids += [int(c) for c in children]
        except OSError:
            pass
        for p in pids:
            try:
                for line in Path(f"/proc/{p}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total


def start_sealdb(work, name, extra):
    data = work / name
    port = free_port()
    out = open(work / f"{name}.out", "w")
    err = open(work / f"{name}.err", "w")
    proc = subprocess.Popen(
        [os.environ.get("SEALDB_BIN", str(ROOT / "target" / "release" / "sealdb")), "start", "--data", str(data), "--port", str(port),
         "--max-connections", "1000", *extra],
        stdout=out, stderr=err, env={**os.environ, "SEALDB_LOG": "warn"}, start_new_session=True)
    deadline = time.time() + 60
    while "listening" not in (work / f"{name}.out").read_text():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{name} did not start: {(work / f'{name}.err').read_text()}")
        time.sleep(0.1)
    certs = data / "certs"
    conninfo = (f"host=localhost port={port} user=admin dbname=sealdb sslmode=verify-full "
                f"sslrootcert={certs}/ca.crt sslcert={certs}/client.admin.crt sslkey={certs}/client.admin.key")
    return Server(name, proc, conninfo)


def run_as_postgres(args, **kw):
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(args, check=True, **kw)


def start_postgres(work, certs):
    pgdata = work / "pg"
    pgdata.mkdir()
    if os.geteuid() == 0:
        shutil.chown(work, "postgres")
        shutil.chown(pgdata, "postgres")
    run_as_postgres([str(PG_BIN / "initdb"), "-D", str(pgdata), "-A", "trust", "-U", "postgres"],
                    stdout=subprocess.DEVNULL)
    for f in ["node.crt", "node.key", "ca.crt"]:
        shutil.copy(certs / f, pgdata / f)
        if os.geteuid() == 0:
            shutil.chown(pgdata / f, "postgres")
    os.chmod(pgdata / "node.key", 0o600)
    port = free_port()
    with open(pgdata / "postgresql.conf", "a") as conf:
        conf.write(f"""
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{pgdata}'
ssl = on
ssl_cert_file = 'node.crt'
ssl_key_file = 'node.key'
ssl_ca_file = 'ca.crt'
max_connections = 200
shared_buffers = '2GB'
max_parallel_workers_per_gather = 2
""")
    # Clients log in with the same client certificate as sealdb's admin
    # (CN=admin), verified against the same CA; the harness itself sets up
    # over the Unix socket.
    (pgdata / "pg_hba.conf").write_text("local all postgres trust\nhostssl all admin 127.0.0.1/32 cert\n")
    cmd = [str(PG_BIN / "postgres"), "-D", str(pgdata)]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    log_file = open(work / "pg.log", "w")
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=log_file, start_new_session=True)
    local = f"host={pgdata} port={port} user=postgres dbname=postgres"
    deadline = time.time() + 60
    while True:
        try:
            with psycopg.connect(local, autocommit=True) as conn:
                conn.execute("CREATE ROLE admin SUPERUSER LOGIN")
            break
        except psycopg.OperationalError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {(work / 'pg.log').read_text()}")
            time.sleep(0.2)
    conninfo = (f"host=localhost port={port} user=admin dbname=postgres sslmode=verify-full "
                f"sslrootcert={certs}/ca.crt sslcert={certs}/client.admin.crt sslkey={certs}/client.admin.key")

    def postmaster():
        try:
            return int((pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    return Server("postgres", proc, conninfo, postmaster)


def stop(server):
    pid = server.pid()
    if pid is None:
        return
    try:
        # PostgreSQL: fast shutdown (SIGINT); sealdb: as a crash would, its log is durable.
        os.kill(pid, signal.SIGINT if server.name == "postgres" else signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.kill(pid, signal.SIGKILL)


def load_server(server, files):
    """COPY every table: (COPY seconds, then CHECKPOINT or index-and-ANALYZE seconds)."""
    with server.connect() as conn, conn.cursor() as cur:
        for table, columns in SCHEMA.items():
            cur.execute(f"CREATE TABLE {table} ({columns})")
        start = time.perf_counter()
        for table, path in files.items():
            copy_rows(cur, f"COPY {table} FROM STDIN WITH (DELIMITER '|')", path)
        took = time.perf_counter() - start
        start = time.perf_counter()
        if server.name.startswith("sealdb"):
            cur.execute("CHECKPOINT")
        else:
            for statement in PG_INDEXES:
                cur.execute(statement)
            cur.execute("ANALYZE")
            cur.execute(f"ALTER DATABASE postgres SET statement_timeout = {PG_STATEMENT_TIMEOUT_MS}")
    return took, time.perf_counter() - start


def load_duckdb(path, key, files):
    conn = duckdb.connect()
    conn.execute("LOAD httpfs")
    conn.execute(f"ATTACH '{path}' AS tpch (ENCRYPTION_KEY '{key}', ENCRYPTION_CIPHER 'GCM')")
    conn.execute("USE tpch")
    for table, columns in SCHEMA.items():
        conn.execute(f"CREATE TABLE {table} ({columns})")
    start = time.perf_counter()
    for table, path_ in files.items():
        conn.execute(f"COPY {table} FROM '{path_}' (DELIMITER '|', HEADER false, QUOTE '')")
    conn.execute("CHECKPOINT tpch")
    return conn, time.perf_counter() - start


def normalize(rows):
    """Rows compared across systems: numbers to 2 decimal places (DECIMAL
    averages and float averages differ past that), text stripped, dates as
    ISO text; sorted, so ties under ORDER BY may come in any order."""
    out = []
    for row in rows:
        norm = []
        for v in row:
            if isinstance(v, (int, float, decimal.Decimal)) and not isinstance(v, bool):
                f = float(v)
                norm.append("NaN" if math.isnan(f) else f"{round(f, 2):.2f}")
            elif isinstance(v, (datetime.date, datetime.datetime)):
                norm.append(v.isoformat()[:10])
            elif v is None:
                norm.append("NULL")
            else:
                norm.append(str(v).strip())
        out.append(tuple(norm))
    return sorted(out)


def run_query(kind, conn, sql):
    start = time.perf_counter()
    if kind == "duckdb":
        rows = conn.execute(sql).fetchall()
    else:
        with conn.cursor() as cur:
            cur.execute(sql)
            rows = cur.fetchall()
    return time.perf_counter() - start, rows


def geomean(values):
    values = [v for v in values if v and v > 0]
    if not values:
        return float("nan")
    return math.exp(sum(math.log(v) for v in values) / len(values))


def machine():
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1048576:.1f} GiB"
    except OSError:
        pass
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu}), {mem} RAM"


def versions():
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    pg = subprocess.run([str(PG_BIN / "postgres"), "--version"], capture_output=True, text=True).stdout.strip()
    return {"sealdb": f"sealdb at {rev}", "postgres": pg, "duckdb": f"DuckDB {duckdb.__version__}"}


def run_scale(sf, args, tool, work, report):
    log(f"scale factor {sf}: generating data")
    files = generate(tool, sf, work / f"data-sf{sf}")
    qs = queries(sf)
    servers = {}
    results = {"load": {}, "times": {}, "errors": {}, "mismatch": {}, "rss": {}}
    try:
        servers["sealdb"] = start_sealdb(work, f"sealdb-sf{sf}", [])
        servers["sealdb-plain"] = start_sealdb(work, f"sealdb-plain-sf{sf}", ["--default-table-encryption", "none"])
        # PostgreSQL serves sealdb's node certificate, so that clients verify both the same way.
        servers["postgres"] = start_postgres(Path(tempfile.mkdtemp(dir=work)), work / f"sealdb-sf{sf}" / "certs")
        conns = {}
        for name, server in servers.items():
            log(f"loading {name}")
            results["load"][name], results.setdefault("after_load", {})[name] = load_server(server, files)
            conns[name] = server.connect()
        log("loading duckdb (encrypted)")
        conns["duckdb"], results["load"]["duckdb"] = load_duckdb(work / f"tpch-sf{sf}.duckdb", "bench-key-" + str(os.getpid()),
                                                                 files)
        for q in range(1, 23):
            times = {}
            for name in SYSTEMS:
                kind = "duckdb" if name == "duckdb" else "pg"
                try:
                    _, rows = run_query(kind, conns[name], qs[q])  # warm-up, and the result compared
                except Exception as e:  # noqa: BLE001 - every failure is reported, per system and query
                    results["errors"][(name, q)] = (str(e).strip().splitlines() or [repr(e)])[0][:200]
                    continue
                results.setdefault("rows", {})[(name, q)] = normalize(rows)
                times[name] = []
            # Rounds alternate between the systems, so that a slow spell of
            # the machine does not fall on one system only.
            for _ in range(args.rounds):
                for name in times:
                    kind = "duckdb" if name == "duckdb" else "pg"
                    try:
                        times[name].append(run_query(kind, conns[name], qs[q])[0])
                    except Exception as e:  # noqa: BLE001 - reported as above
                        results["errors"][(name, q)] = (str(e).strip().splitlines() or [repr(e)])[0][:200]
            for name, ts in times.items():
                if (name, q) not in results["errors"]:
                    results["times"][(name, q)] = statistics.median(ts)
            ref = results.get("rows", {}).get(("postgres", q))
            for name in SYSTEMS:
                got = results.get("rows", {}).get((name, q))
                if got is not None and ref is not None and got != ref:
                    results["mismatch"][(name, q)] = f"{len(got)} rows vs PostgreSQL's {len(ref)}"
            log(f"Q{q}: " + ", ".join(
                f"{n} {results['times'][(n, q)] * 1000:.0f} ms" if (n, q) in results["times"] else f"{n} failed"
                for n in SYSTEMS))
        log("DataFusion alone over sealdb plain's segment files")
        run_datafusion(args, sf, work / f"sealdb-plain-sf{sf}", results)
        log(f"TPC-H with {', '.join(map(str, args.clients))} concurrent clients, {args.clients_seconds} s each")

        def conns_for(name):
            if name != "duckdb":
                return servers[name].connect()
            cursor = conns["duckdb"].cursor()  # a connection of its own to the same database
            cursor.execute("USE tpch")
            return cursor

        results["clients"] = run_clients(args, qs, conns_for, CLIENT_SYSTEMS)
        for name, server in servers.items():
            results["rss"][name] = server.peak_rss_kib()
    finally:
        for server in servers.values():
            stop(server)
    report.append((sf, results))


def run_datafusion(args, sf, data, results):
    """The 22 queries on DataFusion alone (crates/sealdb/examples/datafusion_tpch.rs)
    over the segment files of sealdb plain: what the engine costs without
    sealdb around it. Its row counts are checked against PostgreSQL's."""
    # Tables get their ids (and directories) in the order they were created.
    tables = [f"{name}={data / 'tables' / str(i)}" for i, name in enumerate(SCHEMA, start=1)]
    run = subprocess.run([args.datafusion, str(ROOT / "bench" / "tpch" / "queries.sql"), str(sf), str(args.rounds), *tables],
                         capture_output=True, text=True)
    if run.returncode != 0:
        for q in range(1, 23):
            results["errors"][("datafusion", q)] = (run.stderr.strip().splitlines() or ["failed"])[-1][:200]
        return
    for line in run.stdout.splitlines():
        number, rest = line.split(" ", 1)
        q = int(number[1:])
        if rest.startswith("error"):
            results["errors"][("datafusion", q)] = rest[6:][:200]
            continue
        ms, rows = rest.split()
        results["times"][("datafusion", q)] = float(ms) / 1000
        ref = results.get("rows", {}).get(("postgres", q))
        if ref is not None and int(rows) != len(ref):
            results["mismatch"][("datafusion", q)] = f"{rows} rows vs PostgreSQL's {len(ref)}"


PGBENCH = PG_BIN / "pgbench"


def pgbench(args, conninfo, what):
    """Runs the real pgbench client; returns its output, or raises with it."""
    run = subprocess.run([str(PGBENCH), *args, conninfo], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"pgbench {what} failed: {(run.stderr or run.stdout).strip()[-600:]}")
    return run.stdout + run.stderr


def pgbench_figure(out, pattern):
    m = re.search(pattern, out, flags=re.M)
    if not m:
        raise RuntimeError(f"pgbench printed no figure for {pattern}:\n{out[-600:]}")
    return float(m.group(1))


def run_oltp(args, work):
    """New verified-TLS connections per second (one query each) and
    `pgbench -S` (select-only, prepared) at each client count, against
    sealdb encrypted and PostgreSQL 15, both with client-certificate
    logins over TLS, with the real pgbench client."""
    out = {"connections": {}, "pgbench": {}, "errors": {}, "rss": {}}
    servers = {}
    try:
        servers["sealdb"] = start_sealdb(work, "sealdb-oltp", [])
        servers["postgres"] = start_postgres(Path(tempfile.mkdtemp(dir=work)), work / "sealdb-oltp" / "certs")
        select1 = work / "select1.sql"
        select1.write_text("SELECT 1;\n")
        for name, server in servers.items():
            log(f"{name}: new TLS connections per second ({args.oltp_seconds} s, {CONNECT_CLIENTS} clients)")
            try:
                printed = pgbench(["-n", "-C", "-f", str(select1), "-T", str(args.oltp_seconds), "-c",
                                   str(CONNECT_CLIENTS), "-j", "2"], server.conninfo, "-C")
                out["connections"][name] = pgbench_figure(printed, r"^tps = ([0-9.]+)")
            except RuntimeError as e:
                out["errors"][(name, "connections")] = str(e)[:300]
            # sealdb has no indexes (nor PRIMARY KEY): its steps are drop,
            # tables, generate, vacuum; PostgreSQL's default adds the keys.
            steps = "dtgv" if name.startswith("sealdb") else "dtgvp"
            log(f"{name}: pgbench -i -I {steps} -s {args.pgbench_scale}")
            try:
                pgbench(["-i", "-I", steps, "-q", "-s", str(args.pgbench_scale)], server.conninfo, "-i")
            except RuntimeError as e:
                out["errors"][(name, "pgbench -i")] = str(e)[:300]
                continue
            for clients in args.clients:
                log(f"{name}: pgbench -S -M prepared, {clients} client(s), {args.oltp_seconds} s")
                try:
                    printed = pgbench(["-n", "-S", "-M", "prepared", "-T", str(args.oltp_seconds), "-c", str(clients),
                                       "-j", str(min(clients, 2))], server.conninfo, "-S")
                    out["pgbench"][(name, clients)] = (pgbench_figure(printed, r"^tps = ([0-9.]+)"),
                                                       pgbench_figure(printed, r"^latency average = ([0-9.]+) ms"))
                except RuntimeError as e:
                    out["errors"][(name, f"pgbench -S -c {clients}")] = str(e)[:300]
        for name, server in servers.items():
            out["rss"][name] = server.peak_rss_kib()
    finally:
        for server in servers.values():
            stop(server)
    return out


# Clients that open connections at once in the connection test.
CONNECT_CLIENTS = 8


def run_clients(args, qs, conns_for, names):
    """TPC-H throughput with N concurrent clients: each runs the 22 queries
    in a loop (client i starts at query i) over its own connection until
    `--clients-seconds` have passed, finishing the query it is in.
    Returns {(name, clients): (queries per second, failures)}."""
    import threading

    out = {}
    for clients in args.clients:
        for name in names:
            done = [0] * clients
            failed = []
            deadline = time.perf_counter() + args.clients_seconds

            # Opened here, one by one: DuckDB's cursors are made on the parent connection's thread.
            conns = [conns_for(name) for _ in range(clients)]

            def client(i, name=name, done=done, failed=failed, conns=conns):
                try:
                    conn = conns[i]
                    kind = "duckdb" if name == "duckdb" else "pg"
                    q = i % 22
                    while time.perf_counter() < deadline:
                        run_query(kind, conn, qs[q + 1])
                        done[i] += 1
                        q = (q + 1) % 22
                    conn.close()
                except Exception as e:  # noqa: BLE001 - reported with the figure
                    failed.append((str(e).strip().splitlines() or [repr(e)])[0][:200])

            start = time.perf_counter()
            threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            took = time.perf_counter() - start
            out[(name, clients)] = (sum(done) / took, failed)
            log(f"{name}, {clients} client(s): {sum(done)} queries in {took:.1f} s"
                + (f", {len(failed)} client(s) failed: {failed[0]}" if failed else ""))
    return out


def oltp_lines(args, oltp):
    """The report's section on connections and pgbench -S."""
    c, b = oltp["connections"], oltp["pgbench"]

    def ratio(a, b_):
        return f"{a / b_:.2f}" if a and b_ else "-"

    def cell(v, fmt="{:.0f}"):
        return fmt.format(v) if v is not None else "failed"

    lines = ["## Connections and pgbench -S (TLS, client-certificate logins, the real pgbench client)", "",
             "| | sealdb | PostgreSQL 15 | sealdb / PostgreSQL |", "|---|---|---|---|",
             f"| new verified-TLS connections per second ({CONNECT_CLIENTS} clients, `SELECT 1` each) | "
             f"{cell(c.get('sealdb'))} | {cell(c.get('postgres'))} | {ratio(c.get('sealdb'), c.get('postgres'))} |"]
    for clients in args.clients:
        s_, p_ = b.get(("sealdb", clients)), b.get(("postgres", clients))
        lines.append(f"| pgbench -S -M prepared, {clients} client(s): transactions per second | "
                     f"{cell(s_ and s_[0])} | {cell(p_ and p_[0])} | {ratio(s_ and s_[0], p_ and p_[0])} |")
        lines.append(f"| the same: average latency (ms) | {cell(s_ and s_[1], '{:.3f}')} | "
                     f"{cell(p_ and p_[1], '{:.3f}')} | {ratio(s_ and s_[1], p_ and p_[1])} |")
    lines.append("| peak RSS (MiB) | " + " | ".join(
        f"{oltp['rss'][n] / 1024:.0f}" if oltp["rss"].get(n) else "-" for n in ["sealdb", "postgres"]) + " | - |")
    lines += ["", f"- connections per second, sealdb / PostgreSQL: **{ratio(c.get('sealdb'), c.get('postgres'))}x** (goal: 2x)",
              f"- pgbench: scale {args.pgbench_scale} ({args.pgbench_scale * 100000:,} accounts), {args.oltp_seconds} s a run; "
              "PostgreSQL with its primary keys (`pgbench -i`), sealdb without (`-I dtgv`: it has no indexes, a lookup "
              "prunes segments and pages by their min/max statistics)", ""]
    if oltp["errors"]:
        lines += ["Runs that failed:", ""] + [f"- {n} {what}: {e}" for (n, what), e in sorted(oltp["errors"].items())]
        lines.append("")
    return lines


def clients_lines(args, r):
    """The report's table of TPC-H throughput with concurrent clients."""
    got = r.get("clients", {})
    lines = [f"TPC-H throughput with concurrent clients (queries per second; each client runs the 22 queries in a loop "
             f"for {args.clients_seconds:g} s, client i starting at query i):", "",
             "| clients | sealdb | PostgreSQL 15 | DuckDB | sealdb / PostgreSQL | sealdb / DuckDB |",
             "|---|---|---|---|---|---|"]
    for clients in args.clients:
        qps = {n: got.get((n, clients), (None, []))[0] for n in CLIENT_SYSTEMS}
        cells = []
        for n in CLIENT_SYSTEMS:
            failed = got.get((n, clients), (None, []))[1]
            cells.append(f"{qps[n]:.2f}" + (f" ({len(failed)} failed)" if failed else "") if qps[n] is not None else "-")

        def ratio(a, b):
            return f"{qps[a] / qps[b]:.2f}" if qps[a] and qps[b] else "-"
        lines.append(f"| {clients} | " + " | ".join(cells) + f" | {ratio('sealdb', 'postgres')} | {ratio('sealdb', 'duckdb')} |")
    failures = [(n, c, f[0]) for (n, c), (_, f) in sorted(got.items()) if f]
    if failures:
        lines += ["", "Clients that failed (the first error of each run):", ""]
        lines += [f"- {n}, {c} clients: {e}" for n, c, e in failures]
    lines.append("")
    return lines


def write_report(path, args, report, oltp):
    v = versions()
    lines = [
        "# sealdb compared: PostgreSQL 15 (TLS) and DuckDB (encrypted)",
        "",
        f"- Machine: {machine()}",
        f"- Versions: {v['sealdb']}; {v['postgres']}; {v['duckdb']}",
        f"- Command: `{' '.join(sys.argv_for_report)}`",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Each query: one warm-up run (its result is compared), then the median of {args.rounds} timed run(s).",
        "- PostgreSQL gets primary keys and indexes on the join columns after the load, then ANALYZE; sealdb has no indexes.",
        "- sealdb and PostgreSQL are queried through psycopg over TLS with sslmode=verify-full; DuckDB in process.",
        "",
    ]
    failed = False
    for sf, r in report:
        lines += [f"## Scale factor {sf}", "", "| | sealdb | sealdb plain | PostgreSQL 15 | DuckDB |", "|---|---|---|---|---|"]
        lines.append("| load (COPY, s) | " + " | ".join(
            f"{r['load'][n]:.2f}" if n in r["load"] else "-" for n in SYSTEMS) + " |")
        after = r.get("after_load", {})
        lines.append("| after the load (s): CHECKPOINT; PG keys, indexes, ANALYZE | " + " | ".join(
            f"{after[n]:.2f}" if n in after else "-" for n in SYSTEMS) + " |")
        lines.append("| peak RSS (MiB) | " + " | ".join(
            f"{r['rss'][n] / 1024:.0f}" if r["rss"].get(n) else "in process" for n in SYSTEMS) + " |")
        lines += ["", "| query | sealdb (ms) | sealdb plain (ms) | PostgreSQL (ms) | DuckDB (ms) | DataFusion alone (ms) "
                  "| t(plain) / t(sealdb) | t(PG) / t(sealdb) | t(sealdb) / t(DuckDB) | t(sealdb plain) / t(DataFusion) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for q in range(1, 23):
            cells = []
            for n in [*SYSTEMS, "datafusion"]:
                if (n, q) in r["errors"]:
                    cells.append("cannot run")
                elif (n, q) in r["mismatch"]:
                    cells.append("MISMATCH")
                    failed = True
                else:
                    cells.append(f"{r['times'][(n, q)] * 1000:.1f}")
            t = r["times"]

            def ratio(a, b):
                if (a, q) in t and (b, q) in t and t[(b, q)] > 0:
                    return f"{t[(a, q)] / t[(b, q)]:.2f}"
                return "-"
            lines.append(f"| Q{q} | " + " | ".join(cells) + f" | {ratio('sealdb-plain', 'sealdb')} | "
                         f"{ratio('postgres', 'sealdb')} | {ratio('sealdb', 'duckdb')} | {ratio('sealdb-plain', 'datafusion')} |")
        common = [q for q in range(1, 23) if all((n, q) in r["times"] for n in SYSTEMS)]
        g = {n: geomean([r["times"][(n, q)] for q in common]) for n in SYSTEMS}
        df_common = [q for q in common if ("datafusion", q) in r["times"]]
        g_df = geomean([r["times"][("datafusion", q)] for q in df_common])
        g_plain_df = geomean([r["times"][("sealdb-plain", q)] for q in df_common])
        enc = {q: r["times"][("sealdb-plain", q)] / r["times"][("sealdb", q)] for q in common}
        below = sorted((q for q in enc if enc[q] < 0.95), key=lambda q: enc[q])
        lines += ["", f"Geometric mean over the {len(common)} queries every system ran:", "",
                  f"- sealdb encrypted: {g['sealdb'] * 1000:.1f} ms; plain: {g['sealdb-plain'] * 1000:.1f} ms; "
                  f"PostgreSQL: {g['postgres'] * 1000:.1f} ms; DuckDB: {g['duckdb'] * 1000:.1f} ms",
                  f"- PostgreSQL / sealdb: **{g['postgres'] / g['sealdb']:.2f}x** (goal: 5x at scale factor 1)",
                  f"- sealdb / DuckDB: **{g['sealdb'] / g['duckdb']:.2f}** (goal: within 2x)",
                  f"- sealdb plain / sealdb encrypted: **{g['sealdb-plain'] / g['sealdb']:.3f}** over all queries; lowest "
                  + (f"**{min(enc.values()):.2f}** (Q{min(enc, key=enc.get)})" if enc else "-")
                  + " (goal: 0.95 or more on every query)"
                  + (f"; below 0.95: {', '.join(f'Q{q} {enc[q]:.2f}' for q in below)}" if below else ""),
                  f"- sealdb plain over DataFusion alone on the same files (what sealdb's layers cost): "
                  f"**{g_plain_df / g_df:.2f}x** the time" if df_common else "- DataFusion alone: did not run",
                  ""]
        lines += clients_lines(args, r)
        if r["errors"]:
            lines += ["Queries a system cannot run yet:", ""]
            lines += [f"- {n} Q{q}: {e}" for (n, q), e in sorted(r["errors"].items())]
            lines.append("")
        if r["mismatch"]:
            lines += ["Results that differ from PostgreSQL's (an error, not a figure):", ""]
            lines += [f"- {n} Q{q}: {m}" for (n, q), m in sorted(r["mismatch"].items())]
            lines.append("")
    lines += oltp_lines(args, oltp)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return failed


def plot(out_dir, args, report, oltp):
    """PNG plots next to the report: per-query bars for each scale factor,
    and, with several scale factors, the geometric mean against the scale
    factor. Returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"sealdb": "sealdb (encrypted)", "sealdb-plain": "sealdb (plain)", "postgres": "PostgreSQL 15 (TLS)",
              "duckdb": "DuckDB (encrypted, in process)", "datafusion": "DataFusion alone (sealdb plain's files)"}
    names = []
    for sf, r in report:
        fig, ax = plt.subplots(figsize=(14, 5))
        width = 0.16
        for i, n in enumerate([*SYSTEMS, "datafusion"]):
            xs = [q + (i - 2) * width for q in range(1, 23)]
            ys = [r["times"].get((n, q), float("nan")) * 1000 for q in range(1, 23)]
            ax.bar(xs, ys, width, label=labels[n])
        ax.set_yscale("log")
        ax.set_xticks(range(1, 23), [f"Q{q}" for q in range(1, 23)])
        ax.set_ylabel("median time (ms, log scale; lower is better)")
        ax.set_title(f"TPC-H at scale factor {sf}")
        ax.legend()
        fig.tight_layout()
        name = f"queries-sf{sf}.png"
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        names.append(name)
    if len(report) > 1:
        fig, ax = plt.subplots(figsize=(7, 5))
        for n in SYSTEMS:
            xs, ys = [], []
            for sf, r in report:
                common = [q for q in range(1, 23) if all((m, q) in r["times"] for m in SYSTEMS)]
                xs.append(sf)
                ys.append(geomean([r["times"][(n, q)] for q in common]) * 1000)
            ax.plot(xs, ys, marker="o", label=labels[n])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("scale factor")
        ax.set_ylabel("geometric mean of the 22 queries (ms)")
        ax.set_title("How query time grows with data")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "scaling.png", dpi=100)
        plt.close(fig)
        names.append("scaling.png")
    # Throughput against clients: TPC-H per scale factor, and pgbench -S.
    def against_clients(ax, figures, systems, ylabel, title):
        """One line per system of figures[(system, clients)][0] against the client counts."""
        for n in systems:
            ys = [figures.get((n, c), (float("nan"),))[0] for c in args.clients]
            ax.plot(args.clients, ys, marker="o", label=labels[n])
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.clients, [str(c) for c in args.clients])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend()

    fig, axes = plt.subplots(1, len(report) + 1, figsize=(5 * (len(report) + 1), 4.5), squeeze=False)
    for ax, (sf, r) in zip(axes[0], report):
        against_clients(ax, r.get("clients", {}), CLIENT_SYSTEMS,
                        "TPC-H queries per second (higher is better)", f"TPC-H at scale factor {sf}")
    against_clients(axes[0][-1], oltp["pgbench"], ["sealdb", "postgres"],
                    "transactions per second (higher is better)",
                    f"pgbench -S -M prepared, scale {args.pgbench_scale}")
    fig.tight_layout()
    fig.savefig(out_dir / "clients.png", dpi=100)
    plt.close(fig)
    names.append("clients.png")
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sf", type=float, nargs="+", default=[1.0], help="scale factors (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="timed runs per query (median; default 5)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32],
                        help="concurrent clients for TPC-H throughput and pgbench -S (default 1 8 32)")
    parser.add_argument("--clients-seconds", type=float, default=30,
                        help="how long each concurrent TPC-H run lasts (default 30)")
    parser.add_argument("--oltp-seconds", type=int, default=10,
                        help="how long each connection and pgbench run lasts (default 10)")
    parser.add_argument("--pgbench-scale", type=int, default=10, help="pgbench -i -s (default 10: 1,000,000 accounts)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "REPORT.md")
    parser.add_argument("--datafusion", type=Path, required=True,
                        help="the DataFusion baseline (crates/sealdb/examples/datafusion_tpch.rs)")
    parser.add_argument("--tpchgen", type=Path, required=True, help="the tpch_tbl generator (crates/sealdb/examples/tpch_tbl.rs)")
    args = parser.parse_args()
    shown = []
    skip = False
    for a in sys.argv[1:]:
        if skip or a in ("--tpchgen", "--datafusion"):
            skip = not skip
            continue
        shown.append(a)
    sys.argv_for_report = ["bench/compare", *shown]
    duckdb.connect().execute("LOAD httpfs")  # DuckDB writes encrypted files only with it
    report = []
    with tempfile.TemporaryDirectory(prefix="sealdb-compare-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        oltp = run_oltp(args, work)
        for sf in args.sf:
            run_scale(sf, args, args.tpchgen, work, report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figures = plot(args.out.parent, args, report, oltp)
    failed = write_report(args.out, args, report, oltp)
    with open(args.out, "a") as f:
        f.write("\n## Plots\n\n" + "".join(f"![{n}]({n})\n\n" for n in figures))
    log(f"report: {args.out}")
    if failed:
        log("some results differ across systems: see the report")
        sys.exit(1)


if __name__ == "__main__":
    main()
