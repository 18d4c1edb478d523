//! The key lifecycle online, through psql against the real binary:
//! `ALTER TABLE t REKEY` while the table is written, `ALTER TABLE t SET
//! (encryption = ...)`, `ALTER SYSTEM REKEY`, the audit log, and the
//! security findings of `sys.security_status` and `sealdb status`.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use support::{TestServer, files_under, psql, psql_pw, sealdb_bin, sealdb_verify};

/// Polls `sys.jobs` until job `id` is no longer running; its row.
fn wait_for_job(admin: &str, id: u32) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let row = psql(
            admin,
            &format!(
                "SELECT state, bytes_done, bytes_total, destroyed_key_versions, error FROM sys.jobs WHERE job_id = {id}"
            ),
        )
        .expect_ok();
        if !row.starts_with("running") {
            return row;
        }
        assert!(Instant::now() < deadline, "job {id} still running: {row}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn files_containing(data: &Path, marker: &str) -> Vec<String> {
    files_under(data)
        .into_iter()
        .filter(|p| {
            std::fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).contains(marker))
                .unwrap_or(false)
        })
        .map(|p| p.display().to_string())
        .collect()
}

/// `sealdb status --data DATA` with `env`: exit success and output.
fn sealdb_status(data: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = std::process::Command::new(sealdb_bin());
    cmd.arg("status").arg("--data").arg(data);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = support::run_with_timeout(cmd, Duration::from_secs(60));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn rekey_runs_online_while_rows_are_inserted_updated_and_deleted_and_loses_none() {
    // Slow enough that the rewrite spans many statements: about one
    // segment a second.
    let server = TestServer::start(&["--rekey-max-bytes-per-sec", "2500"]);
    let admin = server.admin();
    psql(&admin, "CREATE TABLE m (id BIGINT NOT NULL, v BIGINT NOT NULL)").expect_ok();
    let mut model: BTreeMap<i64, i64> = BTreeMap::new();
    for batch in 0..4i64 {
        let (lo, hi) = (batch * 250, batch * 250 + 249);
        psql(
            &admin,
            &format!("INSERT INTO m SELECT value, value * 10 FROM generate_series({lo}, {hi})"),
        )
        .expect_ok();
        psql(&admin, "CHECKPOINT").expect_ok();
        for id in lo..=hi {
            model.insert(id, id * 10);
        }
    }
    psql(&admin, "ALTER TABLE m ROTATE KEY").expect_ok();
    psql(&admin, "ALTER TABLE m REKEY").expect_ok();
    let share = psql(
        &admin,
        "SELECT current_key_share FROM sys.tables WHERE table_name = 'public.m'",
    )
    .expect_ok();
    assert!(share.trim().parse::<f64>().unwrap() < 1.0, "{share}");

    // While the job runs: one insert, one update and one delete a round.
    let mut rounds_while_running = 0;
    for round in 0..200i64 {
        let next = 10_000 + round;
        let running = psql(&admin, "SELECT state FROM sys.jobs WHERE job_id = 1").expect_ok() == "running\n";
        if !running {
            break;
        }
        rounds_while_running += 1;
        let update = (round * 37) % 1000;
        let delete = (round * 53 + 11) % 1000;
        psql(
            &admin,
            &format!(
                "INSERT INTO m VALUES ({next}, {round}); UPDATE m SET v = v + 1 WHERE id = {update}; DELETE FROM m WHERE id = {delete}"
            ),
        )
        .expect_ok();
        model.insert(next, round);
        if let Some(v) = model.get_mut(&update) {
            *v += 1;
        }
        model.remove(&delete);
    }
    let job = wait_for_job(&admin, 1);
    assert!(job.starts_with("done|"), "{job}");
    assert!(job.contains("|1|"), "version 1 destroyed: {job}");
    assert!(
        rounds_while_running >= 3,
        "the rewrite was too quick to overlap writes: {rounds_while_running} rounds"
    );

    let expected: String = model.iter().map(|(id, v)| format!("{id}|{v}\n")).collect();
    let seen = psql(&admin, "SELECT id, v FROM m ORDER BY id").expect_ok();
    assert!(seen == expected, "rows differ from the model after the rekey");
    assert_eq!(
        psql(&admin, "SELECT count(*), count(DISTINCT id) FROM m").expect_ok(),
        format!("{}|{}\n", model.len(), model.len()),
        "no row lost or duplicated"
    );
    assert_eq!(
        psql(
            &admin,
            "SELECT current_key_share FROM sys.tables WHERE table_name = 'public.m'"
        )
        .expect_ok(),
        "1.0\n"
    );
    assert_eq!(
        psql(
            &admin,
            "SELECT version FROM sys.encryption_keys WHERE scope = 'table public.m'"
        )
        .expect_ok(),
        "2\n",
        "the older version is destroyed"
    );
    let dir = server.stop();
    let (ok, out) = sealdb_verify(&dir.path().join("data"), &[]);
    assert!(ok, "{out}");
    let server = TestServer::start_in(dir, &[]);
    assert!(psql(&server.admin(), "SELECT id, v FROM m ORDER BY id").expect_ok() == expected);
}

#[test]
fn set_encryption_converts_a_plaintext_table_and_back() {
    let server = TestServer::start(&[]);
    let admin = server.admin();
    let data = server.data.clone();
    psql(
        &admin,
        "CREATE TABLE p (id BIGINT, note TEXT) WITH (encryption = 'none')",
    )
    .expect_ok();
    psql(
        &admin,
        "INSERT INTO p SELECT value, 'clear-marker-' || value FROM generate_series(1, 100)",
    )
    .expect_ok();
    psql(&admin, "CHECKPOINT").expect_ok();
    assert!(
        !files_containing(&data, "clear-marker-").is_empty(),
        "a plaintext segment holds the marker"
    );
    let findings = psql(&admin, "SELECT finding FROM sys.security_status").expect_ok();
    assert!(findings.contains("unencrypted table"), "{findings}");

    psql(&admin, "ALTER TABLE p SET (encryption = 'aes-256-gcm')").expect_ok();
    let job = wait_for_job(&admin, 1);
    assert!(job.starts_with("done|"), "{job}");
    psql(&admin, "INSERT INTO p VALUES (101, 'clear-marker-new')").expect_ok();
    psql(&admin, "CHECKPOINT").expect_ok();
    assert_eq!(files_containing(&data, "clear-marker-"), Vec::<String>::new());
    assert_eq!(
        psql(&admin, "SELECT encryption, current_key_share FROM sys.tables").expect_ok(),
        "aes-256-gcm|1.0\n"
    );
    let findings = psql(&admin, "SELECT finding FROM sys.security_status").expect_ok();
    assert!(!findings.contains("unencrypted table"), "{findings}");

    psql(&admin, "ALTER TABLE p SET (encryption = 'none')").expect_ok();
    let job = wait_for_job(&admin, 2);
    assert!(job.starts_with("done|"), "{job}");
    assert_eq!(
        psql(&admin, "SELECT encryption, current_key_share FROM sys.tables").expect_ok(),
        "none|1.0\n",
        "every segment is in the clear again"
    );
    let findings = psql(&admin, "SELECT finding FROM sys.security_status").expect_ok();
    assert!(findings.contains("unencrypted table"), "{findings}");
    psql(&admin, "ALTER TABLE p SET (encryption = 'rot13')").expect_err("'aes-256-gcm' or 'none'");
    psql(&admin, "ALTER TABLE p SET (fillfactor = 10)").expect_err("only encryption");
    assert_eq!(psql(&admin, "SELECT count(*) FROM p").expect_ok(), "101\n");
}

#[test]
fn system_rekey_replaces_the_ring_and_system_keys_online() {
    let server = TestServer::start(&[]);
    let admin = server.admin();
    psql(&admin, "CREATE TABLE s (n INT)").expect_ok();
    psql(&admin, "INSERT INTO s VALUES (1), (2)").expect_ok();
    psql(&admin, "CHECKPOINT").expect_ok();
    psql(&admin, "INSERT INTO s VALUES (3)").expect_ok();
    let keys = "SELECT scope, wrapped_key_sha256 FROM sys.encryption_keys WHERE scope <> 'master' ORDER BY scope";
    let before = psql(&admin, keys).expect_ok();
    psql(&admin, "ALTER SYSTEM REKEY").expect_ok();
    psql(&admin, "INSERT INTO s VALUES (4)").expect_ok();
    let after = psql(&admin, keys).expect_ok();
    assert_eq!(before.lines().count(), after.lines().count());
    for (b, a) in before.lines().zip(after.lines()) {
        assert_ne!(b, a, "every wrapped key changes");
    }
    let events = psql(
        &admin,
        "SELECT event FROM sys.audit_log WHERE event LIKE 'system rekey%'",
    )
    .expect_ok();
    assert_eq!(events, "system rekey done\n");
    let dir = server.crash();
    let (ok, out) = sealdb_verify(&dir.path().join("data"), &[]);
    assert!(ok, "{out}");
    let server = TestServer::start_in(dir, &[]);
    assert_eq!(
        psql(&server.admin(), "SELECT n FROM s ORDER BY n").expect_ok(),
        "1\n2\n3\n4\n"
    );
}

#[test]
fn the_audit_log_records_logins_user_changes_and_key_operations_and_verify_checks_its_chain() {
    let server = TestServer::start(&[]);
    let admin = server.admin();
    let secret = "audit-secret-pw-1";
    psql(
        &admin,
        &format!("CREATE USER clerk WITH PASSWORD '{secret}' REQUIRE SSL"),
    )
    .expect_ok();
    psql(&admin, "CREATE TABLE ledger (n INT)").expect_ok();
    psql(&admin, "GRANT SELECT ON ledger TO clerk").expect_ok();
    psql_pw(&server.password_conn("clerk"), "wrong-password", "SELECT 1").expect_err("password authentication failed");
    psql_pw(&server.password_conn("clerk"), secret, "SELECT count(*) FROM ledger").expect_ok();
    psql(&admin, "ALTER TABLE ledger ROTATE KEY").expect_ok();
    psql(&admin, "ALTER SYSTEM ROTATE MASTER KEY").expect_ok();
    psql(&admin, "DROP USER clerk").expect_ok();

    let log = psql(
        &admin,
        "SELECT event, user_name, detail FROM sys.audit_log ORDER BY record",
    )
    .expect_ok();
    let has = |event: &str, user: &str, detail: &str| {
        log.lines()
            .any(|l| l.starts_with(&format!("{event}|{user}|")) && l.contains(detail))
    };
    assert!(has("login", "admin", "auth certificate, TLS TLSv1_3"), "{log}");
    assert!(has("login", "admin", "certificate \"O=sealdb, CN=admin\""), "{log}");
    assert!(has("create user", "admin", "clerk: password set, require SSL"), "{log}");
    assert!(has("grant", "admin", "SELECT on ledger to clerk"), "{log}");
    assert!(has("login failed", "clerk", "auth scram-sha-256"), "{log}");
    assert!(has("login", "clerk", "auth scram-sha-256-plus, TLS"), "{log}");
    assert!(has("table key created", "sealdb", "table ledger"), "{log}");
    assert!(has("table key rotated", "sealdb", "table ledger: version 2"), "{log}");
    assert!(
        has("master key rotated", "sealdb", "the key ring is re-wrapped"),
        "{log}"
    );
    assert!(has("drop user", "admin", "clerk"), "{log}");
    assert!(!log.contains(secret), "no password in the audit log");
    let chain = psql(
        &admin,
        "SELECT count(*) FROM sys.audit_log WHERE record > 1 AND length(prev_sha256) <> 64",
    )
    .expect_ok();
    assert_eq!(chain, "0\n", "every record names the hash of the one before it");

    let dir = server.stop();
    let data = dir.path().join("data");
    assert!(
        files_containing(&data, "login failed").is_empty(),
        "the audit log is encrypted"
    );
    let (ok, out) = sealdb_verify(&data, &[]);
    assert!(ok && out.contains("hash chain intact"), "{out}");

    // Off: nothing more is recorded, and it is a finding.
    let server = TestServer::start_in(dir, &["--audit-log", "off"]);
    let admin = server.admin();
    let count = psql(&admin, "SELECT count(*) FROM sys.audit_log").expect_ok();
    psql(&admin, "CREATE USER quiet").expect_ok();
    assert_eq!(psql(&admin, "SELECT count(*) FROM sys.audit_log").expect_ok(), count);
    let findings = psql(&admin, "SELECT severity, finding FROM sys.security_status").expect_ok();
    assert!(findings.contains("medium|audit log off"), "{findings}");
}

#[test]
fn a_default_installation_with_a_passphrase_has_no_high_finding_and_sealdb_status_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "correct horse battery staple").unwrap();
    let pass_arg = pass.display().to_string();
    let server = TestServer::start_in(dir, &["--keystore-password-file", &pass_arg]);
    let admin = server.admin();
    let findings = psql(&admin, "SELECT severity, finding FROM sys.security_status").expect_ok();
    assert!(!findings.contains("high|"), "{findings}");
    let env = [("SEALDB_KEYSTORE_PASSWORD", "correct horse battery staple")];
    let (ok, out) = sealdb_status(&server.data, &env);
    assert!(ok, "{out}");
    assert!(out.contains("0 high"), "{out}");

    // Old key versions in use, an unencrypted table, users with passwords.
    psql(&admin, "CREATE TABLE o (n INT)").expect_ok();
    psql(&admin, "INSERT INTO o VALUES (1)").expect_ok();
    psql(&admin, "CHECKPOINT").expect_ok();
    psql(&admin, "ALTER TABLE o ROTATE KEY").expect_ok();
    psql(&admin, "CREATE TABLE bare (n INT) WITH (encryption = 'none')").expect_ok();
    let live = psql(&admin, "SELECT severity, finding, fix FROM sys.security_status").expect_ok();
    assert!(
        live.contains("medium|old key versions still in use|ALTER TABLE o REKEY"),
        "{live}"
    );
    assert!(
        live.contains("medium|unencrypted table|ALTER TABLE bare SET (encryption = 'aes-256-gcm')"),
        "{live}"
    );
    let (ok, out) = sealdb_status(&server.data, &env);
    assert!(ok, "{out}");
    for finding in [
        "old key versions still in use",
        "unencrypted table",
        "user without REQUIRE SSL",
    ] {
        assert!(out.contains(finding), "sealdb status misses {finding}: {out}");
    }
    psql(&admin, "ALTER TABLE o REKEY").expect_ok();
    wait_for_job(&admin, 1);
    let live = psql(&admin, "SELECT finding FROM sys.security_status").expect_ok();
    assert!(!live.contains("old key versions"), "{live}");

    // Without the passphrase the master key sits unsealed: high, exit 1.
    let plain = TestServer::start(&[]);
    let (ok, out) = sealdb_status(&plain.data, &[]);
    assert!(
        !ok && out.contains("HIGH    master key unprotected on local disk"),
        "{out}"
    );
}

#[test]
fn keep_old_keys_keeps_the_older_versions_after_a_rekey() {
    let server = TestServer::start(&["--keep-old-keys"]);
    let admin = server.admin();
    psql(&admin, "CREATE TABLE k (n INT)").expect_ok();
    psql(&admin, "INSERT INTO k VALUES (1), (2)").expect_ok();
    psql(&admin, "CHECKPOINT").expect_ok();
    psql(&admin, "ALTER TABLE k ROTATE KEY").expect_ok();
    psql(&admin, "ALTER TABLE k REKEY").expect_ok();
    let job = wait_for_job(&admin, 1);
    assert!(job.starts_with("done|"), "{job}");
    assert_eq!(
        psql(
            &admin,
            "SELECT version, state FROM sys.encryption_keys WHERE scope = 'table public.k' ORDER BY version"
        )
        .expect_ok(),
        "1|deactivated\n2|active\n"
    );
    assert_eq!(
        psql(&admin, "SELECT current_key_share FROM sys.tables").expect_ok(),
        "1.0\n"
    );
}
