"""PostgreSQL 17 direct TLS: a TLS ClientHello with ALPN "postgresql" as the
first bytes, no SSLRequest. Standard library only. Prints what happened;
exits non-zero on any failure.

usage: direct_tls.py PORT CA CERT KEY
"""
import socket
import ssl
import struct
import sys

port, ca, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["postgresql"])
raw = socket.create_connection(("127.0.0.1", port), timeout=10)
tls = ctx.wrap_socket(raw, server_hostname="localhost")
assert tls.selected_alpn_protocol() == "postgresql", tls.selected_alpn_protocol()

params = b"user\0admin\0database\0sealdb\0\0"
tls.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)


def read_message():
    head = b""
    while len(head) < 5:
        chunk = tls.recv(5 - len(head))
        if not chunk:
            raise SystemExit("connection closed")
        head += chunk
    kind, length = head[:1], struct.unpack("!i", head[1:])[0]
    body = b""
    while len(body) < length - 4:
        body += tls.recv(length - 4 - len(body))
    return kind, body


kinds = []
while True:
    kind, body = read_message()
    kinds.append(kind)
    if kind == b"E":
        raise SystemExit("error: %r" % body)
    if kind == b"Z":
        break
assert kinds[0] == b"R", kinds
query = b"select 41 + 1\0"
tls.sendall(b"Q" + struct.pack("!i", 4 + len(query)) + query)
value = None
while True:
    kind, body = read_message()
    if kind == b"D":
        (n,) = struct.unpack("!h", body[:2])
        (length,) = struct.unpack("!i", body[2:6])
        value = body[6 : 6 + length].decode()
    if kind == b"E":
        raise SystemExit("error: %r" % body)
    if kind == b"Z":
        break
print("direct TLS", tls.version(), "answer", value)
assert value == "42", value
