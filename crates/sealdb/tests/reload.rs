//! Hot reload of certificates, keys, CAs and CRLs: SIGHUP and ALTER SYSTEM
//! RELOAD TLS swap the material for new connections, established sessions
//! stay up, and a broken file is refused while the old material stays.

mod support;

use std::process::Command;

use support::*;

fn server_serial(server: &TestServer) -> String {
    psql(
        &server.admin(),
        "select serial from sys.certificates where role = 'server'",
    )
    .expect_ok()
    .trim()
    .to_owned()
}

fn new_node_certificate(server: &TestServer) {
    run_ok(
        Command::new(sealdb_bin())
            .args([
                "cert",
                "create-node",
                "localhost",
                "127.0.0.1",
                "--overwrite",
                "--certs-dir",
            ])
            .arg(server.certs())
            .arg("--ca-dir")
            .arg(server.ca_dir()),
    );
}

fn wait_for<F: FnMut() -> bool>(mut check: F) -> bool {
    for _ in 0..100 {
        if check() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

#[test]
fn sighup_swaps_the_server_certificate_and_keeps_established_sessions() {
    let server = TestServer::start(&[]);
    let mut session = LongSession::open(&server.admin());
    assert_eq!(session.query("select 1"), "1");
    let before = server_serial(&server);
    new_node_certificate(&server);
    server.signal("HUP");
    assert!(
        wait_for(|| server_serial(&server) != before),
        "the new certificate was not loaded"
    );
    // The new certificate is what new clients see.
    let (_, pem) = s_client(server.port, &["-starttls", "postgres", "-CAfile", &server.ca()]);
    let serial = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(pem.as_bytes())?;
            c.wait_with_output()
        });
    let serial = String::from_utf8_lossy(&serial.expect("openssl x509").stdout).to_lowercase();
    assert!(
        serial.contains(&server_serial(&server)),
        "served {serial}, loaded {}",
        server_serial(&server)
    );
    // The old session was not dropped.
    assert_eq!(session.query("select 2"), "2");
}

#[test]
fn a_broken_new_file_is_refused_and_the_old_material_stays_in_use() {
    let server = TestServer::start(&[]);
    let mut session = LongSession::open(&server.admin());
    assert_eq!(session.query("select 1"), "1");
    let before = server_serial(&server);
    let node = server.certs().join("node.crt");
    let good = std::fs::read(&node).expect("read");
    std::fs::write(
        &node,
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let err = psql(&server.admin(), "alter system reload tls").expect_err("TLS reload refused");
    assert!(
        err.contains("node.crt") && err.contains("previous certificates stay in use"),
        "{err}"
    );
    server.signal("HUP");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(server_serial(&server), before);
    assert_eq!(session.query("select 3"), "3");
    std::fs::write(&node, good).expect("restore");
    psql(&server.admin(), "alter system reload tls").expect_ok();
}

#[test]
fn a_reloaded_crl_refuses_a_certificate_that_was_accepted_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crl = dir.path().join("ca.crl.pem");
    // Start with a CRL that revokes nothing; it must exist before the CA does,
    // so bootstrap first in a throwaway start.
    let bootstrap = TestServer::start(&[]);
    write_crl(&bootstrap.ca_dir(), &crl, &[]);
    let data = tempfile::tempdir().expect("tempdir");
    copy_tree(&bootstrap.data, &data.path().join("data"));
    copy_tree(&bootstrap.ca_dir(), &data.path().join("data-ca"));
    drop(bootstrap);
    let server = TestServer::start_in(data, &["--ssl-crl", crl.to_str().expect("utf8")]);
    let (crt, key) = client_cert_with(
        &server.ca_dir(),
        dir.path(),
        "soon-revoked",
        "admin",
        time::Duration::hours(-1),
        time::Duration::days(3),
        9001,
    );
    let conn = conn_with_cert(&server, "admin", &crt, &key);
    psql(&conn, "select 1").expect_ok();
    write_crl(&server.ca_dir(), &crl, &[9001]);
    psql(&server.admin(), "alter system reload tls").expect_ok();
    psql(&conn, "select 1").expect_err("has been revoked");
}
