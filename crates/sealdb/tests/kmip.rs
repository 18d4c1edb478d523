//! The master key on a real KMIP server (PyKMIP, started and stopped by
//! the test): `key-provider = "kmip:GROUP"` in `wrap` mode (the key never
//! leaves the key server; PEM client identity) and `get` mode (PKCS#12
//! client identity), through the real binary, psql and `sealdb kms`.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "support/kmip_sealdb.rs"]
mod kmip_sealdb;
#[path = "support/kmip.rs"]
mod kmip_support;
mod support;

use std::path::Path;

use kmip_sealdb::{config, config_with, sealdb, wait_for};
use kmip_support::{KmipServer, Operator, certs, free_port};
use support::{TestServer, files_under, psql};

/// `cfg` without `key-provider`: the data directory keeps its master key
/// locally while `[kmip_hosts.hsm]` is there for tables or a later move.
fn local_master(cfg: &str) {
    let text = std::fs::read_to_string(cfg)
        .unwrap()
        .replace("key-provider = \"kmip:hsm\"\n", "");
    std::fs::write(cfg, text).unwrap();
}

#[test]
fn the_master_key_lives_on_the_kmip_server_and_a_cold_start_without_it_names_every_host() {
    let keys = tempfile::tempdir().unwrap();
    let certs = certs(keys.path());
    let kmip = KmipServer::start(keys.path(), &certs);
    let down = format!("localhost:{}", free_port());

    for mode in ["wrap", "get"] {
        let cfg = config(keys.path(), &certs, &[down.clone(), kmip.host()], mode);
        let server = TestServer::start(&["--config", &cfg]);
        assert!(
            !server.stderr().contains("stored unsealed"),
            "no local master key: {}",
            server.stderr()
        );
        let admin = server.admin();
        psql(&admin, "CREATE TABLE t (id BIGINT NOT NULL, secret TEXT)").expect_ok();
        psql(
            &admin,
            "INSERT INTO t VALUES (1, 'KMIP-MARKER-one'), (2, 'KMIP-MARKER-two')",
        )
        .expect_ok();
        let keys_row = psql(
            &admin,
            "SELECT provider, state FROM sys.encryption_keys WHERE scope = 'master'",
        )
        .expect_ok();
        assert!(keys_row.contains("kmip:hsm|active"), "{mode}: {keys_row}");
        let findings = psql(&admin, "SELECT finding, detail FROM sys.security_status").expect_ok();
        assert!(!findings.contains("master key"), "{mode}: {findings}");
        // The dead first host is reported; the live one answered.
        assert!(
            findings.contains(&format!("kmip host unreachable|key server {down} of [kmip_hosts.hsm]")),
            "{mode}: {findings}"
        );
        let hosts = psql(
            &admin,
            "SELECT \"group\", host, status, last_success IS NOT NULL, latency_ms > 0 FROM sys.kmip_hosts",
        )
        .expect_ok();
        assert_eq!(
            hosts,
            format!("hsm|{down}|unreachable|f|\nhsm|{}|ok|t|t\n", kmip.host()),
            "{mode}"
        );

        // Restart: the catalog's key ring is unwrapped by the key server.
        let dir = server.crash();
        let data = dir.path().join("data");
        assert!(
            !data.join("keystore/master.keys").exists(),
            "{mode}: no local master key file"
        );
        let server = TestServer::start_in(dir, &["--config", &cfg]);
        assert_eq!(
            psql(&server.admin(), "SELECT secret FROM t ORDER BY id").expect_ok(),
            "KMIP-MARKER-one\nKMIP-MARKER-two\n",
            "{mode}"
        );
        let dir = server.stop();
        if mode == "wrap" {
            kms_commands(&cfg, &data, &down, &kmip.host());
        }
        for file in files_under(&data) {
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                !bytes.windows(11).any(|w| w == b"KMIP-MARKER"),
                "{mode}: the marker is in {} in the clear",
                file.display()
            );
        }
        drop(dir);
    }

    // A cold start with no host reachable fails and lists every host tried.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(keys.path(), &certs, &[down.clone(), kmip.host()], "wrap");
    let server = TestServer::start_in(dir, &["--config", &cfg]);
    let dir = server.stop();
    drop(kmip);
    let e = TestServer::try_start_in(dir, &["--config", &cfg])
        .err()
        .expect("no key server: the start fails");
    assert!(e.contains("no KMIP host answered"), "{e}");
    assert!(e.contains(&down), "{e}");
}

/// The master key destroyed on the key server (as an operator would, in
/// its console): the next start fails and says the key is destroyed,
/// naming it, rather than reporting a failed decryption.
#[test]
fn a_master_key_destroyed_on_the_key_server_is_named_at_start() {
    let keys = tempfile::tempdir().unwrap();
    let certs = certs(keys.path());
    let kmip = KmipServer::start(keys.path(), &certs);
    let cfg = config(keys.path(), &certs, &[kmip.host()], "wrap");
    let server = TestServer::start(&["--config", &cfg]);
    psql(&server.admin(), "CREATE TABLE t (n INT)").expect_ok();
    let dir = server.stop();

    let operator = Operator::new(&certs, &[kmip.host()]);
    let ids = operator.master_keys(&dir.path().join("data"));
    for id in &ids {
        operator.destroy(id);
    }
    assert_eq!(ids.len(), 1, "one master key: {ids:?}");

    let e = TestServer::try_start_in(dir, &["--config", &cfg])
        .err()
        .expect("the master key is gone: the start fails");
    // PyKMIP forgets destroyed objects ("not in kmip:hsm; it was
    // destroyed..."); servers that keep them answer "is destroyed".
    assert!(
        e.contains(&format!("master key {} ", ids[0])) && e.contains("kmip:hsm") && e.contains("destroyed"),
        "{e}"
    );
}

/// `sealdb kms test` reports each host (the dead one fails the command),
/// and `sealdb kms list-keys` shows this installation's master key.
fn kms_commands(cfg: &str, data: &Path, down: &str, live: &str) {
    let (ok, text) = sealdb(&["kms", "test", "hsm", "--config", cfg], None);
    assert!(!ok, "a dead host fails the test: {text}");
    assert!(text.contains(&format!("FAILED  {down}: ")), "{text}");
    assert!(text.contains(&format!("ok      {live}")), "{text}");
    assert!(text.contains("TLS     TLSv1_2 TLS_ECDHE_ECDSA_WITH_AES_"), "{text}");
    assert!(
        text.contains("KMIP    2.0 (the server offers 2.0, 1.4, 1.3, 1.2, 1.1, 1.0)"),
        "{text}"
    );
    assert!(text.contains("supports every operation sealdb uses"), "{text}");
    assert!(text.contains("1 of 2 hosts of [kmip_hosts.hsm] failed"), "{text}");

    let (ok, text) = sealdb(&["kms", "list-keys", "--config", cfg], Some(data));
    assert!(ok, "{text}");
    let instance = std::fs::read_to_string(data.join("keystore/kmip-instance")).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(&format!("sealdb/{}/master-key", instance.trim())))
        .unwrap_or_else(|| panic!("no master key listed:\n{text}"));
    assert!(line.contains("AES-256") && line.contains("Active"), "{line}");
    assert!(
        text.contains(&format!(
            "1 object(s) named sealdb/{}/... on [kmip_hosts.hsm]",
            instance.trim()
        )),
        "{text}"
    );
    let id = line.split_whitespace().nth(1).unwrap().to_owned();
    assert!(line.starts_with("hsm "), "{line}");

    let (ok, text) = sealdb(&["kms", "info", "--config", cfg], Some(data));
    assert!(ok, "{text}");
    assert!(text.contains("key-provider    kmip:hsm"), "{text}");
    assert!(
        text.contains(&format!("[kmip_hosts.hsm] hosts {down}, {live}; mode wrap")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "master key      {id} at kmip:hsm; the key ring it wraps has SHA-256 "
        )),
        "{text}"
    );
    assert!(text.contains("on the server   state Active, name sealdb/"), "{text}");
    // Each wrapped key by its checksum: the key ring's is the one above.
    let ring_sha = text
        .split("the key ring it wraps has SHA-256 ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    assert!(
        text.contains("wrapped keys    4"),
        "master, key ring, system, one table key: {text}"
    );
    let ring = text
        .lines()
        .find(|l| l.trim_start().starts_with("key ring"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(ring.ends_with(ring_sha), "{ring}");
    assert!(text.lines().any(|l| l.trim_start().starts_with("table t ")), "{text}");
}

fn master_key_id(admin: &str) -> String {
    psql(admin, "SELECT key_id FROM sys.encryption_keys WHERE scope = 'master'")
        .expect_ok()
        .trim()
        .to_owned()
}

/// Revoking the master key on the key server (as an operator would) moves
/// sealdb to a new master key within key-cache-ms, with no failed
/// statement; the revoked key can then be destroyed without losing a row.
/// Destroying the master key in use stops reads and writes of stored
/// tables with an error naming the table, the key and its state, while the
/// system views stay readable.
#[test]
fn a_revoked_master_key_is_rotated_away_from_and_a_destroyed_one_stops_reads_naming_it() {
    let keys = tempfile::tempdir().unwrap();
    let certs = certs(keys.path());
    let kmip = KmipServer::start(keys.path(), &certs);
    let operator = Operator::new(&certs, &[kmip.host()]);
    let cfg = config_with(keys.path(), &certs, &[kmip.host()], "wrap", &["--key-cache-ms", "500"]);
    let server = TestServer::start(&["--config", &cfg]);
    let admin = server.admin();
    psql(&admin, "CREATE TABLE t (id BIGINT NOT NULL, note TEXT)").expect_ok();
    psql(&admin, "INSERT INTO t VALUES (1, 'before')").expect_ok();
    psql(&admin, "CHECKPOINT").expect_ok();
    let first = master_key_id(&admin);
    assert_eq!(operator.master_keys(&server.data), vec![first.clone()]);

    for (round, compromised) in [(1, false), (2, true)] {
        let revoked = master_key_id(&admin);
        operator.revoke(&revoked, compromised);
        let mut id = 100 * round;
        let moved = wait_for(std::time::Duration::from_secs(20), || {
            id += 1;
            psql(&admin, &format!("INSERT INTO t VALUES ({id}, 'during')")).expect_ok();
            master_key_id(&admin) != revoked
        });
        assert!(
            moved,
            "round {round}: still on the revoked master key:\n{}",
            server.stderr()
        );
        let state = if compromised { "compromised" } else { "deactivated" };
        // Logged once the rotation the catalog already shows has returned.
        let logged = format!("master key {revoked} is {state} on the key server: rotated to new master key");
        assert!(
            wait_for(std::time::Duration::from_secs(10), || server.stderr().contains(&logged)),
            "{}",
            server.stderr()
        );
        let new = master_key_id(&admin);
        assert_eq!(operator.state(&new).unwrap(), sealdb_kmip::State::Active);
        operator.destroy(&revoked);
    }
    let rows = psql(&admin, "SELECT count(*) FROM t").expect_ok();

    // The revoked keys are destroyed: a restart reads every row.
    let dir = server.stop();
    let server = TestServer::start_in(dir, &["--config", &cfg]);
    let admin = server.admin();
    assert_eq!(psql(&admin, "SELECT count(*) FROM t").expect_ok(), rows);
    assert_eq!(
        operator.master_keys(&server.data).len(),
        1,
        "the destroyed keys are gone"
    );

    // Destroying the master key in use closes the stored tables.
    let current = master_key_id(&admin);
    server.paused(|| operator.destroy(&current));
    let closed = wait_for(std::time::Duration::from_secs(20), || {
        !psql(&admin, "SELECT count(*) FROM t").ok
    });
    assert!(closed, "reads went on after the master key was destroyed");
    let err = psql(&admin, "SELECT * FROM t").expect_err("destroyed");
    assert!(
        err.contains("cannot use table \"t\"")
            && err.contains(&format!("master key {current} in kmip:hsm is destroyed")),
        "{err}"
    );
    psql(&admin, "INSERT INTO t VALUES (-1, 'after')")
        .expect_err(&format!("master key {current} in kmip:hsm is destroyed"));
    // The system views say why.
    let hosts = psql(&admin, "SELECT status FROM sys.kmip_hosts").expect_ok();
    assert_eq!(hosts, "ok\n");
    assert!(
        server.stderr().contains("is destroyed on the key server"),
        "{}",
        server.stderr()
    );
}

/// Two key servers of one cluster (sharing their keys). Killing the first
/// mid-workload fails no statement, and key operations go to the second.
/// With both down, sealdb serves from its key cache within
/// key-cache-grace-ms, then refuses stored tables with a clear error (the
/// system views still answer), and resumes by itself once a host is back,
/// with every acknowledged row there once and nothing else.
#[test]
fn key_server_outages_fail_over_are_served_within_the_grace_period_then_fail_closed_and_recover() {
    let keys = tempfile::tempdir().unwrap();
    let certs = certs(keys.path());
    let mut first = KmipServer::start(keys.path(), &certs);
    let mut second = first.peer();
    let cfg = config_with(
        keys.path(),
        &certs,
        &[first.host(), second.host()],
        "wrap",
        &["--key-cache-ms", "300", "--key-cache-grace-ms", "4000"],
    );
    let server = TestServer::start(&["--config", &cfg]);
    let admin = server.admin();
    psql(&admin, "CREATE TABLE t (id BIGINT NOT NULL)").expect_ok();
    let mut acknowledged = 0u64;
    let mut step = |admin: &str| -> Result<(), String> {
        let next = acknowledged + 1;
        let out = psql(admin, &format!("INSERT INTO t VALUES ({next}); SELECT count(*) FROM t"));
        if !out.ok {
            // The two statements are one implicit transaction, as in
            // PostgreSQL: if the gate closes before its end, the insert
            // is rolled back even when its own result was sent.
            return Err(out.stderr);
        }
        acknowledged = next;
        assert_eq!(out.stdout, format!("INSERT 0 1\n{next}\n"), "each row once");
        Ok(())
    };
    for _ in 0..3 {
        step(&admin).unwrap();
    }

    // The first host dies mid-workload: nothing fails, and a master-key
    // rotation (three key-server calls) is served by the second.
    first.kill();
    for _ in 0..5 {
        step(&admin).unwrap();
    }
    psql(&admin, "ALTER SYSTEM ROTATE MASTER KEY").expect_ok();
    for _ in 0..3 {
        step(&admin).unwrap();
    }
    let status = |admin: &str| psql(admin, "SELECT host, status FROM sys.kmip_hosts").expect_ok();
    let (first_host, second_host) = (first.host(), second.host());
    let both = |a: &str, b: &str| format!("{first_host}|{a}\n{second_host}|{b}\n");
    assert!(
        wait_for(std::time::Duration::from_secs(10), || status(&admin)
            == both("unreachable", "ok")),
        "{}",
        status(&admin)
    );

    // Both die: the key cache serves within the grace period...
    second.kill();
    let killed = std::time::Instant::now();
    step(&admin).unwrap();
    assert!(
        killed.elapsed() < std::time::Duration::from_secs(3),
        "the check ran within the grace period"
    );
    // ...then stored tables are refused, naming the cause and the fix.
    let mut refused = String::new();
    let closed = wait_for(std::time::Duration::from_secs(30), || match step(&admin) {
        Ok(()) => false,
        Err(e) => {
            refused = e;
            true
        }
    });
    assert!(closed, "served past the grace period:\n{}", server.stderr());
    assert!(
        refused.contains("cannot use table \"t\"")
            && refused.contains("in kmip:hsm is unreachable")
            && refused.contains("key-cache-grace-ms (4000 ms)")
            && refused.contains("resumes by itself"),
        "{refused}"
    );
    assert!(
        killed.elapsed() >= std::time::Duration::from_secs(3),
        "not before the grace period"
    );
    assert_eq!(status(&admin), both("unreachable", "unreachable"));
    assert!(
        server.stderr().contains("serving from the key cache"),
        "{}",
        server.stderr()
    );

    // A host comes back: service resumes by itself.
    first.restart();
    assert!(
        wait_for(std::time::Duration::from_secs(30), || step(&admin).is_ok()),
        "not resumed:\n{}",
        server.stderr()
    );
    assert!(
        server.stderr().contains("confirmed the master key again"),
        "{}",
        server.stderr()
    );
    let count = psql(&admin, "SELECT count(*), min(id), max(id) FROM t").expect_ok();
    assert_eq!(count, format!("{acknowledged}|1|{acknowledged}\n"));
}

/// A key server that speaks only KMIP 1.2 (no AES-GCM tag): sealdb
/// negotiates 1.2; `wrap` mode is refused, naming the version and the fix;
/// `get` mode keeps the master key on the server and works across restarts.
#[test]
fn a_key_server_that_speaks_only_kmip_1_2_serves_get_mode_and_refuses_wrap_clearly() {
    let keys = tempfile::tempdir().unwrap();
    let certs = certs(keys.path());
    let kmip = KmipServer::start_speaking(keys.path(), &certs, "1.2,1.1,1.0");

    let wrap = config(keys.path(), &certs, &[kmip.host()], "wrap");
    let (ok, text) = sealdb(&["kms", "test", "hsm", "--config", &wrap], None);
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "KMIP    1.2 (the server offers 1.2, 1.1, 1.0) (below 1.4: no AES-GCM tag, so mode = \"wrap\" cannot work"
        ),
        "{text}"
    );
    let e = TestServer::try_start_in(tempfile::tempdir().unwrap(), &["--config", &wrap])
        .err()
        .expect("wrap mode needs KMIP 1.4");
    assert!(
        e.contains(&format!("the key server {} speaks KMIP 1.2, and Encrypt with AES-GCM and an authenticated tag needs KMIP 1.4 or later", kmip.host()))
            && e.contains("mode = \"get\""),
        "{e}"
    );

    let get = config(keys.path(), &certs, &[kmip.host()], "get");
    let server = TestServer::start(&["--config", &get]);
    psql(&server.admin(), "CREATE TABLE t (n INT); INSERT INTO t VALUES (12)").expect_ok();
    let dir = server.stop();
    let server = TestServer::start_in(dir, &["--config", &get]);
    assert_eq!(psql(&server.admin(), "SELECT n FROM t").expect_ok(), "12\n");
}

/// TLS to the key server fails closed with the reason: a CA that did not
/// sign the server's certificate, a client certificate from another CA, an
/// expired client certificate. `kms test` and the start both say so.
#[test]
fn wrong_ca_foreign_client_certificate_and_expired_client_certificate_are_refused_with_the_reason() {
    let keys = tempfile::tempdir().unwrap();
    let certs = certs(keys.path());
    let other = {
        let dir = keys.path().join("other");
        std::fs::create_dir_all(&dir).unwrap();
        kmip_support::certs(&dir)
    };
    let kmip = KmipServer::start(keys.path(), &certs);
    let expired = keys.path().join("expired");
    std::fs::create_dir_all(&expired).unwrap();
    let (expired_crt, expired_key) = support::client_cert_with(
        &certs,
        &expired,
        "client",
        "sealdb",
        time::Duration::days(-30),
        time::Duration::days(-1),
        77,
    );
    let cases: [(&str, Vec<String>, &str); 3] = [
        (
            "wrong CA",
            vec!["--ca".into(), other.join("ca.crt").display().to_string()],
            "is not signed by the CA sealdb trusts for it",
        ),
        (
            "foreign client certificate",
            vec![
                "--client-cert".into(),
                other.join("client.crt").display().to_string(),
                "--client-key".into(),
                other.join("client.key").display().to_string(),
            ],
            "the key server refused sealdb's client certificate",
        ),
        (
            "expired client certificate",
            vec![
                "--client-cert".into(),
                expired_crt.display().to_string(),
                "--client-key".into(),
                expired_key.display().to_string(),
            ],
            "the client certificate O=sealdb, CN=sealdb expired on",
        ),
    ];
    for (case, flags, reason) in cases {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let cfg = config_with(keys.path(), &certs, &[kmip.host()], "wrap", &flags);
        let (ok, text) = sealdb(&["kms", "test", "hsm", "--config", &cfg], None);
        assert!(!ok, "{case}: {text}");
        assert!(text.contains(reason), "{case}: {text}");
        let e = TestServer::try_start_in(tempfile::tempdir().unwrap(), &["--config", &cfg])
            .err()
            .expect("no trusted key server: the start fails");
        assert!(e.contains(reason), "{case}: {e}");
        if case != "expired client certificate" {
            // Found in the handshake: the host is named.
            assert!(text.contains(&format!("FAILED  {}: ", kmip.host())), "{case}: {text}");
            assert!(
                e.contains(&format!("no KMIP host answered ({}: ", kmip.host())),
                "{case}: {e}"
            );
        } else {
            // Found before connecting: the file is named.
            assert!(e.contains(&expired_crt.display().to_string()), "{case}: {e}");
        }
    }
}

/// `sealdb kms enable GROUP` moves a data directory that has data from the
/// local master key to a new key on the key server: refused while the
/// server runs, then Create + Activate, the key ring re-wrapped, the local
/// key file destroyed and key-provider set; after a restart every row
/// reads back, under the KMIP master key.
#[test]
fn kms_enable_moves_a_data_directory_with_data_from_the_local_master_key_to_the_key_server() {
    let keys = tempfile::tempdir().unwrap();
    let certs = certs(keys.path());
    let kmip = KmipServer::start(keys.path(), &certs);
    let operator = Operator::new(&certs, &[kmip.host()]);
    // The [kmip_hosts.hsm] section, without key-provider: the data
    // directory starts on the local keystore.
    let cfg = config(keys.path(), &certs, &[kmip.host()], "wrap");
    local_master(&cfg);

    let server = TestServer::start(&["--config", &cfg]);
    let admin = server.admin();
    psql(&admin, "CREATE TABLE t (id BIGINT NOT NULL, secret TEXT)").expect_ok();
    psql(
        &admin,
        "INSERT INTO t SELECT value, 'ENABLE-MARKER-' || value FROM generate_series(1, 500)",
    )
    .expect_ok();
    psql(&admin, "CHECKPOINT").expect_ok();
    psql(&admin, "INSERT INTO t VALUES (501, 'ENABLE-MARKER-in-the-log')").expect_ok();
    assert!(
        psql(
            &admin,
            "SELECT provider FROM sys.encryption_keys WHERE scope = 'master'"
        )
        .expect_ok()
        .contains("local")
    );
    let enable = |data: &Path| sealdb(&["kms", "enable", "hsm", "--config", &cfg], Some(data));
    let (ok, text) = enable(&server.data);
    assert!(!ok && text.contains("in use by another sealdb process"), "{text}");
    let dir = server.stop();
    let data = dir.path().join("data");
    let keystore = data.join("keystore/master.keys");
    assert!(keystore.exists());

    let (ok, text) = enable(&data);
    assert!(ok, "{text}");
    let ids = operator.master_keys(&data);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = &ids[0];
    assert_eq!(operator.state(id).unwrap(), sealdb_kmip::State::Active);
    assert!(
        text.contains(&format!("created master key {id} (sealdb/")) && text.contains("on kmip:hsm and activated it"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "re-wrapped the key ring under master key {id} in kmip:hsm: the catalog names kmip:hsm"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("destroyed the local master key file {}", keystore.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("set key-provider = \"kmip:hsm\" in {cfg}")),
        "{text}"
    );
    assert!(!keystore.exists(), "the local master key file is gone");
    let (ok, text) = enable(&data);
    assert!(
        !ok && text.contains("already keeps its master key in kmip:hsm"),
        "{text}"
    );

    let server = TestServer::start_in(dir, &["--config", &cfg]);
    let admin = server.admin();
    assert_eq!(
        psql(
            &admin,
            "SELECT count(*), max(secret) FROM t WHERE secret LIKE 'ENABLE-MARKER-%'"
        )
        .expect_ok(),
        "501|ENABLE-MARKER-in-the-log\n"
    );
    assert_eq!(
        psql(
            &admin,
            "SELECT provider, key_id, state FROM sys.encryption_keys WHERE scope = 'master'"
        )
        .expect_ok(),
        format!("kmip:hsm|{id}|active\n")
    );
    psql(&admin, "INSERT INTO t VALUES (502, 'after')").expect_ok();
    let dir = server.stop();
    for file in files_under(&dir.path().join("data")) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(13).any(|w| w == b"ENABLE-MARKER"),
            "the marker is in {} in the clear",
            file.display()
        );
    }
    let (ok, report) = sealdb(&["verify", "--config", &cfg], Some(&dir.path().join("data")));
    assert!(ok, "sealdb verify: {report}");
}

/// The same move online: `ALTER SYSTEM SET key_provider = 'kmip:hsm'` on a
/// running server with data. Statements go on, the local key file is
/// destroyed, the config file names the group, the new master key is
/// watched (revoking it rotates), and a restart reads every row.
#[test]
fn alter_system_set_key_provider_moves_the_master_key_to_the_key_server_online() {
    let keys = tempfile::tempdir().unwrap();
    let certs = certs(keys.path());
    let kmip = KmipServer::start(keys.path(), &certs);
    let operator = Operator::new(&certs, &[kmip.host()]);
    let cfg = config_with(keys.path(), &certs, &[kmip.host()], "wrap", &["--key-cache-ms", "300"]);
    local_master(&cfg);

    let server = TestServer::start(&["--config", &cfg]);
    let admin = server.admin();
    psql(&admin, "CREATE TABLE t (id BIGINT NOT NULL)").expect_ok();
    psql(&admin, "INSERT INTO t SELECT value FROM generate_series(1, 100)").expect_ok();
    psql(&admin, "CHECKPOINT").expect_ok();
    psql(&admin, "INSERT INTO t VALUES (101)").expect_ok();
    psql(&admin, "ALTER SYSTEM SET key_provider = 'kmip:nowhere'").expect_err("[kmip_hosts.nowhere]");
    psql(&admin, "ALTER SYSTEM SET key_provider = 'local'").expect_err("already in local");
    psql(&admin, "ALTER SYSTEM SET key_provider = 'kmip:hsm'").expect_ok();
    let ids = operator.master_keys(&server.data);
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(
        psql(
            &admin,
            "SELECT provider, key_id FROM sys.encryption_keys WHERE scope = 'master'"
        )
        .expect_ok(),
        format!("kmip:hsm|{}\n", ids[0])
    );
    assert!(
        !server.data.join("keystore/master.keys").exists(),
        "the local key file is destroyed"
    );
    assert!(
        std::fs::read_to_string(&cfg)
            .unwrap()
            .contains("key-provider = \"kmip:hsm\"")
    );
    let stderr = server.stderr();
    assert!(stderr.contains("destroyed the local master key file"), "{stderr}");
    psql(&admin, "INSERT INTO t VALUES (102)").expect_ok();

    // Watched from now on: revoking it moves to a new master key.
    operator.revoke(&ids[0], false);
    assert!(
        wait_for(std::time::Duration::from_secs(20), || master_key_id(&admin) != ids[0]),
        "{}",
        server.stderr()
    );
    let dir = server.stop();
    let server = TestServer::start_in(dir, &["--config", &cfg]);
    assert_eq!(
        psql(&server.admin(), "SELECT count(*), max(id) FROM t").expect_ok(),
        "102|102\n"
    );
}

fn table_kek(admin: &str, table: &str) -> String {
    psql(
        admin,
        &format!("SELECT key_id FROM sys.encryption_keys WHERE scope LIKE 'table public.{table} key-encryption key%'"),
    )
    .expect_ok()
    .trim()
    .to_owned()
}

/// Tables with keys of their own on the key server while the master key
/// stays local: `WITH (key_provider = 'kmip:hsm', key_namespace =
/// 'payments')` creates a key named `sealdb/<id>/payments/<table>` there
/// (`kms list-keys` lists it). Revoking it re-wraps the table's versions
/// under a new key (the revoked one can go); destroying the current one
/// shreds that table only, also across a restart; DROP TABLE destroys a
/// table's key on the server.
#[test]
fn tables_with_keys_of_their_own_on_the_key_server() {
    let keys = tempfile::tempdir().unwrap();
    let certs = certs(keys.path());
    let kmip = KmipServer::start(keys.path(), &certs);
    let operator = Operator::new(&certs, &[kmip.host()]);
    let cfg = config_with(keys.path(), &certs, &[kmip.host()], "wrap", &["--key-cache-ms", "300"]);
    local_master(&cfg);

    let server = TestServer::start(&["--config", &cfg]);
    let admin = server.admin();
    psql(&admin, "CREATE TABLE bad (n INT) WITH (key_namespace = 'x')")
        .expect_err("give key_provider = 'kmip:GROUP' with it");
    psql(
        &admin,
        "CREATE TABLE bad (n INT) WITH (key_provider = 'kmip:hsm', encryption = 'none')",
    )
    .expect_err("encryption = 'none'");
    psql(&admin, "CREATE TABLE bad (n INT) WITH (key_provider = 'kmip:nowhere')").expect_err("[kmip_hosts.nowhere]");
    psql(
        &admin,
        "CREATE TABLE cards (n BIGINT NOT NULL, pan TEXT) WITH (key_provider = 'kmip:hsm', key_namespace = 'payments')",
    )
    .expect_ok();
    psql(&admin, "CREATE TABLE plain (n BIGINT NOT NULL)").expect_ok();
    psql(
        &admin,
        "INSERT INTO cards SELECT value, 'PAN-MARKER-' || value FROM generate_series(1, 50)",
    )
    .expect_ok();
    psql(&admin, "INSERT INTO plain SELECT value FROM generate_series(1, 10)").expect_ok();
    psql(&admin, "CHECKPOINT").expect_ok();
    psql(&admin, "INSERT INTO cards VALUES (51, 'PAN-MARKER-51')").expect_ok();
    let first = table_kek(&admin, "cards");
    assert!(!first.is_empty());
    assert_eq!(
        psql(
            &admin,
            "SELECT provider FROM sys.encryption_keys WHERE scope = 'master'"
        )
        .expect_ok(),
        "local\n"
    );

    let instance = std::fs::read_to_string(server.data.join("keystore/kmip-instance")).unwrap();
    let (ok, listed) = sealdb(&["kms", "list-keys", "--config", &cfg], Some(&server.data));
    assert!(ok, "{listed}");
    let line = listed
        .lines()
        .find(|l| l.contains(&format!("sealdb/{}/payments/cards", instance.trim())))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        line.contains(&format!(" {first} ")) && line.contains("AES-256") && line.contains("Active"),
        "{line}"
    );

    // A restart unwraps the table's key on the key server.
    let dir = server.stop();
    let server = TestServer::start_in(dir, &["--config", &cfg]);
    let admin = server.admin();
    assert_eq!(psql(&admin, "SELECT count(*) FROM cards").expect_ok(), "51\n");
    // A second version, wrapped by the same key on the key server.
    psql(&admin, "ALTER TABLE cards ROTATE KEY").expect_ok();
    assert_eq!(table_kek(&admin, "cards"), first);

    // Revoked: its versions move under a new key; the revoked key can go.
    operator.revoke(&first, false);
    assert!(
        wait_for(std::time::Duration::from_secs(20), || table_kek(&admin, "cards")
            != first),
        "{}",
        server.stderr()
    );
    let second = table_kek(&admin, "cards");
    psql(&admin, "INSERT INTO cards VALUES (52, 'PAN-MARKER-52')").expect_ok();
    operator.destroy(&first);
    let dir = server.stop();
    let server = TestServer::start_in(dir, &["--config", &cfg]);
    let admin = server.admin();
    assert_eq!(
        psql(&admin, "SELECT count(*), max(n) FROM cards").expect_ok(),
        "52|52\n"
    );

    // Destroyed: that table is shredded, the others read on.
    server.paused(|| operator.destroy(&second));
    let expected = format!("key {second} of table cards in kmip:hsm is destroyed");
    assert!(
        wait_for(std::time::Duration::from_secs(20), || !psql(
            &admin,
            "SELECT count(*) FROM cards"
        )
        .ok),
        "{}",
        server.stderr()
    );
    psql(&admin, "SELECT * FROM cards").expect_err(&expected);
    psql(&admin, "INSERT INTO cards VALUES (53, 'x')").expect_err(&expected);
    assert_eq!(psql(&admin, "SELECT count(*) FROM plain").expect_ok(), "10\n");
    let dir = server.stop();
    let server = TestServer::start_in(dir, &["--config", &cfg]);
    let admin = server.admin();
    psql(&admin, "SELECT * FROM cards").expect_err(&expected);
    assert_eq!(psql(&admin, "SELECT count(*) FROM plain").expect_ok(), "10\n");
    let dir_data = server.data.clone();
    for file in files_under(&dir_data) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(10).any(|w| w == b"PAN-MARKER"),
            "the marker is in {} in the clear",
            file.display()
        );
    }

    // DROP TABLE destroys the table's keys on the key server: the current
    // one and those it replaced.
    psql(&admin, "CREATE TABLE scratch (n INT) WITH (key_provider = 'kmip:hsm')").expect_ok();
    let replaced = table_kek(&admin, "scratch");
    operator.revoke(&replaced, true);
    assert!(wait_for(std::time::Duration::from_secs(20), || table_kek(
        &admin, "scratch"
    ) != replaced));
    let scratch = table_kek(&admin, "scratch");
    assert_eq!(operator.state(&scratch).unwrap(), sealdb_kmip::State::Active);
    psql(&admin, "DROP TABLE scratch").expect_ok();
    let gone = |id: &str| match operator.state(id) {
        Err(e) if e.is_not_found() => true,
        Ok(state) => matches!(
            state,
            sealdb_kmip::State::Destroyed | sealdb_kmip::State::DestroyedCompromised
        ),
        Err(e) => panic!("{e}"),
    };
    assert!(
        wait_for(std::time::Duration::from_secs(20), || gone(&scratch) && gone(&replaced)),
        "{}",
        server.stderr()
    );

    // `sealdb verify` opens the tables' own keys, and notes the shredded one.
    let dir = server.stop();
    let (ok, report) = sealdb(&["verify", "--config", &cfg], Some(&dir.path().join("data")));
    assert!(ok, "{report}");
    assert!(
        report.contains(&format!(
            "note    table cards: its key {second} is not on kmip:hsm (destroyed there"
        )),
        "{report}"
    );

    // A table's key gone while the log still holds writes to it (a crash
    // before they reached a segment): the start stops rather than let the
    // next checkpoint drop them, and changes nothing.
    let server = TestServer::start_in(dir, &["--config", &cfg]);
    let admin = server.admin();
    psql(&admin, "CREATE TABLE late (n INT) WITH (key_provider = 'kmip:hsm')").expect_ok();
    psql(&admin, "INSERT INTO late VALUES (1)").expect_ok();
    let late = table_kek(&admin, "late");
    let dir = server.crash();
    operator.destroy(&late);
    let e = TestServer::try_start_in(dir, &["--config", &cfg])
        .err()
        .expect("the log needs the missing key");
    assert!(
        e.contains("the key of table \"late\" cannot be opened")
            && e.contains(&format!(
                "key {late} of table late in kmip:hsm is not on the key server"
            ))
            && e.contains("nothing was changed"),
        "{e}"
    );
}

/// The master key revoked while sealdb was stopped. PyKMIP, unlike what
/// KMIP allows, refuses to decrypt with a deactivated key: the start fails
/// naming the key, its state and what to allow on the key server, rather
/// than reporting damaged data.
#[test]
fn a_master_key_revoked_while_sealdb_was_stopped_is_named_at_start() {
    let keys = tempfile::tempdir().unwrap();
    let certs = certs(keys.path());
    let kmip = KmipServer::start(keys.path(), &certs);
    let operator = Operator::new(&certs, &[kmip.host()]);
    let cfg = config(keys.path(), &certs, &[kmip.host()], "wrap");
    let server = TestServer::start(&["--config", &cfg]);
    psql(&server.admin(), "CREATE TABLE t (n INT)").expect_ok();
    let dir = server.stop();
    let ids = operator.master_keys(&dir.path().join("data"));
    operator.revoke(&ids[0], false);
    let e = TestServer::try_start_in(dir, &["--config", &cfg])
        .err()
        .expect("PyKMIP refuses to decrypt with a deactivated key");
    assert!(
        e.contains(&format!(
            "master key {} in kmip:hsm is deactivated on the key server",
            ids[0]
        )) && e.contains("allow that on the key server"),
        "{e}"
    );
    assert!(!e.contains("failed authentication"), "{e}");
}

/// A table's key destroyed on the key server in the middle of its REKEY:
/// the job stops with the key named (`sys.jobs` says failed, why, and how
/// far it got), the table is refused from then on, and the other tables
/// read and write on.
#[test]
fn a_key_destroyed_in_the_middle_of_a_rekey_stops_the_job_naming_the_key() {
    let keys = tempfile::tempdir().unwrap();
    let certs = certs(keys.path());
    let kmip = KmipServer::start(keys.path(), &certs);
    let operator = Operator::new(&certs, &[kmip.host()]);
    let cfg = config_with(keys.path(), &certs, &[kmip.host()], "wrap", &["--key-cache-ms", "300"]);
    local_master(&cfg);
    // About one segment every two seconds.
    let server = TestServer::start(&["--config", &cfg, "--rekey-max-bytes-per-sec", "700"]);
    let admin = server.admin();
    psql(
        &admin,
        "CREATE TABLE cards (n BIGINT NOT NULL) WITH (key_provider = 'kmip:hsm')",
    )
    .expect_ok();
    psql(&admin, "CREATE TABLE other (n BIGINT NOT NULL)").expect_ok();
    for batch in 0..4 {
        psql(
            &admin,
            &format!(
                "INSERT INTO cards SELECT value FROM generate_series({}, {})",
                batch * 100,
                batch * 100 + 99
            ),
        )
        .expect_ok();
        psql(&admin, "CHECKPOINT").expect_ok();
    }
    psql(&admin, "ALTER TABLE cards ROTATE KEY").expect_ok();
    let kek = table_kek(&admin, "cards");
    psql(&admin, "ALTER TABLE cards REKEY").expect_ok();
    assert!(
        wait_for(std::time::Duration::from_secs(20), || {
            psql(&admin, "SELECT bytes_done > 0 FROM sys.jobs WHERE job_id = 1").expect_ok() == "t\n"
        }),
        "the job made no progress"
    );
    server.paused(|| {
        operator.revoke(&kek, true);
        operator.destroy(&kek);
    });
    assert!(
        wait_for(std::time::Duration::from_secs(30), || {
            psql(&admin, "SELECT state FROM sys.jobs WHERE job_id = 1").expect_ok() == "failed\n"
        }),
        "the job did not stop: {}",
        psql(&admin, "SELECT * FROM sys.jobs").expect_ok()
    );
    let job = psql(
        &admin,
        "SELECT bytes_done < bytes_total, error FROM sys.jobs WHERE job_id = 1",
    )
    .expect_ok();
    assert!(
        job.starts_with("t|") && job.contains(&kek) && job.contains("destroyed"),
        "{job}"
    );
    psql(&admin, "SELECT count(*) FROM cards").expect_err("58000");
    psql(&admin, "INSERT INTO other VALUES (1)").expect_ok();
    assert_eq!(psql(&admin, "SELECT count(*) FROM other").expect_ok(), "1\n");
    let log = psql(
        &admin,
        "SELECT event FROM sys.audit_log WHERE event LIKE 'rekey%' OR event LIKE 'key%seen'",
    )
    .expect_ok();
    assert!(log.contains("rekey started") && log.contains("rekey failed"), "{log}");
    drop(kmip);
}
