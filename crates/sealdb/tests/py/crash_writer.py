"""A write-heavy client for the kill -9 test: inserts and deletes rows of
table `crash` as writer W until the server goes away, and prints every
operation before it is sent ("try ...") and after it was acknowledged
("ack ..."), one line each, flushed at once.

usage: crash_writer.py PORT CERTS_DIR WRITER
Operations (i counts up from 0):
  insert single:  try ins W i      / ack ins W i
  insert batch:   try ins W i i+1 i+2 (one BEGIN ... COMMIT) / ack ins W i i+1 i+2
  delete:         try del W j      / ack del W j   (j an acknowledged row)
"""
import sys

import psycopg

port, certs, writer = sys.argv[1], sys.argv[2], int(sys.argv[3])
conninfo = (
    f"host=localhost port={port} user=admin dbname=sealdb sslmode=verify-full "
    f"sslrootcert={certs}/ca.crt sslcert={certs}/client.admin.crt sslkey={certs}/client.admin.key"
)


def say(*words):
    print(*words, flush=True)


acked = []
i = 0
op = 0
try:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while True:
            op += 1
            if op % 7 == 0 and acked:
                j = acked.pop(len(acked) // 2)
                say("try", "del", writer, j)
                conn.execute("DELETE FROM crash WHERE writer = %s AND i = %s", (writer, j))
                say("ack", "del", writer, j)
            elif op % 5 == 0:
                ids = [i, i + 1, i + 2]
                i += 3
                say("try", "ins", writer, *ids)
                with conn.transaction():
                    for k in ids:
                        conn.execute("INSERT INTO crash VALUES (%s, %s, %s)", (writer, k, "payload " * 8))
                say("ack", "ins", writer, *ids)
                acked.extend(ids)
            else:
                say("try", "ins", writer, i)
                conn.execute("INSERT INTO crash VALUES (%s, %s, %s)", (writer, i, "payload " * 8))
                say("ack", "ins", writer, i)
                acked.append(i)
                i += 1
except psycopg.OperationalError as e:
    say("gone", str(e).splitlines()[0] if str(e) else "connection lost")
