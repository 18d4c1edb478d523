"""Logs in as admin over verified TLS (SSLRequest, client certificate),
waits for ReadyForQuery, then sends the bytes given in hex as they are and
reads until the server closes the connection (or 10 s pass). Standard
library only. Prints "closed" or "still open", and every message type the
server sent after the bytes.

usage: after_login.py PORT CA CERT KEY HEX
"""
import socket
import ssl
import struct
import sys

port, ca, cert, key, payload = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], bytes.fromhex(sys.argv[5])
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
raw = socket.create_connection(("127.0.0.1", port), timeout=10)
raw.sendall(struct.pack("!ii", 8, 80877103))
assert raw.recv(1) == b"S"
tls = ctx.wrap_socket(raw, server_hostname="localhost")
params = b"user\0admin\0database\0sealdb\0\0"
tls.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)

buf = b""


def read_message():
    global buf
    while len(buf) < 5:
        chunk = tls.recv(65536)
        if not chunk:
            return None
        buf += chunk
    kind, length = buf[:1], struct.unpack("!i", buf[1:5])[0]
    while len(buf) < 1 + length:
        chunk = tls.recv(65536)
        if not chunk:
            return None
        buf += chunk
    body, buf = buf[5:1 + length], buf[1 + length:]
    return kind, body


while True:
    m = read_message()
    if m is None:
        raise SystemExit("closed before ReadyForQuery")
    if m[0] == b"Z":
        break
tls.sendall(payload)
kinds = []
try:
    while True:
        m = read_message()
        if m is None:
            print("closed", " ".join(kinds))
            break
        kinds.append(m[0].decode("latin-1"))
except socket.timeout:
    print("still open", " ".join(kinds))
except (ConnectionResetError, ssl.SSLError):
    print("closed", " ".join(kinds))
