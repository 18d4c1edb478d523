"""psycopg 3 against a running sealdb: server-side parameters (extended
protocol), prepared statements, binary results, transactions, SQLSTATEs.

usage: psycopg_checks.py PORT CERTS_DIR
Exits non-zero with a message on the first failure.
"""
import sys

import psycopg
from psycopg import errors

port, certs = sys.argv[1], sys.argv[2]
admin = (
    f"host=localhost port={port} user=admin dbname=sealdb sslmode=verify-full "
    f"sslrootcert={certs}/ca.crt sslcert={certs}/client.admin.crt sslkey={certs}/client.admin.key"
)


def check(cond, what):
    if not cond:
        raise SystemExit("FAILED: " + what)
    print("ok:", what)


with psycopg.connect(admin, autocommit=True) as conn:
    check(conn.info.pgconn.ssl_in_use, "the connection is TLS")
    conn.execute("create table items (id bigint, name text, price double, active boolean)")
    with conn.cursor() as cur:
        # Server-side binding: $1.. placeholders, values sent separately.
        cur.execute("insert into items values (%s, %s, %s, %s)", (1, "apple", 1.5, True))
        cur.executemany("insert into items values (%s, %s, %s, %s)", [(2, "pear", 2.25, False), (3, "fig; drop table items", 3.0, True)])
        cur.execute("select name from items where id = %s", (3,))
        check(cur.fetchone() == ("fig; drop table items",), "parameters are values, never SQL")
        cur.execute("select id, name, price, active from items where price > %s order by id", (1.0,), prepare=True)
        rows = cur.fetchall()
        check(rows == [(1, "apple", 1.5, True), (2, "pear", 2.25, False), (3, "fig; drop table items", 3.0, True)], f"prepared select returns typed rows {rows}")
        for _ in range(3):
            cur.execute("select count(*) from items where active = %s", (True,), prepare=True)
            check(cur.fetchone() == (2,), "a prepared statement runs repeatedly")
    with conn.cursor(binary=True) as cur:
        cur.execute("select id, price, name, active from items where id = %s", (2,))
        check(cur.fetchone() == (2, 2.25, "pear", False), "binary results decode")
    with conn.cursor() as cur:
        cur.execute("select %s::text as t, %s::bigint as n", ("x", 7))
        check(cur.fetchone() == ("x", 7), "casts of parameters")
        cur.execute("select * from sys.sessions where user_name = %s", ("admin",))
        check(cur.rowcount >= 1, "sys.sessions through the extended protocol")
        cur.execute("show ssl")
        check(cur.fetchone() == ("on",), "SHOW ssl")
    conn.execute("create user reader with password 'Reader-pw-1'")

with psycopg.connect(admin) as conn:  # not autocommit: BEGIN ... COMMIT from the driver
    conn.execute("insert into items values (%s, %s, %s, %s)", (4, "kiwi", 0.5, True))
    conn.commit()
    check(conn.execute("select count(*) from items").fetchone() == (4,), "driver transactions commit")
    conn.rollback()
    conn.execute("insert into items values (%s, %s, %s, %s)", (5, "lost", 0.0, False))
    conn.rollback()
    check(conn.execute("select count(*) from items").fetchone() == (4,), "driver rollback keeps nothing")
    conn.rollback()

with psycopg.connect(admin, autocommit=True) as conn:
    with conn.cursor() as cur:
        with cur.copy("COPY items (id, name, price, active) FROM STDIN") as copy:
            for row in [(10, "tab\there", 1.25, True), (11, None, 2.0, False), (12, "back\\slash", 3.5, True)]:
                copy.write_row(row)
        check(cur.rowcount == 3, f"COPY FROM STDIN through psycopg loads 3 rows ({cur.rowcount})")
        out = []
        with cur.copy("COPY (SELECT id, name, price, active FROM items WHERE id >= 10 ORDER BY id) TO STDOUT") as copy:
            copy.set_types(["int8", "text", "float8", "bool"])
            out = list(copy.rows())
        check(
            out == [(10, "tab\there", 1.25, True), (11, None, 2.0, False), (12, "back\\slash", 3.5, True)],
            f"COPY TO STDOUT round-trips through psycopg {out}",
        )

reader = f"host=localhost port={port} user=reader dbname=sealdb sslmode=verify-full sslrootcert={certs}/ca.crt password=Reader-pw-1"
with psycopg.connect(reader, autocommit=True) as conn:
    try:
        conn.execute("select * from items where id = %s", (1,))
        raise SystemExit("FAILED: a user without a grant read the table")
    except errors.InsufficientPrivilege as e:
        check(e.sqlstate == "42501", "permission denied carries SQLSTATE 42501")

try:
    psycopg.connect(f"host=localhost port={port} user=reader dbname=sealdb sslmode=disable password=Reader-pw-1")
    raise SystemExit("FAILED: plaintext was accepted")
except psycopg.OperationalError as e:
    check("TLS" in str(e), "plaintext is refused with a message about TLS")

try:
    psycopg.connect(reader.replace("Reader-pw-1", "wrong"))
    raise SystemExit("FAILED: a wrong password was accepted")
except psycopg.OperationalError as e:
    check("password authentication failed" in str(e), "wrong password is refused")

with psycopg.connect(reader + " channel_binding=require") as conn:
    check(conn.execute("select 1").fetchone() == (1,), "SCRAM-SHA-256-PLUS with channel binding")
print("all psycopg checks passed")
