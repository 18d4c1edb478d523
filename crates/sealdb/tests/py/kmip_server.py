"""A real PyKMIP server for sealdb's KMIP tests, run in the foreground.

    python kmip_server.py --port PORT --dir DIR --cert server.crt --key server.key --ca ca.crt
        [--versions 1.2,1.1,1.0]

It listens on 127.0.0.1:PORT only, speaks TLS 1.2 only (PyKMIP's "TLS1.2" auth
suite, restricted to ECDHE-ECDSA-AES128/256-GCM, so the server certificate must
be ECDSA), and requires a client certificate signed by --ca that carries the
clientAuth extended key usage. The client certificate's CN is the client's
identity: it owns the objects it creates, and only it can use them.
The server accepts requests of KMIP 1.0 to 2.0 (whatever the request header says),
or only the --versions given (a request of another version is refused, and
Discover Versions offers those only); Encrypt/Decrypt with AES-GCM need 1.4 in
the header (AAD and tag fields).

Two servers given the same DIR share one database (SQLite): a cluster of key
servers that hold the same keys, for failover tests. Each writes its own
server-PORT.conf; the log is shared.

DIR receives server-PORT.conf, the sqlite database (pykmip.db), an empty policy
directory (policies/) and the log (server.log, at DEBUG: it holds the hex of
every request and response). Once the server accepts connections it prints
"KMIP server ready on 127.0.0.1:PORT" to stdout. It runs until SIGTERM/SIGINT
(clean exit) or SIGKILL; the helper processes PyKMIP forks die with it.

Needs PyKMIP 0.10.0 (scripts/test-requirements.txt) and Python <= 3.11: the
server uses ssl.wrap_socket, which Python 3.12 removed.
"""
import argparse
import ctypes
import errno
import multiprocessing.util
import os
import signal
import socket
import sys
import tempfile
import threading
import warnings

# PyKMIP's crypto engine names ciphers that `cryptography` has deprecated.
warnings.simplefilter("ignore")

from kmip.services.server import KmipServer  # noqa: E402

HOST = "127.0.0.1"
CIPHERS = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"


class _DieWithParent:
    """Makes each process PyKMIP forks (its multiprocessing Manager, the policy
    monitor) get SIGKILL when this process dies, even by SIGKILL."""

    def __call__(self, _obj):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


_die_with_parent = _DieWithParent()  # kept alive: register_after_fork holds a weak reference
multiprocessing.util.register_after_fork(_die_with_parent, _die_with_parent)


def _quiet_session_teardown(args, default=threading.excepthook):
    """PyKMIP's session thread ends with shutdown() on a socket the client has
    already closed; keep that harmless ENOTCONN traceback off stderr."""
    if not (issubclass(args.exc_type, OSError) and args.exc_value.errno == errno.ENOTCONN):
        default(args)


threading.excepthook = _quiet_session_teardown


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", required=True, help="working directory (db, config, log)")
    p.add_argument("--cert", required=True, help="server certificate chain, PEM (ECDSA)")
    p.add_argument("--key", required=True, help="server private key, PEM")
    p.add_argument("--ca", required=True, help="CA that signs client certificates, PEM")
    p.add_argument("--versions", help="the only KMIP versions spoken, e.g. 1.2,1.1,1.0")
    a = p.parse_args()

    work = os.path.abspath(a.dir)
    policies = os.path.join(work, "policies")
    os.makedirs(policies, exist_ok=True)  # empty: only PyKMIP's built-in policies
    conf = os.path.join(work, f"server-{a.port}.conf")
    with open(conf, "w") as f:
        f.write(
            "[server]\n"
            f"hostname={HOST}\n"
            f"port={a.port}\n"
            f"certificate_path={os.path.abspath(a.cert)}\n"
            f"key_path={os.path.abspath(a.key)}\n"
            f"ca_path={os.path.abspath(a.ca)}\n"
            "auth_suite=TLS1.2\n"  # ssl.PROTOCOL_TLSv1_2: TLS 1.2 and nothing else
            f"tls_cipher_suites={CIPHERS}\n"
            "enable_tls_client_auth=True\n"  # the client cert must have EKU clientAuth
            f"policy_path={policies}\n"
            "logging_level=DEBUG\n"
            f"database_path={os.path.join(work, 'pykmip.db')}\n"
        )

    # PyKMIP's multiprocessing Manager puts a unix socket in a pymp-* temp dir,
    # left behind on SIGKILL: keep it under DIR when the path fits (108 bytes).
    if len(work) < 60:
        tempfile.tempdir = work

    server = KmipServer(
        config_path=conf,
        log_path=os.path.join(work, "server.log"),
        live_policies=False,  # scan the (empty) policy directory once, no watcher
    )
    # start() binds the TLS socket (and installs signal handlers for its policy
    # monitor, replaced below); listen here so the ready line is true when printed.
    server.start()
    if a.versions:
        from kmip.core.messages.contents import ProtocolVersion

        server._engine._protocol_versions = [
            ProtocolVersion(*map(int, v.split("."))) for v in a.versions.split(",")
        ]
    server._socket.listen(16)

    def stop(signum, _frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"KMIP server ready on {HOST}:{a.port}", flush=True)

    # The accept loop of KmipServer.serve(), without its 10-second wait to notice
    # SIGTERM. Each connection gets its own session thread (TLS handshake there).
    try:
        while True:
            try:
                connection, address = server._socket.accept()
            except (socket.timeout, OSError):
                continue  # accept times out every 10 s (PyKMIP's default socket timeout)
            server._setup_connection_handler(connection, address)
    finally:
        server._socket.close()


if __name__ == "__main__":
    sys.exit(main())
