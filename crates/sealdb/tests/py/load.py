"""Load against a model: SESSIONS concurrent verified-TLS sessions for
SECONDS, each doing a mix of reads, writes and transactions on rows of its
own in one of TABLES shared tables (`load_K`, column s = its number) and
reads of a table of fixed contents (`load_ref`), every answer checked
against the session's model of its rows. A statement refused because the
table's write lock did not come within the lock timeout (55P03) must have
changed nothing: the model stays as it was, and the refusals are counted.

usage: load.py PORT CERTS_DIR SESSIONS SECONDS SEED WINDOW_FILE

Prints "ready" once every session is connected. At the end, reads
WINDOW_FILE if it exists ("START END", Unix times: a flood the caller ran)
and prints one line of key=value figures, starting with "load:", then
"load passed" if no answer differed from the model and no statement failed.
Exits non-zero otherwise, with the first differences.
"""
import os
import random
import sys
import threading
import time

import psycopg

port, certs = sys.argv[1], sys.argv[2]
sessions, seconds, seed = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
window_file = sys.argv[6]
conninfo = (
    f"host=localhost port={port} user=admin dbname=sealdb sslmode=verify-full "
    f"sslrootcert={certs}/ca.crt sslcert={certs}/client.admin.crt sslkey={certs}/client.admin.key "
    f"connect_timeout=60"
)
REF_ROWS = 1000
TABLES = 4
REF_SUM = sum(range(REF_ROWS))


def setup():
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for k in range(TABLES):
            conn.execute(f"CREATE TABLE load_{k} (s BIGINT NOT NULL, id BIGINT NOT NULL, v BIGINT NOT NULL)")
        conn.execute("CREATE TABLE load_ref (n BIGINT NOT NULL)")
        conn.execute(f"INSERT INTO load_ref SELECT value FROM generate_series(0, {REF_ROWS - 1})")


class Session:
    def __init__(self, n):
        self.n = n
        self.rng = random.Random(seed * 100_003 + n)
        self.model = {}
        self.next_id = 0
        self.ops = 0
        self.checks = 0
        self.done = []  # completion times (Unix)
        self.latencies = []
        self.mismatches = []
        self.errors = []
        self.lock_timeouts = 0
        self.table = f"load_{n % TABLES}"

    def differ(self, what, got, want):
        self.mismatches.append(f"session {self.n}: {what}: got {got!r}, want {want!r}")

    def step(self, conn):
        rng, s, m, t = self.rng, self.n, self.model, self.table
        kind = rng.choices(
            ["insert", "update", "delete", "commit", "rollback", "read_own", "read_one", "read_ref"],
            weights=[20, 12, 8, 8, 4, 20, 14, 14],
        )[0]
        if kind in ("update", "delete", "read_one") and not m:
            kind = "insert"
        if kind == "insert":
            v = rng.randint(-10**6, 10**6)
            conn.execute(f"INSERT INTO {t} VALUES (%s, %s, %s)", (s, self.next_id, v))
            m[self.next_id] = v
            self.next_id += 1
        elif kind == "update":
            i = rng.choice(list(m))
            v = rng.randint(-10**6, 10**6)
            cur = conn.execute(f"UPDATE {t} SET v = %s WHERE s = %s AND id = %s", (v, s, i))
            self.check("rows updated", cur.rowcount, 1)
            m[i] = v
        elif kind == "delete":
            i = rng.choice(list(m))
            cur = conn.execute(f"DELETE FROM {t} WHERE s = %s AND id = %s", (s, i))
            self.check("rows deleted", cur.rowcount, 1)
            del m[i]
        elif kind in ("commit", "rollback"):
            new = {self.next_id: rng.randint(0, 99), self.next_id + 1: rng.randint(0, 99)}
            self.next_id += 2
            changed = {}
            # psycopg's transaction block swallows the Rollback it is given.
            with conn.transaction():
                for i, v in new.items():
                    conn.execute(f"INSERT INTO {t} VALUES (%s, %s, %s)", (s, i, v))
                if m:
                    i = rng.choice(list(m))
                    conn.execute(f"UPDATE {t} SET v = v + 1 WHERE s = %s AND id = %s", (s, i))
                    changed[i] = m[i] + 1
                cur = conn.execute(f"SELECT count(*) FROM {t} WHERE s = %s", (s,))
                self.check("rows inside the transaction", cur.fetchone()[0], len(m) + len(new))
                if kind == "rollback":
                    raise psycopg.Rollback()
            if kind == "commit":
                m.update(new)
                m.update(changed)
        elif kind == "read_own":
            rows = conn.execute(f"SELECT id, v FROM {t} WHERE s = %s ORDER BY id", (s,)).fetchall()
            self.check("its rows", [tuple(r) for r in rows], sorted(m.items()))
        elif kind == "read_one":
            i = rng.choice(list(m))
            rows = conn.execute(f"SELECT v FROM {t} WHERE s = %s AND id = %s", (s, i)).fetchall()
            self.check(f"row {i}", [r[0] for r in rows], [m[i]])
        else:
            row = conn.execute("SELECT count(*), sum(n) FROM load_ref").fetchone()
            self.check("load_ref", tuple(row), (REF_ROWS, REF_SUM))
        self.ops += 1

    def check(self, what, got, want):
        self.checks += 1
        if got != want:
            self.differ(what, got, want)

    def run(self, ready, go, stop_at):
        try:
            conn = psycopg.connect(conninfo, autocommit=True)
        except psycopg.Error as e:
            self.errors.append(f"session {self.n}: connect: {e}")
            ready.release()
            return
        ready.release()
        go.wait()
        try:
            while time.time() < stop_at[0]:
                t = time.time()
                try:
                    self.step(conn)
                except psycopg.errors.LockNotAvailable:
                    # Refused whole (a transaction rolled back): the model
                    # stays as it was, and the next read checks that.
                    self.lock_timeouts += 1
                end = time.time()
                self.latencies.append(end - t)
                self.done.append(end)
            # The last word: everything the model holds, read once more.
            t = self.table
            rows = conn.execute(f"SELECT id, v FROM {t} WHERE s = %s ORDER BY id", (self.n,)).fetchall()
            self.check("its rows at the end", [tuple(r) for r in rows], sorted(self.model.items()))
        except psycopg.Error as e:
            self.errors.append(f"session {self.n}: {type(e).__name__}: {str(e).strip()}")
        finally:
            conn.close()


def main():
    setup()
    all_sessions = [Session(n) for n in range(sessions)]
    ready = threading.Semaphore(0)
    go = threading.Event()
    stop_at = [0.0]
    threads = []
    for s in all_sessions:
        t = threading.Thread(target=s.run, args=(ready, go, stop_at), daemon=True)
        threads.append(t)
    # Connect in waves of 20, as an application's pool would at start.
    for k, t in enumerate(threads):
        t.start()
        if k % 20 == 19:
            time.sleep(0.05)
    for _ in threads:
        ready.acquire()
    started = time.time()
    stop_at[0] = started + seconds
    go.set()
    print(f"ready {started:.3f}", flush=True)
    for t in threads:
        t.join(seconds + 120)
    hung = sum(1 for t in threads if t.is_alive())

    mismatches = [m for s in all_sessions for m in s.mismatches]
    errors = [e for s in all_sessions for e in s.errors]
    ops = sum(s.ops for s in all_sessions)
    checks = sum(s.checks for s in all_sessions)
    lat = sorted(x for s in all_sessions for x in s.latencies)

    def pct(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else 0.0

    gaps = []
    for s in all_sessions:
        times = [started] + s.done
        gaps.append(max((b - a for a, b in zip(times, times[1:])), default=seconds))
    figures = {
        "sessions": sessions,
        "seconds": seconds,
        "ops": ops,
        "checks": checks,
        "mismatches": len(mismatches),
        "errors": len(errors),
        "lock_timeouts": sum(s.lock_timeouts for s in all_sessions),
        "hung": hung,
        "ops_per_s": round(ops / seconds, 1),
        "p50_ms": round(pct(0.5) * 1000, 1),
        "p99_ms": round(pct(0.99) * 1000, 1),
        "max_ms": round(pct(1.0) * 1000, 1),
        "max_gap_s": round(max(gaps, default=0.0), 2),
        "min_session_ops": min((s.ops for s in all_sessions), default=0),
    }
    if os.path.exists(window_file):
        with open(window_file) as f:
            a, b = (float(x) for x in f.read().split())
        during = [sum(1 for t in s.done if a <= t <= b) for s in all_sessions]
        before = [sum(1 for t in s.done if t < a) for s in all_sessions]
        figures["flood_s"] = round(b - a, 1)
        figures["flood_min_session_ops"] = min(during, default=0)
        figures["flood_ops_per_s"] = round(sum(during) / max(b - a, 1e-3), 1)
        figures["before_ops_per_s"] = round(sum(before) / max(a - started, 1e-3), 1)
    print("load: " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    for line in (mismatches + errors)[:20]:
        print("  " + line)
    if mismatches or errors or hung:
        raise SystemExit(1)
    print("load passed")


main()
