//! Bad input at the door: garbage bytes, truncated and stalled startup
//! packets, old TLS versions, bad cipher settings and malformed config. Each
//! time the server names the cause, stays up, and serves the next client.

mod support;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn still_serves(server: &TestServer) {
    let out = psql(&server.admin(), "select 40 + 2").expect_ok();
    assert_eq!(out.trim(), "42");
}

#[test]
fn random_bytes_and_truncated_startup_packets_do_not_hurt_the_server() {
    let mut server = TestServer::start(&[]);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..20 {
        let len = 1 + (round * 37) % 300;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        raw_exchange(server.port, &bytes);
    }
    // A startup packet that announces 100 bytes and ends after 10.
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&196_608u32.to_be_bytes());
    truncated.extend_from_slice(b"us");
    raw_exchange(server.port, &truncated);
    // A length field that claims 2 GB.
    raw_exchange(server.port, &[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]);
    assert!(server.alive());
    still_serves(&server);
}

#[test]
fn a_client_that_stalls_is_dropped_after_the_handshake_timeout() {
    let server = TestServer::start(&["--handshake-timeout-ms", "500"]);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    s.write_all(&100u32.to_be_bytes()).expect("write");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the server to close the connection");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "closed only after {:?}",
        started.elapsed()
    );
    still_serves(&server);
}

#[test]
fn openssl_starttls_postgres_negotiates_tls_1_3_and_1_2_but_never_1_0() {
    let server = TestServer::start(&[]);
    let ca = server.ca();
    let (ok, text) = s_client(
        server.port,
        &["-starttls", "postgres", "-CAfile", &ca, "-verify_return_error"],
    );
    assert!(
        ok && text.contains("TLSv1.3") && text.contains("Verify return code: 0 (ok)"),
        "{text}"
    );
    let (ok, text) = s_client(server.port, &["-starttls", "postgres", "-CAfile", &ca, "-tls1_2"]);
    assert!(ok && text.contains("TLSv1.2"), "{text}");
    for old in [
        ["-starttls", "postgres", "-tls1", "-cipher", "DEFAULT@SECLEVEL=0"],
        ["-alpn", "postgresql", "-tls1", "-cipher", "DEFAULT@SECLEVEL=0"],
    ] {
        let (ok, text) = s_client(server.port, &old);
        assert!(!ok, "TLS 1.0 was accepted: {text}");
    }
    still_serves(&server);
}

#[test]
fn ssl_min_version_1_3_and_cipher_suites_are_honoured() {
    let server = TestServer::start(&[
        "--ssl-min-version",
        "1.3",
        "--ssl-cipher-suites",
        "TLS_AES_128_GCM_SHA256",
    ]);
    let (ok, text) = s_client(server.port, &["-starttls", "postgres", "-tls1_2"]);
    assert!(!ok, "TLS 1.2 accepted: {text}");
    let (ok, text) = s_client(server.port, &["-starttls", "postgres"]);
    assert!(ok && text.contains("TLS_AES_128_GCM_SHA256"), "{text}");
    let out = psql(&server.admin(), "select tls_version, cipher from sys.sessions").expect_ok();
    assert_eq!(out.trim(), "TLSv1_3|TLS13_AES_128_GCM_SHA256");
}

#[test]
fn unknown_cipher_suite_is_refused_with_the_list_of_valid_names() {
    let err = TestServer::try_start_in(
        tempfile::tempdir().expect("tempdir"),
        &["--ssl-cipher-suites", "RC4-MD5"],
    )
    .err()
    .expect("must refuse");
    assert!(
        err.contains("RC4-MD5") && err.contains("TLS13_AES_256_GCM_SHA384"),
        "{err}"
    );
}

#[test]
fn postgresql_17_direct_tls_with_alpn_works() {
    let server = TestServer::start(&[]);
    let c = server.certs();
    let out = Command::new("python3")
        .arg(py_dir().join("direct_tls.py"))
        .arg(server.port.to_string())
        .arg(server.ca())
        .arg(c.join("client.admin.crt"))
        .arg(c.join("client.admin.key"))
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("answer 42"), "{text}");
}

fn start_with_config(config: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sealdb.conf");
    std::fs::write(&path, config).expect("config");
    let p = path.display().to_string();
    TestServer::try_start_in(dir, &["--config", &p])
        .err()
        .expect("must refuse")
}

#[test]
fn config_file_with_an_unknown_key_or_bad_value_names_the_key_and_line() {
    let err = start_with_config("port = 6543\n\nssl-certificate = \"x.crt\"\n");
    assert!(err.contains("ssl-certificate") && err.contains("line 3"), "{err}");
    let err = start_with_config("ssl-mode = \"sometimes\"\n");
    assert!(
        err.contains("line 1") && err.contains("ssl-mode") || err.contains("required"),
        "{err}"
    );
    let err = start_with_config("max-connections = \"lots\"\n");
    assert!(err.contains("line 1") && err.contains("max-connections"), "{err}");
    let err = start_with_config("cert-user-map = [\"cn onlytwo\"]\n");
    assert!(
        err.contains("cert-user-map") && err.contains("FIELD REGEX USER"),
        "{err}"
    );
}

#[test]
fn config_keys_equal_flag_names_and_the_flag_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sealdb.conf");
    std::fs::write(&path, "ssl-mode = \"allowed\"\nport = 1\nmax-connections = 50\n").expect("config");
    let p = path.display().to_string();
    // --port (from the harness) wins over port = 1; ssl-mode comes from the file.
    let server = TestServer::start_in(dir, &["--config", &p]);
    assert!(server.banner.contains("TLS optional"), "{}", server.banner);
    still_serves(&server);
}

#[test]
fn a_client_over_max_connections_is_told_why() {
    let server = TestServer::start(&["--max-connections", "1"]);
    let mut first = LongSession::open(&server.admin());
    assert_eq!(first.query("select 1"), "1");
    psql(&server.admin(), "select 1").expect_err("too many clients already: max-connections = 1");
    drop(first);
    // The slot frees when the server sees the first client leave.
    let freed = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        psql(&server.admin(), "select 1").ok
    });
    assert!(freed, "the slot of a closed session was not given back");
}

/// A core file would hold every key and row the server has in memory, in
/// the clear: the server sets its core-file size limit to 0 (soft and
/// hard, so nothing it runs can raise it again) and says so in its log.
#[test]
fn the_server_cannot_write_a_core_file_and_says_so() {
    let server = TestServer::start(&[]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.child.id())).expect("/proc limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("a core limit line");
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], &["0", "0"], "{core}");
    assert!(
        server.stderr().contains("core dumps disabled; process not dumpable"),
        "{}",
        server.stderr()
    );
    still_serves(&server);
}

#[test]
fn the_server_locks_its_key_memory_into_ram_and_says_so() {
    let server = TestServer::start(&[]);
    let locked_kib = proc_status_kib(server.child.id(), "VmLck").expect("a VmLck line");
    assert!(locked_kib >= 4, "VmLck: {locked_kib} kB");
    // The line is written just before the banner; its reader may lag.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.stderr().contains("key memory locked into RAM (mlock") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        server.stderr().contains("key memory locked into RAM (mlock"),
        "{}",
        server.stderr()
    );
    still_serves(&server);
}

/// Found by the wire fuzz target: an Execute message too short to hold its
/// row limit makes pgwire's decoder panic. sealdb ends that connection
/// only, says why in the log, leaves no session behind, and serves the
/// next client (`fuzz/regressions/wire/`).
#[test]
fn a_message_that_makes_the_protocol_decoder_panic_ends_only_its_connection() {
    let server = TestServer::start(&[]);
    let c = server.certs();
    // 'E', length 4: no portal name, no row limit; then Sync.
    let out = std::process::Command::new(venv_python())
        .arg(py_dir().join("after_login.py"))
        .arg(server.port.to_string())
        .arg(c.join("ca.crt"))
        .arg(c.join("client.admin.crt"))
        .arg(c.join("client.admin.key"))
        .arg("45000000045300000004")
        .output()
        .expect("after_login.py");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.starts_with("closed"), "{text}");
    let log = server.stderr();
    assert!(
        log.contains("connection closed: a malformed protocol message made its handling fail"),
        "{log}"
    );
    assert_eq!(
        psql(&server.admin(), "SELECT count(*) FROM sys.sessions").expect_ok(),
        "1\n",
        "only the checking session is left"
    );
    still_serves(&server);
}

/// The client port offers the hybrid post-quantum key exchange
/// X25519MLKEM768 (issue 18, item 5): a client offering only that group,
/// or that group first, gets it; one without it (psql on OpenSSL 3.0)
/// still connects with X25519, and `sys.sessions` says which group a
/// session uses.
#[test]
fn the_client_port_negotiates_the_hybrid_post_quantum_key_exchange() {
    use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
    use rustls::crypto::{CryptoProvider, SupportedKxGroup};
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use std::io::Read;
    use std::sync::Arc;

    let server = TestServer::start(&[]);
    let handshake = |groups: Vec<&'static dyn SupportedKxGroup>| -> String {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(server.ca()).expect("CA file") {
            roots.add(cert.expect("CA certificate")).expect("usable CA");
        }
        let provider = CryptoProvider {
            kx_groups: groups,
            ..default_provider()
        };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        // SSLRequest (code 80877103), then the server's 'S'.
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .expect("SSLRequest");
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).expect("answer");
        assert_eq!(answer[0], b'S');
        let name = "localhost".try_into().expect("server name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).expect("handshake");
        }
        conn.negotiated_key_exchange_group()
            .and_then(|g| g.name().as_str())
            .unwrap_or("none")
            .to_owned()
    };
    assert_eq!(handshake(vec![kx_group::X25519MLKEM768]), "X25519MLKEM768");
    assert_eq!(
        handshake(vec![kx_group::X25519MLKEM768, kx_group::X25519]),
        "X25519MLKEM768"
    );
    assert_eq!(handshake(vec![kx_group::X25519]), "X25519");
    // psql's own session, the only one.
    let out = psql(&server.admin(), "SELECT tls_key_exchange FROM sys.sessions").expect_ok();
    assert!(out.trim() == "X25519" || out.trim() == "X25519MLKEM768", "{out}");
}
