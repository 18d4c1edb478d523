//! The attacks of the outside review (issue 17), each run as an attacker
//! would run it against the real binary, through psql, openssl, Python or
//! a raw socket, and each now refused. `docs/connections.md` and
//! `docs/storage.md` list the classes with the mechanism that closes them.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use std::process::Command;

use support::*;

/// A server with `accounts` (two rows) and a user `kim` who has no grant.
fn with_kim() -> (TestServer, String) {
    let server = TestServer::start(&[]);
    psql(
        &server.admin(),
        "create table accounts (id int, owner text, balance double); \
         insert into accounts values (1, 'ann', 10.5), (2, 'ben', 20); \
         create table copies (id int, owner text, balance double); \
         create user kim with password 'Kim-pw-1'",
    )
    .expect_ok();
    let kim = server.password_conn("kim");
    (server, kim)
}

fn kim_runs(kim: &str, sql: &str) -> Psql {
    psql_pw(kim, "Kim-pw-1", sql)
}

/// Hole 1: `PREPARE` / `EXECUTE` skipped the privilege check. Now PREPARE
/// checks its statement, and EXECUTE runs the stored plan through the same
/// check with the caller's grants at that moment.
#[test]
fn prepare_and_execute_are_checked_when_prepared_and_again_with_current_grants() {
    let (server, kim) = with_kim();
    for attack in [
        "prepare p as select * from accounts",
        // The value would come back in the cast's error.
        "prepare p as select cast(owner as int) from accounts",
        "prepare p as insert into copies select * from accounts",
        "prepare p as insert into accounts values (3, 'kim', 1000000)",
        "prepare p(int) as delete from accounts where id = $1",
    ] {
        let err = kim_runs(&kim, attack).expect_err("42501");
        assert!(!err.contains("ann"), "{attack}: a value leaked: {err}");
    }
    // What kim may do works, with parameters.
    let ran = kim_runs(&kim, "prepare q(int) as select $1 + 1; execute q(41)").expect_ok();
    assert_eq!(ran.trim().lines().last(), Some("42"), "{ran}");
    // A grant taken away between PREPARE and EXECUTE is honoured.
    psql(&server.admin(), "grant select on accounts to kim").expect_ok();
    let script = format!(
        "prepare r as select count(*) from accounts;\nexecute r;\n\\! psql \"{}\" -X -q -c \"revoke select on accounts from kim\"\nexecute r;\n",
        server.admin()
    );
    let run = psql_pw_script(&kim, "Kim-pw-1", &script);
    assert!(run.stdout.contains('2'), "the first EXECUTE ran: {}", run.stdout);
    run.expect_err("42501");
    // Nothing was inserted or copied by the refused statements.
    assert_eq!(
        psql(
            &server.admin(),
            "select (select count(*) from accounts) * 10 + (select count(*) from copies)"
        )
        .expect_ok()
        .trim(),
        "20"
    );
}

/// Hole 2: an UPDATE without WHERE read the target without SELECT, and a
/// value came back in a cast's error. Reading a column needs SELECT
/// wherever the read happens; writing constants does not.
#[test]
fn update_reading_its_target_needs_select_and_constant_writes_do_not() {
    let (server, kim) = with_kim();
    psql(&server.admin(), "grant update, delete on accounts to kim").expect_ok();
    for attack in [
        "update accounts set balance = cast(owner as double)",
        "update accounts set balance = id",
        "update accounts set owner = (select max(owner) from accounts)",
        "update accounts set balance = 0 where owner = 'ann'",
        "delete from accounts where owner like 'a%'",
    ] {
        let err = kim_runs(&kim, attack).expect_err("42501");
        assert!(err.contains("SELECT"), "{attack}: {err}");
        assert!(!err.contains("ann"), "{attack}: a value leaked: {err}");
    }
    kim_runs(&kim, "update accounts set balance = 0").expect_ok();
    assert_eq!(
        psql(&server.admin(), "select sum(balance) from accounts")
            .expect_ok()
            .trim(),
        "0"
    );
    kim_runs(&kim, "delete from accounts").expect_ok();
    assert_eq!(
        psql(&server.admin(), "select count(*) from accounts")
            .expect_ok()
            .trim(),
        "0"
    );
}

/// Hole 3: `SET datafusion.*` by any user: spill files moved to a plain
/// directory, a memory pool of its own, names resolved to `sys`. Only an
/// allow-list of harmless settings is a session's; the rest is refused to
/// everyone, administrators included.
#[test]
fn sessions_cannot_move_spills_lift_memory_limits_or_redirect_names() {
    let (server, kim) = with_kim();
    let plain = server.dir.path().join("plain-spill");
    for (who, conn) in [("kim", kim.as_str()), ("admin", server.admin().as_str())] {
        for attack in [
            format!("set datafusion.runtime.temp_directory = '{}'", plain.display()),
            "set datafusion.runtime.memory_limit = '1000G'".to_owned(),
            "set datafusion.catalog.default_schema = 'sys'".to_owned(),
            "set datafusion.sql_parser.enable_ident_normalization = false".to_owned(),
        ] {
            let run = if who == "kim" {
                kim_runs(conn, &attack)
            } else {
                psql(conn, &attack)
            };
            let err = run.expect_err("42501");
            assert!(err.contains("cannot be changed by a session"), "{who}: {attack}: {err}");
        }
    }
    assert!(!plain.exists(), "a refused SET created {}", plain.display());
    kim_runs(&kim, "reset datafusion.runtime.memory_limit").expect_err("ERROR");
    kim_runs(&kim, "set datafusion.execution.time_zone = '+01:00'").expect_ok();
    kim_runs(&kim, "set datafusion.execution.batch_size = 1").expect_err("42501");
    psql(&server.admin(), "set datafusion.execution.batch_size = 1024").expect_ok();
    // Session settings outside DataFusion's stay harmless and accepted.
    kim_runs(
        &kim,
        "set application_name = 'x'; set search_path = sys; select count(*) from sessions",
    )
    .expect_err("42P01");
    kim_runs(&kim, "select * from sys.users").expect_err("administrators only");
}

/// Hole 4 (CVE-2021-23214's class): bytes sent in the clear after an
/// SSLRequest and before the TLS handshake are refused with 08P01 once the
/// handshake is done, never read as the TLS client's.
#[test]
fn plaintext_injected_after_the_ssl_request_is_refused_not_run_as_the_victim() {
    let server = TestServer::start(&[]);
    let certs = server.certs();
    let out = Command::new(venv_python())
        .arg(py_dir().join("inject_after_sslrequest.py"))
        .arg(server.port.to_string())
        .arg(server.ca())
        .arg(certs.join("client.admin.crt"))
        .arg(certs.join("client.admin.key"))
        .arg("admin")
        .arg("create table injected (x int)")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("E 08P01 received unencrypted data after SSL request"),
        "{printed}"
    );
    assert!(
        !printed.contains("\nR\n") && !printed.contains("\nC\n"),
        "the injected login or query ran:\n{printed}"
    );
    assert!(server.stderr().contains("unencrypted data followed the SSL request"));
    assert_eq!(
        psql(
            &server.admin(),
            "select count(*) from information_schema.tables where table_name = 'injected'"
        )
        .expect_ok()
        .trim(),
        "0"
    );
}

fn wire_probe(args: &[&str]) -> String {
    let out = Command::new(venv_python())
        .arg(py_dir().join("wire_probe.py"))
        .args(args)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    printed
}

/// `USER SALT ITERATIONS SQLSTATE MESSAGE` for each user, from a stranger
/// without a certificate who runs SCRAM with a wrong proof.
fn scram_seen(server: &TestServer, users: &[&str]) -> Vec<Vec<String>> {
    let port = server.port.to_string();
    let ca = server.ca();
    let mut args = vec!["scram", port.as_str(), ca.as_str()];
    args.extend_from_slice(users);
    wire_probe(&args)
        .lines()
        .map(|l| l.splitn(5, ' ').map(str::to_owned).collect())
        .collect()
}

/// Hole 8: user enumeration. An unknown user, a user with a password, a
/// certificate-only user and users whose REQUIRE the connection does not
/// meet look the same from the wire: the same exchange, a salt stable per
/// name (the unknown one derived with a key only the server holds, kept
/// across restarts, not the public function of the name it was), the same
/// refusal. The server's log has the precise reason.
#[test]
fn unknown_and_existing_users_cannot_be_told_apart_from_the_wire() {
    let server = TestServer::start(&[]);
    psql(
        &server.admin(),
        "create user dan with password 'Dan-pw-1'; create user hal with password 'Hal-pw-1' require x509; \
         create user ivy with password 'Ivy-pw-1' require subject '/O=sealdb/CN=ivy'",
    )
    .expect_ok();
    let users = ["ghost", "dan", "hal", "ivy", "admin"];
    let first = scram_seen(&server, &users);
    let second = scram_seen(&server, &users);
    assert_eq!(first.len(), users.len(), "{first:?}");
    for (row, again) in first.iter().zip(&second) {
        let (user, salt, iterations, code, message) = (&row[0], &row[1], &row[2], &row[3], &row[4]);
        assert_eq!(salt.len(), 32, "{row:?}");
        assert_eq!(iterations, &first[1][2], "{row:?}");
        assert_eq!(code, "28P01", "{row:?}");
        assert_eq!(
            message,
            &format!("password authentication failed for user \"{user}\""),
            "{row:?}"
        );
        assert_eq!(salt, &again[1], "the salt of {user} changed between attempts");
    }
    // Not the old, public derivation from the name.
    use sha2::Digest;
    let public = sha2::Sha256::digest(b"sealdb-unknown-user:ghost");
    let public: String = public[..16].iter().map(|b| format!("{b:02x}")).collect();
    assert_ne!(first[0][1], public);
    assert!(server.stderr().contains("REQUIRE X509"), "{}", server.stderr());
    // The same salt for the unknown name after a restart: the key is kept.
    let dir = server.stop();
    let server = TestServer::start_in(dir, &[]);
    assert_eq!(scram_seen(&server, &["ghost"])[0][1], first[0][1]);
}

/// Hole 7: REQUIRE SUBJECT compared strings split on commas. A certificate
/// whose O is "Example, Evil" no longer passes for O=Example, and a real
/// "Example, Inc." matches its escaped or slash form.
#[test]
fn a_comma_in_a_certificate_name_cannot_satisfy_require_subject() {
    use time::Duration as D;
    let server = TestServer::start(&[]);
    psql(
        &server.admin(),
        "create user eve require subject '/O=Example/CN=eve'; \
         create user inc require subject 'CN=inc,O=Example\\, Inc.'",
    )
    .expect_ok();
    let dir = tempfile::tempdir().unwrap();
    let (evil_crt, evil_key) = client_cert_with_names(
        &server.ca_dir(),
        dir.path(),
        "evil",
        &[("O", "Example, Evil"), ("CN", "eve")],
        D::hours(-1),
        D::days(30),
        5001,
    );
    psql(&conn_with_cert(&server, "eve", &evil_crt, &evil_key), "select 1")
        .expect_err("does not match the subject required");
    let (inc_crt, inc_key) = client_cert_with_names(
        &server.ca_dir(),
        dir.path(),
        "inc",
        &[("O", "Example, Inc."), ("CN", "inc")],
        D::hours(-1),
        D::days(30),
        5002,
    );
    let shown = psql(
        &conn_with_cert(&server, "inc", &inc_crt, &inc_key),
        "select client_cert_subject from sys.sessions",
    )
    .expect_ok();
    // Shown escaped: it cannot be read as two attributes.
    assert_eq!(shown.trim(), "O=Example\\, Inc., CN=inc");
    // A REQUIRE that is not a name is refused when written.
    psql(&server.admin(), "create user bad require subject 'CN=a\\'").expect_err("not a distinguished name");
}

/// Hole 10: cancel requests were honoured in plaintext when TLS is
/// required. A plaintext one is now ignored (the query goes on; the log
/// says why), and one over TLS cancels.
#[test]
fn a_plaintext_cancel_request_is_ignored_when_tls_is_required() {
    let server = TestServer::start(&[]);
    let certs = server.certs();
    let port = server.port.to_string();
    let ca = server.ca();
    let (cert, key) = (
        certs.join("client.admin.crt").display().to_string(),
        certs.join("client.admin.key").display().to_string(),
    );
    let printed = wire_probe(&["cancel", &port, &ca, &cert, &key]);
    assert!(printed.contains("plaintext-cancel: server closed"), "{printed}");
    assert!(
        printed.contains("query: 57014"),
        "the TLS cancel request cancels: {printed}"
    );
    assert!(
        server.stderr().contains("cancel request refused: it came in plaintext"),
        "{}",
        server.stderr()
    );
}

/// Hole 11: silent connections filled `max-connections` and locked
/// everyone out. Unauthenticated connections have their own slots, one
/// address only its share of them, and the last session slots are the
/// administrators'.
#[test]
fn silent_connections_cannot_lock_out_an_administrator_and_the_last_slots_are_theirs() {
    let server = TestServer::start(&[
        "--max-connections",
        "3",
        "--superuser-reserved-connections",
        "1",
        "--max-unauthenticated-connections",
        "40",
        "--max-unauthenticated-per-address",
        "10",
    ]);
    psql(&server.admin(), "create user kim with password 'Kim-pw-1'").expect_ok();
    // 200 connections from another address (127.0.0.2) that never speak.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let port = server.port;
    let silent = runtime.block_on(async move {
        let mut held = Vec::new();
        for _ in 0..200 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            if let Ok(stream) = socket.connect(([127, 0, 0, 1], port).into()).await {
                held.push(stream);
            }
        }
        held
    });
    assert!(
        silent.len() >= 150,
        "the flood could not even connect: {}",
        silent.len()
    );
    // The administrator, from 127.0.0.1, gets in during the flood.
    assert_eq!(psql(&server.admin(), "select 1").expect_ok().trim(), "1");
    assert!(
        server.stderr().contains("connections closed before TLS"),
        "{}",
        server.stderr()
    );
    drop(silent);
    // Two sessions of kim take the slots everyone may take; a third is
    // refused, naming the reserve; an administrator still gets in.
    let kim = format!("{} password=Kim-pw-1", server.password_conn("kim"));
    let mut first = LongSession::open(&kim);
    let mut second = LongSession::open(&kim);
    assert_eq!(first.query("select 1"), "1");
    assert_eq!(second.query("select 1"), "1");
    psql_pw(&server.password_conn("kim"), "Kim-pw-1", "select 1").expect_err("reserved for administrators");
    assert_eq!(psql(&server.admin(), "select 1").expect_ok().trim(), "1");
}

/// Hole 14, in part: passwords on the command line are refused (naming
/// the flag, never the value), and one given in the environment is gone
/// from the running server's environment, `/proc/PID/environ` included.
#[test]
fn passwords_are_refused_as_flags_and_wiped_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(sealdb_bin())
        .args(["start", "--data"])
        .arg(dir.path().join("data"))
        .args(["--ssl-keystore-password", "Keystore-pw"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("--ssl-keystore-password is refused"), "{said}");
    assert!(!said.contains("Keystore-pw"), "the value was printed: {said}");

    let server = TestServer::start_with_env(&[], &[("SEALDB_KEYSTORE_PASSWORD", "correct horse battery staple")]);
    let environ = std::fs::read(format!("/proc/{}/environ", server.child.id())).unwrap();
    assert!(
        memchr::memmem::find(&environ, b"correct horse").is_none(),
        "the passphrase is still in /proc/PID/environ"
    );
    assert_eq!(psql(&server.admin(), "select 1").expect_ok().trim(), "1");
    let dir = server.stop();
    // The keystore is sealed under it: a start without it is refused.
    let refused = TestServer::try_start_in(dir, &[]).err().unwrap_or_default();
    assert!(refused.contains("sealed under a passphrase"), "{refused}");
}

/// Hole 14, in part: a client-controlled name with a newline or an escape
/// sequence cannot forge a line of the server's log: not a user name in a
/// field, not a table name inside a logged message.
#[test]
fn a_user_name_cannot_forge_a_log_line() {
    let server = TestServer::start(&[]);
    psql(
        &server.admin(),
        "create table \"t\n2026-01-01T00:00:00Z  INFO table\" (x int); create user kim with password 'Kim-pw-1'",
    )
    .expect_ok();
    psql_pw(
        &server.password_conn("kim"),
        "Kim-pw-1",
        "select * from \"t\n2026-01-01T00:00:00Z  INFO table\"",
    )
    .expect_err("42501");
    let forged = "x\n2026-01-01T00:00:00Z  INFO sealdb_server::startup: session started user=\"admin\"\x1b[2J";
    let out = Command::new(venv_python())
        .arg(py_dir().join("wire_probe.py"))
        .args(["scram", &server.port.to_string(), &server.ca(), forged])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = server.stderr();
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01")),
        "a forged line:\n{log}"
    );
    assert!(!log.contains('\x1b'), "an escape sequence reached the log");
    assert!(log.contains("x\\n2026-01-01"), "the user name, escaped: {log}");
    assert!(log.contains("t\\x0a2026-01-01"), "the table name, escaped: {log}");
}

/// Hole 5: every refused startup was an fsynced audit record with a user
/// name of up to 10 KB. Now the first refusal from an address in an
/// interval is written, the others are counted into one record when the
/// interval ends, and names are cut.
#[test]
fn refused_startups_cannot_grow_the_audit_log_without_bound() {
    let server = TestServer::start(&["--audit-failed-login-interval", "1s"]);
    let count_failed = || {
        psql(
            &server.admin(),
            "select count(*) from sys.audit_log where event = 'login failed'",
        )
        .expect_ok()
        .trim()
        .parse::<u64>()
        .unwrap()
    };
    let before = count_failed();
    let long = "n".repeat(9_000);
    for i in 0..300 {
        let fields = plaintext_startup_error(server.port, &format!("{long}{i}"));
        assert_eq!(fields.get(&b'C').map(String::as_str), Some("28000"));
    }
    assert!(count_failed() - before <= 2, "every refusal became a record");
    // The interval ends: one record counts the others.
    let counted = (0..50).find_map(|_| {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let text = psql(
            &server.admin(),
            "select detail from sys.audit_log where event = 'login failed (counted)'",
        )
        .expect_ok();
        (!text.trim().is_empty()).then_some(text)
    });
    let counted = counted.expect("no record of the counted refusals");
    assert!(counted.contains("299 more failed logins from 127.0.0.1"), "{counted}");
    let longest = psql(&server.admin(), "select max(length(user_name)) from sys.audit_log")
        .expect_ok()
        .trim()
        .parse::<u64>()
        .unwrap();
    assert!(longest < 100, "a name of {longest} characters was kept");
}

/// Hole 6: log and audit keys came from sequence numbers and nonces from
/// record numbers, both recomputed from the files at start, so a restored
/// backup sealed new records under the (key, nonce) pairs the original
/// had used: the same-named files XORed to `A xor B`. Every file now has
/// a random salt in its authenticated header that enters its keys.
#[test]
fn a_restored_backup_never_reuses_a_keystream() {
    let original = TestServer::start(&[]);
    psql(
        &original.admin(),
        "create table t (note text); insert into t values ('start')",
    )
    .expect_ok();
    let dir = original.stop();
    let backup = tempfile::tempdir().unwrap();
    copy_tree(&dir.path().join("data"), &backup.path().join("data"));

    let original = TestServer::start_in(dir, &[]);
    psql(
        &original.admin(),
        &format!("insert into t values ('{}')", "A".repeat(200)),
    )
    .expect_ok();
    let original_dir = original.stop();
    let restored = TestServer::start_in(backup, &[]);
    psql(
        &restored.admin(),
        &format!("insert into t values ('{}')", "B".repeat(200)),
    )
    .expect_ok();
    let restored_dir = restored.stop();

    let mut compared = 0;
    for sub in ["log", "audit"] {
        let theirs = restored_dir.path().join("data").join(sub);
        for entry in std::fs::read_dir(original_dir.path().join("data").join(sub)).unwrap() {
            let ours = entry.unwrap().path();
            let Ok(other) = std::fs::read(theirs.join(ours.file_name().unwrap())) else {
                continue;
            };
            let mine = std::fs::read(&ours).unwrap();
            // A keystream used twice shows as a run of equal bytes in the
            // XOR of the two ciphertexts (0x03 for A against B).
            let xor: Vec<u8> = mine.iter().zip(&other).map(|(a, b)| a ^ b).collect();
            let longest_run = xor
                .chunk_by(|a, b| a == b && *a != 0)
                .map(|run| if run[0] == 0 { 0 } else { run.len() })
                .max()
                .unwrap_or(0);
            assert!(
                longest_run < 16,
                "{} and its restored twin XOR to a run of {longest_run} equal bytes: a keystream was reused",
                ours.display()
            );
            compared += 1;
        }
    }
    assert!(compared >= 2, "no same-named log and audit files to compare");
}

/// Hole 9: CRLs checked only the leaf, allowed an unknown status and were
/// used silently past their next update. Now every certificate of the
/// chain is checked (a revoked intermediate CA refuses its leaves); with
/// CRLs configured, a certificate whose issuer has none is refused; and a
/// stale CRL is a warning and a finding, or, with `ssl-crl-expired =
/// refuse`, a refusal.
#[test]
fn crls_cover_the_whole_chain_and_a_stale_crl_is_a_finding_or_a_refusal() {
    use time::Duration as D;
    let bootstrap = TestServer::start(&[]);
    let root = bootstrap.ca_dir();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let inter = intermediate_ca(&root, w, "inter", 7001);
    let (leaf, leaf_key) = client_cert_with(&inter, w, "leaf", "admin", D::hours(-1), D::days(3), 7002);
    let chain = w.join("chain.crt");
    let chain_pem = [
        std::fs::read_to_string(&leaf).unwrap(),
        std::fs::read_to_string(inter.join("ca.crt")).unwrap(),
    ]
    .concat();
    std::fs::write(&chain, chain_pem).unwrap();
    let (direct, direct_key) = client_cert_with(&root, w, "direct", "admin", D::hours(-1), D::days(3), 7003);
    let (root_none, root_revokes, root_stale, inter_none) = (
        w.join("root-none.crl"),
        w.join("root-revokes.crl"),
        w.join("root-stale.crl"),
        w.join("inter-none.crl"),
    );
    write_crl(&root, &root_none, &[]);
    write_crl(&root, &root_revokes, &[7001]);
    write_crl_until(&root, &root_stale, &[], D::days(-1));
    write_crl(&inter, &inter_none, &[]);
    let data = bootstrap.stop();
    let start = |args: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&data.path().join("data"), &dir.path().join("data"));
        TestServer::start_in(dir, args)
    };
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();

    // The intermediate is revoked by the root: its leaf is refused.
    let server = start(&["--ssl-crl", &path(&root_revokes), "--ssl-crl", &path(&inter_none)]);
    psql(&conn_with_cert(&server, "admin", &chain, &leaf_key), "select 1").expect_err("has been revoked");
    drop(server);
    // Nothing revoked: the chain is accepted.
    let server = start(&["--ssl-crl", &path(&root_none), "--ssl-crl", &path(&inter_none)]);
    psql(&conn_with_cert(&server, "admin", &chain, &leaf_key), "select 1").expect_ok();
    drop(server);
    // No CRL from the intermediate: its leaf's status is unknown, refused.
    let server = start(&["--ssl-crl", &path(&root_none)]);
    psql(&conn_with_cert(&server, "admin", &chain, &leaf_key), "select 1").expect_err("revocation status");
    drop(server);
    // A stale CRL: accepted by default, with a warning and a finding.
    let server = start(&["--ssl-crl", &path(&root_stale)]);
    psql(&conn_with_cert(&server, "admin", &direct, &direct_key), "select 1").expect_ok();
    assert!(server.stderr().contains("past its next update"), "{}", server.stderr());
    let findings = psql(&server.admin(), "select finding from sys.security_status").expect_ok();
    assert!(findings.contains("CRL past its next update"), "{findings}");
    drop(server);
    // ... and refused when the operator says so.
    let server = start(&["--ssl-crl", &path(&root_stale), "--ssl-crl-expired", "refuse"]);
    psql(&conn_with_cert(&server, "admin", &direct, &direct_key), "select 1").expect_err("past its next update");
}

/// Hole 13, in part: messages of up to 1 GiB were buffered, before
/// authentication too. A message is now refused as soon as its length
/// field arrives: over 16 KB before login (08P01), over
/// `max-message-bytes` after it (54000), and the server's memory stays
/// small.
#[test]
fn oversized_messages_are_refused_on_their_length_before_they_are_buffered() {
    let server = TestServer::start(&["--max-message-bytes", "64MB"]);
    let certs = server.certs();
    let (port, ca) = (server.port.to_string(), server.ca());
    let (cert, key) = (
        certs.join("client.admin.crt").display().to_string(),
        certs.join("client.admin.key").display().to_string(),
    );
    let printed = wire_probe(&["big", &port, &ca, &cert, &key]);
    assert!(printed.contains("before-login: 08P01"), "{printed}");
    assert!(
        printed.contains("after-login: 54000 a message of 209715200 bytes is over max-message-bytes"),
        "{printed}"
    );
    let resident = proc_status_kib(server.child.id(), "VmHWM").unwrap_or(0);
    assert!(resident < 150 * 1024, "the server grew to {resident} KiB");
    assert_eq!(psql(&server.admin(), "select 1").expect_ok().trim(), "1");
}

/// Hole 15: with the local master key, DROP TABLE did not shred: a copy of
/// the catalog from before the drop, with the `master.keys` the server
/// keeps using, still opened the dropped table. DROP now replaces the key
/// ring and the master key and destroys the old master key: that copy no
/// longer opens at all, while the data that remains reads as before.
#[test]
fn a_catalog_from_before_drop_table_cannot_be_opened_with_the_keys_that_remain() {
    let server = TestServer::start(&[]);
    psql(
        &server.admin(),
        "create table secret (note text); insert into secret values ('shred-marker'); checkpoint; \
         create table kept (x int); insert into kept values (42); checkpoint",
    )
    .expect_ok();
    let dir = server.stop();
    let before = tempfile::tempdir().unwrap();
    copy_tree(&dir.path().join("data"), &before.path().join("data"));

    let server = TestServer::start_in(dir, &["--audit-failed-login-interval", "1s"]);
    psql(&server.admin(), "drop table secret").expect_ok();
    // The old master key goes in the background, right after the drop.
    let destroyed = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        psql(
            &server.admin(),
            "select count(*) from sys.audit_log where event = 'key destroyed'",
        )
        .expect_ok()
        .trim()
            != "0"
    });
    assert!(destroyed, "the old master key was not destroyed");
    let dir = server.stop();
    // What remains reads as before, after a restart.
    let server = TestServer::start_in(dir, &[]);
    assert_eq!(psql(&server.admin(), "select x from kept").expect_ok().trim(), "42");
    let dir = server.stop();
    assert!(sealdb_verify(&dir.path().join("data"), &[]).0);

    // The attacker's copy: the catalog (and files) from before the drop,
    // with the keystore as the server keeps it now.
    let keystore = dir.path().join("data").join("keystore");
    for entry in std::fs::read_dir(&keystore).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            before.path().join("data").join("keystore").join(entry.file_name()),
        )
        .unwrap();
    }
    let (ok, said) = sealdb_verify(&before.path().join("data"), &[]);
    assert!(!ok, "the old catalog still opens:\n{said}");
    assert!(said.contains("master key"), "{said}");
    let refused = TestServer::try_start_in(before, &[]).err().unwrap_or_default();
    assert!(refused.contains("master key"), "{refused}");
}
