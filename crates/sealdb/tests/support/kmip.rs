//! A real PyKMIP server for tests: certificates from `make_kmip_certs.sh`,
//! the server from `kmip_server.py` on a free port of 127.0.0.1, killed by
//! PID when dropped. Shared by the tests of `sealdb-kmip` and `sealdb`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn py_dir() -> PathBuf {
    repo().join("crates/sealdb/tests/py")
}

pub fn python() -> PathBuf {
    let p = repo().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run ./scripts/setup-test-env.sh (./scripts/test.sh does)",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Test certificates: a CA, a server certificate for localhost and a client
/// certificate, all ECDSA P-256.
pub fn certs(dir: &Path) -> PathBuf {
    let certs = dir.join("certs");
    let status = Command::new("bash")
        .arg(py_dir().join("make_kmip_certs.sh"))
        .arg(&certs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "make_kmip_certs.sh failed");
    certs
}

/// A PyKMIP server; killed (by PID) when dropped.
pub struct KmipServer {
    child: Child,
    pub port: u16,
}

impl KmipServer {
    pub fn start(dir: &Path, certs: &Path) -> Self {
        let port = free_port();
        let work = dir.join(format!("kmip-{port}"));
        std::fs::create_dir_all(&work).unwrap();
        let mut child = Command::new(python())
            .arg(py_dir().join("kmip_server.py"))
            .args(["--port", &port.to_string()])
            .arg("--dir")
            .arg(&work)
            .arg("--cert")
            .arg(certs.join("server.crt"))
            .arg("--key")
            .arg(certs.join("server.key"))
            .arg("--ca")
            .arg(certs.join("ca.crt"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("KMIP server ready") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            panic!(
                "the PyKMIP server did not start; see {}",
                work.join("server.log").display()
            );
        }
        Self { child, port }
    }

    pub fn host(&self) -> String {
        format!("localhost:{}", self.port)
    }
}

impl Drop for KmipServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
