"""Raw wire-protocol probes of a sealdb server, standard library only.

usage:
  wire_probe.py scram PORT CA USER...
      For each USER: a TLS connection without a client certificate, the
      startup message, SCRAM-SHA-256 up to the server's first message, then
      a wrong proof. Prints `USER SALT_HEX ITERATIONS SQLSTATE MESSAGE`.
  wire_probe.py cancel PORT CA CERT KEY
      Opens a session as admin (certificate), starts a long query, then
      sends its cancel request in plaintext, then over TLS. Prints what
      each step saw: `plaintext-cancel: ...`, `tls-cancel: ...`,
      `query: SQLSTATE MESSAGE` or `query: finished`.
  wire_probe.py big PORT CA CERT KEY
      Announces a 50 MB message before authenticating, then, logged in as
      admin, a 200 MB query; sends a little of each. Prints
      `before-login: SQLSTATE MESSAGE` and `after-login: SQLSTATE MESSAGE`.
"""
import base64
import os
import socket
import ssl
import struct
import sys
import time

SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def tls_connect(port, ca, cert=None, key=None, timeout=30):
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    raw.sendall(SSL_REQUEST)
    if raw.recv(1) != b"S":
        raise SystemExit("the server refused TLS")
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def startup(sock, user):
    params = b"user\0" + user.encode() + b"\0database\0sealdb\0\0"
    sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_message(sock):
    head = read_exact(sock, 5)
    if head is None:
        return None, None
    kind, length = head[:1], struct.unpack("!i", head[1:])[0]
    return kind, read_exact(sock, length - 4) or b""


def error_fields(body):
    fields = {f[:1]: f[1:].decode(errors="replace") for f in body.split(b"\0") if f}
    return fields.get(b"C", "?"), fields.get(b"M", "")


def scram(port, ca, users):
    for user in users:
        sock = tls_connect(port, ca)
        startup(sock, user)
        kind, body = read_message(sock)
        if kind == b"E":
            code, message = error_fields(body)
            print(user, "-", "-", code, message)
            continue
        assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 10, (kind, body)
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n=,r={nonce}"
        client_first = ("n,," + first_bare).encode()
        mech = b"SCRAM-SHA-256\0"
        payload = mech + struct.pack("!i", len(client_first)) + client_first
        sock.sendall(b"p" + struct.pack("!i", 4 + len(payload)) + payload)
        kind, body = read_message(sock)
        assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 11, (kind, body)
        server_first = body[4:].decode()
        attrs = dict(part.split("=", 1) for part in server_first.split(","))
        salt = base64.b64decode(attrs["s"]).hex()
        proof = base64.b64encode(os.urandom(32)).decode()
        final = f"c=biws,r={attrs['r']},p={proof}".encode()
        sock.sendall(b"p" + struct.pack("!i", 4 + len(final)) + final)
        kind, body = read_message(sock)
        code, message = error_fields(body) if kind == b"E" else ("-", f"message {kind!r}")
        print(user, salt, attrs["i"], code, message)
        sock.close()


def cancel(port, ca, cert, key):
    sock = tls_connect(port, ca, cert, key)
    startup(sock, "admin")
    pid = secret = None
    while True:
        kind, body = read_message(sock)
        if kind == b"K":
            pid, secret = struct.unpack("!ii", body[:8])
        if kind == b"Z" or kind is None:
            break
    query = b"select count(*) from generate_series(1, 30000) a, generate_series(1, 30000) b\0"
    sock.sendall(b"Q" + struct.pack("!i", 4 + len(query)) + query)
    time.sleep(1.0)
    request = struct.pack("!iiii", 16, 80877102, pid, secret)
    plain = socket.create_connection(("127.0.0.1", port), timeout=10)
    plain.sendall(request)
    print("plaintext-cancel: server closed" if plain.recv(1) == b"" else "plaintext-cancel: answered")
    plain.close()
    time.sleep(1.0)
    tls = tls_connect(port, ca)
    tls.sendall(request)
    try:
        tls.recv(1)
    except (ssl.SSLError, OSError):
        pass
    print("tls-cancel: sent")
    tls.close()
    sock.settimeout(120)
    while True:
        kind, body = read_message(sock)
        if kind == b"E":
            code, message = error_fields(body)
            print("query:", code, message)
            break
        if kind == b"C" or kind is None:
            print("query: finished")
            break


def announce(sock, kind, length, sent):
    try:
        sock.sendall(kind + struct.pack("!i", length) + b"\0" * sent)
    except (ssl.SSLError, OSError):
        pass
    while True:
        try:
            kind, body = read_message(sock)
        except (ssl.SSLError, OSError):
            return "closed -"
        if kind is None:
            return "closed -"
        if kind == b"E":
            return " ".join(error_fields(body))


def big(port, ca, cert, key):
    sock = tls_connect(port, ca)
    startup(sock, "nobody")
    kind, _ = read_message(sock)
    assert kind == b"R", kind
    print("before-login:", announce(sock, b"p", 50_000_000, 65536))
    sock = tls_connect(port, ca, cert, key)
    startup(sock, "admin")
    while True:
        kind, _ = read_message(sock)
        if kind in (b"Z", None):
            break
    print("after-login:", announce(sock, b"Q", 200 << 20, 1 << 20))


if __name__ == "__main__":
    mode, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "scram":
        scram(port, ca, sys.argv[4:])
    elif mode == "cancel":
        cancel(port, ca, sys.argv[4], sys.argv[5])
    elif mode == "big":
        big(port, ca, sys.argv[4], sys.argv[5])
