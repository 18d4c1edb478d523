//! The node port of a real leaf (`sealdb start --role leaf`) against
//! `openssl s_client` and raw sockets (issue 18, item 5): a node of its
//! cluster gets in over TLS 1.3; no certificate, a user's client
//! certificate from the same CA, a node of another cluster, another CA,
//! TLS 1.2 and plaintext are refused in the handshake, each logged with
//! the peer and the reason.

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{free_port, run_ok, sealdb_bin};

fn sealdb(args: &[&str]) -> String {
    run_ok(Command::new(sealdb_bin()).args(args))
}

/// A running leaf, stopped by PID when dropped.
struct Leaf {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl Leaf {
    fn start(data: &Path, certs: &Path, ca: &Path) -> Self {
        let port = free_port();
        let mut child = Command::new(sealdb_bin())
            .args(["start", "--role", "leaf", "--data"])
            .arg(data)
            .args(["--node-port", &port.to_string(), "--cluster-ca"])
            .arg(ca.join("ca.crt"))
            .arg("--node-cert")
            .arg(certs.join("node.crt"))
            .arg("--node-key")
            .arg(certs.join("node.key"))
            .env("SEALDB_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sealdb");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("log").push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut banner = String::new();
        let mut stdout = child.stdout.take().expect("stdout");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut byte = [0u8; 1];
        while !banner.contains('\n') && Instant::now() < deadline {
            match stdout.read(&mut byte) {
                Ok(1) => banner.push(byte[0] as char),
                _ => break,
            }
        }
        assert!(
            banner.contains("sealdb leaf leaf1 of cluster c1 is listening"),
            "{banner}\n{}",
            log.lock().expect("log")
        );
        Self { child, port, log }
    }

    /// Waits until the log holds `needle` (after `from` bytes).
    fn wait_for_log(&self, from: usize, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = self.log.lock().expect("log")[from..].to_owned();
            if text.contains(needle) || Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_len(&self) -> usize {
        self.log.lock().expect("log").len()
    }
}

impl Drop for Leaf {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl s_client` to the leaf, trusting `ca`, presenting `identity`
/// (a directory with node.crt/node.key, or a client certificate pair).
fn s_client(port: u16, ca: &Path, identity: Option<(&Path, &Path)>, extra: &[&str]) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-verify_return_error",
        "-CAfile",
    ])
    .arg(ca.join("ca.crt"))
    .args(extra);
    if let Some((cert, key)) = identity {
        cmd.arg("-cert").arg(cert).arg("-key").arg(key);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    // Some time for the server's verdict on our certificate to arrive.
    std::thread::sleep(Duration::from_millis(700));
    drop(child.stdin.take());
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(out) => out.expect("openssl output"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("openssl s_client did not end");
        }
    };
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_node_port_admits_nodes_of_its_cluster_only_and_logs_every_refusal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| tmp.path().join(n);
    let s = |n: &str| p(n).display().to_string();
    sealdb(&["cert", "create-ca", "--certs-dir", &s("ca")]);
    let node = |dir: &str, ca: &str, cluster: &str, name: &str| {
        sealdb(&[
            "cert",
            "create-node",
            "localhost",
            "127.0.0.1",
            "--cluster",
            cluster,
            "--name",
            name,
            "--certs-dir",
            &s(dir),
            "--ca-dir",
            &s(ca),
        ]);
    };
    node("leaf1", "ca", "c1", "leaf1");
    node("agg", "ca", "c1", "agg");
    node("c2", "ca", "c2", "other");
    sealdb(&["cert", "create-ca", "--certs-dir", &s("ca2")]);
    node("stranger", "ca2", "c1", "stranger");
    sealdb(&[
        "cert",
        "create-client",
        "alice",
        "--certs-dir",
        &s("users"),
        "--ca-dir",
        &s("ca"),
    ]);

    let leaf = Leaf::start(&p("leafdata"), &p("leaf1"), &p("ca"));
    assert!(
        !p("leafdata").join("catalog").exists() && !p("leafdata").join("log").exists(),
        "a leaf keeps no catalog and no log"
    );
    let pair = |dir: &str| (p(dir).join("node.crt"), p(dir).join("node.key"));

    // A node of the cluster: verified both ways, TLS 1.3, logged by name.
    let from = leaf.log_len();
    let (crt, key) = pair("agg");
    let out = s_client(leaf.port, &p("ca"), Some((&crt, &key)), &[]);
    assert!(out.contains("Verification: OK") && out.contains("TLSv1.3"), "{out}");
    let log = leaf.wait_for_log(from, "connected");
    assert!(log.contains("node agg of cluster c1 connected from 127.0.0.1"), "{log}");

    let refused = |identity: Option<(&Path, &Path)>, extra: &[&str], reason: &str| {
        let from = leaf.log_len();
        let out = s_client(leaf.port, &p("ca"), identity, extra);
        let log = leaf.wait_for_log(from, reason);
        assert!(
            log.contains("node channel: refused 127.0.0.1") && log.contains(reason),
            "expected a refusal naming {reason:?}; log:\n{log}\nopenssl:\n{out}"
        );
        assert!(!log.contains("connected"), "{log}");
    };
    refused(None, &[], "no certificate presented");
    let (crt, key) = (p("users").join("client.alice.crt"), p("users").join("client.alice.key"));
    refused(Some((&crt, &key)), &[], "not a node certificate");
    let (crt, key) = pair("c2");
    refused(
        Some((&crt, &key)),
        &[],
        "node \"other\" of cluster \"c2\", not of this cluster \"c1\"",
    );
    let (crt, key) = pair("stranger");
    refused(Some((&crt, &key)), &[], "a CA that is not in cluster-ca");
    let (crt, key) = pair("agg");
    refused(Some((&crt, &key)), &["-tls1_2"], "the node channel is TLS 1.3 only");

    // Plaintext.
    let from = leaf.log_len();
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", leaf.port)).expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: leaf\r\n\r\n").expect("write");
    let mut answer = Vec::new();
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = tcp.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP"),
        "plaintext got an answer"
    );
    let log = leaf.wait_for_log(from, "refused");
    assert!(
        log.contains("node channel: refused 127.0.0.1") && log.contains("not a TLS handshake"),
        "{log}"
    );
}

#[test]
fn a_leaf_without_cluster_ca_or_with_a_plain_certificate_does_not_start_and_says_why() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = |n: &str| tmp.path().join(n).display().to_string();
    sealdb(&["cert", "create-ca", "--certs-dir", &s("ca")]);
    sealdb(&[
        "cert",
        "create-node",
        "localhost",
        "--certs-dir",
        &s("plain"),
        "--ca-dir",
        &s("ca"),
    ]);
    let start = |extra: &[&str]| {
        let out = Command::new(sealdb_bin())
            .args([
                "start",
                "--role",
                "leaf",
                "--data",
                &s("data"),
                "--node-port",
                &free_port().to_string(),
            ])
            .args(extra)
            .output()
            .expect("sealdb");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = start(&[]);
    assert!(err.contains("cluster-ca"), "{err}");
    let crt = format!("{}/node.crt", s("plain"));
    let key = format!("{}/node.key", s("plain"));
    let ca = format!("{}/ca.crt", s("ca"));
    let err = start(&["--cluster-ca", &ca, "--node-cert", &crt, "--node-key", &key]);
    assert!(
        err.contains("not a node certificate") && err.contains("--cluster"),
        "{err}"
    );
    let out = Command::new(sealdb_bin())
        .args(["start", "--role", "aggregator", "--data", &s("agg")])
        .output()
        .expect("sealdb");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("role = aggregator is not available yet"));
}
