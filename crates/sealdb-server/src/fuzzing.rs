//! The `wire` fuzz target's server and client: a real server running in
//! this process, reached over loopback as a client would reach it.
//!
//! The first byte of an input says how its other bytes reach the server:
//! - 0: in plaintext, from the first byte on (an SSLRequest or not);
//! - 1: after an SSLRequest, inside a TLS session of a client that trusts
//!   the server's CA and presents the `admin` client certificate;
//! - 2: the same, and the bytes are sent in pieces of the length the next
//!   byte gives, as a slow client would.
//!
//! The client then closes its side and reads until the server closes the
//! connection. What must hold: no panic in sealdb's code, a dependency's
//! panic (pgwire's decoders) contained to its connection, and the server
//! still accepting: every input starts with a connection that must get its
//! answer to an SSLRequest.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sealdb_auth::{AccessControl, ScramVerifier, UserOptions};
use sealdb_pki::{CertUserMap, CertsDir, KeyType, MinTlsVersion, ServerIdentitySource, TlsFiles, TrustSource};

use crate::{Server, ServerSettings};

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

struct Fixture {
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    _runtime: tokio::runtime::Runtime,
}

/// Starts the server the inputs are sent to, once per process; every
/// input starts it too, so a fuzzer calls this first only to keep the
/// server's start (seconds in an unoptimized build) out of its timeout.
pub fn start_wire_server() {
    fixture();
}

/// One input: a connection, its bytes, and what the server says to them.
pub fn fuzz_wire(data: &[u8]) {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut stream = connect(f.port);
    match mode % 3 {
        0 => {
            let _ = stream.write_all(rest);
            let _ = stream.shutdown(std::net::Shutdown::Write);
            drain(&stream);
        }
        mode => {
            stream.write_all(&SSL_REQUEST).expect("SSLRequest sent");
            let mut answer = [0u8; 1];
            stream
                .read_exact(&mut answer)
                .expect("the server answers an SSLRequest");
            assert_eq!(answer[0], b'S', "ssl-mode = required accepts TLS");
            let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
            let Ok(conn) = rustls::ClientConnection::new(f.tls.clone(), name) else {
                return;
            };
            let mut tls = rustls::StreamOwned::new(conn, stream);
            let (piece, body) = match (mode, rest.split_first()) {
                (2, Some((&n, body))) => (usize::from(n % 16) + 1, body),
                _ => (rest.len().max(1), rest),
            };
            for chunk in body.chunks(piece) {
                if tls.write_all(chunk).and_then(|()| tls.flush()).is_err() {
                    break;
                }
            }
            tls.conn.send_close_notify();
            let _ = tls.flush();
            let _ = tls.sock.shutdown(std::net::Shutdown::Write);
            drain(&mut tls);
        }
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        sealdb_pki::install_crypto_provider();
        let dir = std::env::temp_dir().join(format!("sealdb-fuzz-wire-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let certs = CertsDir::new(&dir, true);
        certs.create_ca(KeyType::EcdsaP256, 30).expect("CA");
        certs
            .create_node(
                &["localhost".to_owned(), "127.0.0.1".to_owned()],
                None,
                KeyType::EcdsaP256,
                30,
            )
            .expect("node certificate");
        certs
            .create_client("admin", KeyType::EcdsaP256, 30, None)
            .expect("client certificate");
        let tls = sealdb_pki::client_config(
            &ServerIdentitySource::Pem {
                cert: certs.client_cert("admin"),
                key: certs.client_key("admin"),
            },
            &TrustSource::Pem(certs.ca_cert()),
        )
        .expect("client TLS config");
        let access = AccessControl::with_bootstrap_admin("admin");
        access
            .create(
                "fuzz",
                true,
                UserOptions {
                    password: Some(Some(ScramVerifier::new("fuzz-pw", 4096))),
                    ..UserOptions::default()
                },
            )
            .expect("password user");
        let settings = ServerSettings {
            host: "127.0.0.1".to_owned(),
            port: 0,
            ssl_mode: sealdb_config::SslMode::Required,
            tls: Some(TlsFiles {
                identity: ServerIdentitySource::Pem {
                    cert: certs.node_cert(),
                    key: certs.node_key(),
                },
                trust: Some(TrustSource::Pem(certs.ca_cert())),
                crls: Vec::new(),
                refuse_expired_crls: false,
                min_version: MinTlsVersion::Tls12,
                cipher_suites: Vec::new(),
            }),
            pki_db_client_auth: false,
            cert_user_map: CertUserMap::default(),
            max_connections: 8,
            superuser_reserved_connections: 1,
            max_unauthenticated_connections: 8,
            max_unauthenticated_per_address: 8,
            max_message_bytes: 1 << 20,
            handshake_timeout: Duration::from_millis(500),
            memory_limit: None,
            default_table_encryption: sealdb_storage::Encryption::Aes256Gcm,
            queries: sealdb_sql::executor::QueryExecutor::default(),
            key_admin: None,
            key_rotation_period: None,
            ca_key_candidates: Vec::new(),
            audit_failed_login_interval: Duration::from_secs(60),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let server = runtime
            .block_on(Server::bind(settings, Arc::new(access), None))
            .expect("server");
        let port = server.local_addr().expect("address").port();
        runtime.spawn(server.run());
        Fixture {
            port,
            tls,
            _runtime: runtime,
        }
    })
}

/// Reads until the server closes the connection (or a second passes).
fn drain(mut stream: impl Read) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("the server accepts connections");
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = stream.set_nodelay(true);
    stream
}
