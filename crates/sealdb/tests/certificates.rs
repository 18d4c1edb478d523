//! `sealdb cert` and certificates made elsewhere: files and modes, openssl
//! and keytool reading what we write, and the server running on PEM files
//! from the seed documents' openssl commands and on PKCS#12 stores.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use support::*;

fn sealdb(args: &[&str]) -> String {
    run_ok(Command::new(sealdb_bin()).args(args))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn cert_commands_write_the_naming_scheme_with_private_keys_0600_and_openssl_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf8");
    sealdb(&["cert", "create-ca", "--certs-dir", d]);
    sealdb(&[
        "cert",
        "create-node",
        "localhost",
        "127.0.0.1",
        "db1.example",
        "--certs-dir",
        d,
    ]);
    sealdb(&[
        "cert",
        "create-client",
        "alice",
        "--certs-dir",
        d,
        "--key-type",
        "rsa-2048",
    ]);
    for (f, m) in [
        ("ca.crt", 0o644),
        ("ca.key", 0o600),
        ("node.crt", 0o644),
        ("node.key", 0o600),
        ("client.alice.crt", 0o644),
        ("client.alice.key", 0o600),
    ] {
        assert_eq!(mode(&dir.path().join(f)), m, "{f}");
    }
    for f in ["node.crt", "client.alice.crt"] {
        let out = run_ok(
            Command::new("openssl")
                .args(["verify", "-CAfile", "ca.crt", f])
                .current_dir(dir.path()),
        );
        assert!(out.contains(": OK"), "{out}");
    }
    let text = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in", "node.crt"])
            .current_dir(dir.path()),
    );
    assert!(
        text.contains("DNS:localhost") && text.contains("IP Address:127.0.0.1") && text.contains("DNS:db1.example"),
        "{text}"
    );
    let text = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in", "client.alice.crt"])
            .current_dir(dir.path()),
    );
    assert!(
        text.contains("rsaEncryption") && text.contains("TLS Web Client Authentication"),
        "{text}"
    );
    // No overwrite without asking.
    let out = Command::new(sealdb_bin())
        .args(["cert", "create-ca", "--certs-dir", d])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--overwrite"));
}

#[test]
fn cert_list_shows_subject_sans_issuer_serial_expiry_and_days_left() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf8");
    sealdb(&["cert", "create-ca", "--certs-dir", d]);
    sealdb(&["cert", "create-node", "localhost", "--certs-dir", d, "--days", "10"]);
    let out = sealdb(&["cert", "list", "--certs-dir", d]);
    for needle in [
        "node.crt",
        "subject:   O=sealdb, CN=localhost",
        "sans:      DNS:localhost",
        "issuer:    O=sealdb, CN=sealdb CA",
        "serial:",
        "not after:",
        "days left: 9  EXPIRES SOON",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
}

#[test]
fn pkcs12_client_bundle_is_read_by_openssl_and_keytool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf8");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "p12-Secret\n").expect("pw");
    sealdb(&["cert", "create-ca", "--certs-dir", d]);
    sealdb(&[
        "cert",
        "create-client",
        "bob",
        "--certs-dir",
        d,
        "--pkcs12",
        "--password-file",
        pw.to_str().expect("utf8"),
    ]);
    let p12 = dir.path().join("client.bob.p12");
    assert_eq!(mode(&p12), 0o600);
    let out = Command::new("openssl")
        .args(["pkcs12", "-info", "-nokeys", "-passin", "pass:p12-Secret", "-in"])
        .arg(&p12)
        .output()
        .expect("openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("CN=bob") && text.contains("MAC: sha256"), "{text}");
    let bad = Command::new("openssl")
        .args(["pkcs12", "-info", "-nokeys", "-passin", "pass:wrong", "-in"])
        .arg(&p12)
        .output()
        .expect("openssl");
    assert!(!bad.status.success());
    // Java's keytool, where a JDK is installed (it is not part of the CI baseline).
    if Command::new("keytool").arg("-help").output().is_ok() {
        let out = run_ok(
            Command::new("keytool")
                .args(["-list", "-storetype", "PKCS12", "-storepass", "p12-Secret", "-keystore"])
                .arg(&p12),
        );
        assert!(out.contains("PrivateKeyEntry"), "{out}");
    } else {
        eprintln!("keytool not installed: the Java check is skipped");
    }
}

/// The seed documents' recipe: `openssl genrsa 2048`, a CSR, a self-signed certificate.
#[test]
fn server_runs_on_an_openssl_rsa_2048_self_signed_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    run_ok(
        Command::new("openssl")
            .args(["genrsa", "-out", "server.key", "2048"])
            .current_dir(p),
    );
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-new",
                "-key",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ])
            .current_dir(p),
    );
    run_ok(
        Command::new("openssl")
            .args([
                "x509",
                "-req",
                "-days",
                "365",
                "-in",
                "server.csr",
                "-signkey",
                "server.key",
                "-out",
                "server.crt",
            ])
            .current_dir(p),
    );
    std::fs::set_permissions(p.join("server.key"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let crt = p.join("server.crt").display().to_string();
    let key = p.join("server.key").display().to_string();
    let server = TestServer::start(&["--ssl-cert", &crt, "--ssl-private-key", &key, "--ssl-mode", "allowed"]);
    let port = server.port;
    let (_, text) = s_client(
        port,
        &["-starttls", "postgres", "-CAfile", &crt, "-verify_return_error"],
    );
    assert!(
        text.contains("Verify return code: 0 (ok)") && text.contains("CN = localhost"),
        "{text}"
    );
}

/// A CA-signed RSA certificate with a SAN, from openssl, and PKCS#12 keystore and trust store.
#[test]
fn server_runs_on_pkcs12_keystore_and_truststore_with_passwords_from_file_and_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let ossl = |args: &[&str]| run_ok(Command::new("openssl").args(args).current_dir(p));
    ossl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "30",
        "-subj",
        "/O=Example/CN=Example Root",
    ]);
    ossl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(p.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("ext");
    ossl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);
    ossl(&[
        "pkcs12",
        "-export",
        "-in",
        "server.crt",
        "-inkey",
        "server.key",
        "-certfile",
        "ca.crt",
        "-out",
        "server.p12",
        "-passout",
        "pass:Keystore-pw",
    ]);
    ossl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        "/O=Example/CN=admin",
    ]);
    std::fs::write(p.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    ossl(&[
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        "client.ext",
        "-out",
        "client.crt",
    ]);
    ossl(&[
        "pkcs12",
        "-export",
        "-nokeys",
        "-in",
        "ca.crt",
        "-out",
        "trust.p12",
        "-passout",
        "pass:Trust-pw",
    ]);
    std::fs::set_permissions(p.join("client.key"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::set_permissions(p.join("server.p12"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::write(p.join("keystore.pw"), "Keystore-pw\n").expect("pw");
    let config = format!(
        "ssl-keystore = \"{}\"\nssl-keystore-password-file = \"{}\"\nssl-trust-store = \"{}\"\n",
        p.join("server.p12").display(),
        p.join("keystore.pw").display(),
        p.join("trust.p12").display()
    );
    std::fs::write(p.join("sealdb.conf"), config).expect("config");
    let cfg = p.join("sealdb.conf").display().to_string();
    // SEALDB_SSL_TRUST_PASSWORD comes from the environment of the server.
    // SAFETY of the test: the variable is set for this process and inherited by the child.
    let server = start_with_env(&["--config", &cfg], "SEALDB_SSL_TRUST_PASSWORD", "Trust-pw");
    let conn = format!(
        "host=localhost port={} user=admin dbname=sealdb sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        server.port,
        p.join("ca.crt").display(),
        p.join("client.crt").display(),
        p.join("client.key").display()
    );
    let out = psql(&conn, "select auth_method, client_cert_issuer from sys.sessions").expect_ok();
    assert_eq!(out.trim(), "certificate|O=Example, CN=Example Root");
}

fn start_with_env(args: &[&str], key: &str, value: &str) -> TestServer {
    // The server inherits the test's environment; a wrapper shell sets the one variable.
    let dir = tempfile::tempdir().expect("tempdir");
    let wrapper = dir.path().join("sealdb-with-env");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexport {key}='{value}'\nexec '{}' \"$@\"\n", sealdb_bin()),
    )
    .expect("wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    TestServer::start_with_binary(dir, &wrapper, args)
}

#[test]
fn private_key_readable_by_others_is_refused_with_the_chmod_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf8");
    sealdb(&["cert", "create-ca", "--certs-dir", d]);
    sealdb(&["cert", "create-node", "localhost", "--certs-dir", d]);
    let key = dir.path().join("node.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let crt = dir.path().join("node.crt").display().to_string();
    let err = TestServer::try_start_in(
        tempfile::tempdir().expect("tempdir"),
        &["--ssl-cert", &crt, "--ssl-private-key", key.to_str().expect("utf8")],
    )
    .err()
    .expect("must refuse");
    assert!(err.contains("chmod 600") && err.contains("node.key"), "{err}");
}

/// `sealdb cert create-node HOST... --cluster ID --name NAME` makes a node
/// certificate that names the node and its cluster (issue 18, item 5):
/// openssl shows the `sealdb://cluster/ID/node/NAME` name and verifies it
/// for both TLS server and client use; a bad name is refused.
#[test]
fn create_node_with_a_cluster_names_the_node_and_its_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf8");
    sealdb(&["cert", "create-ca", "--certs-dir", d]);
    sealdb(&[
        "cert",
        "create-node",
        "leaf1.example",
        "10.0.0.5",
        "--cluster",
        "prod-1",
        "--name",
        "leaf1",
        "--certs-dir",
        d,
    ]);
    let crt = dir.path().join("node.crt");
    let text = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&crt),
    );
    assert!(text.contains("URI:sealdb://cluster/prod-1/node/leaf1"), "{text}");
    assert!(
        text.contains("DNS:leaf1.example") && text.contains("IP Address:10.0.0.5"),
        "{text}"
    );
    assert!(
        text.contains("OU = sealdb cluster prod-1") && text.contains("CN = leaf1"),
        "{text}"
    );
    for purpose in ["sslserver", "sslclient"] {
        let out = run_ok(
            Command::new("openssl")
                .args(["verify", "-purpose", purpose, "-CAfile"])
                .arg(dir.path().join("ca.crt"))
                .arg(&crt),
        );
        assert!(out.contains(": OK"), "{purpose}: {out}");
    }
    let out = Command::new(sealdb_bin())
        .args([
            "cert",
            "create-node",
            "h",
            "--cluster",
            "a/b",
            "--name",
            "n",
            "--certs-dir",
            d,
            "--overwrite",
        ])
        .output()
        .expect("sealdb");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cluster id \"a/b\" is not usable"));
}
