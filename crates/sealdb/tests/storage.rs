//! The data directory through the real binary: a fresh start creates the
//! keystore and the encrypted catalog; `sealdb verify` authenticates them
//! and names a damaged file; a sealed keystore needs its passphrase and a
//! wrong one changes nothing, and an unsealed one is a finding in
//! `sys.security_status`; a newer on-disk format is refused by name.

mod support;

use std::path::Path;
use std::process::Command;

use support::{TestServer, run_with_timeout, sealdb_bin, sealdb_verify as verify};

/// `sealdb start` on `data`, expected to exit at once with an error: its output.
fn start_fails(data: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(sealdb_bin());
    cmd.arg("start")
        .arg("--data")
        .arg(data)
        .arg("--port")
        .arg(support::free_port().to_string())
        .args(args);
    let out = run_with_timeout(cmd, std::time::Duration::from_secs(60));
    assert!(!out.status.success(), "started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_fresh_start_creates_a_keystore_and_catalog_that_verify_accepts_and_a_flipped_byte_is_named() {
    let server = TestServer::start(&[]);
    let data = server.data.clone();
    assert!(data.join("keystore/master.keys").exists());
    let findings = support::psql(&server.admin(), "SELECT severity, finding FROM sys.security_status").expect_ok();
    assert!(
        findings.contains("high|master key unprotected on local disk"),
        "{findings}"
    );
    assert!(!findings.contains("plaintext allowed"), "{findings}");
    assert!(data.join("catalog").exists());
    let _dir = server.stop();
    let (ok, out) = verify(&data, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("ok      catalog"), "{out}");

    let catalog = data.join("catalog");
    let mut bytes = std::fs::read(&catalog).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x01;
    std::fs::write(&catalog, &bytes).unwrap();
    let (ok, out) = verify(&data, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("FAILED") && out.contains("catalog"), "{out}");
}

#[test]
fn a_sealed_keystore_refuses_a_wrong_passphrase_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let pass = secrets.path().join("pass");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    let pass_arg = pass.to_string_lossy().into_owned();
    let server = TestServer::start_in(dir, &["--keystore-password-file", &pass_arg]);
    let data = server.data.clone();
    let findings = support::psql(&server.admin(), "SELECT finding FROM sys.security_status").expect_ok();
    assert!(!findings.contains("master key"), "{findings}");
    let _dir = server.stop();
    let keystore = data.join("keystore/master.keys");
    let before = std::fs::read(&keystore).unwrap();
    assert!(!before.windows(5).any(|w| w == b"horse"));

    std::fs::write(&pass, "wrong\n").unwrap();
    let err = start_fails(&data, &["--keystore-password-file", &pass_arg]);
    assert!(err.contains("passphrase is wrong"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(std::fs::read(&keystore).unwrap(), before);

    let (ok, out) = verify(&data, &[]);
    assert!(!ok && out.contains("sealed under a passphrase"), "{out}");
    let (ok, out) = verify(&data, &[("SEALDB_KEYSTORE_PASSWORD", "correct horse battery staple")]);
    assert!(ok, "{out}");
}

#[test]
fn a_data_directory_from_a_newer_format_is_refused_with_the_version() {
    let server = TestServer::start(&[]);
    let data = server.data.clone();
    let _dir = server.stop();
    let catalog = data.join("catalog");
    let mut bytes = std::fs::read(&catalog).unwrap();
    bytes[8..12].copy_from_slice(&9u32.to_le_bytes());
    std::fs::write(&catalog, &bytes).unwrap();
    let err = start_fails(&data, &[]);
    assert!(
        err.contains("format version 9") && err.contains("upgrade sealdb"),
        "{err}"
    );
}

#[test]
fn users_and_grants_survive_a_restart_and_no_file_shows_them_in_the_clear() {
    let server = TestServer::start(&[]);
    support::psql(
        &server.admin(),
        "CREATE USER persistent_alice WITH PASSWORD 'pw-MARKER-41c7' REQUIRE SSL; \
         CREATE ROLE persistent_readers; GRANT SELECT ON ALL TABLES TO persistent_readers; \
         GRANT persistent_readers TO persistent_alice;",
    )
    .expect_ok();
    let data = server.data.clone();
    let dir = server.stop();
    for needle in ["persistent_alice", "pw-MARKER-41c7", "persistent_readers"] {
        for f in support::files_under(&data) {
            if f.starts_with(data.join("certs")) {
                continue;
            }
            let bytes = std::fs::read(&f).unwrap();
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} in the clear in {}",
                f.display()
            );
        }
    }
    let server = TestServer::start_in(dir, &[]);
    let users = support::psql(&server.admin(), "SELECT user_name FROM sys.users ORDER BY user_name").expect_ok();
    assert!(
        users.contains("persistent_alice") && users.contains("persistent_readers"),
        "{users}"
    );
    let grants = support::psql(&server.admin(), "SELECT grantee, privilege FROM sys.grants").expect_ok();
    assert!(grants.contains("persistent_readers|SELECT"), "{grants}");
    let me = support::psql_pw(
        &server.password_conn("persistent_alice"),
        "pw-MARKER-41c7",
        "SELECT user_name FROM sys.sessions",
    );
    assert!(me.expect_ok().contains("persistent_alice"));
    support::psql(&server.admin(), "DROP USER persistent_alice").expect_ok();
    let dir = server.stop();
    let server = TestServer::start_in(dir, &[]);
    let users = support::psql(&server.admin(), "SELECT user_name FROM sys.users").expect_ok();
    assert!(!users.contains("persistent_alice"), "{users}");
}

#[test]
fn restarts_do_not_pile_up_log_files() {
    let mut server = TestServer::start(&[]);
    let data = server.data.clone();
    for i in 0..4 {
        support::psql(&server.admin(), &format!("CREATE ROLE pile_{i}")).expect_ok();
        let dir = server.stop();
        server = TestServer::start_in(dir, &[]);
    }
    let logs = std::fs::read_dir(data.join("log")).unwrap().count();
    assert!(logs <= 3, "{logs} log files after 4 restarts");
    let roles = support::psql(
        &server.admin(),
        "SELECT count(*) FROM sys.users WHERE user_name LIKE 'pile_%'",
    )
    .expect_ok();
    assert_eq!(roles.trim(), "4");
}
