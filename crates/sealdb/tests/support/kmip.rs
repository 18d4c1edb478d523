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
    child: Option<Child>,
    pub port: u16,
    /// Its working directory (database, config, log).
    pub work: PathBuf,
    certs: PathBuf,
    versions: Option<String>,
}

impl KmipServer {
    /// A server on a free port with a database of its own under `dir`.
    pub fn start(dir: &Path, certs: &Path) -> Self {
        let port = free_port();
        Self::launch(certs, port, &dir.join(format!("kmip-{port}")), None)
    }

    /// A second server of the same cluster: it shares `self`'s database, so
    /// it holds the same keys (failover).
    pub fn peer(&self) -> Self {
        Self::launch(&self.certs, free_port(), &self.work, self.versions.as_deref())
    }

    /// A server that speaks only `versions` (e.g. `1.2,1.1,1.0`).
    pub fn start_speaking(dir: &Path, certs: &Path, versions: &str) -> Self {
        let port = free_port();
        Self::launch(certs, port, &dir.join(format!("kmip-{port}")), Some(versions))
    }

    fn launch(certs: &Path, port: u16, work: &Path, versions: Option<&str>) -> Self {
        std::fs::create_dir_all(work).unwrap();
        let mut command = Command::new(python());
        command
            .arg(py_dir().join("kmip_server.py"))
            .args(["--port", &port.to_string()])
            .arg("--dir")
            .arg(work)
            .arg("--cert")
            .arg(certs.join("server.crt"))
            .arg("--key")
            .arg(certs.join("server.key"))
            .arg("--ca")
            .arg(certs.join("ca.crt"));
        if let Some(v) = versions {
            command.args(["--versions", v]);
        }
        let stderr = std::fs::File::create(work.join(format!("stderr-{port}.log"))).unwrap();
        let mut child = command.stdout(Stdio::piped()).stderr(stderr).spawn().unwrap();
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
            let exited = child.wait().map(|s| s.to_string()).unwrap_or_default();
            let log = std::fs::read_to_string(work.join("server.log")).unwrap_or_default()
                + &std::fs::read_to_string(work.join(format!("stderr-{port}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "the PyKMIP server on port {port} did not start within 60 s ({exited}); the end of {} and its stderr:\n{}",
                work.join("server.log").display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Self {
            child: Some(child),
            port,
            work: work.to_path_buf(),
            certs: certs.to_path_buf(),
            versions: versions.map(str::to_owned),
        }
    }

    /// Kills the server (SIGKILL, by PID), as a crash or a pulled cable would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same database.
    pub fn restart(&mut self) {
        self.kill();
        let again = Self::launch(&self.certs, self.port, &self.work, self.versions.as_deref());
        *self = again;
    }

    pub fn host(&self) -> String {
        format!("localhost:{}", self.port)
    }
}

impl Drop for KmipServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How a client with the test certificate `IDENTITY.crt`/`IDENTITY.key` of
/// `certs` reaches `hosts`, trusting `certs/ca.crt`; the version negotiated.
pub fn client_config(certs: &Path, identity: &str, hosts: Vec<String>) -> sealdb_kmip::KmipClientConfig {
    sealdb_pki::install_crypto_provider();
    sealdb_kmip::KmipClientConfig {
        hosts,
        tls: sealdb_pki::client_config(
            &sealdb_pki::ServerIdentitySource::Pem {
                cert: certs.join(format!("{identity}.crt")),
                key: certs.join(format!("{identity}.key")),
            },
            &sealdb_pki::TrustSource::Pem(certs.join("ca.crt")),
        )
        .unwrap(),
        timeout: Duration::from_secs(10),
        version: None,
    }
}

/// The key servers' operator: sealdb's KMIP client with the test client
/// certificate (the owner of the keys sealdb creates), doing what an
/// operator does in the key server's console.
pub struct Operator {
    client: sealdb_kmip::KmipClient,
    runtime: tokio::runtime::Runtime,
}

impl Operator {
    pub fn new(certs: &Path, hosts: &[String]) -> Self {
        let client = sealdb_kmip::KmipClient::new(client_config(certs, "client", hosts.to_vec())).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Self { client, runtime }
    }

    /// The ids of the master keys of the sealdb whose data directory is `data`.
    pub fn master_keys(&self, data: &Path) -> Vec<String> {
        let instance = std::fs::read_to_string(data.join("keystore/kmip-instance")).unwrap();
        let name = format!("sealdb/{}/master-key", instance.trim());
        self.runtime.block_on(self.client.locate(&name)).unwrap()
    }

    pub fn state(&self, id: &str) -> Result<sealdb_kmip::State, sealdb_kmip::KmipError> {
        self.runtime.block_on(self.client.state(id))
    }

    /// Revoke: Deactivated, or Compromised.
    pub fn revoke(&self, id: &str, compromised: bool) {
        self.runtime.block_on(self.client.revoke(id, compromised)).unwrap();
    }

    /// Revoke if active, then destroy.
    pub fn destroy(&self, id: &str) {
        self.runtime.block_on(async {
            if self.client.state(id).await.unwrap() == sealdb_kmip::State::Active {
                self.client.revoke(id, false).await.unwrap();
            }
            self.client.destroy(id).await.unwrap();
        });
    }
}

/// A TCP relay in front of a key server that can be blocked: while it is,
/// new connections are accepted and never answered, and open ones stall,
/// as behind a firewall that drops packets. (Stopping a PyKMIP process
/// with SIGSTOP would not do: hosts of one test cluster share a database,
/// and a stopped one can hold its lock.) Stopped when dropped.
pub struct Relay {
    pub port: u16,
    blocked: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut_answers: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Relay {
    /// Relays 127.0.0.1:`self.port` to 127.0.0.1:`target`.
    pub fn to(target: u16) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let blocked = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let cut_answers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (b, st, cut) = (blocked.clone(), stop.clone(), cut_answers.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !st.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    if !b.load(Ordering::Relaxed) {
                        held.clear();
                    }
                    continue;
                };
                let _ = client.set_nonblocking(false);
                if b.load(Ordering::Relaxed) {
                    held.push(client);
                    continue;
                }
                let (b, st, cut) = (b.clone(), st.clone(), cut.clone());
                // Connect in a thread of its own: a slow key server must not
                // hold up the relay's other connections.
                std::thread::spawn(move || {
                    let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                        return; // the key server is down: the client sees the connection close
                    };
                    relay_both_ways(client, server, &b, &st, &cut);
                });
            }
        });
        Self {
            port,
            blocked,
            stop,
            cut_answers,
        }
    }

    /// From now on (0: never), a connection is cut, both ways, when the
    /// key server starts its `nth` answer (TLS 1.2 application-data
    /// records): the request reached the server, which carried it out, and
    /// the client never hears back, as when a server dies right after
    /// acting. (A client that negotiates the version gets its Discover
    /// Versions answer first.)
    pub fn cut_answers(&self, nth: usize) {
        self.cut_answers.store(nth, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn host(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// Drops every packet from now on (connections open, nothing answers).
    pub fn block(&self) {
        self.blocked.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn unblock(&self) {
        self.blocked.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.blocked.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Copies bytes both ways between `client` and `server`, holding them
/// while `blocked`, until either side closes or `stop`.
fn relay_both_ways(
    client: std::net::TcpStream,
    server: std::net::TcpStream,
    blocked: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut_answers: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    for (from_server, (mut from, mut to)) in [(false, (client2, server2)), (true, (server, client))] {
        let (b, st, cut) = (blocked.clone(), stop.clone(), cut_answers.clone());
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut buf = [0u8; 16384];
            // TLS records seen from the server: their headers are parsed
            // to spot the first answer.
            let mut pending: Vec<u8> = Vec::new();
            let mut answers = 0;
            while let Ok(n) = from.read(&mut buf) {
                while b.load(Ordering::Relaxed) && !st.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if n == 0 || st.load(Ordering::Relaxed) {
                    break;
                }
                let nth = cut.load(Ordering::Relaxed);
                if from_server && nth > 0 {
                    pending.extend_from_slice(&buf[..n]);
                    let mut forward = 0;
                    let mut answer = false;
                    while pending.len() >= forward + 5 {
                        if pending[forward] == 0x17 {
                            answers += 1;
                            if answers == nth {
                                answer = true;
                                break;
                            }
                        }
                        let len = usize::from(u16::from_be_bytes([pending[forward + 3], pending[forward + 4]]));
                        if pending.len() < forward + 5 + len {
                            if pending[forward] == 0x17 {
                                answers -= 1; // counted again once whole
                            }
                            break;
                        }
                        forward += 5 + len;
                    }
                    if to.write_all(&pending[..forward]).is_err() {
                        break;
                    }
                    pending.drain(..forward);
                    if answer {
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    }
}
