//! Test support: start the real `sealdb` binary on a free port with its own
//! data directory, run psql/openssl/python against it, stop it by PID.
#![allow(dead_code)]

pub mod secrets;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a server may take to print its banner.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub fn sealdb_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sealdb")
}

/// A running server; killed when dropped.
pub struct TestServer {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub port: u16,
    /// The stdout banner.
    pub banner: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl TestServer {
    /// `sealdb start --data DIR --port P ARGS...` in a fresh temporary directory.
    pub fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, args)
    }

    /// `start` with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::try_start_full(dir, Path::new(sealdb_bin()), args, env)
            .unwrap_or_else(|e| panic!("sealdb did not start: {e}"))
    }

    /// The same in a prepared directory (its `data/` is the data directory).
    pub fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Self {
        Self::try_start_in(dir, args).unwrap_or_else(|e| panic!("sealdb did not start: {e}"))
    }

    /// Like `start_in`, but returns what the server printed if it exits instead.
    pub fn try_start_in(dir: tempfile::TempDir, args: &[&str]) -> Result<Self, String> {
        Self::try_start_with_binary(dir, Path::new(sealdb_bin()), args)
    }

    /// `start_in` through another executable (a wrapper that sets the environment).
    pub fn start_with_binary(dir: tempfile::TempDir, binary: &Path, args: &[&str]) -> Self {
        Self::try_start_with_binary(dir, binary, args).unwrap_or_else(|e| panic!("sealdb did not start: {e}"))
    }

    fn try_start_with_binary(dir: tempfile::TempDir, binary: &Path, args: &[&str]) -> Result<Self, String> {
        Self::try_start_full(dir, binary, args, &[])
    }

    fn try_start_full(
        dir: tempfile::TempDir,
        binary: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let data = dir.path().join("data");
        let port = free_port();
        let mut child = Command::new(binary)
            .arg("start")
            .arg("--data")
            .arg(&data)
            .arg("--port")
            .arg(port.to_string())
            .args(args)
            .current_dir(dir.path())
            .env("SEALDB_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sealdb");
        let stderr_text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("stderr");
        let sink = stderr_text.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut banner = String::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                banner.push_str(&line);
                banner.push('\n');
                if line.starts_with("New tables are") {
                    let _ = tx.send(banner.clone());
                }
            }
            let _ = tx.send(banner);
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(banner) if banner.contains("listening") => Ok(Self {
                child,
                dir,
                data,
                port,
                banner,
                stderr: stderr_text,
            }),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                let err = stderr_text.lock().map(|s| s.clone()).unwrap_or_default();
                Err(format!("stdout: {other:?}\nstderr: {err}"))
            }
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn certs(&self) -> PathBuf {
        self.data.join("certs")
    }

    /// Where a fresh start keeps the CA (`ca.crt`, `ca.key`): beside the
    /// data directory, never in it.
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("data-ca")
    }

    pub fn ca(&self) -> String {
        self.certs().join("ca.crt").display().to_string()
    }

    /// The exact psql connection string the banner printed.
    pub fn banner_conninfo(&self) -> String {
        let line = self
            .banner
            .lines()
            .find(|l| l.trim_start().starts_with("psql "))
            .expect("banner has a psql line");
        let quoted = line.trim().trim_start_matches("psql ").trim();
        quoted.trim_matches('"').to_owned()
    }

    /// verify-full as `admin` with its client certificate.
    pub fn admin(&self) -> String {
        self.banner_conninfo()
    }

    /// verify-full as `user` with a password (given through PGPASSWORD by `psql_as`).
    pub fn password_conn(&self, user: &str) -> String {
        format!(
            "host=localhost port={} user={user} dbname=sealdb sslmode=verify-full sslrootcert={}",
            self.port,
            self.ca()
        )
    }

    /// verify-full as `user` with `client.USER.crt` from the server's certs directory.
    pub fn cert_conn(&self, user: &str) -> String {
        let c = self.certs();
        format!(
            "host=localhost port={} user={user} dbname=sealdb sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            self.port,
            self.ca(),
            c.join(format!("client.{user}.crt")).display(),
            c.join(format!("client.{user}.key")).display()
        )
    }

    /// Runs `sealdb cert create-client USER` against this server's CA.
    pub fn create_client_cert(&self, user: &str) {
        let out = Command::new(sealdb_bin())
            .args(["cert", "create-client", user, "--certs-dir"])
            .arg(self.certs())
            .arg("--ca-dir")
            .arg(self.ca_dir())
            .output()
            .expect("run sealdb cert");
        assert!(
            out.status.success(),
            "create-client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Runs `f` with the server frozen (SIGSTOP, then SIGCONT), so that it
    /// sees what `f` does on another peer only once it is all done: an
    /// operator's Revoke and Destroy of a key, say, which sealdb would
    /// otherwise answer in between by moving to a new key.
    pub fn paused<T>(&self, f: impl FnOnce() -> T) -> T {
        self.signal("STOP");
        let out = f();
        self.signal("CONT");
        out
    }

    /// Stops the server with SIGTERM and hands back its directory, so that
    /// a test can look at the files or start it again.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.signal("TERM");
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    /// Kills the server with SIGKILL (no shutdown at all) and hands back
    /// its directory.
    pub fn crash(mut self) -> tempfile::TempDir {
        self.signal("KILL");
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    /// Waits (up to 10 s) for a server that ends by itself (a crash point)
    /// and hands back its directory; `None` if it is still running.
    pub fn exited(mut self) -> Option<tempfile::TempDir> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.alive() {
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")))
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // No secret in the clear in what the server wrote or logged.
        let scan = secrets::scan(&self.data, &self.stderr());
        secrets::record(&self.data, &scan);
        if !scan.findings.is_empty() && !std::thread::panicking() {
            panic!(
                "secrets in the clear in {} or its log:\n{}",
                self.data.display(),
                scan.findings.join("\n")
            );
        }
    }
}

/// psql's result.
#[derive(Debug)]
pub struct Psql {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Psql {
    pub fn expect_ok(self) -> String {
        assert!(
            self.ok,
            "psql failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self.stdout
    }

    pub fn expect_err(self, needle: &str) -> String {
        assert!(
            !self.ok || self.stderr.contains("ERROR"),
            "psql unexpectedly succeeded: {}",
            self.stdout
        );
        assert!(
            self.stderr.contains(needle),
            "expected {needle:?} in psql's error, got:\n{}\n{}",
            self.stderr,
            self.stdout
        );
        self.stderr
    }
}

/// `psql CONNINFO -At -v ON_ERROR_STOP=1 -c SQL` (tuples only, unaligned).
pub fn psql(conninfo: &str, sql: &str) -> Psql {
    psql_with(conninfo, sql, None)
}

/// The same with a password.
pub fn psql_pw(conninfo: &str, password: &str, sql: &str) -> Psql {
    psql_with(conninfo, sql, Some(password))
}

/// `psql -c SQL` with `input` on its standard input (COPY ... FROM STDIN).
pub fn psql_input(conninfo: &str, sql: &str, input: &str) -> Psql {
    let mut file = tempfile::tempfile().expect("tempfile");
    {
        use std::io::{Seek, Write};
        file.write_all(input.as_bytes()).expect("write input");
        file.rewind().expect("rewind");
    }
    psql_run(conninfo, sql, None, Stdio::from(file))
}

/// `psql -f FILE` with `sql` in the file: for statements longer than a
/// command-line argument may be.
pub fn psql_script(conninfo: &str, sql: &str) -> Psql {
    psql_script_with(conninfo, sql, None)
}

/// `psql_script` with a password.
pub fn psql_pw_script(conninfo: &str, password: &str, sql: &str) -> Psql {
    psql_script_with(conninfo, sql, Some(password))
}

fn psql_script_with(conninfo: &str, sql: &str, password: Option<&str>) -> Psql {
    let mut file = tempfile::NamedTempFile::new().expect("tempfile");
    {
        use std::io::Write;
        file.write_all(sql.as_bytes()).expect("write script");
    }
    let path = file.path().to_string_lossy().into_owned();
    psql_args(conninfo, &["-f", &path], password, Stdio::null())
}

fn psql_with(conninfo: &str, sql: &str, password: Option<&str>) -> Psql {
    psql_run(conninfo, sql, password, Stdio::null())
}

fn psql_run(conninfo: &str, sql: &str, password: Option<&str>, stdin: Stdio) -> Psql {
    psql_args(conninfo, &["-c", sql], password, stdin)
}

fn psql_args(conninfo: &str, input: &[&str], password: Option<&str>, stdin: Stdio) -> Psql {
    let mut cmd = Command::new("psql");
    cmd.arg(conninfo)
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose"])
        .args(input)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGPASSWORD")
        .stdin(stdin);
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    Psql {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `sealdb verify --data DATA` with `env`: whether it passed, and what it printed.
pub fn sealdb_verify(data: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(sealdb_bin());
    cmd.arg("verify").arg("--data").arg(data);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs a command, killing it after `limit`.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("command timed out after {limit:?}: {cmd:?}");
        }
    }
}

/// Runs a command and returns stdout, panicking with stderr on failure.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Python of the test virtual environment that `scripts/setup-test-env.sh` creates.
pub fn venv_python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var_os("SEALDB_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-test-env.sh (the README's test command does) to create the Python test environment with psycopg",
        python.display()
    );
    python
}

/// The directory of Python test helpers.
pub fn py_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py")
}

/// Sends raw bytes to the port and returns what comes back within a second.
pub fn raw_exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// Makes a client certificate for `user` valid from `from` to `until`
/// (relative to now), signed by the CA in `ca_dir` (`ca.crt`, `ca.key`),
/// written as `NAME.crt` / `NAME.key` in `out_dir` (key mode 0600).
pub fn client_cert_with(
    ca_dir: &Path,
    out_dir: &Path,
    name: &str,
    user: &str,
    from: time::Duration,
    until: time::Duration,
    serial: u64,
) -> (PathBuf, PathBuf) {
    client_cert_with_names(
        ca_dir,
        out_dir,
        name,
        &[("O", "sealdb"), ("CN", user)],
        from,
        until,
        serial,
    )
}

/// [`client_cert_with`] for a subject of these attributes (`O`, `OU` or
/// `CN`, in this order), values as they are.
pub fn client_cert_with_names(
    ca_dir: &Path,
    out_dir: &Path,
    name: &str,
    subject: &[(&str, &str)],
    from: time::Duration,
    until: time::Duration,
    serial: u64,
) -> (PathBuf, PathBuf) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SerialNumber};
    let ca_pem = std::fs::read_to_string(ca_dir.join("ca.crt")).expect("ca.crt");
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key")).expect("ca.key")).expect("ca key");
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    for (attribute, value) in subject {
        let kind = match *attribute {
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            "CN" => DnType::CommonName,
            other => panic!("attribute {other} is not made by this helper"),
        };
        params.distinguished_name.push(kind, *value);
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + from;
    params.not_after = now + until;
    params.serial_number = Some(SerialNumber::from(serial));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).expect("sign");
    write_pair(out_dir, name, &cert.pem(), &key.serialize_pem())
}

/// Writes a CRL revoking `serials`, signed by the CA in `ca_dir`.
pub fn write_crl(ca_dir: &Path, path: &Path, serials: &[u64]) {
    write_crl_until(ca_dir, path, serials, time::Duration::days(7));
}

/// An intermediate CA signed by the CA in `root_dir`, in a directory of
/// its own under `out_dir` (`ca.crt`, `ca.key`, as `client_cert_with`
/// reads them), with certificate serial `serial`.
pub fn intermediate_ca(root_dir: &Path, out_dir: &Path, name: &str, serial: u64) -> PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber};
    let ca_pem = std::fs::read_to_string(root_dir.join("ca.crt")).expect("ca.crt");
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(root_dir.join("ca.key")).expect("ca.key")).expect("ca key");
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "sealdb");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(30);
    params.serial_number = Some(SerialNumber::from(serial));
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let dir = out_dir.join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    write_pair(&dir, "ca", &cert.pem(), &key.serialize_pem());
    dir
}

/// [`write_crl`] whose next update is `next_update` from now (negative:
/// already past).
pub fn write_crl_until(ca_dir: &Path, path: &Path, serials: &[u64], next_update: time::Duration) {
    use rcgen::{CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber};
    let ca_pem = std::fs::read_to_string(ca_dir.join("ca.crt")).expect("ca.crt");
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key")).expect("ca.key")).expect("ca key");
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
    let now = time::OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::days(10),
        next_update: now + next_update,
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from(*s),
                revocation_time: now - time::Duration::minutes(5),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer).expect("crl");
    std::fs::write(path, crl.pem().expect("crl pem")).expect("write crl");
}

/// Writes `NAME.crt` and `NAME.key` (mode 0600).
pub fn write_pair(dir: &Path, name: &str, cert_pem: &str, key_pem: &str) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&crt, cert_pem).expect("write crt");
    std::fs::write(&key, key_pem).expect("write key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    (crt, key)
}

/// A conninfo for `user` presenting the given certificate files.
pub fn conn_with_cert(server: &TestServer, user: &str, crt: &Path, key: &Path) -> String {
    format!(
        "host=localhost port={} user={user} dbname=sealdb sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        server.port,
        server.ca(),
        crt.display(),
        key.display()
    )
}

/// Sends a plaintext StartupMessage and returns the fields of the
/// ErrorResponse that comes back (`C` is the SQLSTATE, `M` the message).
pub fn plaintext_startup_error(port: u16, user: &str) -> std::collections::BTreeMap<u8, String> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608u32.to_be_bytes());
    for (k, v) in [("user", user), ("database", "sealdb")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    let reply = raw_exchange(port, &msg);
    assert_eq!(reply.first(), Some(&b'E'), "expected an ErrorResponse, got {reply:?}");
    let len = u32::from_be_bytes(reply[1..5].try_into().expect("length")) as usize;
    let mut fields = std::collections::BTreeMap::new();
    let mut rest = &reply[5..1 + len];
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0).expect("nul");
        fields.insert(code, String::from_utf8_lossy(&tail[..end]).into_owned());
        rest = &tail[end + 1..];
    }
    fields
}

/// A psql process kept open, fed one statement at a time.
#[allow(missing_debug_implementations)]
pub struct LongSession {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl LongSession {
    pub fn open(conninfo: &str) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new("psql")
            .arg(conninfo)
            .args(["-X", "-At", "-q"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("psql");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        let err_tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // Errors arrive on the same channel, so a refused statement answers too.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        Self { child, stdin, lines }
    }

    pub fn query(&mut self, sql: &str) -> String {
        use std::io::Write;
        writeln!(self.stdin, "{sql};").expect("write to psql");
        self.stdin.flush().expect("flush");
        self.lines
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("psql answered")
    }
}

impl Drop for LongSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kB` figure of `/proc/PID/status` (`VmRSS`, `VmLck`, ...).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Every file under `dir`, at any depth.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readable directory").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Copies a directory tree (for restarting on a copy of a data directory).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// `openssl s_client -connect 127.0.0.1:PORT EXTRA...`: success and stdout+stderr.
pub fn s_client(port: u16, extra: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
