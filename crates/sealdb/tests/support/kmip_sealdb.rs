//! sealdb against PyKMIP: the config a test writes with `sealdb kms set`,
//! and running `sealdb` commands. Shared by `kmip.rs` and `kmip_chaos.rs`.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;

use crate::kmip_support::free_port;
use crate::support;

/// A config file with `key-provider = "kmip:hsm"`, its `[kmip_hosts.hsm]`
/// section written by `sealdb kms set`. In `get` mode the client identity
/// is a PKCS#12 keystore (made here with openssl) with its password in a
/// file; in `wrap` mode, PEM files.
pub fn config(dir: &Path, certs: &Path, hosts: &[String], mode: &str) -> String {
    config_with(dir, certs, hosts, mode, &[])
}

/// As [`config`], with more `sealdb kms set` flags (the key cache's times).
pub fn config_with(dir: &Path, certs: &Path, hosts: &[String], mode: &str, extra: &[&str]) -> String {
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
pub fn sealdb(args: &[&str], data: Option<&Path>) -> (bool, String) {
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

/// Polls `done` every 200 ms until it holds or `limit` passes.
pub fn wait_for(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
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
