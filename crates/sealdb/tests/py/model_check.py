"""Model-based check: random statement sequences against sealdb and an
in-memory model of the same table, compared after every step.

usage: model_check.py PORT CERTS_DIR SEED STEPS
Statements: INSERT (one row or several), UPDATE and DELETE with range
conditions, TRUNCATE, COPY FROM STDIN, BEGIN ... COMMIT / ROLLBACK blocks
(with a failing statement now and then), CHECKPOINT. Exits non-zero with the
seed, the step and the difference on the first mismatch.
"""
import random
import sys

import psycopg
from psycopg import errors

port, certs, seed, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
conninfo = (
    f"host=localhost port={port} user=admin dbname=sealdb sslmode=verify-full "
    f"sslrootcert={certs}/ca.crt sslcert={certs}/client.admin.crt sslkey={certs}/client.admin.key"
)
rng = random.Random(seed)
log = []


def fail(what):
    print(f"FAILED (seed {seed}): {what}")
    print("last statements:")
    for line in log[-25:]:
        print("  ", line)
    raise SystemExit(1)


def value():
    return rng.choice([None, rng.randint(-1000, 1000)])


def note():
    return rng.choice([None, "", "plain", "tab\there", "new\nline", "quote'\"", "comma,", "back\\slash", "üñí"])


class Model:
    def __init__(self):
        self.rows = {}  # id -> (v, note)
        self.next_id = 0

    def copy(self):
        m = Model()
        m.rows = dict(self.rows)
        m.next_id = self.next_id
        return m


def step(cur, model):
    """One random statement on both; returns the model after it."""
    kind = rng.choices(
        ["insert", "insert_many", "update", "delete", "truncate", "copy", "checkpoint"],
        weights=[30, 15, 20, 15, 2, 8, 3],
    )[0]
    m = model.copy()
    if kind == "insert":
        i, v, n = m.next_id, value(), note()
        m.next_id += 1
        log.append(f"INSERT {i} {v!r} {n!r}")
        cur.execute("INSERT INTO t VALUES (%s, %s, %s)", (i, v, n))
        m.rows[i] = (v, n)
    elif kind == "insert_many":
        rows = []
        for _ in range(rng.randint(2, 20)):
            rows.append((m.next_id, value(), note()))
            m.next_id += 1
        log.append(f"INSERT {len(rows)} rows from {rows[0][0]}")
        cur.executemany("INSERT INTO t VALUES (%s, %s, %s)", rows)
        for i, v, n in rows:
            m.rows[i] = (v, n)
    elif kind == "update":
        lo = rng.randint(0, max(m.next_id, 1))
        hi = lo + rng.randint(0, 30)
        delta = rng.randint(-5, 5)
        log.append(f"UPDATE v = v + {delta} WHERE id BETWEEN {lo} AND {hi}")
        cur.execute("UPDATE t SET v = v + %s, note = 'u' WHERE id BETWEEN %s AND %s", (delta, lo, hi))
        for i, (v, n) in list(m.rows.items()):
            if lo <= i <= hi:
                m.rows[i] = (None if v is None else v + delta, "u")
    elif kind == "delete":
        lo = rng.randint(0, max(m.next_id, 1))
        hi = lo + rng.randint(0, 20)
        if rng.random() < 0.5:
            log.append(f"DELETE WHERE id BETWEEN {lo} AND {hi}")
            cur.execute("DELETE FROM t WHERE id BETWEEN %s AND %s", (lo, hi))
            m.rows = {i: r for i, r in m.rows.items() if not lo <= i <= hi}
        else:
            log.append("DELETE WHERE v IS NULL")
            cur.execute("DELETE FROM t WHERE v IS NULL")
            m.rows = {i: r for i, r in m.rows.items() if r[0] is not None}
    elif kind == "truncate":
        log.append("TRUNCATE")
        cur.execute("TRUNCATE t")
        m.rows = {}
    elif kind == "copy":
        rows = []
        for _ in range(rng.randint(1, 50)):
            rows.append((m.next_id, value(), note()))
            m.next_id += 1
        log.append(f"COPY {len(rows)} rows from {rows[0][0]}")
        with cur.copy("COPY t (id, v, note) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r)
        for i, v, n in rows:
            m.rows[i] = (v, n)
    else:
        log.append("CHECKPOINT")
        cur.execute("CHECKPOINT")
    return m


def compare(cur, model, where):
    cur.execute("SELECT id, v, note FROM t ORDER BY id")
    got = {r[0]: (r[1], r[2]) for r in cur.fetchall()}
    if got != model.rows:
        missing = {k: v for k, v in model.rows.items() if got.get(k) != v}
        extra = {k: v for k, v in got.items() if model.rows.get(k) != v}
        fail(f"{where}: expected but not found {dict(list(missing.items())[:5])}, found but not expected {dict(list(extra.items())[:5])}")


with psycopg.connect(conninfo, autocommit=True) as conn, psycopg.connect(conninfo, autocommit=True) as other:
    conn.execute("CREATE TABLE t (id BIGINT NOT NULL, v BIGINT, note TEXT)")
    model = Model()
    cur = conn.cursor()
    ocur = other.cursor()
    n = 0
    while n < steps:
        if rng.random() < 0.2:
            # A block: its statements see their own writes; another session
            # sees none of them until COMMIT.
            committed = model
            log.append("BEGIN")
            cur.execute("BEGIN")
            inner = model
            for _ in range(rng.randint(1, 6)):
                before = inner
                kind_fail = rng.random() < 0.1
                if kind_fail:
                    log.append("SELECT FROM nosuch (fails)")
                    try:
                        cur.execute("SELECT * FROM nosuch")
                        fail("a statement on a missing table succeeded")
                    except errors.UndefinedTable:
                        pass
                    inner = None
                    break
                try:
                    inner = step(cur, before)
                except errors.ActiveSqlTransaction:
                    fail("unexpected 25001")
                compare(cur, inner, f"step {n} inside a block")
                compare(ocur, committed, f"step {n}: another session during a block")
                n += 1
            if inner is None:
                log.append("ROLLBACK (after the failure)")
                cur.execute("ROLLBACK")
                model = committed
            elif rng.random() < 0.3:
                log.append("ROLLBACK")
                cur.execute("ROLLBACK")
                model = committed
            else:
                log.append("COMMIT")
                cur.execute("COMMIT")
                model = inner
        else:
            model = step(cur, model)
            n += 1
        compare(cur, model, f"step {n}")
        compare(ocur, model, f"step {n}, another session")
    print(f"model check passed: seed {seed}, {steps} steps, {len(model.rows)} rows at the end")
