//! Connecting as a user would: the banner's psql command, every sslmode,
//! SCRAM with and without channel binding, certificate login, and each way
//! a certificate or password can be wrong. Real binary, real psql.

mod support;

use support::*;
use time::Duration as D;

#[test]
fn fresh_start_creates_certificates_and_the_printed_psql_command_connects() {
    let server = TestServer::start(&[]);
    for f in ["ca.crt", "node.crt", "node.key", "client.admin.crt", "client.admin.key"] {
        assert!(server.certs().join(f).exists(), "{f} missing");
    }
    // The CA's key, which can make a certificate for any user, is kept
    // outside the data directory, and the operator is told to move it.
    assert!(
        !server.certs().join("ca.key").exists(),
        "ca.key is in the data directory"
    );
    assert!(
        server.ca_dir().join("ca.key").exists(),
        "ca.key is not beside the data directory"
    );
    assert!(server.stderr().contains("move it offline"), "{}", server.stderr());
    let conninfo = server.banner_conninfo();
    for part in ["sslmode=verify-full", "sslrootcert=", "sslcert=", "sslkey="] {
        assert!(conninfo.contains(part), "banner lacks {part}: {conninfo}");
    }
    let out = psql(
        &conninfo,
        "select current_user, ssl, auth_method, client_cert_subject from sys.sessions",
    )
    .expect_ok();
    assert_eq!(out.trim(), "admin|t|certificate|O=sealdb, CN=admin");
}

#[test]
fn plaintext_is_refused_with_28000_and_how_to_connect() {
    let server = TestServer::start(&[]);
    let err = psql(
        &format!("host=localhost port={} user=admin sslmode=disable", server.port),
        "select 1",
    )
    .expect_err("accepts TLS connections only");
    assert!(err.contains("sslmode=verify-full"), "{err}");
    let fields = plaintext_startup_error(server.port, "admin");
    assert_eq!(fields.get(&b'S').map(String::as_str), Some("FATAL"));
    assert_eq!(fields.get(&b'C').map(String::as_str), Some("28000"), "{fields:?}");
}

#[test]
fn every_sslmode_behaves_as_libpq_documents() {
    let server = TestServer::start(&[]);
    psql(&server.admin(), "create user carol with password 'Carol-pw-1'").expect_ok();
    let base = format!("host=localhost port={} user=carol dbname=sealdb", server.port);
    psql_pw(&format!("{base} sslmode=disable"), "Carol-pw-1", "select 1").expect_err("accepts TLS connections only");
    // allow: libpq tries plaintext, is refused, and retries with TLS.
    for mode in ["allow", "prefer", "require"] {
        let out = psql_pw(
            &format!("{base} sslmode={mode}"),
            "Carol-pw-1",
            "select ssl from sys.sessions where user_name = 'carol'",
        )
        .expect_ok();
        assert_eq!(out.trim(), "t", "sslmode={mode}");
    }
    for mode in ["verify-ca", "verify-full"] {
        psql_pw(
            &format!("{base} sslmode={mode} sslrootcert={}", server.ca()),
            "Carol-pw-1",
            "select 1",
        )
        .expect_ok();
    }
}

#[test]
fn ssl_mode_allowed_serves_plaintext_but_require_ssl_users_are_refused() {
    let server = TestServer::start(&["--ssl-mode", "allowed"]);
    psql(
        &server.admin(),
        "create user pat with password 'Pat-pw-1'; create user sue with password 'Sue-pw-1' require ssl",
    )
    .expect_ok();
    let plain = |u: &str| {
        format!(
            "host=localhost port={} user={u} dbname=sealdb sslmode=disable",
            server.port
        )
    };
    let out = psql_pw(&plain("pat"), "Pat-pw-1", "select ssl from sys.sessions").expect_ok();
    assert_eq!(out.trim(), "f");
    // Refused as a wrong password would be, so that a stranger cannot
    // tell sue exists; the server's log says why.
    psql_pw(&plain("sue"), "Sue-pw-1", "select 1").expect_err("password authentication failed for user \"sue\"");
    assert!(server.stderr().contains("REQUIRE SSL"), "{}", server.stderr());
    psql_pw(&server.password_conn("sue"), "Sue-pw-1", "select 1").expect_ok();
}

#[test]
fn ssl_mode_disabled_needs_insecure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = TestServer::try_start_in(dir, &["--ssl-mode", "disabled"])
        .err()
        .expect("must refuse");
    assert!(err.contains("--insecure"), "{err}");
    let server = TestServer::start(&["--ssl-mode", "disabled", "--insecure"]);
    // Without TLS there is no certificate login; the bootstrap admin has no password.
    psql_pw(
        &format!("host=localhost port={} user=admin sslmode=disable", server.port),
        "x",
        "select 1",
    )
    .expect_err("password authentication failed");
}

#[test]
fn client_that_trusts_another_ca_fails_verification_on_its_side() {
    let server = TestServer::start(&[]);
    let other = tempfile::tempdir().expect("tempdir");
    run_ok(
        std::process::Command::new(sealdb_bin())
            .args(["cert", "create-ca", "--certs-dir"])
            .arg(other.path()),
    );
    let conn = format!(
        "host=localhost port={} user=admin sslmode=verify-full sslrootcert={}",
        server.port,
        other.path().join("ca.crt").display()
    );
    psql(&conn, "select 1").expect_err("certificate verify failed");
}

#[test]
fn server_certificate_with_another_name_fails_verify_full() {
    let server = TestServer::start(&[]);
    let conn = format!(
        "host=not-this-server.example hostaddr=127.0.0.1 port={} user=admin sslmode=verify-full sslrootcert={}",
        server.port,
        server.ca()
    );
    psql(&conn, "select 1").expect_err("does not match host name");
}

#[test]
fn scram_password_login_wrong_password_and_unknown_user_look_alike() {
    let server = TestServer::start(&[]);
    psql(&server.admin(), "create user dan with password 'Dan-pw-1'").expect_ok();
    let out = psql_pw(
        &server.password_conn("dan"),
        "Dan-pw-1",
        "select auth_method from sys.sessions",
    )
    .expect_ok();
    // psql's libpq binds the exchange to the TLS channel when it can.
    assert_eq!(out.trim(), "scram-sha-256-plus");
    let unbound = psql_pw(
        &format!("{} channel_binding=disable", server.password_conn("dan")),
        "Dan-pw-1",
        "select auth_method from sys.sessions",
    )
    .expect_ok();
    assert_eq!(unbound.trim(), "scram-sha-256");
    let wrong = psql_pw(&server.password_conn("dan"), "nope", "select 1").expect_err("FATAL");
    assert!(
        wrong.contains("password authentication failed for user \"dan\""),
        "{wrong}"
    );
    let unknown = psql_pw(&server.password_conn("nobody"), "nope", "select 1").expect_err("FATAL");
    assert!(
        unknown.contains("password authentication failed for user \"nobody\""),
        "{unknown}"
    );
}

#[test]
fn channel_binding_scram_sha_256_plus_is_offered_over_tls() {
    let server = TestServer::start(&[]);
    psql(&server.admin(), "create user erin with password 'Erin-pw-1'").expect_ok();
    let conn = format!("{} channel_binding=require", server.password_conn("erin"));
    psql_pw(&conn, "Erin-pw-1", "select 1").expect_ok();
}

#[test]
fn passwords_are_stored_as_scram_verifiers_only() {
    let server = TestServer::start(&[]);
    psql(&server.admin(), "create user fay with password 'Fay-secret-pw'").expect_ok();
    let out = psql(
        &server.admin(),
        "select password_storage from sys.users where user_name = 'fay'",
    )
    .expect_ok();
    assert!(
        out.contains("SCRAM-SHA-256 verifier") && !out.contains("Fay-secret-pw"),
        "{out}"
    );
    assert!(!server.stderr().contains("Fay-secret-pw"), "password in the log");
}

#[test]
fn certificate_of_user_a_cannot_log_in_as_b() {
    let server = TestServer::start(&[]);
    psql(&server.admin(), "create user gus").expect_ok();
    server.create_client_cert("gus");
    psql(&server.cert_conn("gus"), "select 1").expect_ok();
    let c = server.certs();
    let conn = conn_with_cert(&server, "admin", &c.join("client.gus.crt"), &c.join("client.gus.key"));
    psql(&conn, "select 1").expect_err("is for user \"gus\", not \"admin\"");
}

#[test]
fn expired_not_yet_valid_and_foreign_certificates_are_refused_with_the_reason() {
    let server = TestServer::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let (crt, key) = client_cert_with(
        &server.ca_dir(),
        dir.path(),
        "expired",
        "admin",
        D::days(-30),
        D::days(-1),
        1001,
    );
    psql(&conn_with_cert(&server, "admin", &crt, &key), "select 1").expect_err("expired on");
    let (crt, key) = client_cert_with(
        &server.ca_dir(),
        dir.path(),
        "future",
        "admin",
        D::days(2),
        D::days(30),
        1002,
    );
    psql(&conn_with_cert(&server, "admin", &crt, &key), "select 1").expect_err("is not valid before");
    let foreign = tempfile::tempdir().expect("tempdir");
    run_ok(
        std::process::Command::new(sealdb_bin())
            .args(["cert", "create-ca", "--certs-dir"])
            .arg(foreign.path()),
    );
    let (crt, key) = client_cert_with(
        foreign.path(),
        dir.path(),
        "foreign",
        "admin",
        D::hours(-1),
        D::days(30),
        1003,
    );
    psql(&conn_with_cert(&server, "admin", &crt, &key), "select 1").expect_err("which this server does not trust");
    // The server is still fine.
    psql(&server.admin(), "select 1").expect_ok();
}

#[test]
fn revoked_certificate_is_refused_by_the_crl() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Start once to bootstrap the CA, then restart with a CRL that revokes one serial.
    let first = TestServer::start(&[]);
    let certs = first.ca_dir();
    let (crt, key) = client_cert_with(&certs, dir.path(), "revoked", "admin", D::hours(-1), D::days(30), 4242);
    let crl = dir.path().join("revoked.crl.pem");
    write_crl(&certs, &crl, &[4242]);
    psql(&conn_with_cert(&first, "admin", &crt, &key), "select 1").expect_ok();
    let data_dir = first.dir.path().to_path_buf();
    let server_dir = tempfile::tempdir().expect("tempdir");
    copy_tree(&data_dir.join("data"), &server_dir.path().join("data"));
    drop(first);
    let server = TestServer::start_in(server_dir, &["--ssl-crl", crl.to_str().expect("utf8")]);
    psql(&conn_with_cert(&server, "admin", &crt, &key), "select 1").expect_err("has been revoked");
    psql(&server.admin(), "select 1").expect_ok();
}

#[test]
fn require_x509_and_require_subject_are_enforced() {
    let server = TestServer::start(&[]);
    let ca_subject = psql(
        &server.admin(),
        "select subject from sys.certificates where role = 'trusted-ca'",
    )
    .expect_ok();
    psql(
        &server.admin(),
        &format!(
            "create user hal with password 'Hal-pw-1' require x509; create user ivy require subject '/O=sealdb/CN=ivy' and issuer '{}'; create user jon require subject '/O=Elsewhere/CN=jon'",
            ca_subject.trim()
        ),
    )
    .expect_ok();
    // Without its certificate, hal is refused as a wrong password would be;
    // the server's log says why.
    psql_pw(&server.password_conn("hal"), "Hal-pw-1", "select 1")
        .expect_err("password authentication failed for user \"hal\"");
    assert!(server.stderr().contains("REQUIRE X509"), "{}", server.stderr());
    for u in ["hal", "ivy", "jon"] {
        server.create_client_cert(u);
    }
    psql(&server.cert_conn("hal"), "select 1").expect_ok();
    psql(&server.cert_conn("ivy"), "select 1").expect_ok();
    psql(&server.cert_conn("jon"), "select 1").expect_err("does not match the subject required");
}

#[test]
fn pki_db_client_auth_requires_certificates_and_cert_user_map_maps_them() {
    let server = TestServer::start(&["--pki-db-client-auth", "--cert-user-map", r"cn svc-(.*) \1"]);
    psql(&server.admin(), "select 1").expect_err("no cert-user-map rule matches");
    let dir = tempfile::tempdir().expect("tempdir");
    let (crt, key) = client_cert_with(
        &server.ca_dir(),
        dir.path(),
        "svc",
        "svc-admin",
        D::hours(-1),
        D::days(30),
        77,
    );
    psql(&conn_with_cert(&server, "admin", &crt, &key), "select current_user").expect_ok();
    let conn = format!(
        "host=localhost port={} user=admin dbname=sealdb sslmode=verify-full sslrootcert={}",
        server.port,
        server.ca()
    );
    psql_pw(&conn, "x", "select 1").expect_err("pki-db-client-auth");
}
