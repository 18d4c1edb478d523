//! The master key on a real KMIP server (PyKMIP, started and stopped by
//! the test): `key-provider = "kmip:GROUP"` in `wrap` mode (the key never
//! leaves the key server; PEM client identity) and `get` mode (PKCS#12
//! client identity), through the real binary, psql and `sealdb kms`.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "support/kmip.rs"]
mod kmip_support;
mod support;

use std::path::Path;

use kmip_support::{KmipServer, Operator, Relay, certs, free_port};
use support::{TestServer, files_under, psql};

/// A config file with `key-provider = "kmip:hsm"`, its `[kmip_hosts.hsm]`
/// section written by `sealdb kms set`. In `get` mode the client identity
/// is a PKCS#12 keystore (made here with openssl) with its password in a
/// file; in `wrap` mode, PEM files.
fn config(dir: &Path, certs: &Path, hosts: &[String], mode: &str) -> String {
    config_with(dir, certs, hosts, mode, &[])
}

/// As [`config`], with more `sealdb kms set` flags (the key cache's times).
fn config_with(dir: &Path, certs: &Path, hosts: &[String], mode: &str, extra: &[&str]) -> String {
    let path = dir.join(format!("sealdb-{mode}-{}.toml", free_port()));
    std::fs::write(&path, "key-provider = \"kmip:hsm\"\n").unwrap();
    let mut set = std::process::Command::new(support::sealdb_bin());
    set.args([
        "kms",
        "set",
        "hsm",
        "--hosts",
        &hosts.join(","),
        "--timeout-ms",
        "3000",
        "--mode",
        mode,
    ])
    .args(extra)
    .arg("--config")
    .arg(&path);
    if !extra.contains(&"--ca") {
        set.arg("--ca").arg(certs.join("ca.crt"));
    }
    if mode == "get" {
        let p12 = certs.join("client.p12");
        let status = std::process::Command::new("openssl")
            .args(["pkcs12", "-export", "-passout", "pass:kmip-P12-secret", "-in"])
            .arg(certs.join("client.crt"))
            .arg("-inkey")
            .arg(certs.join("client.key"))
            .arg("-out")
            .arg(&p12)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::set_permissions(&p12, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let pass = certs.join("p12.pass");
        std::fs::write(&pass, "kmip-P12-secret\n").unwrap();
        set.arg("--keystore")
            .arg(&p12)
            .arg("--keystore-password-file")
            .arg(&pass);
    } else if !extra.contains(&"--client-cert") {
        set.arg("--client-cert")
            .arg(certs.join("client.crt"))
            .arg("--client-key")
            .arg(certs.join("client.key"));
    }
    let out = set.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("wrote [kmip_hosts.hsm]"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path.display().to_string()
}

/// `sealdb ARGS... [--data DATA]`: whether it succeeded, and what it
/// printed (stdout, then stderr).
fn sealdb(args: &[&str], data: Option<&Path>) -> (bool, String) {
    let mut command = std::process::Command::new(support::sealdb_bin());
    command.args(args);
    if let Some(data) = data {
        command.arg("--data").arg(data);
    }
    let out = command.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

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

/// Polls `done` every 200 ms until it holds or `limit` passes.
fn wait_for(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() > until {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
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

/// What the chaos test did to a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostFate {
    Up,
    Killed,
    Blocked,
}

/// One statement of the chaos workload: when it ran, and how it ended.
struct Ran {
    start: std::time::Instant,
    end: std::time::Instant,
    rotation: bool,
    error: Option<String>,
}

/// Key-server chaos: two PyKMIP hosts of one cluster are killed, restarted,
/// blocked (a relay in front of each drops their packets: connections
/// hang until the client's timeout) and
/// unblocked at random moments for `SEALDB_CHAOS_SECONDS` (60 in the test
/// suite), with one outage of both hosts longer than the grace period
/// forced in the middle, while a writer inserts rows and rotates the master
/// key. Then, from the timeline of which hosts were up:
/// - no statement fails while a host is up or the key cache is within its
///   grace period (with margins for the cache's refresh and the client's
///   timeout);
/// - once both hosts have been gone past the grace period, every insert
///   fails closed with the clear error, and service comes back by itself
///   when a host does;
/// - every acknowledged row is there once, no refused row is, and the data
///   directory verifies.
#[test]
fn random_kills_restarts_and_blocks_of_two_key_servers_never_fail_a_statement_while_one_answers() {
    use std::time::{Duration, Instant};
    const CACHE: Duration = Duration::from_millis(300);
    const GRACE: Duration = Duration::from_millis(8000);
    const TIMEOUT: Duration = Duration::from_millis(3000); // --timeout-ms of `config_with`
    // How late the gate can close or reopen after the fact: a refresh
    // period plus a timed-out try of each host, and a second of slack.
    const LATE: Duration = Duration::from_millis(300 + 2 * 3000 + 1000);
    let seconds: u64 = std::env::var("SEALDB_CHAOS_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);

    let keys = tempfile::tempdir().unwrap();
    let certs = certs(keys.path());
    let first = KmipServer::start(keys.path(), &certs);
    let second = first.peer();
    let relays = [Relay::to(first.port), Relay::to(second.port)];
    let cfg = config_with(
        keys.path(),
        &certs,
        &[relays[0].host(), relays[1].host()],
        "wrap",
        &["--key-cache-ms", "300", "--key-cache-grace-ms", "8000"],
    );
    let server = TestServer::start(&["--config", &cfg]);
    let admin = server.admin();
    psql(&admin, "CREATE TABLE t (id BIGINT NOT NULL)").expect_ok();

    // The writer: inserts numbered rows, and rotates the master key now and then.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (admin, stop) = (admin.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut ran = Vec::new();
            let mut acked = Vec::new();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let rotation = n.is_multiple_of(25);
                let sql = if rotation {
                    "ALTER SYSTEM ROTATE MASTER KEY".to_owned()
                } else {
                    format!("INSERT INTO t VALUES ({n})")
                };
                let start = Instant::now();
                let out = psql(&admin, &sql);
                let end = Instant::now();
                if out.ok && !rotation {
                    acked.push(n);
                }
                ran.push(Ran {
                    start,
                    end,
                    rotation,
                    error: (!out.ok).then(|| out.stderr.clone()),
                });
                std::thread::sleep(Duration::from_millis(50));
            }
            (ran, acked)
        })
    };

    // The chaos: (when, how many hosts answer from then on).
    let begin = Instant::now();
    let mut hosts = [first, second];
    let mut fate = [HostFate::Up, HostFate::Up];
    let mut timeline: Vec<(Instant, usize)> = vec![(begin, 2)];
    let mut faults = 0u32;
    let mut rng = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut random = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let total = Duration::from_secs(seconds);
    let forced_at = total * 2 / 5;
    let mut forced = false;
    let up = |fate: &[HostFate; 2]| fate.iter().filter(|f| **f == HostFate::Up).count();
    while begin.elapsed() < total {
        if !forced && begin.elapsed() >= forced_at {
            // Both hosts gone, one killed and one blocked, past the grace period.
            forced = true;
            for (h, how) in [(0, HostFate::Killed), (1, HostFate::Blocked)] {
                if fate[h] != HostFate::Up {
                    continue;
                }
                timeline.push((Instant::now(), up(&fate) - 1));
                if how == HostFate::Killed {
                    hosts[h].kill();
                } else {
                    relays[h].block();
                }
                fate[h] = how;
                faults += 1;
            }
            std::thread::sleep(GRACE + LATE + Duration::from_secs(4));
        } else {
            std::thread::sleep(Duration::from_millis(800 + random(2500)));
        }
        let h = random(2) as usize;
        match fate[h] {
            HostFate::Up => {
                timeline.push((Instant::now(), up(&fate) - 1));
                if random(2) == 0 {
                    hosts[h].kill();
                    fate[h] = HostFate::Killed;
                } else {
                    relays[h].block();
                    fate[h] = HostFate::Blocked;
                }
                faults += 1;
            }
            HostFate::Killed => {
                hosts[h].restart();
                fate[h] = HostFate::Up;
                timeline.push((Instant::now(), up(&fate)));
            }
            HostFate::Blocked => {
                relays[h].unblock();
                fate[h] = HostFate::Up;
                timeline.push((Instant::now(), up(&fate)));
            }
        }
    }
    // Everything back, and time for the server to notice.
    for h in 0..2 {
        match fate[h] {
            HostFate::Up => {}
            HostFate::Killed => hosts[h].restart(),
            HostFate::Blocked => relays[h].unblock(),
        }
    }
    timeline.push((Instant::now(), 2));
    std::thread::sleep(LATE);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ran, acked) = writer.join().unwrap();
    let end = Instant::now();

    // The outages of both hosts, and around each the window where the gate
    // may be closed (`maybe`) and where it must be (`surely`).
    let mut outages = Vec::new();
    let mut down_since = None;
    for (at, n) in &timeline {
        match (n, down_since) {
            (0, None) => down_since = Some(*at),
            (n, Some(d)) if *n > 0 => {
                outages.push((d, *at));
                down_since = None;
            }
            _ => {}
        }
    }
    if let Some(d) = down_since {
        outages.push((d, end));
    }
    let up_at = |t: Instant| {
        timeline
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map(|(_, n)| *n)
            .unwrap_or(2)
    };
    let overlaps = |a: Instant, b: Instant, from: Instant, to: Instant| a < to && b > from;
    let mut checked = 0;
    let mut required = 0;
    let mut failed_closed = 0;
    let mut problems = Vec::new();
    let mut surely_windows = 0;
    for (d, r) in &outages {
        if *r > *d + GRACE + LATE + Duration::from_secs(1) {
            surely_windows += 1;
        }
    }
    for s in &ran {
        let maybe_closed = outages.iter().any(|(d, r)| {
            let from = *d + GRACE.saturating_sub(TIMEOUT + CACHE + Duration::from_millis(500));
            *r > from && overlaps(s.start, s.end, from, *r + LATE)
        });
        let surely_closed = outages.iter().any(|(d, r)| s.start >= *d + GRACE + LATE && s.end <= *r);
        // A rotation needs a host for the whole statement, not only the cache.
        let host_throughout = timeline
            .iter()
            .filter(|(at, _)| *at > s.start && *at < s.end)
            .all(|(_, n)| *n > 0)
            && up_at(s.start) > 0;
        let must_succeed = !maybe_closed && (!s.rotation || host_throughout);
        checked += 1;
        required += usize::from(must_succeed);
        match (&s.error, must_succeed, surely_closed && !s.rotation) {
            (Some(e), true, _) => problems.push(format!(
                "failed at {:.1} s while a host answered or within the grace period: {e}",
                s.start.duration_since(begin).as_secs_f64()
            )),
            (None, _, true) => problems.push(format!(
                "an insert at {:.1} s succeeded past the grace period of an outage of both hosts",
                s.start.duration_since(begin).as_secs_f64()
            )),
            (Some(e), false, _) if !s.rotation => {
                failed_closed += 1;
                if !(e.contains("is unreachable") && e.contains("resumes by itself")) {
                    problems.push(format!("an insert refused without the clear error: {e}"));
                }
            }
            (Some(e), false, _) => {
                if !e.contains("kmip") && !e.contains("key server") {
                    problems.push(format!("a rotation failed without naming the key server: {e}"));
                }
            }
            (None, _, _) => {}
        }
    }
    eprintln!(
        "key-server chaos: {seconds} s, {faults} faults injected ({} host events), {} outages of both hosts ({surely_windows} past the grace period), {checked} statements checked ({required} of them while a host answered or within the grace period, none failed), {failed_closed} refused as the gate was closed, {} rows acknowledged",
        timeline.len(),
        outages.len(),
        acked.len()
    );
    assert!(
        problems.is_empty(),
        "{}\nserver log:\n{}",
        problems.join("\n"),
        server.stderr()
    );
    assert!(
        surely_windows >= 1,
        "no outage lasted past the grace period: the test proved nothing about failing closed"
    );
    assert!(
        failed_closed >= 1,
        "no insert was refused in the outage past the grace period"
    );
    assert!(
        required * 2 >= checked,
        "most statements fell in the margins: {required} of {checked}"
    );
    // Service is back by itself, and every acknowledged row is there once.
    assert!(
        wait_for(Duration::from_secs(30), || psql(&admin, "INSERT INTO t VALUES (0)").ok),
        "not resumed:\n{}",
        server.stderr()
    );
    let rows = psql(&admin, "SELECT id FROM t WHERE id > 0 ORDER BY id").expect_ok();
    let found: Vec<u64> = rows.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(found, acked, "exactly the acknowledged rows");
    let dir = server.stop();
    let (ok, report) = sealdb(&["verify", "--config", &cfg], Some(&dir.path().join("data")));
    assert!(ok, "sealdb verify: {report}");
}
