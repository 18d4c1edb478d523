//! The secrets check itself: the list of known test secrets is complete,
//! and the scan that every test server's drop runs (`support/secrets.rs`)
//! does find a password, a private key or an unsealed master key written
//! where it must not be, and a key file others can read.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::{TestServer, psql, secrets};

/// Every quoted password in the tests and their Python helpers is listed.
#[test]
fn every_password_the_tests_use_is_a_known_secret() {
    let known = secrets::known_secrets();
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let patterns = [
        r"(?i)with password '([^']{6,})'",
        r"(?i)password '([^']{6,})'",
        r"pass:([^\s\x22]{6,})",
        r"password=([^\s\x22']{6,})",
        r#"_PASSWORD", "([^"]{6,})""#,
        r#"std::fs::write\(&(?:pw|pass)\w*, "([^"\\]{6,})"#,
    ];
    let patterns: Vec<regex::Regex> = patterns.iter().map(|p| regex::Regex::new(p).expect("regex")).collect();
    let mut missing = Vec::new();
    let mut seen = 0;
    for file in support::files_under(&tests) {
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext != "rs" && ext != "py" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("test source");
        for re in &patterns {
            for cap in re.captures_iter(&text) {
                let secret = &cap[1];
                if secret.contains(['{', '(', '[', '\\']) {
                    continue; // a format string or a pattern, not a password
                }
                seen += 1;
                if !known.iter().any(|k| k == secret) {
                    missing.push(format!("{}: {secret}", file.display()));
                }
            }
        }
    }
    assert!(
        seen >= 10,
        "the patterns found only {seen} passwords: they no longer match the tests"
    );
    assert!(
        missing.is_empty(),
        "add these to tests/known-secrets.txt:\n{}",
        missing.join("\n")
    );
}

/// A server's directory scans clean; a planted password, a copy of the
/// server's private key, an unsealed master key or a readable key file is
/// each found.
#[test]
fn the_scan_finds_a_planted_secret_and_a_readable_key_file() {
    let server = TestServer::start(&[]);
    psql(&server.admin(), "CREATE USER kim WITH PASSWORD 'Kim-pw-1'").expect_ok();
    psql(&server.admin(), "CREATE TABLE t (n BIGINT NOT NULL)").expect_ok();
    psql(&server.admin(), "INSERT INTO t VALUES (1)").expect_ok();
    psql(&server.admin(), "CHECKPOINT").expect_ok();
    let data = server.data.clone();
    let clean = secrets::scan(&data, &server.stderr());
    assert!(clean.findings.is_empty(), "{:?}", clean.findings);
    assert!(clean.files >= 3, "the scan read {} files", clean.files);

    // A scan of the directory (and of `log`) names something with all of `parts`.
    let finds = |log: &str, parts: &[&str]| {
        let scan = secrets::scan(&data, log);
        assert!(
            scan.findings.iter().any(|f| parts.iter().all(|p| f.contains(p))),
            "nothing with {parts:?} among {:?}",
            scan.findings
        );
    };
    let planted = data.join("planted");
    std::fs::write(&planted, b"... Kim-pw-1 ...").expect("plant");
    finds("", &["planted", "Kim-pw-1"]);

    let key = std::fs::read_to_string(server.certs().join("node.key")).expect("server key");
    // Its body without the PEM armour, as a careless dump would write it.
    let body: String = key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&planted, body).expect("plant");
    finds("", &["planted", "node.key"]);

    let keystore = data.join("keystore").join("master.keys");
    let raw = std::fs::read(&keystore).expect("keystore");
    assert_eq!(raw[12], 0, "the default keystore is unsealed");
    let master = raw[8 + 4 + 1 + 12 + 16 + 4 + 13..][..32].to_vec();
    let hex: String = master.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&planted, b"").expect("plant");
    finds(&format!("log line with {hex}"), &["log", "master key 0 (hex)"]);
    std::fs::write(&planted, &master).expect("plant");
    finds("", &["planted", "master key 0 (raw)"]);
    std::fs::remove_file(&planted).expect("unplant");

    let server_key = server.certs().join("node.key");
    std::fs::set_permissions(&server_key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    finds("", &["node.key", "644"]);
    std::fs::set_permissions(&server_key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(secrets::scan(&data, "").findings.is_empty());
}
